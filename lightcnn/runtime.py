"""One call that makes a chapter reproducible: seeds, determinism, threads, allocator,
plot style.

Every chapter opens with ``lc.setup(seed=0)``. Same seed, same numbers: ``random``,
NumPy and torch are seeded, torch runs deterministic algorithms, and the thread count is
fixed (latency depends on it, and so does the order of floating-point sums). Same process
state, same timings: the C allocator is told to keep freed memory (``pin_allocator``), so
a forward pass does not pay for page faults that depend on what ran before it.

Same conditions, same batch-1 latency? Not yet: the stored runs time the baseline at
batch 1 at different levels in different cells of one chapter. :func:`fresh_process_latency`
times it in a new interpreter, :func:`drift_experiment` in this one after each kind of work
a chapter does (training with a DataLoader, ``torch.compile``, an ONNX Runtime session, a
large allocation), with the process's thread, child-process and memory counts beside each
median, to find which work leaves the process slower.

Taught in chapters/01_cnn_basics.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import ctypes.util
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._checks import check_bool, check_float, check_ints, check_module, check_path
from .budget import Budget, get_budget
from .models import create_model
from .profile import Latency, _latency, measure_latency

__all__ = ["DEFAULT_THREADS", "INT8_DOT_FLAGS", "cpu_name", "cpuinfo_fields", "int8_dot_product", "page_faults_per_pass", "pin_allocator", "seed_everything",
           "set_threads", "setup", "process_state", "fresh_process_latency", "DRIFT_STEPS",
           "drift_experiment", "cpu_speed_probe", "thread_levels"]

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
    check_path("cpuinfo", cpuinfo)
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


# x86 flags of an 8-bit dot-product instruction (VNNI's vpdpbusd, or AMX tiles): with one,
# int8 kernels accumulate u8 x s8 products in int32; without (AVX2 alone), oneDNN and ONNX
# Runtime use vpmaddubsw, whose pairwise sums of two u8 x s8 products saturate at int16
# (255 * 127 * 2 = 64,770 > 32,767), so int8 results can differ from exact integer math
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def int8_dot_product(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """The CPU's 8-bit dot-product instruction set (the first of :data:`INT8_DOT_FLAGS` in
    its flags), or ``None`` where it has none (x86 with AVX2 alone, or no ``/proc/cpuinfo``).

    Without one, x86 int8 kernels add pairs of u8 x s8 products in int16 and saturate, so
    an int8 model's outputs depend on the CPU: chapters print it beside int8 results.
    """
    check_path("cpuinfo", cpuinfo)
    flags = cpuinfo_fields(cpuinfo).get("flags", "").split()
    return next((f for f in INT8_DOT_FLAGS if f in flags), None)


def cpu_name(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The processor's model name, as the kernel reports it (``platform.processor()`` or
    ``"unknown"`` where there is no ``/proc/cpuinfo``).

    Latencies are only comparable on the same processor, so :func:`setup` prints it: a
    chapter's output then says which machine measured its numbers.
    """
    check_path("cpuinfo", cpuinfo)
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
    check_ints("input_shape", input_shape, 1)
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
    check_bool("plots", plots)
    check_bool("pin_allocator", pin_allocator)
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


def process_state() -> dict[str, int | float | None]:
    """What this process holds now: its OS threads (``/proc/self/task``), its live child
    processes (DataLoader workers, compile workers) and its resident memory in MiB
    (``VmRSS``); ``None`` where ``/proc`` does not say (not Linux)."""
    state: dict[str, int | float | None] = dict(os_threads=None, child_processes=None,
                                                 rss_mib=None)
    with contextlib.suppress(OSError):
        state["os_threads"] = len(os.listdir("/proc/self/task"))
    with contextlib.suppress(OSError):
        me, children = os.getpid(), 0
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    # pid (comm) state ppid ...: the name may hold spaces, so split after ')'
                    children += int(stat.rsplit(")", 1)[1].split()[1]) == me
        state["child_processes"] = children
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                state["rss_mib"] = int(line.split()[1]) / 1024
    return state


