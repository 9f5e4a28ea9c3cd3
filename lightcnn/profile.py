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
Models compared with each other are timed round-robin in one loop, and a speed-up is the
ratio of their medians. A latency or a speed-up whose IQR is more than
:data:`STABLE_RELATIVE_IQR` (20%) of its median is flagged unstable: tables mark it with
``?`` and the book does not quote it as a result (book/benchmarking.md).

Taught in chapters/01_cnn_basics.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gzip
import html
import io
import itertools
import math
import os
import statistics
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ._checks import (check_bool, check_float, check_int, check_ints, check_mapping,
                      check_sequence, check_str, is_real)

__all__ = [
    "INPUT_SHAPE", "count_params", "count_nonzero_params", "count_macs", "count_macs_by_module",
    "count_macs_thop", "model_size_bytes", "STABLE_RELATIVE_IQR", "MIN_SAMPLE_MS", "MAX_NUMBER",
    "MAX_RETAKE_SECONDS",
    "Latency", "Ratio", "speedup", "speedups", "measure_latency", "time_interleaved",
    "compare_latency", "profile_model", "profile_models", "simulated_row",
    "Table", "UNSTABLE", "UNSTABLE_NOTE", "compare", "pareto_front", "OP_CATEGORIES", "OP_PREFIXES",
    "COMPILED_KERNELS", "time_by_op_category",
]

# One Fashion-MNIST image: (channels, height, width).
INPUT_SHAPE = (1, 28, 28)

# A latency or a speed-up whose IQR is above this share of its median is not a result.
STABLE_RELATIVE_IQR = 0.20
# With number=None, a timed sample runs enough passes to last at least this long: one
# pass of a small model at batch 1 is well under a millisecond, where the scheduler's and
# the clock's granularity are a large part of each sample.
MIN_SAMPLE_MS = 1.0
# until_stable doubles the passes per sample of an unstable call up to this many.
MAX_NUMBER = 64
# ... and starts a retake only if it would end within this many seconds of the first timed
# round: at batch 256 a doubled sample of a dozen networks is minutes per retake, and a
# call that stays unstable that long is published as unstable, not retaken for an hour.
MAX_RETAKE_SECONDS = 120.0

# The clock every timing here reads (tests replace it with a fake one).
_clock = time.perf_counter
# Each time_interleaved call numbers its rounds' samples with a new run id, so that
# speedup() pairs two calls' samples round by round only when they were timed together.
_run_ids = itertools.count(1)


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
    return _count_flops(model, input_shape)


def _count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> FlopCounterMode:
    """torch's flop counter after one eval-mode pass at batch 1 on zeros of ``input_shape``
    (any shape: channel_pruning counts MLPs with it too)."""
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
    check_bool("compressed", compressed)
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


def _relative(spread: float, center: float) -> float:
    """``spread / center``; infinite when the center is 0 and the spread is not."""
    if center > 0:
        return spread / center
    return 0.0 if spread == 0 else math.inf


# A Latency's outcome: samples taken once, or retaken until stable (or the cap).
_OUTCOMES = ("once", "stable", "cap")


@dataclass(frozen=True)
class Latency:
    """Latency of one forward pass, in milliseconds, over ``repeats`` timed samples.

    A sample is ``number`` passes run back to back, timed together and divided by
    ``number``. ``run`` identifies the :func:`time_interleaved` call that took the samples
    (latencies with the same ``run`` were timed round-robin, sample ``i`` of each in round
    ``i``); ``outcome`` is ``"once"`` when the samples were taken once, ``"stable"`` or
    ``"cap"`` when they were retaken until stable (see :func:`time_interleaved`).
    """

    median_ms: float
    q1_ms: float
    q3_ms: float
    batch_size: int
    threads: int
    repeats: int
    times_ms: tuple[float, ...] = ()
    number: int = 1
    run: int | None = None
    outcome: str = "once"

    def __post_init__(self) -> None:
        for name in ("median_ms", "q1_ms", "q3_ms"):
            check_float(name, getattr(self, name), 0)
        for name in ("batch_size", "threads", "repeats", "number"):
            check_int(name, getattr(self, name), 1)
        check_sequence("times_ms", self.times_ms, what="a tuple of sample times in ms")
        for t in self.times_ms:
            if not is_real(t) or not math.isfinite(t) or t < 0:
                raise ValueError(f"times_ms must hold finite sample times >= 0 ms, got {t!r}")
        check_int("run", self.run, 1, none=True)
        check_str("outcome", self.outcome, _OUTCOMES)

    @property
    def iqr_ms(self) -> float:
        """Interquartile range: the spread of the middle half of the samples."""
        return self.q3_ms - self.q1_ms

    @property
    def relative_iqr(self) -> float:
        """``IQR / median``: the spread as a share of the latency."""
        return _relative(self.iqr_ms, self.median_ms)

    @property
    def stable(self) -> bool:
        """The IQR is at most :data:`STABLE_RELATIVE_IQR` of the median."""
        return self.relative_iqr <= STABLE_RELATIVE_IQR

    def __str__(self) -> str:
        passes = f", {self.number} passes per sample" if self.number > 1 else ""
        flag = ("" if self.stable else
                f"; UNSTABLE: IQR {100 * self.relative_iqr:.0f}% of the median, not a result")
        return (f"{self.median_ms:.3f} ms{'' if self.stable else '?'} (IQR {self.iqr_ms:.3f} ms) "
                f"at batch {self.batch_size}, {self.threads} threads, {self.repeats} runs"
                f"{passes}{flag}")


