import gzip
import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision

import lightcnn as lc
from lightcnn.data import FILES, DatasetError, balanced_subset


def test_every_file_matches_its_published_md5():
    folder = lc.find_data_dir(download=False)
    for name, md5 in FILES.items():
        data = lc.data.verify_file(lc.data._file_in(folder, name))
        assert hashlib.md5(data).hexdigest() == md5


def test_shapes_types_and_label_range():
    x, y = lc.load_fashion_mnist(train=True)
    assert x.shape == (60000, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (60000,) and y.dtype == torch.int64
    assert set(y.unique().tolist()) == set(range(10))
    # Fashion-MNIST's training set holds exactly 6,000 images of every class.
    assert torch.equal(torch.bincount(y), torch.full((10,), 6000))
    xt, yt = lc.load_fashion_mnist(train=False)
    assert xt.shape == (10000, 28, 28) and torch.equal(torch.bincount(yt), torch.full((10,), 1000))


def test_normalization_constants_match_the_training_set():
    x, _ = lc.load_fashion_mnist(train=True)
    pixels = x.double() / 255
    assert pixels.mean().item() == pytest.approx(lc.data.MEAN, abs=5e-5)
    assert pixels.std().item() == pytest.approx(lc.data.STD, abs=5e-5)
    z = lc.normalize(x[:1000])
    assert z.shape == (1000, 1, 28, 28)


def test_corrupted_file_is_reported_with_its_name_and_the_fixes(data_copy):
    path = data_copy / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[100] ^= 0xFF  # one flipped label byte: still valid gzip, wrong content
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DatasetError) as err:
        lc.load_fashion_mnist(train=False, root=data_copy)
    message = str(err.value)
    assert "t10k-labels-idx1-ubyte.gz" in message and "corrupted" in message
    assert "apt-get install dataset-fashion-mnist" in message and "LIGHTCNN_DATA" in message


def test_truncated_file_is_reported(data_copy):
    path = data_copy / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz.*truncated"):
        lc.load_fashion_mnist(train=True, root=data_copy)


def test_missing_file_is_a_partial_dataset_error(data_copy):
    (data_copy / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match="partial.*train-labels-idx1-ubyte.gz"):
        lc.find_data_dir(root=data_copy)


def test_empty_explicit_root_and_env_var_are_errors(tmp_path, monkeypatch):
    with pytest.raises(DatasetError, match="No Fashion-MNIST files"):
        lc.find_data_dir(root=tmp_path)
    monkeypatch.setenv("LIGHTCNN_DATA", str(tmp_path))
    with pytest.raises(DatasetError, match="LIGHTCNN_DATA"):
        lc.find_data_dir()


def test_search_order_user_cache_before_debian(isolated_cache, data_copy):
    # An empty cache falls through to the system copy ...
    assert lc.find_data_dir(download=False) == lc.data.DEBIAN_DIR
    # ... but a damaged cache is reported, not skipped in favour of the next place.
    cache = lc.data._data_cache_dir()
    cache.mkdir(parents=True)
    for f in data_copy.iterdir():
        (cache / f.name).write_bytes(f.read_bytes())
    assert lc.find_data_dir(download=False) == cache
    (cache / "t10k-images-idx3-ubyte.gz").write_bytes(b"not a gzip file")
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte.gz"):
        lc.load_fashion_mnist(train=False)


def _fake_torchvision(source: Path, corrupt: str | None = None,
                      fail: bool = False) -> Callable[..., None]:
    """A stand-in for torchvision's FashionMNIST(root, train, download=True).

    Writes what torchvision writes, each ``.gz`` and its decompressed copy under
    ``root/FashionMNIST/raw``, taken from ``source``; ``corrupt`` names a file whose
    content gets one flipped byte (in both copies); ``fail`` raises as without network.
    Records every call, so a test can check that the download was attempted.
    """
    calls = []

    def fake(root, train=True, download=False, **kwargs):
        calls.append(root)
        if fail:
            raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")
        raw = Path(root) / "FashionMNIST" / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            if (raw / name).is_file():
                continue  # torchvision skips a file it already holds
            data = bytearray(lc.data.verify_file(lc.data._file_in(source, name)))
            if name == corrupt:
                data[-1] ^= 0xFF
            (raw / (name + ".gz")).write_bytes(gzip.compress(bytes(data), compresslevel=1))
            (raw / name).write_bytes(bytes(data))

    fake.calls = calls
    return fake


@pytest.fixture
def nothing_local(isolated_cache, tmp_path, monkeypatch) -> Path:
    """An empty user cache, no Debian copy, LIGHTCNN_DATA unset: only a download helps."""
    empty = tmp_path / "no-debian"
    empty.mkdir()
    monkeypatch.setattr(lc.data, "DEBIAN_DIR", empty)
    return isolated_cache / "FashionMNIST" / "raw"