def _check_timing(batch_sizes: Sequence[int], threads: int, warmup: int, repeats: int) -> None:
    if (not isinstance(batch_sizes, (tuple, list)) or not batch_sizes
            or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1
                       for b in batch_sizes)):
        raise ValueError(f"batch_sizes must be a non-empty tuple of ints >= 1, got {batch_sizes!r}")
    for name, value, low in (("threads", threads, 1), ("warmup", warmup, 0),
                             ("repeats", repeats, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


# Run by fresh_process_latency in a new interpreter: set up as a chapter does, time, print
# one JSON line last (setup prints its own lines first).
_FRESH_PROBE = """
import json, sys
import lightcnn as lc
args = json.loads(sys.argv[1])
lc.setup(seed=0, threads=args["threads"], plots=False, pin_allocator=args["pin"])
model = lc.create_model(args["model"])
out = {}
for b in args["batch_sizes"]:
    lat = lc.measure_latency(model, b, threads=args["threads"], warmup=args["warmup"],
                             repeats=args["repeats"])
    out[b] = list(lat.times_ms)
print(json.dumps(dict(times=out, state=lc.runtime.process_state())))
"""


def fresh_process_latency(model: str = "baseline_cnn", batch_sizes: Sequence[int] = (1, 256),
                          threads: int = DEFAULT_THREADS, warmup: int = 10, repeats: int = 50,
                          pin: bool = True, env: dict[str, str] | None = None,
                          timeout: float = 600.0) -> dict[int, Latency]:
    """Latency of a registered model in a new Python process that has done nothing else.

    The child runs ``python -c``: ``lc.setup(seed=0, threads=threads,
    pin_allocator=pin)`` as a chapter's first cell does, ``lc.create_model(model)``
    (untrained: the weights' values do not change the time), then
    :func:`lightcnn.measure_latency` at each batch size. It is the reference a process
    that has already worked is compared with.

    Args:
        env: variables to set in the child on top of this process's environment (e.g.
            ``{"OMP_WAIT_POLICY": "PASSIVE"}``).
        timeout: seconds before the child is killed.

    Returns:
        batch size -> :class:`~lightcnn.profile.Latency` (its ``median_ms`` is the median).

    Raises:
        RuntimeError: the child failed; the message ends with its stderr.
    """
    return _fresh_process(model, batch_sizes, threads, warmup, repeats, pin, env, timeout)[0]


def _fresh_process(model: str, batch_sizes: Sequence[int], threads: int, warmup: int,
                   repeats: int, pin: bool, env: dict[str, str] | None,
                   timeout: float) -> tuple[dict[int, Latency], dict]:
    """:func:`fresh_process_latency`, and the child's :func:`process_state` after timing."""
    _check_timing(batch_sizes, threads, warmup, repeats)
    if not isinstance(model, str) or not model:
        raise ValueError(f"model must be a registered model's name, got {model!r}")
    if env is not None and not (isinstance(env, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
        raise ValueError(f"env must be a dict of str -> str, got {env!r}")
    args = dict(model=model, batch_sizes=list(batch_sizes), threads=threads, warmup=warmup,
                repeats=repeats, pin=bool(pin))
    done = subprocess.run([sys.executable, "-c", _FRESH_PROBE, json.dumps(args)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise RuntimeError(f"the fresh process exited with {done.returncode}:\n"
                           f"{done.stderr[-4000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return ({int(b): _latency(t, int(b), threads) for b, t in out["times"].items()},
            out["state"])


def _work_train(keep: list, model: nn.Module, train_size: int, num_workers: int) -> None:
    """A chapter's training loop in small: lc.fit for one epoch of ``train_size`` augmented
    images in batches of 64, through a DataLoader."""
    from torch.utils.data import DataLoader

    from .data import FashionMNIST
    from .train import fit

    train_set = FashionMNIST(True, train_size, augment=True, seed=0)
    loader = DataLoader(train_set, batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(0), num_workers=num_workers,
                        persistent_workers=num_workers > 0)
    student = copy.deepcopy(model)
    fit(student, loader, 1, progress=False)
    keep += [loader, student]         # a chapter keeps its loaders and models


def _work_compile(keep: list, model: nn.Module, batch_sizes: Sequence[int]) -> None:
    """A copy of the model compiled by Inductor (as chapters 05, 06, 08, 09 do), called
    once at each batch size so that it compiles."""
    from .int8 import compile_cpu

    compiled = compile_cpu(copy.deepcopy(model))
    with torch.inference_mode():
        for b in batch_sizes:
            compiled(torch.randn(b, 1, 28, 28))
    keep.append(compiled)


def _work_onnxruntime(keep: list, model: nn.Module, threads: int,
                      batch_sizes: Sequence[int]) -> None:
    """The model exported to ONNX and run by an ONNX Runtime session (as chapter 09
    does), 20 calls at each batch size; the session stays open."""
    from .deploy import OnnxModel, export_onnx

    with tempfile.TemporaryDirectory(prefix="lightcnn-drift-") as folder:
        # ORT reads the whole file when the session opens: the file may go afterwards
        path = export_onnx(copy.deepcopy(model), Path(folder) / "model.onnx",
                           torch.randn(2, 1, 28, 28))
        session = OnnxModel(path, threads)
    with torch.inference_mode():
        for b in batch_sizes:
            x = torch.randn(b, 1, 28, 28)
            for _ in range(20):
                session(x)
    keep.append(session)


def _work_allocate(keep: list, alloc_mib: int) -> None:
    """``alloc_mib`` MiB written once and kept (memory pressure, and a large heap)."""
    block = torch.empty(alloc_mib * 2**20 // 4)
    block.fill_(1.0)                  # touch every page
    keep.append(block)


# The kinds of work drift_experiment runs, in this order by default.
DRIFT_STEPS = ("train", "train with 2 loader workers", "compile", "onnxruntime", "allocate")


def _print_row(step: str, lat: dict[int, Latency], ref: dict[int, Latency] | None,
               state: dict, batch_sizes: Sequence[int]) -> None:
    cells = []
    for b in batch_sizes:
        ratio = f"{lat[b].median_ms / ref[b].median_ms:5.2f}x" if ref else "     "
        cells.append(f"{lat[b].median_ms:9.3f} {lat[b].iqr_ms:7.3f} {ratio}")
    extra = " ".join("    -" if state[k] is None else f"{state[k]:5.0f}"
                     for k in ("os_threads", "child_processes", "rss_mib"))
    print(f"{step:30s} " + "  ".join(cells) + f"  {extra}", flush=True)


def drift_experiment(steps: Sequence[str] = DRIFT_STEPS, model: str = "baseline_cnn",
                     batch_sizes: Sequence[int] = (1, 256), threads: int = DEFAULT_THREADS,
                     warmup: int = 10, repeats: int = 50, pin: bool = True,
                     train_size: int = 512, alloc_mib: int = 1024,
                     fresh_again: bool = True) -> list[dict]:
    """Time one model in this process after each kind of work a chapter does, against
    the same model in a fresh process, and print a row per step as it is measured.

    Rows, in order: ``fresh process`` (:func:`fresh_process_latency`), ``this process,
    start``, then one row after each of ``steps`` (each step's work is done in this
    process and what it made is kept alive, as a chapter keeps its variables):

    - ``train``: lc.fit for one epoch on ``train_size`` images, DataLoader without
      workers (as :func:`lightcnn.get_dataloaders` makes it);
    - ``train with 2 loader workers``: the same with 2 persistent DataLoader workers;
    - ``compile``: ``torch.compile`` (Inductor, :func:`lightcnn.int8.compile_cpu`) of a
      copy, compiled at each batch size;
    - ``onnxruntime``: an ONNX export run by a :class:`lightcnn.deploy.OnnxModel`
      session, which stays open;
    - ``allocate``: ``alloc_mib`` MiB written and kept;

    and, with ``fresh_again``, ``fresh process, again``: the reference once more, so the
    table shows how far the machine itself drifted meanwhile. Each row prints, per batch
    size, the median and IQR in ms and the median over the first fresh process's, then
    the process's OS threads, child processes and resident MiB (:func:`process_state`;
    on a fresh-process row, the child's, after its timing).
    Work is done with deterministic algorithms on and ``threads`` threads, as after
    ``lc.setup``; with ``pin`` the allocator is pinned first (:func:`pin_allocator`), as
    ``lc.setup`` does in the chapters and in the fresh process.

    On a machine with nothing else running (the CPU shared with another job measures
    that job), e.g.::

        python -c "import lightcnn as lc; lc.runtime.drift_experiment()"
        OMP_WAIT_POLICY=PASSIVE python -c "import lightcnn as lc; lc.runtime.drift_experiment()"

    Returns:
        One dict per row: ``step``, ``latency`` (batch size -> Latency), ``vs_fresh``
        (batch size -> median / the first fresh median) and :func:`process_state`'s keys.
    """
    _check_timing(batch_sizes, threads, warmup, repeats)
    if isinstance(steps, str) or not all(step in DRIFT_STEPS for step in steps):
        raise ValueError(f"steps must be a sequence of {list(DRIFT_STEPS)}, got {steps!r}")
    for name, value in (("train_size", train_size), ("alloc_mib", alloc_mib)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    rows: list[dict] = []

    def record(step: str, latency: dict[int, Latency], state: dict | None = None) -> None:
        ref = rows[0]["latency"] if rows else None
        state = state or process_state()
        rows.append(dict(step=step, latency=latency,
                         vs_fresh={b: latency[b].median_ms / (ref or latency)[b].median_ms
                                   for b in batch_sizes}, **state))
        _print_row(step, latency, ref, state, batch_sizes)

    def timed(net: nn.Module) -> dict[int, Latency]:
        return {b: measure_latency(net, b, threads=threads, warmup=warmup, repeats=repeats)
                for b in batch_sizes}

    print(f"{model} latency after each kind of work, {threads} threads, {repeats} runs; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
          f"KMP_BLOCKTIME={os.environ.get('KMP_BLOCKTIME', 'unset')}")
    print(f"{'step':30s} " + "  ".join(f"{f'ms b={b}':>9s} {'IQR':>7s} {'/fresh':>6s}"
                                        for b in batch_sizes)
          + f"  {'thr':>5s} {'child':>5s} {'MiB':>5s}")
    record("fresh process", *_fresh_process(model, batch_sizes, threads, warmup, repeats, pin,
                                            None, 600.0))
    if pin:
        pin_allocator()
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    keep: list = []
    try:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True)
        seed_everything(0)
        net = create_model(model)
        record("this process, start", timed(net))
        work = {
            "train": lambda: _work_train(keep, net, train_size, 0),
            "train with 2 loader workers": lambda: _work_train(keep, net, train_size, 2),
            "compile": lambda: _work_compile(keep, net, batch_sizes),
            "onnxruntime": lambda: _work_onnxruntime(keep, net, threads, batch_sizes),
            "allocate": lambda: _work_allocate(keep, alloc_mib),
        }
        for step in steps:
            work[step]()
            record(f"after {step}", timed(net))
        if fresh_again:
            record("fresh process, again", *_fresh_process(model, batch_sizes, threads, warmup,
                                                           repeats, pin, None, 600.0))
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_deterministic)
        del keep
    return rows


def _spin(iterations: int) -> float:
    """Milliseconds of a fixed pure-Python loop: the same instructions every time."""
    start = time.perf_counter()
    total = 0
    for i in range(iterations):
        total += i & 7
    return (time.perf_counter() - start) * 1e3


def cpu_speed_probe(rounds: int = 40, iterations: int = 200_000, pause_s: float = 0.05
                    ) -> dict[int, list[float]]:
    """Time the same single-threaded loop on each logical CPU in turn, ``rounds`` times.

    Nothing in the loop depends on torch, the process's history or memory: if its time
    still changes from one round to the next, the CPU itself runs at different speeds
    (on a virtual machine: the host's other work on the same physical core, or its
    clock), and every latency measured on it inherits that.

    Returns:
        logical CPU -> the loop's milliseconds, one per round (this process is pinned to
        each CPU for its turn, then released to all of them).
    """
    for name, value in (("rounds", rounds), ("iterations", iterations)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if isinstance(pause_s, bool) or not isinstance(pause_s, (int, float)) or not pause_s >= 0:
        raise ValueError(f"pause_s must be a number >= 0, got {pause_s!r}")
    if not hasattr(os, "sched_setaffinity"):
        raise RuntimeError("cpu_speed_probe needs os.sched_setaffinity (Linux)")
    cpus = sorted(os.sched_getaffinity(0))
    times: dict[int, list[float]] = {cpu: [] for cpu in cpus}
    try:
        for _ in range(rounds):
            for cpu in cpus:
                os.sched_setaffinity(0, {cpu})
                time.sleep(pause_s)
                times[cpu].append(_spin(iterations))
    finally:
        os.sched_setaffinity(0, set(cpus))
    return times


def thread_levels(model: nn.Module, rounds: int = 12, batch_size: int = 1,
                  warmup: int = 10, repeats: int = 50, pause_s: float = 1.0
                  ) -> list[tuple[float, float]]:
    """``rounds`` pairs of medians of ``model`` at 2 threads and at 1 thread, each pair
    measured back to back after a pause: when the 2-thread median jumps between levels
    while the 1-thread one holds, the second thread's CPU is what changes speed."""
    check_module("model", model)
    check_float("pause_s", pause_s, 0)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}")
    pairs = []
    for _ in range(rounds):
        time.sleep(pause_s)
        two = measure_latency(model, batch_size, threads=2, warmup=warmup, repeats=repeats)
        one = measure_latency(model, batch_size, threads=1, warmup=warmup, repeats=repeats)
        pairs.append((two.median_ms, one.median_ms))
    return pairs