@dataclass(frozen=True)
class Ratio:
    """How many times faster a model ran than its baseline, and how sure that is.

    ``value = baseline median / model median``: the number the book quotes. The spread
    comes from the ratios of single samples, ``baseline_i / model_i``: round by round
    when the two were timed in one round-robin loop (``paired``), else over every pair of
    samples. Their quartiles are ``q1`` and ``q3``, their median ``median``.
    """

    value: float
    q1: float
    q3: float
    median: float
    paired: bool

    def __post_init__(self) -> None:
        # ratios of positive times: positive (infinite only if a time underflows)
        for name in ("value", "q1", "q3", "median"):
            check_float(name, getattr(self, name), 0, low_open=True, finite=False)
        check_bool("paired", self.paired)

    @property
    def iqr(self) -> float:
        """Interquartile range of the sample ratios."""
        return self.q3 - self.q1

    @property
    def relative_iqr(self) -> float:
        """``IQR / median`` of the sample ratios."""
        return _relative(self.iqr, self.median)

    @property
    def stable(self) -> bool:
        """The IQR is at most :data:`STABLE_RELATIVE_IQR` of the median: a result."""
        return self.relative_iqr <= STABLE_RELATIVE_IQR

    def __float__(self) -> float:
        return float(self.value)

    def __str__(self) -> str:
        return f"{self.value:.2f}x" + ("" if self.stable else "?")


def _check_latency(latency: object, arg: str) -> None:
    if not isinstance(latency, Latency):
        raise TypeError(f"{arg} must be a Latency, got {type(latency).__name__}")
    if not latency.times_ms or min(latency.times_ms) <= 0:
        raise ValueError(f"{arg} must carry its sample times, all > 0 ms, got "
                         f"{len(latency.times_ms)} samples, minimum "
                         f"{min(latency.times_ms, default=None)}")


def speedup(baseline: Latency, model: Latency) -> Ratio:
    """``baseline`` median / ``model`` median (>1: the model is faster), with the spread of
    the ratio (see :class:`Ratio`).

    Two latencies from one :func:`time_interleaved` call (same ``run``, same number of
    samples) are paired round by round: the ratio of the two calls in round ``i`` shares
    that round's conditions, so a drift of the machine's speed cancels out of it. Others
    are combined in every pair of samples, which keeps all of both spreads.

    Raises:
        TypeError: an argument is not a :class:`Latency`.
        ValueError: a latency has no sample times, or a sample of 0 ms.
    """
    _check_latency(baseline, "baseline")
    _check_latency(model, "model")
    paired = (baseline.run is not None and baseline.run == model.run
              and len(baseline.times_ms) == len(model.times_ms))
    if paired:
        ratios = [b / m for b, m in zip(baseline.times_ms, model.times_ms)]
    else:
        ratios = [b / m for b in baseline.times_ms for m in model.times_ms]
    q1, median, q3 = _quartiles(ratios)
    return Ratio(baseline.median_ms / model.median_ms, q1, q3, median, paired)