def test_download_into_an_empty_cache_is_found_and_verified(nothing_local, data_dir,
                                                            monkeypatch, capsys):
    fake = _fake_torchvision(data_dir)
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", fake)
    assert lc.data.main([]) == 0
    assert len(fake.calls) == 1
    out, err = capsys.readouterr()
    assert f"verified (MD5) in {nothing_local}\n" in out
    assert "torchvision's download into the user cache" in out and err == ""
    for name, md5 in FILES.items():
        for path in (nothing_local / name, nothing_local / (name + ".gz")):
            assert hashlib.md5(lc.data.verify_file(path)).hexdigest() == md5
    # The next run finds the cache and downloads nothing.
    assert lc.data.main([]) == 0 and len(fake.calls) == 1
    assert "found through the user cache" in capsys.readouterr().out
    x, y = lc.load_fashion_mnist(train=False)
    assert x.shape == (10000, 28, 28)
    assert torch.equal(torch.bincount(y), torch.full((10,), 1000))


def test_corrupted_download_is_rejected_deleted_and_fetched_again(nothing_local, data_dir,
                                                                  monkeypatch):
    bad = "train-labels-idx1-ubyte"
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST",
                        _fake_torchvision(data_dir, corrupt=bad))
    with pytest.raises(DatasetError) as err:
        lc.find_data_dir()
    message = str(err.value)
    assert "corrupted" in message and f"{bad}.gz" in message and "Deleted" in message
    assert message.count("Fix it in one of three ways") == 1
    # Both copies of the damaged file are gone, the good files stay.
    assert not (nothing_local / bad).exists() and not (nothing_local / f"{bad}.gz").exists()
    assert all((nothing_local / (n + ".gz")).is_file() for n in FILES if n != bad)
    # The cache is now partial: without download it is an error, with one it is completed.
    with pytest.raises(DatasetError, match=f"partial.*{bad}"):
        lc.find_data_dir(download=False)
    fake = _fake_torchvision(data_dir)
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", fake)
    assert lc.find_data_dir() == nothing_local and len(fake.calls) == 1
    assert hashlib.md5(lc.data.verify_file(nothing_local / bad)).hexdigest() == FILES[bad]


def _assert_one_message_with_the_three_fixes(stderr: str) -> None:
    assert stderr.startswith("error: Fashion-MNIST was not found locally and the "
                             "download failed")
    assert "Temporary failure in name resolution" in stderr
    assert "Traceback" not in stderr and "Warning" not in stderr
    for fix in ("Fix it in one of three ways", "apt-get install dataset-fashion-mnist",
                "let torchvision download", "LIGHTCNN_DATA"):
        assert stderr.count(fix) == 1, fix


def test_no_network_and_nothing_local_is_one_message(nothing_local, monkeypatch, capsys):
    fake = _fake_torchvision(Path("unused"), fail=True)
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", fake)
    assert lc.data.main([]) == 1 and len(fake.calls) == 1
    out, err = capsys.readouterr()
    assert out == ""
    _assert_one_message_with_the_three_fixes(err)
    assert str(nothing_local) in err  # fix 2 names the cache the download goes to


def test_interrupted_download_leaves_no_truncated_file(nothing_local, data_dir,
                                                      monkeypatch):
    # The connection drops halfway through the first file: the truncated .gz is deleted
    # and the message says both what failed and what was deleted.
    def interrupted(root, train=True, download=False, **kwargs):
        nothing_local.mkdir(parents=True)
        part = lc.data._file_in(data_dir, "train-images-idx3-ubyte").read_bytes()[:100_000]
        (nothing_local / "train-images-idx3-ubyte.gz").write_bytes(part)
        raise OSError("Connection reset by peer")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", interrupted)
    with pytest.raises(DatasetError, match="download failed .Connection reset by peer.") as err:
        lc.find_data_dir()
    assert "Deleted the damaged files:\n  train-images-idx3-ubyte.gz" in str(err.value)
    assert list(nothing_local.iterdir()) == []


def test_entry_point_exit_status_as_make_data_runs_it(data_copy, tmp_path):
    # The Makefile's command in a fresh process; LIGHTCNN_DATA picks the folder, so
    # neither the user cache nor the network is touched.
    def run(folder: Path) -> subprocess.CompletedProcess:
        env = dict(os.environ, LIGHTCNN_DATA=str(folder), LIGHTCNN_CACHE=str(tmp_path / "c"))
        return subprocess.run([sys.executable, "-c", "import sys, lightcnn.data; "
                               "sys.exit(lightcnn.data.main())"], capture_output=True,
                              text=True, env=env, timeout=300)

    good = run(data_copy)
    assert good.returncode == 0 and good.stderr == ""
    assert f"verified (MD5) in {data_copy}\n" in good.stdout and "LIGHTCNN_DATA" in good.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = run(empty)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.startswith(f"error: No Fashion-MNIST files in {empty} (given by "
                                 "LIGHTCNN_DATA)")
    assert "Traceback" not in bad.stderr
    assert bad.stderr.count("Fix it in one of three ways") == 1


