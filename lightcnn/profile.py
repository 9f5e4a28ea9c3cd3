"""What a model costs: parameters, MACs, bytes on disk, and measured CPU latency.

Counting follows the papers: a convolution with a K x K kernel, C_in input and C_out
output channels, ``groups`` groups and an H_out x W_out output costs

    MACs = K * K * (C_in / groups) * C_out * H_out * W_out

multiply-accumulates (what papers and torchvision call "FLOPs"; FLOPs = 2 x MACs). MACs
are counted by ``torch.utils.flop_counter`` (convolutions and matrix products only) and
can be cross-checked against thop (which also counts batch norm and pooling).

Latency is measured, never estimated: warm-up passes, then ``repeats`` timed forward
passes in inference mode with a fixed thread count; the median and the interquartile
range (IQR) are reported, at batch 1 (a single request) and batch 256 (throughput).

Taught in chapters/01_cnn_basics.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import io
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "INPUT_SHAPE", "count_params", "count_nonzero_params", "count_macs", "count_macs_by_module",
    "count_macs_thop", "model_size_bytes", "Latency", "measure_latency", "time_interleaved",
    "compare_latency", "profile_model", "profile_models",
    "Table", "compare", "pareto_front", "OP_CATEGORIES", "time_by_op_category",
]

# One Fashion-MNIST image: (channels, height, width).
INPUT_SHAPE = (1, 28, 28)


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def _effective_tensors(model: nn.Module):
    """Yield each weight as the forward pass sees it (``w_orig * mask`` when pruned)."""
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if name.endswith("_orig") and hasattr(module, name[:-5] + "_mask"):
                yield getattr(module, name[:-5])  # torch.nn.utils.prune's masked weight
            else:
                yield param


def count_params(model: nn.Module) -> int:
    """Number of parameters (a pruning mask's weight counts once, the mask not at all)."""
    _check_model(model)
    return sum(t.numel() for t in _effective_tensors(model))


def count_nonzero_params(model: nn.Module) -> int:
    """Number of parameters that are not exactly zero (after any pruning mask)."""
    _check_model(model)
    return sum(int(torch.count_nonzero(t.detach())) for t in _effective_tensors(model))


def _check_shape(input_shape: tuple[int, ...]) -> None:
    if not (isinstance(input_shape, (tuple, list)) and len(input_shape) == 3
            and all(isinstance(s, int) and s > 0 for s in input_shape)):
        raise ValueError(f"input_shape must be (channels, height, width) of positive ints, "
                         f"got {input_shape!r}")


def _flop_counter(model: nn.Module, input_shape: tuple[int, ...]) -> FlopCounterMode:
    _check_model(model)
    _check_shape(input_shape)
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        model.train(was_training)
    return counter


def count_macs(model: nn.Module, input_shape: tuple[int, ...] = INPUT_SHAPE) -> int:
    """MACs of one forward pass at batch 1, from ``torch.utils.flop_counter``.

    The counter sees convolutions and matrix products (``2 * MACs`` FLOPs each); element-wise
    ops, batch norm and pooling are not counted, as in the papers' tables.
    """
    return _flop_counter(model, input_shape).get_total_flops() // 2


def count_macs_by_module(model: nn.Module, input_shape: tuple[int, ...] = INPUT_SHAPE
                         ) -> dict[str, int]:
    """MACs per leaf module name (conv and linear layers only), at batch 1."""
    counts = _flop_counter(model, input_shape).get_flop_counts()
    leaves = {name for name, m in model.named_modules() if not list(m.children())}
    out = {}
    for name, per_op in counts.items():
        # flop_counter names modules by their path with the model's class as prefix.
        short = name.split(".", 1)[1] if "." in name else name
        if short in leaves:
            out[short] = sum(per_op.values()) // 2
    return out


def count_macs_thop(model: nn.Module, input_shape: tuple[int, ...] = INPUT_SHAPE) -> int:
    """MACs at batch 1 as counted by thop (adds batch norm, pooling and activations where
    it has a rule; its conv and linear counts match :func:`count_macs`)."""
    _check_model(model)
    _check_shape(input_shape)
    from thop import profile as thop_profile  # optional dependency, imported when used

    clone = copy.deepcopy(model).eval()  # thop attaches buffers to the modules it visits
    with torch.no_grad():
        macs, _ = thop_profile(clone, inputs=(torch.zeros(1, *input_shape),), verbose=False)
    return int(macs)


def model_size_bytes(model: nn.Module, compressed: bool = False) -> int:
    """Bytes of ``torch.save(model.state_dict())``; with ``compressed``, after gzip -9."""
    _check_model(model)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    data = buffer.getvalue()
    return len(gzip.compress(data, compresslevel=9, mtime=0)) if compressed else len(data)


@contextlib.contextmanager
def _deployment_mode():
    """Time the model as it would be deployed: without ``lc.setup``'s deterministic mode.

    Deterministic mode is for reproducible *training*; it also makes torch fill every
    new tensor (``fill_uninitialized_memory``), work a deployed model never does.
    """
    previous = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=warn_only)