def speedups(latency: Mapping[str, Latency], baseline: str) -> dict[str, Ratio]:
    """:func:`speedup` of every entry of ``latency`` (as from :func:`compare_latency`) over
    the one named ``baseline`` (its own ratio is 1)."""
    if not isinstance(latency, Mapping) or not latency:
        raise ValueError("latency must be a non-empty dict of name -> Latency")
    check_str("baseline", baseline)
    if baseline not in latency:
        raise ValueError(f"baseline {baseline!r} is not among {list(latency)}")
    return {name: speedup(latency[baseline], lat) for name, lat in latency.items()}


def measure_latency(model: nn.Module, batch_size: int = 1, input_shape: tuple[int, ...] = INPUT_SHAPE,
                    threads: int = 2, warmup: int = 10, repeats: int = 50,
                    example: torch.Tensor | None = None, number: int | None = 1,
                    until_stable: bool = False, max_number: int = MAX_NUMBER) -> Latency:
    """Median wall time of ``model(x)`` for a ``(batch_size, *input_shape)`` input.

    The model runs in eval and inference mode, with deterministic algorithms off (as
    deployed); ``warmup`` untimed runs let allocators, caches and lazy initialisation
    settle; the thread count and the deterministic setting are restored afterwards.

    Args:
        example: an input to use instead of random data (its batch size wins).
        number, until_stable, max_number: passes per timed sample, and whether to retake
            the samples until they are stable (see :func:`time_interleaved`).
    """
    _check_run(model, input_shape, batch_size, threads, warmup, repeats)
    _check_example(example)
    x = example if example is not None else torch.randn(batch_size, *input_shape)
    with _inference(model, threads):
        return time_interleaved({"model": lambda: model(x)}, threads, warmup, repeats,
                                len(x), number, until_stable, max_number)["model"]


def _check_example(example: torch.Tensor | None) -> None:
    """``example`` is None or a batch: a tensor with a batch dimension of at least one."""
    if example is None:
        return
    if not isinstance(example, torch.Tensor):
        raise TypeError(f"example must be a torch.Tensor (a batch of inputs) or None, got "
                        f"{type(example).__name__}")
    if example.dim() == 0 or len(example) == 0:
        raise ValueError(f"example must be a batch of at least one input, got shape "
                         f"{tuple(example.shape)}")


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) >= 2:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    else:
        q1 = q3 = values[0]
    return q1, statistics.median(values), q3


def _latency(times: list[float], batch_size: int, threads: int, number: int = 1,
             run: int | None = None) -> Latency:
    q1, median, q3 = _quartiles(times)
    return Latency(median, q1, q3, batch_size, threads, len(times), tuple(times), number, run)


def _check_repeat_args(number: int | None, until_stable: bool, max_number: int) -> None:
    if number is not None and (isinstance(number, bool) or not isinstance(number, int)
                               or number < 1):
        raise ValueError(f"number must be None or an int >= 1, got {number!r}")
    if not isinstance(until_stable, bool):
        raise ValueError(f"until_stable must be True or False, got {until_stable!r}")
    if isinstance(max_number, bool) or not isinstance(max_number, int) or max_number < 1:
        raise ValueError(f"max_number must be an int >= 1, got {max_number!r}")


def _passes_for(seconds: list[float], max_number: int) -> int:
    """The smallest power of two (up to ``max_number``) of passes that last
    :data:`MIN_SAMPLE_MS`, for a call whose warm-up passes took ``seconds`` each."""
    per_pass_ms = 1000.0 * statistics.median(seconds)
    number = 1
    while number * per_pass_ms < MIN_SAMPLE_MS and number < max_number:
        number *= 2
    return min(number, max_number)


