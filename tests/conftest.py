"""Shared fixtures: a tiny budget, an isolated cache, temporary copies of the data."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import lightcnn as lc
from lightcnn.budget import Budget


@pytest.fixture(autouse=True)
def _deterministic():
    # One thread: tests check correctness, not speed, and small tensors only wait on a
    # second OpenMP thread when the CPU is shared (by nbval or a training run).
    lc.seed_everything(0)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _empty_zoo(tmp_path_factory, monkeypatch):
    # Tests train their own tiny models: the shipped zoo (zoo/) would answer get_trained
    # with the book's converged ones. Tests of the shipped zoo ask for `shipped_zoo`.
    monkeypatch.setenv("LIGHTCNN_ZOO", str(tmp_path_factory.mktemp("empty-zoo")))


@pytest.fixture
def shipped_zoo(monkeypatch) -> Path:
    """The repository's zoo/ folder, the one the chapters load."""
    monkeypatch.delenv("LIGHTCNN_ZOO", raising=False)
    return lc.weights.zoo_dir()


@pytest.fixture(scope="session")   # a frozen dataclass: sharing it is safe
def tiny_budget() -> Budget:
    return Budget("ci", train_size=200, test_size=100, epochs=1, finetune_epochs=1,
                  proxy_epochs=1, survey_epochs=1, overfit_train_size=100,
                  overfit_epochs=1, search_train_size=100, search_final_epochs=1, val_size=100, calib_size=16, latency_warmup=1, latency_repeats=3)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Where the data is (LIGHTCNN_DATA, the user cache or Debian's copy; make data puts it
    there), found once per session, before any test moves the cache."""
    try:
        return lc.find_data_dir(download=False)
    except lc.DatasetError as err:
        pytest.fail(f"{err}\nRun `make data` first.", pytrace=False)


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch, data_dir) -> Path:
    """A fresh user cache, so tests never read or write the real one.

    The real data stands in for Debian's copy (the next place searched after the cache),
    so code that loads data in an empty cache finds it instead of downloading, also on a
    machine where the data is only in the real user cache.
    """
    cache = tmp_path / "cache"
    monkeypatch.setenv("LIGHTCNN_CACHE", str(cache))
    monkeypatch.delenv("LIGHTCNN_DATA", raising=False)
    monkeypatch.setattr(lc.data, "DEBIAN_DIR", data_dir)
    return cache


@pytest.fixture
def data_copy(tmp_path, data_dir) -> Path:
    """A temporary copy of the four verified files, safe to damage."""
    target = tmp_path / "fmnist"
    target.mkdir()
    for name in lc.data.FILES:
        src = lc.data._file_in(data_dir, name)
        shutil.copy(src, target / src.name)
    return target
