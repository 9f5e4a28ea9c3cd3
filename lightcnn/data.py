"""Fashion-MNIST, offline first, checksummed, with deterministic class-balanced subsets.

Xiao, Rasul, Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
Learning Algorithms", arXiv 1708.07747. 70,000 grey 28x28 images of ten clothing
classes; a drop-in replacement for MNIST that is hard enough to separate models.

Where the four IDX files are looked for, in order:

1. an explicit ``root`` argument, or the ``LIGHTCNN_DATA`` environment variable;
2. the user cache, ``$XDG_CACHE_HOME/lightcnn/FashionMNIST/raw`` (``~/.cache/...``);
3. ``/usr/share/datasets/fashion-mnist`` (Debian's package ``dataset-fashion-mnist``);
4. torchvision's download into the user cache (which also completes a cache that an
   interrupted or rejected download left partial).

Every file is verified against the published MD5 of its decompressed content (the
checksums the dataset's loaders publish; recompressed copies such as Debian's differ in
the gzip header only). A missing, truncated or corrupted file raises
:class:`DatasetError` naming the file and the ways to fix it: a partial or damaged
dataset is never used, and a damaged download is deleted at once.

``python -m lightcnn.data`` (``make data``) makes sure the data is there before the tests
or the chapters run: it finds or downloads the four files, verifies them, prints where
they are and exits 0, or prints one message with the fixes and exits 1.

Taught in chapters/01_cnn_basics.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import hashlib
import os
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ._checks import (check_bool, check_instance, check_int, check_path, check_sequence,
                      check_tensor)
from .budget import Budget, get_budget

__all__ = [
    "CLASSES", "MEAN", "STD", "FILES", "DatasetError", "find_data_dir", "verify_file",
    "load_fashion_mnist", "balanced_subset", "validation_split", "FashionMNIST",
    "get_dataloaders", "get_dataloaders_with_val", "normalize", "user_cache_dir", "main",
]

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

# Mean and standard deviation of the 60,000 training images, pixels scaled to [0, 1]
# (checked against the data in tests/test_data.py).
MEAN = 0.2860
STD = 0.3530

# Published MD5 of each file's decompressed content.
FILES = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

_FIXES = (
    "Fix it in one of three ways:\n"
    "  1. install Debian's copy:  sudo apt-get install dataset-fashion-mnist\n"
    "  2. with internet access, let torchvision download a fresh copy into the user cache "
    "({cache}), after deleting any damaged file there: make data (or python -m "
    "lightcnn.data)\n"
    "  3. point LIGHTCNN_DATA (or root=...) at a folder holding the four verified files "
    "({names})"
)


class DatasetError(RuntimeError):
    """The dataset is missing, truncated or corrupted."""


def user_cache_dir() -> Path:
    """Folder where lightcnn caches data and trained models (``$LIGHTCNN_CACHE`` wins)."""
    if os.environ.get("LIGHTCNN_CACHE"):
        return Path(os.environ["LIGHTCNN_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "lightcnn"


def _data_cache_dir() -> Path:
    # torchvision's FashionMNIST(root=cache, download=True) writes here.
    return user_cache_dir() / "FashionMNIST" / "raw"


def _fixes() -> str:
    return _FIXES.format(cache=_data_cache_dir(), names=", ".join(f + ".gz" for f in FILES))


def _file_in(folder: Path, name: str) -> Path | None:
    for candidate in (folder / (name + ".gz"), folder / name):
        if candidate.is_file():
            return candidate
    return None


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DatasetError(f"{path} is truncated or not a valid gzip file ({err}).\n"
                           + _fixes()) from err


def verify_file(path: str | os.PathLike) -> bytes:
    """Read one IDX file (``.gz`` or raw), check its MD5, and return its bytes.

    Raises:
        DatasetError: unknown file name, unreadable file, or checksum mismatch.
    """
    check_path("path", path)
    path = Path(path)
    name = path.name.removesuffix(".gz")
    if name not in FILES:
        raise DatasetError(f"{path} is not one of the Fashion-MNIST files {sorted(FILES)}")
    data = _read_bytes(path)
    digest = hashlib.md5(data).hexdigest()
    if digest != FILES[name]:
        raise DatasetError(f"{path} is corrupted: MD5 of its content is {digest}, "
                           f"expected {FILES[name]}.\n" + _fixes())
    return data


def _complete(folder: Path) -> bool:
    """True if all four files are there; DatasetError if only some of them are."""
    present = {name: _file_in(folder, name) for name in FILES}
    found = [n for n, p in present.items() if p is not None]
    if not found:
        return False
    missing = [n for n, p in present.items() if p is None]
    if missing:
        raise DatasetError(f"{folder} holds a partial Fashion-MNIST: missing "
                           f"{', '.join(m + '.gz' for m in missing)}.\n" + _fixes())
    return True


def find_data_dir(root: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Return the first folder, in the documented search order, holding all four files.

    Args:
        root: explicit folder; when given (or ``LIGHTCNN_DATA`` is set) it must hold the
            files, and nothing else is searched.
        download: allow torchvision to download into the user cache as a last resort.

    Raises:
        DatasetError: an explicit folder lacks files, a folder holds a partial dataset, or
            nothing was found and the download failed or was not allowed.
    """
    check_path("root", root, none=True)
    check_bool("download", download)
    explicit = root if root is not None else os.environ.get("LIGHTCNN_DATA")
    if explicit:
        folder = Path(explicit).expanduser()
        if not _complete(folder):
            raise DatasetError(f"No Fashion-MNIST files in {folder} (given by "
                               f"{'root' if root is not None else 'LIGHTCNN_DATA'}).\n"
                               + _fixes())
        return folder
    try:
        if _complete(_data_cache_dir()):
            return _data_cache_dir()
    except DatasetError:
        # A partial cache is what an interrupted download, or a rejected file deleted
        # below, leaves behind; torchvision fetches only what is missing or damaged.
        if not download:
            raise
        return _download()
    if _complete(DEBIAN_DIR):
        return DEBIAN_DIR
    if not download:
        raise DatasetError("Fashion-MNIST was not found and download=False.\n" + _fixes())
    return _download()