def time_interleaved(fns: dict[str, Callable[[], object]], threads: int = 2, warmup: int = 10,
                     repeats: int = 50, batch_size: int = 1, number: int | None = 1,
                     until_stable: bool = False, max_number: int = MAX_NUMBER,
                     max_seconds: float = MAX_RETAKE_SECONDS) -> dict[str, Latency]:
    """Time several calls side by side: each round runs every call once, round-robin.

    A ratio of two medians measured one after the other also measures what changed in
    between (the other core's load, the clock, the allocator); interleaving spreads any
    such drift over all calls alike. The order is rotated every round so no call always
    runs right after the same other one.

    A sample is ``number`` calls back to back, timed together; its time divided by
    ``number`` is what the :class:`Latency` records. A longer sample averages out jitter
    shorter than itself; taking more samples does not, since the IQR of many samples
    estimates the spread of one sample, it does not shrink it. So ``until_stable``
    retakes the samples with twice the ``number`` of every unstable call (IQR above
    :data:`STABLE_RELATIVE_IQR` of its median; all calls are retaken, so they stay
    paired round by round) until every call is stable, or every unstable one has reached
    ``max_number``, or the next retake (predicted from the last one's medians) would end
    more than ``max_seconds`` after the first timed round. Each latency's ``outcome`` then
    says ``"stable"`` or ``"cap"``.

    Args:
        fns: name -> a call without arguments (e.g. ``lambda: model(x)``).
        batch_size: recorded in each :class:`Latency` (the calls choose their inputs).
        number: calls per timed sample; ``None`` picks, per call, the smallest power of
            two whose calls last :data:`MIN_SAMPLE_MS` (from the warm-up's times).
        until_stable: retake the samples until stable, as above.
        max_number: the most calls per sample that ``None`` or ``until_stable`` choose.
        max_seconds: the time ``until_stable`` may spend, counted from the first timed
            round; the first take always runs whole.
    """
    if not isinstance(fns, dict) or not fns or not all(callable(f) for f in fns.values()):
        raise ValueError("fns must be a non-empty dict of name -> callable")
    for arg, value, low in (("threads", threads, 1), ("warmup", warmup, 0),
                            ("repeats", repeats, 1), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{arg} must be an int >= {low}, got {value!r}")
    _check_repeat_args(number, until_stable, max_number)
    check_float("max_seconds", max_seconds, 0, low_open=True)
    names = list(fns)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        warm: dict[str, list[float]] = {n: [] for n in names}
        for _ in range(warmup if warmup or number is not None else 1):
            for n in names:
                start = _clock()
                fns[n]()
                warm[n].append(_clock() - start)
        numbers = ({n: _passes_for(warm[n], max_number) for n in names} if number is None
                   else dict.fromkeys(names, number))
        started = _clock()
        while True:
            result = _rounds(fns, names, numbers, repeats, batch_size, threads)
            unstable = [n for n in names if not result[n].stable]
            if not until_stable or not unstable or all(numbers[n] >= max_number for n in unstable):
                break
            longer = {n: min(2 * numbers[n], max_number) if n in unstable else numbers[n]
                      for n in names}
            # every call is retaken (to stay paired): its time, from this take's medians
            retake = repeats * sum(result[n].median_ms * longer[n] for n in names) / 1000.0
            if _clock() - started + retake > max_seconds:
                break
            numbers = longer
    finally:
        torch.set_num_threads(previous)
    if until_stable:
        result = {n: dataclasses.replace(lat, outcome="stable" if lat.stable else "cap")
                  for n, lat in result.items()}
    return result


def _rounds(fns: dict[str, Callable[[], object]], names: list[str], numbers: dict[str, int],
            repeats: int, batch_size: int, threads: int) -> dict[str, Latency]:
    """``repeats`` round-robin rounds, the order rotated every round."""
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names):] + names[:r % len(names)]:
            fn, k = fns[n], numbers[n]
            start = _clock()
            for _ in range(k):
                fn()
            times[n].append((_clock() - start) * 1000.0 / k)
    run = next(_run_ids)
    return {n: _latency(times[n], batch_size, threads, numbers[n], run) for n in names}


def compare_latency(models: dict[str, nn.Module], batch_size: int = 1,
                    input_shape: tuple[int, ...] = INPUT_SHAPE, threads: int = 2,
                    warmup: int = 10, repeats: int = 50,
                    example: torch.Tensor | None = None, number: int | None = 1,
                    until_stable: bool = False,
                    max_number: int = MAX_NUMBER) -> dict[str, Latency]:
    """Latency of several models measured round-robin on one input (see
    :func:`time_interleaved`), each as deployed (eval, inference mode, deterministic mode
    off): every "x times faster" in the book is a ratio of medians taken this way, and
    :func:`speedups` gives those ratios with their stability.

    Args:
        models: name -> model (a compiled or packed model too).
        example: an input to use instead of random data (its batch size wins).
        number, until_stable, max_number: passes per timed sample, and whether to retake
            the samples until they are stable (see :func:`time_interleaved`).
    """
    if not isinstance(models, dict) or not models:
        raise ValueError("models must be a non-empty dict of name -> nn.Module")
    for model in models.values():
        _check_run(model, input_shape, batch_size, threads, warmup, repeats)
    _check_example(example)
    x = example if example is not None else torch.randn(batch_size, *input_shape)
    with contextlib.ExitStack() as stack:
        for model in models.values():
            stack.enter_context(_inference(model, threads))
        fns = {name: (lambda m=model: m(x)) for name, model in models.items()}
        return time_interleaved(fns, threads, warmup, repeats, len(x), number, until_stable,
                                max_number)


