import os

import pytest

from lightcnn import _io


def test_atomic_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "sub" / "file.bin"
    _io.atomic_write(path, b"first")
    assert path.read_bytes() == b"first"
    _io.atomic_write(path, b"second, longer")
    assert path.read_bytes() == b"second, longer"
    assert sorted(p.name for p in path.parent.iterdir()) == ["file.bin"]   # no .tmp left


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "file.bin"
    path.write_bytes(b"old")

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        _io.atomic_write(path, b"new")
    assert path.read_bytes() == b"old"
    assert not (tmp_path / "file.bin.tmp").exists()


def test_atomic_write_takes_bytes_only(tmp_path):
    with pytest.raises(TypeError, match="content must be bytes"):
        _io.atomic_write(tmp_path / "f", "text")
