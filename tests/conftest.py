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


@pytest.fixture
def tiny_budget() -> Budget:
    return Budget("ci", train_size=200, test_size=100, epochs=1, finetune_epochs=1,
                  proxy_epochs=1, survey_epochs=1, overfit_train_size=100,
                  overfit_epochs=1, search_train_size=100, search_final_epochs=1, val_size=100, calib_size=16, latency_warmup=1, latency_repeats=3)


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """A fresh user cache, so tests never read or write the real one."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("LIGHTCNN_CACHE", str(cache))
    monkeypatch.delenv("LIGHTCNN_DATA", raising=False)
    return cache


@pytest.fixture
def data_copy(tmp_path) -> Path:
    """A temporary copy of the four verified files, safe to damage."""
    source = lc.find_data_dir(download=False)
    target = tmp_path / "fmnist"
    target.mkdir()
    for name in lc.data.FILES:
        src = lc.data._file_in(source, name)
        shutil.copy(src, target / src.name)
    return target