def profile_model(model: nn.Module, name: str, accuracy: float | None = None,
                  baseline: str | None = None, budget: str | None = None,
                  input_shape: tuple[int, ...] = INPUT_SHAPE, batch_sizes: tuple[int, ...] = (1, 256),
                  threads: int = 2, warmup: int = 10, repeats: int = 50,
                  macs: int | None = None, size_bytes: int | None = None,
                  size_gzip_bytes: int | None = None, number: int | None = 1,
                  until_stable: bool = False) -> dict:
    """One row of a comparison table: accuracy, counts, bytes and latency of ``model``.

    To compare several models, use :func:`profile_models`: it times them side by side,
    so their latency ratios do not also measure what changed between two measurements.
    At each batch size ``b`` the row holds ``latency_ms_b{b}`` (the median),
    ``latency_iqr_ms_b{b}``, ``latency_passes_b{b}`` (passes per timed sample) and
    ``speedup_relative_iqr_b{b}`` (``None`` here: no baseline was timed with it).

    Args:
        name: the row's name; ``baseline`` names the row it is compared with.
        accuracy: fraction of test images classified correctly (measured by the caller).
        budget: the budget name stored with the row.
        macs: pass the MACs when the model's real work is not what ``flop_counter`` sees
            (e.g. a sparse or integer kernel); counted from the model otherwise.
        size_bytes: pass the bytes when the model is stored in another format than
            ``torch.save``'s dense one (e.g. a sparse file); ``size_gzip_bytes`` likewise
            (``None`` with ``size_bytes`` given: not reported).
        number, until_stable: passes per timed sample, and whether to retake the samples
            until they are stable (see :func:`time_interleaved`).
    """
    _check_model(model)
    check_str("name", name)
    check_float("accuracy", accuracy, 0, 1, none=True)
    _check_row_args(baseline, budget, batch_sizes)
    _check_repeat_args(number, until_stable, MAX_NUMBER)   # before the counts: they take time
    for arg, value in (("macs", macs), ("size_bytes", size_bytes),
                       ("size_gzip_bytes", size_gzip_bytes)):
        _check_count(arg, value)
    row = _counts_row(model, name, accuracy, baseline, input_shape, macs, size_bytes,
                      size_gzip_bytes)
    for b in batch_sizes:
        lat = measure_latency(model, b, input_shape, threads, warmup, repeats,
                              number=number, until_stable=until_stable)
        _latency_fields(row, b, lat, None)
    row["threads"] = threads
    row["budget"] = budget
    return row


def simulated_row(model: nn.Module, name: str, accuracy: float | None, size_bytes: int,
                  baseline: str | None = None, budget: str | None = None,
                  input_shape: tuple[int, ...] = INPUT_SHAPE, macs: int | None = None,
                  batch_sizes: tuple[int, ...] = (1, 256)) -> dict:
    """A row of :func:`profile_model` for a model whose arithmetic is simulated in float32
    (fake quantization, weights shared through a codebook), with no latency.

    Counts come from ``model``; ``size_bytes`` is the stored size of the format it stands
    for (bit-packed codes, a codebook), which ``torch.save`` of the float model is not.
    ``latency_ms_b{b}`` is ``None`` at each of ``batch_sizes`` (the results contract needs
    the keys): timing float kernels measures nothing of the integer or codebook kernels the
    format would run on, so the table shows "-" rather than a number that looks like one.

    Args:
        model: the simulated model (its float parameters give the counts).
        name, accuracy, baseline, budget, input_shape, macs: as in :func:`profile_model`.
        size_bytes: the stored bytes, a number >= 0.
        batch_sizes: the batch sizes whose ``latency_ms_b{b}`` the row holds (as ``None``).
    """
    if size_bytes is None:
        raise TypeError("size_bytes must be a number >= 0 (the stored size of the simulated "
                        "format), got None")
    row = profile_model(model, name, accuracy=accuracy, baseline=baseline, budget=budget,
                        input_shape=input_shape, batch_sizes=(), macs=macs,
                        size_bytes=size_bytes)
    check_ints("batch_sizes", batch_sizes, 1, nonempty=False)
    for b in batch_sizes:
        row[f"latency_ms_b{b}"] = None
    return row