def test_balanced_subset_is_balanced_deterministic_and_seeded():
    _, y = lc.load_fashion_mnist(train=True)
    a = balanced_subset(y, 1000, seed=0)
    assert len(a) == 1000 and len(a.unique()) == 1000
    assert torch.equal(torch.bincount(y[a], minlength=10), torch.full((10,), 100))
    assert torch.equal(a, balanced_subset(y, 1000, seed=0))
    assert not torch.equal(a, balanced_subset(y, 1000, seed=1))
    assert torch.equal(balanced_subset(y, None), torch.arange(60000))


def test_balanced_subset_rejects_bad_sizes():
    _, y = lc.load_fashion_mnist(train=False)
    with pytest.raises(ValueError, match="size"):
        balanced_subset(y, 5)
    with pytest.raises(ValueError, match="images per class"):
        balanced_subset(y, 20000)


def test_dataloaders_follow_the_budget(tiny_budget):
    train, test = lc.get_dataloaders(batch_size=50, budget=tiny_budget)
    assert len(train.dataset) == 200 and len(test.dataset) == 100
    x, y = next(iter(train))
    assert x.shape == (50, 1, 28, 28) and x.dtype == torch.float32 and y.shape == (50,)
    with pytest.raises(ValueError, match="batch_size"):
        lc.get_dataloaders(batch_size=0, budget=tiny_budget)


def test_validation_split_holds_out_a_balanced_seeded_part():
    _, y = lc.load_fashion_mnist(train=True)
    train, val = lc.validation_split(y, 5000, seed=0)
    # disjoint, together every index, sorted; the held-out part is balanced_subset's
    assert len(train) + len(val) == 60000 and len(set(train.tolist()) & set(val.tolist())) == 0
    assert torch.equal(torch.sort(torch.cat([train, val])).values, torch.arange(60000))
    assert torch.equal(val, balanced_subset(y, 5000, seed=0)) and torch.equal(train, train.sort().values)
    assert torch.equal(torch.bincount(y[val], minlength=10), torch.full((10,), 500))
    assert torch.equal(lc.validation_split(y, 5000, seed=0)[1], val)
    assert not torch.equal(lc.validation_split(y, 5000, seed=1)[1], val)
    with pytest.raises(ValueError, match="val_size must be below the 60000 images"):
        lc.validation_split(y, 60000)
    with pytest.raises(ValueError, match="val_size must be an int"):
        lc.validation_split(y, 0)


def test_dataloaders_with_val_hold_out_unaugmented_training_images(tiny_budget):
    train, val, test = lc.get_dataloaders_with_val(batch_size=50, budget=tiny_budget)
    plain_train, plain_test = lc.get_dataloaders(batch_size=50, budget=tiny_budget)
    # the budget's 200 training images: 100 held out (tiny_budget.val_size), 100 to train on
    assert len(val.dataset) == tiny_budget.val_size == 100 and len(train.dataset) == 100
    assert torch.equal(test.dataset.images, plain_test.dataset.images)
    source = plain_train.dataset                      # the same subset, the same order
    train_index, val_index = lc.validation_split(source.labels, 100, seed=0)
    xv, yv = next(iter(val))
    # validation batches are the held-out images as stored: never augmented, in order
    assert torch.equal(xv, source.images[val_index[:len(xv)]])
    assert torch.equal(yv, source.labels[val_index[:len(xv)]])
    assert sorted(train.dataset.indices) == train_index.tolist()
    assert train.dataset.dataset.augment and not val.dataset.dataset.augment
    assert len(lc.get_dataloaders_with_val(50, tiny_budget, val_size=50)[1].dataset) == 50
    with pytest.raises(ValueError, match="val_size must be below the 200 images"):
        lc.get_dataloaders_with_val(50, tiny_budget, val_size=200)


def test_augmentation_keeps_shape_and_changes_pixels():
    plain = lc.FashionMNIST(train=False, size=100, augment=False)
    aug = lc.FashionMNIST(train=False, size=100, augment=True)
    xs = torch.stack([aug[i][0] for i in range(100)])
    assert xs.shape == (100, 1, 28, 28)
    assert not torch.equal(xs, plain.images)
    assert torch.equal(aug.labels, plain.labels)


from hypothesis import given, settings, strategies as st


@settings(max_examples=25, deadline=None)
@given(per_class=st.integers(1, 50), seed=st.integers(0, 2**31 - 1))
def test_balanced_subset_property(per_class, seed):
    labels = torch.arange(300) % 5  # 60 of each of 5 classes
    index = balanced_subset(labels, 5 * per_class, seed)
    assert len(index.unique()) == len(index) == 5 * per_class
    assert torch.equal(torch.bincount(labels[index], minlength=5), torch.full((5,), per_class))


def test_entry_point_rejects_arguments(capsys):
    with pytest.raises(SystemExit) as exit_:
        lc.data.main(["--download-to", "/tmp"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --download-to" in capsys.readouterr().err