def _delete_damaged(folder: Path) -> list[str]:
    """Verify every copy of the four files in ``folder``; delete the damaged ones.

    torchvision keeps both the ``.gz`` it fetched and its decompressed copy, and
    :func:`_file_in` reads whichever is there, so both are checked. Both copies of a
    damaged file go, so that torchvision (which skips a file whose decompressed copy
    exists) fetches it again next time. Returns one line per damaged copy.
    """
    damaged = []
    for name in FILES:
        copies = [p for p in (folder / (name + ".gz"), folder / name) if p.is_file()]
        problems = []
        for path in copies:
            try:
                verify_file(path)
            except DatasetError as err:
                problems.append(f"{path.name}: {str(err).splitlines()[0]}")
        if problems:
            damaged += problems
            for path in copies:
                path.unlink()
    return damaged


def _download() -> Path:
    """Let torchvision download into the user cache, then verify what it wrote.

    torchvision checks the MD5 of each ``.gz`` it fetches but not of a decompressed copy
    already there, so every file is verified here again; a damaged one is deleted and
    reported, never used.
    """
    failure: Exception | None = None
    try:
        from torchvision.datasets import FashionMNIST as _TVFashionMNIST

        _TVFashionMNIST(root=str(user_cache_dir()), train=True, download=True)
    except Exception as err:  # network errors come in many types
        failure = err
    cache = _data_cache_dir()
    damaged = _delete_damaged(cache) if cache.is_dir() else []
    deleted = ("\nDeleted the damaged files:\n  " + "\n  ".join(damaged)) if damaged else ""
    if failure is not None:
        raise DatasetError(f"Fashion-MNIST was not found locally and the download "
                           f"failed ({str(failure).strip()}).{deleted}\n"
                           + _fixes()) from failure
    if damaged:
        raise DatasetError(f"torchvision's download of Fashion-MNIST is corrupted."
                           f"{deleted}\n" + _fixes())
    try:
        complete = _complete(cache)
    except DatasetError as err:
        raise DatasetError(f"torchvision's download is incomplete: {err}") from err
    if not complete:
        raise DatasetError("torchvision's download left no files.\n" + _fixes())
    return cache


def _parse_idx(data: bytes, name: str) -> np.ndarray:
    # IDX: 2 zero bytes, a type code (0x08 = uint8), the number of dims, then big-endian
    # int32 sizes, then the values.
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise DatasetError(f"{name}: header says {shape}, found {array.size} values")
    return array.reshape(shape)


@lru_cache(maxsize=4)
def _load(folder: str) -> dict[str, torch.Tensor]:
    arrays = {}
    for name in FILES:
        path = _file_in(Path(folder), name)
        arrays[name] = torch.from_numpy(_parse_idx(verify_file(path), name).copy())
    return arrays


