"""One call that makes a chapter reproducible: seeds, determinism, threads, allocator,
plot style.

Every chapter opens with ``lc.setup(seed=0)``. Same seed, same numbers: ``random``,
NumPy and torch are seeded, torch runs deterministic algorithms, and the thread count is
fixed (latency depends on it, and so does the order of floating-point sums). Same process
state, same timings: the C allocator is told to keep freed memory (``pin_allocator``), so
a forward pass does not pay for page faults that depend on what ran before it.

Taught in chapters/01_cnn_basics.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import random

import numpy as np
import torch
from torch import nn

from .budget import Budget, get_budget

__all__ = ["DEFAULT_THREADS", "cpu_name", "cpuinfo_fields", "page_faults_per_pass", "pin_allocator", "seed_everything",
           "set_threads", "setup"]

# The book's machine has 2 cores; every published latency is measured with 2 threads.
DEFAULT_THREADS = 2

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


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


def cpuinfo_fields(cpuinfo: str = "/proc/cpuinfo") -> dict[str, str]:
    """The first processor's fields in ``/proc/cpuinfo`` (``"model name"``, ``"cpu MHz"``,
    ``"flags"``, ...), whitespace collapsed; empty where the file cannot be read."""
    fields: dict[str, str] = {}
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), " ".join(value.split())
                if key and value and key not in fields:
                    fields[key] = value
    except OSError:
        pass
    return fields


def cpu_name(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The processor's model name, as the kernel reports it (``platform.processor()`` or
    ``"unknown"`` where there is no ``/proc/cpuinfo``).

    Latencies are only comparable on the same processor, so :func:`setup` prints it: a
    chapter's output then says which machine measured its numbers.
    """
    return cpuinfo_fields(cpuinfo).get("model name") or platform.processor() or "unknown"


def pin_allocator() -> bool:
    """Make the C allocator keep the memory torch frees, so large buffers are reused.

    glibc's malloc hands a block above its mmap threshold (128 KiB, adapting up to 32 MiB)
    to the kernel as a fresh mapping and unmaps it on ``free``; it also returns the heap's
    free top to the kernel once it exceeds 128 KiB. At batch 256 a depthwise network's
    activations are tens of MiB per layer, so every forward pass maps them anew and the
    kernel zero-fills each 4 KiB page on first touch: about 250,000 page faults per pass
    for MobileNetV2 at width 0.25 on the book's machine, and a latency that depends on
    what the process allocated before (a process that has just trained a model has a large
    heap with free blocks to reuse; a fresh one has not). ``M_MMAP_MAX = 0`` serves every
    block from the heap and ``M_TRIM_THRESHOLD = 2**31 - 1`` keeps freed blocks there for
    the next pass, which is what a caching allocator does. The process keeps its peak
    memory; nothing is computed differently.

    Returns:
        True when both settings took effect (Linux with glibc); False elsewhere (macOS,
        Windows, musl), where the system allocator is left as it is.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    # mallopt returns 1 on success; both calls run, whatever the first returns
    results = [libc.mallopt(_M_MMAP_MAX, 0), libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)]
    return all(r == 1 for r in results)


def page_faults_per_pass(model: nn.Module, batch_size: int = 256,
                         input_shape: tuple[int, ...] = (1, 28, 28), warmup: int = 3,
                         repeats: int = 10) -> float:
    """Minor page faults per forward pass: pages the kernel mapped in and zero-filled.

    ``(faults after repeats - faults before) / repeats``, counted by ``getrusage`` for
    the whole process, after ``warmup`` passes, in eval and inference mode on random
    input of shape ``(batch_size, *input_shape)``. Close to 0 when the allocator reuses
    the memory of the previous pass (:func:`pin_allocator`); about one per 4 KiB of
    activations when every large buffer is a fresh mapping.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: ``batch_size`` or ``repeats`` below 1, or ``warmup`` below 0.
        RuntimeError: the platform has no ``resource`` module (Windows).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, value, low in (("batch_size", batch_size, 1), ("repeats", repeats, 1),
                             ("warmup", warmup, 0)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    try:
        import resource
    except ImportError as error:
        raise RuntimeError("page fault counts need the Unix resource module") from error
    model.eval()
    x = torch.randn(batch_size, *input_shape)
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(repeats):
            model(x)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    return (after - before) / repeats


def setup(seed: int = 0, threads: int = DEFAULT_THREADS, plots: bool = True,
          pin_allocator: bool = True) -> Budget:
    """Seed everything, turn on deterministic algorithms, fix threads, pin the allocator,
    set the plot style.

    Args:
        seed: seeds ``random``, NumPy and torch.
        threads: torch's intra-op thread count.
        plots: set the book's matplotlib style.
        pin_allocator: keep freed memory in the process (:func:`pin_allocator`), so that
            latencies do not depend on the allocator's history.

    Returns:
        The budget read from ``LIGHTCNN_BUDGET`` (printed, so every notebook shows it).
    """
    seed_everything(seed)
    set_threads(threads)
    # the module-level function, looked up at call time (the argument shadows its name)
    pinned = pin_allocator and globals()["pin_allocator"]()
    torch.use_deterministic_algorithms(True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if plots:
        from .plotting import set_style

        set_style()
    budget = get_budget()
    print(f"lightcnn: seed={seed}, threads={threads}, budget={budget.name}, "
          f"torch {torch.__version__.split('+')[0]}, allocator {'pinned' if pinned else 'system default'}")
    print(f"cpu: {cpu_name()}, {os.cpu_count()} logical cores")
    return budget
