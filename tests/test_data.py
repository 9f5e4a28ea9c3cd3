import gzip
import hashlib

import pytest
import torch

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