def _check_row_args(baseline, budget, batch_sizes) -> None:
    """The arguments :func:`profile_model` and :func:`profile_models` share."""
    check_str("baseline", baseline, none=True)
    check_str("budget", budget, none=True)
    # empty: a row of counts only, without latency (for models timed elsewhere)
    check_ints("batch_sizes", batch_sizes, 1, nonempty=False)


def _check_count(name: str, value) -> None:
    """A count given instead of the measured one: None, or a finite number >= 0 (a float
    is fine: the row stores ``int(value)``)."""
    if value is not None and not is_real(value):
        raise TypeError(f"{name} must be a number >= 0 or None, got {type(value).__name__}")
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0 or None, got {value!r}")


def _latency_fields(row: dict, b: int, lat: Latency, ratio: Ratio | None) -> None:
    """A row's latency fields at batch ``b`` (the same keys in every row)."""
    row[f"latency_ms_b{b}"] = lat.median_ms
    row[f"latency_iqr_ms_b{b}"] = lat.iqr_ms
    row[f"latency_passes_b{b}"] = lat.number
    row[f"speedup_b{b}"] = None if ratio is None else ratio.value
    row[f"speedup_relative_iqr_b{b}"] = None if ratio is None else ratio.relative_iqr


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
                   size_gzip_bytes: dict[str, int] | None = None, number: int | None = 1,
                   until_stable: bool = False, controls: dict[str, str] | None = None
                   ) -> list[dict]:
    """Rows of :func:`profile_model` for several models, their latency timed side by side.

    At each batch size the models run round-robin in one loop (:func:`compare_latency`),
    so a ratio of two rows' medians, ``baseline_ms / model_ms``, compares runs taken
    under the same conditions. When the baseline is one of ``models``, each other row gets
    ``speedup_b{b}``, that ratio (baseline median / row median), and
    ``speedup_relative_iqr_b{b}``, its relative IQR, round by round (:func:`speedup`);
    :func:`compare` marks it when it is above :data:`STABLE_RELATIVE_IQR`. Otherwise both
    are None.

    Args:
        models: row name -> model, in the order of the rows.
        accuracy: row name -> test accuracy (rows not named get ``None``).
        baseline: the row the others are compared with: a name in ``models`` (its own
            row gets ``baseline=None``) or a row measured elsewhere.
        macs, size_bytes, size_gzip_bytes: row name -> the value to report instead of the
            counted one (see :func:`profile_model`).
        number, until_stable: passes per timed sample, and whether to retake the samples
            until they are stable (see :func:`time_interleaved`).
        controls: row name -> the name of another row of ``models``, the same network
            without the technique in the same engine (int8 compiled -> float32
            compiled). The row gets ``control`` (that name), and per batch size
            ``control_speedup_b{b}`` (control median / row median, from the same
            round-robin run) and ``control_speedup_relative_iqr_b{b}`` (its spread, round
            by round, as ``speedup_relative_iqr_b{b}``).

    Raises:
        ValueError: ``models`` is empty or not a dict, or a per-row dict names a row that
            is not in ``models``.
    """
    if not isinstance(models, dict) or not models:
        raise ValueError("models must be a non-empty dict of name -> nn.Module")
    for model in models.values():
        _check_model(model)
    per_row = {"accuracy": accuracy, "macs": macs, "size_bytes": size_bytes,
               "size_gzip_bytes": size_gzip_bytes}
    for arg, values in per_row.items():
        check_mapping(arg, values, none=True, what="a dict of row name -> value")
        values = per_row[arg] = values or {}
        unknown = sorted(set(values) - set(models))
        if unknown:
            raise ValueError(f"{arg} names rows that are not in models: {unknown}")
        for name, value in values.items():
            if arg == "accuracy":
                check_float(f"accuracy[{name!r}]", value, 0, 1, none=True)
            else:
                _check_count(f"{arg}[{name!r}]", value)
    check_mapping("controls", controls, none=True, what="a dict of row name -> control row name")
    controls = controls or {}
    for name, control in controls.items():
        if name not in models or control not in models or name == control:
            raise ValueError(f"controls must map a row of models to another row of models, "
                             f"got {name!r} -> {control!r}")
    _check_row_args(baseline, budget, batch_sizes)
    _check_repeat_args(number, until_stable, MAX_NUMBER)   # before the counts: they take time
    rows = {name: _counts_row(model, name, per_row["accuracy"].get(name),
                              None if name == baseline else baseline, input_shape,
                              per_row["macs"].get(name), per_row["size_bytes"].get(name),
                              per_row["size_gzip_bytes"].get(name))
            for name, model in models.items()}
    for b in batch_sizes:
        latency = compare_latency(models, b, input_shape, threads, warmup, repeats,
                                  number=number, until_stable=until_stable)
        for name, row in rows.items():
            ratio = (speedup(latency[baseline], latency[name])
                     if baseline in latency and name != baseline else None)
            _latency_fields(row, b, latency[name], ratio)
        for name, control in controls.items():
            against = speedup(latency[control], latency[name])
            rows[name][f"control_speedup_b{b}"] = against.value
            rows[name][f"control_speedup_relative_iqr_b{b}"] = against.relative_iqr
    for name, control in controls.items():
        rows[name]["control"] = control
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


