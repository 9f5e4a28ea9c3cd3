"""One call that makes a chapter reproducible: seeds, determinism, threads, plot style.

Every chapter opens with ``lc.setup(seed=0)``. Same seed, same numbers: ``random``,
NumPy and torch are seeded, torch runs deterministic algorithms, and the thread count is
fixed (latency depends on it, and so does the order of floating-point sums).

Taught in chapters/01_cnn_basics.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from .budget import Budget, get_budget

__all__ = ["DEFAULT_THREADS", "seed_everything", "set_threads", "setup"]

# The book's machine has 2 cores; every published latency is measured with 2 threads.
DEFAULT_THREADS = 2


def seed_everything(seed: int) -> None:
    """Seed ``random``, NumPy and torch with ``seed``."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads(threads: int) -> None:
    """Fix torch's intra-op thread count (inter-op threads stay at torch's default)."""
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    torch.set_num_threads(threads)


def setup(seed: int = 0, threads: int = DEFAULT_THREADS, plots: bool = True) -> Budget:
    """Seed everything, turn on deterministic algorithms, fix threads, set the plot style.

    Returns:
        The budget read from ``LIGHTCNN_BUDGET`` (printed, so every notebook shows it).
    """
    seed_everything(seed)
    set_threads(threads)
    torch.use_deterministic_algorithms(True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if plots:
        from .plotting import set_style

        set_style()
    budget = get_budget()
    print(f"lightcnn: seed={seed}, threads={threads}, budget={budget.name}, "
          f"torch {torch.__version__.split('+')[0]}")
    return budget
