import random

import numpy as np
import pytest
import torch

import lightcnn as lc


def test_setup_seeds_everything_and_fixes_threads(monkeypatch):
    monkeypatch.setenv("LIGHTCNN_BUDGET", "ci")
    budget = lc.setup(seed=3, threads=1, plots=False)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    lc.setup(seed=3, threads=1, plots=False)
    b = (random.random(), np.random.rand(), torch.rand(1).item())
    assert a == b and budget.name == "ci"
    assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)


def test_bad_seed_and_threads():
    with pytest.raises(ValueError, match="seed"):
        lc.seed_everything(-1)
    with pytest.raises(ValueError, match="threads"):
        lc.set_threads(0)