# A row's set of column keys whose values are unstable; Table marks those cells with '?'.
UNSTABLE = "unstable"
# The footnote under a table with unstable cells.
UNSTABLE_NOTE = (f"? unstable: IQR above {100 * STABLE_RELATIVE_IQR:.0f}% of the median "
                 "(of a speed-up: of its sample ratios); not a result, time it again")


class Table:
    """A list of row dicts shown as a fixed-precision table (HTML in notebooks, text else).

    A cell whose key is in its row's ``UNSTABLE`` set ends in ``?``; ``notes`` are lines
    printed under the table (:data:`UNSTABLE_NOTE` is added when a cell is marked).
    """

    def __init__(self, rows: list[dict], columns: list[tuple[str, str, callable]],
                 notes: tuple[str, ...] = ()):
        _check_rows(rows)
        check_sequence("columns", columns, what="a list of (key, header, formatter) tuples")
        for column in columns:
            if not (isinstance(column, (tuple, list)) and len(column) == 3
                    and callable(column[2])):
                raise TypeError(f"columns must be a list of (key, header, formatter) tuples "
                                f"with a callable formatter, got an item {column!r}")
        check_sequence("notes", notes, str, what="a tuple of str (lines under the table)")
        self.rows = rows
        self.columns = columns  # (key, header, formatter)
        marked = any(key in row.get(UNSTABLE, ()) and row.get(key) is not None
                     for row in rows for key, _, _ in columns)
        self.notes = tuple(notes) + ((UNSTABLE_NOTE,) if marked else ())

    def cells(self) -> list[list[str]]:
        out = []
        for row in self.rows:
            flagged = row.get(UNSTABLE, ())
            out.append([fmt(row.get(key)) + ("?" if key in flagged else "")
                        if row.get(key) is not None else "-"
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
                         + [line(r) for r in body] + list(self.notes))

    __repr__ = __str__

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{h}</th>" for _, h, _ in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>"
                       for r in self.cells())
        notes = "".join(f"<p>{html.escape(n)}</p>" for n in self.notes)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{notes}"


def _check_rows(rows: list[dict], named: bool = False) -> None:
    """``rows`` is a list of dicts; each with a ``"name"`` if ``named``."""
    check_sequence("rows", rows, what="a list of row dicts")
    for row in rows:
        if not isinstance(row, Mapping):
            raise TypeError(f"rows must be a list of row dicts, got an item of type "
                            f"{type(row).__name__}")
        if named and "name" not in row:
            raise ValueError(f"rows must each have a 'name', got a row with keys {list(row)}")