def load_fashion_mnist(train: bool = True, root: str | os.PathLike | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(images, labels)``: uint8 ``(N, 28, 28)`` and int64 ``(N,)`` tensors.

    ``N`` is 60,000 for ``train=True`` and 10,000 otherwise. Files are verified on the
    first load in a process and kept in memory afterwards.
    """
    if not isinstance(train, bool):
        raise TypeError(f"train must be a bool, got {type(train).__name__}")
    check_path("root", root, none=True)
    arrays = _load(str(find_data_dir(root).resolve()))
    prefix = "train" if train else "t10k"
    return arrays[f"{prefix}-images-idx3-ubyte"], arrays[f"{prefix}-labels-idx1-ubyte"].long()


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, 28, 28)`` -> float ``(N, 1, 28, 28)``: ``x = (pixel / 255 - MEAN) / STD``."""
    check_tensor("images", images)
    return ((images.float() / 255.0 - MEAN) / STD).unsqueeze(1)


def balanced_subset(labels: torch.Tensor, size: int | None, seed: int = 0) -> torch.Tensor:
    """Indices of a deterministic class-balanced subset: ``size // C`` images per class.

    Args:
        labels: ``(N,)`` integer labels.
        size: total subset size (``None``: every index, in order).
        seed: the subset depends on this seed only, not on global random state.

    Raises:
        ValueError: ``size`` is not positive, not a multiple-friendly size, or larger than
            the smallest class allows.
    """
    check_tensor("labels", labels, 1, integer=True)
    check_int("seed", seed, 0)
    if size is None:
        return torch.arange(len(labels))
    classes = torch.unique(labels)
    if not isinstance(size, int) or size < len(classes):
        raise ValueError(f"size must be an int >= the number of classes "
                         f"({len(classes)}), got {size!r}")
    per_class = size // len(classes)
    generator = torch.Generator().manual_seed(seed)
    picked = []
    for c in classes:
        members = torch.nonzero(labels == c).flatten()
        if per_class > len(members):
            raise ValueError(f"size={size} needs {per_class} images per class, but class "
                             f"{int(c)} has only {len(members)}")
        picked.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.sort(torch.cat(picked)).values


def validation_split(labels: torch.Tensor, val_size: int, seed: int = 0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train indices, validation indices)``: ``val_size`` class-balanced indices held
    out for validation (:func:`balanced_subset` with ``seed``, ``val_size // C`` per
    class), every other index for training. Both sorted; disjoint; together every index.

    Raises:
        ValueError: ``val_size`` leaves no image to train on, or needs more images of a
            class than there are.
    """
    check_tensor("labels", labels, 1, integer=True)
    check_int("val_size", val_size, 1)
    check_int("seed", seed, 0)
    if val_size >= len(labels):
        raise ValueError(f"val_size must be below the {len(labels)} images it is held out "
                         f"of, got {val_size}")
    val = balanced_subset(labels, val_size, seed)
    held_out = torch.zeros(len(labels), dtype=torch.bool)
    held_out[val] = True
    return torch.nonzero(~held_out).flatten(), val


class FashionMNIST(Dataset):
    """Normalized Fashion-MNIST tensors, optionally a balanced subset, optional augmentation.

    Augmentation (training only): random translation by up to ``pad`` pixels (zero-padded
    crop) and horizontal flip with probability 1/2; both keep the label.
    """

    def __init__(self, train: bool = True, size: int | None = None, augment: bool = False,
                 seed: int = 0, root: str | os.PathLike | None = None, pad: int = 2):
        check_bool("train", train)
        check_int("size", size, 1, none=True)
        check_bool("augment", augment)
        check_int("seed", seed, 0)
        check_path("root", root, none=True)
        check_int("pad", pad, 0)
        images, labels = load_fashion_mnist(train, root)
        index = balanced_subset(labels, size, seed)
        self.images = normalize(images[index])
        self.labels = labels[index]
        self.augment = augment
        self.pad = pad

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i]
        if self.augment:
            # Pad with the value of a black pixel after normalization, then crop back.
            p = self.pad
            if p:
                padded = torch.nn.functional.pad(x, (p, p, p, p), value=-MEAN / STD)
                dy, dx = torch.randint(0, 2 * p + 1, (2,)).tolist()
                x = padded[:, dy:dy + 28, dx:dx + 28]
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
        return x, self.labels[i]


def get_dataloaders(batch_size: int = 128, budget: Budget | None = None,
                    augment: bool = True, seed: int = 0,
                    root: str | os.PathLike | None = None,
                    eval_batch_size: int = 1000) -> tuple[DataLoader, DataLoader]:
    """Train and test loaders sized by the budget (class-balanced subsets at ``ci``).

    The training loader shuffles with its own seeded generator, so the order of batches
    depends on ``seed`` only.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    check_instance("budget", budget, Budget, none=True)
    check_bool("augment", augment)
    check_int("seed", seed, 0)
    check_path("root", root, none=True)
    check_int("eval_batch_size", eval_batch_size, 1)
    budget = budget or get_budget()
    train_set = FashionMNIST(True, budget.train_size, augment, seed, root)
    test_set = FashionMNIST(False, budget.test_size, False, seed, root)
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True,
                              generator=generator, num_workers=0)
    test_loader = DataLoader(test_set, batch_size=eval_batch_size, shuffle=False)
    return train_loader, test_loader