def _check_run(model: nn.Module, input_shape: tuple[int, ...], batch_size: int, threads: int,
               warmup: int, repeats: int) -> None:
    _check_model(model)
    _check_shape(input_shape)
    for arg, value, low in (("batch_size", batch_size, 1), ("threads", threads, 1),
                            ("warmup", warmup, 0), ("repeats", repeats, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{arg} must be an int >= {low}, got {value!r}")


@contextlib.contextmanager
def _inference(model: nn.Module, threads: int):
    """Run ``model`` as deployed: eval and inference mode, deterministic mode off, a fixed
    thread count; the model's mode and the thread count are restored afterwards."""
    previous = torch.get_num_threads()
    was_training = model.training
    torch.set_num_threads(threads)
    model.eval()
    try:
        with torch.inference_mode(), _deployment_mode():
            yield
    finally:
        torch.set_num_threads(previous)
        model.train(was_training)


@contextlib.contextmanager
def _quiet_native_stderr():
    """Silence the profiler's native log lines (written to file descriptor 2, not to
    ``sys.stderr``, so notebooks would store them as output)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@dataclass(frozen=True)
class Latency:
    """Latency of one forward pass, in milliseconds, over ``repeats`` timed runs."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    batch_size: int
    threads: int
    repeats: int
    times_ms: tuple[float, ...] = ()

    @property
    def iqr_ms(self) -> float:
        """Interquartile range: the spread of the middle half of the runs."""
        return self.q3_ms - self.q1_ms

    def __str__(self) -> str:
        return (f"{self.median_ms:.3f} ms (IQR {self.iqr_ms:.3f} ms) at batch "
                f"{self.batch_size}, {self.threads} threads, {self.repeats} runs")


def measure_latency(model: nn.Module, batch_size: int = 1, input_shape: tuple[int, ...] = INPUT_SHAPE,
                    threads: int = 2, warmup: int = 10, repeats: int = 50,
                    example: torch.Tensor | None = None) -> Latency:
    """Median wall time of ``model(x)`` for a ``(batch_size, *input_shape)`` input.

    The model runs in eval and inference mode, with deterministic algorithms off (as
    deployed); ``warmup`` untimed runs let allocators, caches and lazy initialisation
    settle; the thread count and the deterministic setting are restored afterwards.

    Args:
        example: an input to use instead of random data (its batch size wins).
    """
    _check_run(model, input_shape, batch_size, threads, warmup, repeats)
    x = example if example is not None else torch.randn(batch_size, *input_shape)
    with _inference(model, threads):
        return time_interleaved({"model": lambda: model(x)}, threads, warmup, repeats,
                                len(x))["model"]


def _latency(times: list[float], batch_size: int, threads: int) -> Latency:
    if len(times) >= 2:
        q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    else:
        q1 = q3 = times[0]
    return Latency(statistics.median(times), q1, q3, batch_size, threads, len(times),
                   tuple(times))


def time_interleaved(fns: dict[str, Callable[[], object]], threads: int = 2, warmup: int = 10,
                     repeats: int = 50, batch_size: int = 1) -> dict[str, Latency]:
    """Time several calls side by side: each round runs every call once, round-robin.

    A ratio of two medians measured one after the other also measures what changed in
    between (the other core's load, the clock, the allocator); interleaving spreads any
    such drift over all calls alike. The order is rotated every round so no call always
    runs right after the same other one.

    Args:
        fns: name -> a call without arguments (e.g. ``lambda: model(x)``).
        batch_size: recorded in each :class:`Latency` (the calls choose their inputs).
    """
    if not isinstance(fns, dict) or not fns or not all(callable(f) for f in fns.values()):
        raise ValueError("fns must be a non-empty dict of name -> callable")
    for arg, value, low in (("threads", threads, 1), ("warmup", warmup, 0),
                            ("repeats", repeats, 1), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{arg} must be an int >= {low}, got {value!r}")
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(warmup):
            for n in names:
                fns[n]()
        for r in range(repeats):
            for n in names[r % len(names):] + names[:r % len(names)]:
                start = time.perf_counter()
                fns[n]()
                times[n].append((time.perf_counter() - start) * 1000.0)
    finally:
        torch.set_num_threads(previous)
    return {n: _latency(times[n], batch_size, threads) for n in names}


def compare_latency(models: dict[str, nn.Module], batch_size: int = 1,
                    input_shape: tuple[int, ...] = INPUT_SHAPE, threads: int = 2,
                    warmup: int = 10, repeats: int = 50,
                    example: torch.Tensor | None = None) -> dict[str, Latency]:
    """Latency of several models measured round-robin on one input (see
    :func:`time_interleaved`), each as deployed (eval, inference mode, deterministic mode
    off): every "x times faster" in the book is a ratio of medians taken this way.

    Args:
        models: name -> model (a compiled or packed model too).
        example: an input to use instead of random data (its batch size wins).
    """
    if not isinstance(models, dict) or not models:
        raise ValueError("models must be a non-empty dict of name -> nn.Module")
    for model in models.values():
        _check_run(model, input_shape, batch_size, threads, warmup, repeats)
    x = example if example is not None else torch.randn(batch_size, *input_shape)
    with contextlib.ExitStack() as stack:
        for model in models.values():
            stack.enter_context(_inference(model, threads))
        fns = {name: (lambda m=model: m(x)) for name, model in models.items()}
        return time_interleaved(fns, threads, warmup, repeats, len(x))


def profile_model(model: nn.Module, name: str, accuracy: float | None = None,
                  baseline: str | None = None, budget: str | None = None,
                  input_shape: tuple[int, ...] = INPUT_SHAPE, batch_sizes: tuple[int, ...] = (1, 256),
                  threads: int = 2, warmup: int = 10, repeats: int = 50,
                  macs: int | None = None, size_bytes: int | None = None,
                  size_gzip_bytes: int | None = None) -> dict:
    """One row of a comparison table: accuracy, counts, bytes and latency of ``model``.

    To compare several models, use :func:`profile_models`: it times them side by side,
    so their latency ratios do not also measure what changed between two measurements.

    Args:
        name: the row's name; ``baseline`` names the row it is compared with.
        accuracy: fraction of test images classified correctly (measured by the caller).
        budget: the budget name stored with the row.
        macs: pass the MACs when the model's real work is not what ``flop_counter`` sees
            (e.g. a sparse or integer kernel); counted from the model otherwise.
        size_bytes: pass the bytes when the model is stored in another format than
            ``torch.save``'s dense one (e.g. a sparse file); ``size_gzip_bytes`` likewise
            (``None`` with ``size_bytes`` given: not reported).
    """
    row = _counts_row(model, name, accuracy, baseline, input_shape, macs, size_bytes,
                      size_gzip_bytes)
    for b in batch_sizes:
        lat = measure_latency(model, b, input_shape, threads, warmup, repeats)
        row[f"latency_ms_b{b}"] = lat.median_ms
        row[f"latency_iqr_ms_b{b}"] = lat.iqr_ms
    row["threads"] = threads
    row["budget"] = budget
    return row


def _counts_row(model: nn.Module, name: str, accuracy: float | None, baseline: str | None,
                input_shape: tuple[int, ...], macs: int | None, size_bytes: int | None,
                size_gzip_bytes: int | None) -> dict:
    """The row's fields that do not need a clock."""
    return {
        "name": name,
        "baseline": baseline,
        "accuracy": None if accuracy is None else float(accuracy),
        "params": count_params(model),
        "nonzero_params": count_nonzero_params(model),
        "macs": int(macs) if macs is not None else count_macs(model, input_shape),
        "size_bytes": int(size_bytes) if size_bytes is not None else model_size_bytes(model),
        "size_gzip_bytes": (int(size_gzip_bytes) if size_gzip_bytes is not None
                            else None if size_bytes is not None
                            else model_size_bytes(model, compressed=True)),
    }


def profile_models(models: dict[str, nn.Module], accuracy: dict[str, float] | None = None,
                   baseline: str | None = None, budget: str | None = None,
                   input_shape: tuple[int, ...] = INPUT_SHAPE,
                   batch_sizes: tuple[int, ...] = (1, 256), threads: int = 2, warmup: int = 10,
                   repeats: int = 50, macs: dict[str, int] | None = None,
                   size_bytes: dict[str, int] | None = None,
                   size_gzip_bytes: dict[str, int] | None = None) -> list[dict]:
    """Rows of :func:`profile_model` for several models, their latency timed side by side.

    At each batch size the models run round-robin in one loop (:func:`compare_latency`),
    so a ratio of two rows' medians, ``baseline_ms / model_ms``, compares runs taken
    under the same conditions.

    Args:
        models: row name -> model, in the order of the rows.
        accuracy: row name -> test accuracy (rows not named get ``None``).
        baseline: the row the others are compared with: a name in ``models`` (its own
            row gets ``baseline=None``) or a row measured elsewhere.
        macs, size_bytes, size_gzip_bytes: row name -> the value to report instead of the
            counted one (see :func:`profile_model`).

    Raises:
        ValueError: ``models`` is empty or not a dict, or a per-row dict names a row that
            is not in ``models``.
    """
    if not isinstance(models, dict) or not models:
        raise ValueError("models must be a non-empty dict of name -> nn.Module")
    per_row = {"accuracy": accuracy or {}, "macs": macs or {}, "size_bytes": size_bytes or {},
               "size_gzip_bytes": size_gzip_bytes or {}}
    for arg, values in per_row.items():
        if not isinstance(values, dict):
            raise TypeError(f"{arg} must be a dict of row name -> value, got {type(values).__name__}")
        unknown = sorted(set(values) - set(models))
        if unknown:
            raise ValueError(f"{arg} names rows that are not in models: {unknown}")
    rows = {name: _counts_row(model, name, per_row["accuracy"].get(name),
                              None if name == baseline else baseline, input_shape,
                              per_row["macs"].get(name), per_row["size_bytes"].get(name),
                              per_row["size_gzip_bytes"].get(name))
            for name, model in models.items()}
    for b in batch_sizes:
        latency = compare_latency(models, b, input_shape, threads, warmup, repeats)
        for name, row in rows.items():
            row[f"latency_ms_b{b}"] = latency[name].median_ms
            row[f"latency_iqr_ms_b{b}"] = latency[name].iqr_ms
    for row in rows.values():
        row["threads"] = threads
        row["budget"] = budget
    return list(rows.values())


def _fmt_count(n: float, spec: str = ".2f", plain: str = ".0f") -> str:
    """``n`` with a K/M/G suffix: ``2.00M`` (tables); ``spec="g"`` gives ``2M`` (axes)."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:{spec}}{unit}"
    return f"{n:{plain}}"


class Table:
    """A list of row dicts shown as a fixed-precision table (HTML in notebooks, text else)."""

    def __init__(self, rows: list[dict], columns: list[tuple[str, str, callable]]):
        self.rows = rows
        self.columns = columns  # (key, header, formatter)

    def cells(self) -> list[list[str]]:
        out = []
        for row in self.rows:
            out.append([fmt(row.get(key)) if row.get(key) is not None else "-"
                        for key, _, fmt in self.columns])
        return out

    def __str__(self) -> str:
        headers = [h for _, h, _ in self.columns]
        body = self.cells()
        widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h)
                  for i, h in enumerate(headers)]
        line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w)
                                       for i, (c, w) in enumerate(zip(cells, widths)))
        return "\n".join([line(headers), line(["-" * w for w in widths])]
                         + [line(r) for r in body])

    __repr__ = __str__

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{h}</th>" for _, h, _ in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>"
                       for r in self.cells())
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def compare(rows: list[dict]) -> Table:
    """Side-by-side table of profiled rows, each with ratios against its ``baseline`` row.

    Ratios: accuracy change in percentage points; params, nonzero params, MACs and bytes as
    "x times smaller" (baseline / row); latency as speed-up (baseline / row, >1 is faster).

    Raises:
        ValueError: a row names a baseline that is not among the rows.
    """
    by_name = {r["name"]: r for r in rows}
    enriched = []
    for row in rows:
        row = dict(row)
        base = row.get("baseline")
        if base is not None:
            if base not in by_name:
                raise ValueError(f"row {row['name']!r} names baseline {base!r}, which is not "
                                 f"among the rows {list(by_name)}")
            ref = by_name[base]
            if row.get("accuracy") is not None and ref.get("accuracy") is not None:
                row["d_acc"] = 100 * (row["accuracy"] - ref["accuracy"])
            for key in ("nonzero_params", "macs", "size_bytes", "latency_ms_b1", "latency_ms_b256"):
                if row.get(key) and ref.get(key):
                    row[f"x_{key}"] = ref[key] / row[key]
        enriched.append(row)
    pct = lambda v: f"{100 * v:.2f}%"
    ratio = lambda v: f"{v:.2f}x"
    ms = lambda v: f"{v:.3f}"
    columns = [
        ("name", "model", str), ("accuracy", "accuracy", pct), ("d_acc", "Δacc (pts)", lambda v: f"{v:+.2f}"),
        ("params", "params", _fmt_count), ("nonzero_params", "nonzero", _fmt_count),
        ("x_nonzero_params", "nonzero ÷", ratio), ("macs", "MACs", _fmt_count),
        ("x_macs", "MACs ÷", ratio), ("size_bytes", "bytes", _fmt_count),
        ("x_size_bytes", "bytes ÷", ratio), ("latency_ms_b1", "ms b=1", ms),
        ("x_latency_ms_b1", "speed-up b=1", ratio), ("latency_ms_b256", "ms b=256", ms),
        ("x_latency_ms_b256", "speed-up b=256", ratio),
    ]
    return Table(enriched, columns)


def pareto_front(rows: list[dict], cost: str = "macs", quality: str = "accuracy") -> list[dict]:
    """The rows no other row beats: none is at most as costly and strictly more accurate,
    or strictly cheaper and at least as accurate. Sorted by ``cost``, cheapest first.

    Args:
        rows: result rows (as from :func:`profile_model`).
        cost: key to minimise (``"macs"``, ``"latency_ms_b256"``, ...).
        quality: key to maximise.

    Raises:
        ValueError: a row lacks ``cost`` or ``quality``.
    """
    for row in rows:
        for key in (cost, quality):
            if row.get(key) is None:
                raise ValueError(f"row {row.get('name')!r} has no value for {key!r}")
    front, best = [], -math.inf
    # cheapest first; among equal costs the most accurate first, so only it can enter
    for row in sorted(rows, key=lambda r: (r[cost], -r[quality])):
        if row[quality] > best:
            front.append(row)
            best = row[quality]
    return front


# aten operator name fragments -> category, first match wins (checked in this order).
OP_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("convolution", ("conv", "mkldnn_convolution")),
    ("linear", ("addmm", "mm", "linear", "matmul")),
    ("batch norm", ("batch_norm",)),
    ("activation", ("relu", "hardtanh", "clamp", "silu", "hardswish", "hardsigmoid",
                    "sigmoid", "gelu", "threshold")),
    ("pooling", ("pool", "mean")),
    ("add / multiply", ("add", "mul")),
    ("memory (copy, cat, split, shuffle)", ("cat", "copy", "contiguous", "clone", "chunk",
                                            "split", "transpose", "view", "reshape", "narrow",
                                            "slice", "stack", "permute")),
)


def _category(op_name: str) -> str:
    name = op_name.removeprefix("aten::")
    for category, fragments in OP_CATEGORIES:
        if any(f in name for f in fragments):
            return category
    return "other"


def time_by_op_category(model: nn.Module, batch_size: int = 256,
                        input_shape: tuple[int, ...] = INPUT_SHAPE, threads: int = 2,
                        warmup: int = 3, repeats: int = 5) -> dict[str, float]:
    """Milliseconds per forward pass spent in each kind of operator, from ``torch.profiler``.

    The model runs in eval and inference mode like :func:`measure_latency`; each aten
    operator's *self* CPU time (its own work, without the operators it calls) is summed
    into the categories of :data:`OP_CATEGORIES` and divided by ``repeats``. The totals
    include profiler overhead, so compare shares, not absolute times, with latency.
    """
    _check_run(model, input_shape, batch_size, threads, warmup, repeats)
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(batch_size, *input_shape)
    with _inference(model, threads), _quiet_native_stderr():
        for _ in range(warmup):
            model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                model(x)
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        if not event.key.startswith("aten::"):
            continue
        category = _category(event.key)
        totals[category] = totals.get(category, 0.0) + event.self_cpu_time_total / 1000.0 / repeats
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))