def _unstable_latencies(row: dict, ref: dict | None) -> set[str]:
    """The latency and speed-up columns of ``row`` (against ``ref``) that are unstable.

    A latency: its IQR over its median. A speed-up: the relative IQR of its sample ratios
    when the row carries it (``speedup_relative_iqr_b{b}``, from :func:`profile_models`);
    else the two latencies' relative IQRs added in quadrature, the spread of a ratio of
    two independent measurements.
    """
    def relative(r: dict, b: int) -> float | None:
        median, iqr = r.get(f"latency_ms_b{b}"), r.get(f"latency_iqr_ms_b{b}")
        return None if not median or iqr is None else _relative(iqr, median)

    out = set()
    for b in (1, 256):
        own = relative(row, b)
        if own is not None and own > STABLE_RELATIVE_IQR:
            out.add(f"latency_ms_b{b}")
        if ref is None:
            continue
        ratio = row.get(f"speedup_relative_iqr_b{b}")
        if ratio is None and own is not None and relative(ref, b) is not None:
            ratio = math.hypot(own, relative(ref, b))
        if ratio is not None and ratio > STABLE_RELATIVE_IQR:
            out.add(f"x_latency_ms_b{b}")
    return out


def compare(rows: list[dict]) -> Table:
    """Side-by-side table of profiled rows, each with ratios against its ``baseline`` row.

    Ratios: accuracy change in percentage points; params, nonzero params, MACs and bytes as
    "x times smaller" (baseline / row); latency as speed-up (baseline / row, >1 is faster).
    An unstable latency or speed-up (IQR above :data:`STABLE_RELATIVE_IQR` of its median;
    for a speed-up, see ``_unstable_latencies``) ends in ``?``, with a footnote.

    Raises:
        ValueError: a row names a baseline that is not among the rows.
    """
    _check_rows(rows, named=True)
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
        row[UNSTABLE] = _unstable_latencies(row, by_name[base] if base is not None else None)
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
    _check_rows(rows)
    check_str("cost", cost)
    check_str("quality", quality)
    for row in rows:
        for arg, key in (("cost", cost), ("quality", quality)):
            if row.get(key) is None:
                raise ValueError(f"row {row.get('name')!r} has no value for {arg}={key!r}")
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


# Profiler events counted: PyTorch's own operators (eager), and the oneDNN and MKL
# operators that an Inductor-compiled graph calls (with freezing, each convolution becomes
# one mkldnn::_convolution_pointwise with its batch norm folded in and its activation
# fused, each Linear an mkl::_mkl_linear).
OP_PREFIXES = ("aten::", "mkldnn::", "mkl::", "onednn::", "quantized::")
# A compiled graph's own time: the C++ kernels Inductor generated (max pooling, the
# element-wise work it fused, layout copies), one profiler event for all of them.
COMPILED_KERNELS = "compiled kernels (pooling, fused element-wise)"
_COMPILED_GRAPH = "## Call CompiledFxGraph"


def _category(op_name: str) -> str:
    if op_name.startswith(_COMPILED_GRAPH):
        return COMPILED_KERNELS
    name = op_name
    for prefix in OP_PREFIXES:
        name = name.removeprefix(prefix)
    for category, fragments in OP_CATEGORIES:
        if any(f in name for f in fragments):
            return category
    return "other"


def time_by_op_category(model: nn.Module, batch_size: int = 256,
                        input_shape: tuple[int, ...] = INPUT_SHAPE, threads: int = 2,
                        warmup: int = 3, repeats: int = 5) -> dict[str, float]:
    """Milliseconds per forward pass spent in each kind of operator, from ``torch.profiler``.

    The model runs in eval and inference mode like :func:`measure_latency`; each
    operator's *self* CPU time (its own work, without the operators it calls) is summed
    into the categories of :data:`OP_CATEGORIES` and divided by ``repeats``. The totals
    include profiler overhead, so compare shares, not absolute times, with latency.

    Operators are the profiler's events named with one of :data:`OP_PREFIXES`: aten's in
    eager mode; for a model compiled by Inductor (``int8.compile_cpu``) also the oneDNN
    and MKL operators the graph calls (its convolutions, with batch norm folded in and
    the activation fused, and its Linear layers), and the graph's own time, the C++
    kernels Inductor generated for everything else, under :data:`COMPILED_KERNELS`
    (the profiler does not see inside them: max pooling is there, with whatever
    element-wise work Inductor fused into it). Compile a model before profiling it: the
    first call of each input shape compiles.
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
        if not event.key.startswith((*OP_PREFIXES, _COMPILED_GRAPH)):
            continue
        category = _category(event.key)
        totals[category] = totals.get(category, 0.0) + event.self_cpu_time_total / 1000.0 / repeats
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))