def get_dataloaders_with_val(batch_size: int = 128, budget: Budget | None = None,
                             val_size: int | None = None, augment: bool = True,
                             seed: int = 0, val_seed: int = 0,
                             root: str | os.PathLike | None = None,
                             eval_batch_size: int = 1000
                             ) -> tuple[DataLoader, DataLoader, DataLoader]:
    """Train, validation and test loaders: :func:`get_dataloaders`' training images split
    by :func:`validation_split` into ``val_size`` held out for validation (default
    ``budget.val_size``: 5,000 of the 60,000 at the full budget) and the rest to train on.

    The held-out images depend on ``val_seed`` alone (and, below the full budget, on the
    training subset ``seed`` picks), so every model and seed of a comparison is chosen on
    the same images; they are never augmented. The test loader is
    :func:`get_dataloaders`' own.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    check_instance("budget", budget, Budget, none=True)
    check_int("val_size", val_size, 1, none=True)
    check_bool("augment", augment)
    check_int("seed", seed, 0)
    check_int("val_seed", val_seed, 0)
    check_path("root", root, none=True)
    check_int("eval_batch_size", eval_batch_size, 1)
    budget = budget or get_budget()
    val_size = budget.val_size if val_size is None else val_size
    train_set = FashionMNIST(True, budget.train_size, augment, seed, root)
    train_index, val_index = validation_split(train_set.labels, val_size, val_seed)
    plain = copy.copy(train_set)       # the same image tensor, without augmentation
    plain.augment = False
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(Subset(train_set, train_index.tolist()), batch_size=batch_size,
                              shuffle=True, generator=generator, num_workers=0)
    val_loader = DataLoader(Subset(plain, val_index.tolist()), batch_size=eval_batch_size,
                            shuffle=False)
    test_set = FashionMNIST(False, budget.test_size, False, seed, root)
    test_loader = DataLoader(test_set, batch_size=eval_batch_size, shuffle=False)
    return train_loader, val_loader, test_loader


def _source(folder: Path, cached_before: bool) -> str:
    # Which step of find_data_dir's search order gave the folder, in the reader's words.
    if os.environ.get("LIGHTCNN_DATA"):
        return "the LIGHTCNN_DATA environment variable"
    if folder == DEBIAN_DIR:
        return "Debian's package dataset-fashion-mnist"
    if cached_before:
        return "the user cache"
    return "torchvision's download into the user cache"


def main(argv: list[str] | None = None) -> int:
    """Make sure the four files are there and verified: ``python -m lightcnn.data``.

    Run before the tests and the chapters (``make data``), so that a missing dataset
    stops them with one message instead of a failure in every test that loads data.

    Args:
        argv: command-line arguments (``None``: ``sys.argv[1:]``); there are no options.

    Returns:
        0 when the files are there and verified (the folder and its source are printed),
        1 when they are not (the reason and the three fixes are printed to stderr).
    """
    check_sequence("argv", argv, str, none=True)
    parser = argparse.ArgumentParser(
        prog="python -m lightcnn.data",
        description="Find Fashion-MNIST (LIGHTCNN_DATA, the user cache, Debian's "
                    "dataset-fashion-mnist) or download it into the user cache, verify "
                    "the MD5 of the four files and print where they are.")
    parser.parse_args(argv)
    cached_before = all(_file_in(_data_cache_dir(), name) for name in FILES)
    try:
        folder = find_data_dir(download=True)
        for name in FILES:
            verify_file(_file_in(folder, name))
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"Fashion-MNIST: all four files verified (MD5) in {folder}")
    print(f"  found through {_source(folder, cached_before)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
