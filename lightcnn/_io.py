"""One way to write a file that a reader may be holding: write it whole, then rename.

Every file the package writes and later trusts (zoo weights and manifest, training
checkpoints, the user cache, results) goes through :func:`atomic_write`, so a run that is
killed mid-write leaves the previous file, never half of a new one.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["atomic_write"]


def atomic_write(path: str | os.PathLike, content: bytes) -> None:
    """Write ``content`` to ``path`` through ``<path>.tmp`` in the same folder: the bytes
    are flushed to disk (fsync) before :func:`os.replace` renames the temporary file over
    ``path``, which POSIX makes atomic. An interruption at any point leaves either the old
    file or the new one. Creates the parent folder.

    Raises:
        TypeError: ``content`` is not bytes.
    """
    if not isinstance(content, (bytes, bytearray, memoryview)):
        raise TypeError(f"content must be bytes, got {type(content).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())   # the data on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
