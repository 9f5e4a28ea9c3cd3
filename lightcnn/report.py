"""What a chapter prints from its measurements: speed tables across engines, verdicts on a
paper's claim, relative errors.

One rule for every speed table (book/benchmarking.md): a model run by a compiler or
another runtime is compared twice, with eager float32 PyTorch and with float32 in the
same engine,

    vs eager fp32   = latency(eager fp32) / latency(model)
    vs engine fp32  = latency(the engine's fp32) / latency(model)

so that an int8 model compiled by Inductor is set against compiled float32, and an ONNX
Runtime int8 session against an ONNX Runtime float32 one: the first ratio is what a reader
gains over PyTorch as written, the second what the technique gains over the engine alone.
All of a table's models are timed in one round-robin loop (``lc.compare_latency``), and
every ratio carries its stability (``lc.profile.Ratio``): one whose sample ratios spread by
more than 20% of their median is marked ``?`` and is not a result.

The helpers here were written out in several chapters before they moved into the package.

Taught in chapters/05_quantization and chapters/09_putting_it_together.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .profile import (INPUT_SHAPE, MAX_NUMBER, UNSTABLE, Latency, Ratio, Table,
                      compare_latency, speedup)

__all__ = ["EAGER", "engine_speedups", "compare_engines", "engine_table", "verdict",
           "relative_error", "mean_std", "t_interval", "paired_verdict"]

# The engine tag of eager PyTorch, the reference of every speed table.
EAGER = "eager"


def _check_engines(names: list[str], engines: Mapping[str, str], fp32: Mapping[str, str]) -> None:
    if not isinstance(engines, Mapping) or not all(isinstance(e, str) and e
                                                   for e in engines.values()):
        raise ValueError("engines must be a dict of model name -> engine tag (a non-empty str)")
    missing, unknown = [n for n in names if n not in engines], sorted(set(engines) - set(names))
    if missing or unknown:
        raise ValueError(f"engines must tag every timed model and nothing else: untagged "
                         f"{missing}, not timed {unknown}")
    if not isinstance(fp32, Mapping) or EAGER not in fp32:
        raise ValueError(f"fp32 must be a dict of engine -> its float32 model's name, with "
                         f"{EAGER!r} among the engines, got {fp32!r}")
    for engine in dict.fromkeys(engines.values()):
        if engine not in fp32:
            raise ValueError(f"fp32 names no float32 model for engine {engine!r}: every "
                             f"engine's ratios need its own float32 reference")
    for engine, name in fp32.items():
        if name not in engines:
            raise ValueError(f"fp32[{engine!r}] = {name!r} is not among the timed models {names}")
        if engines[name] != engine:
            raise ValueError(f"fp32[{engine!r}] = {name!r} is tagged engine {engines[name]!r}, "
                             f"not {engine!r}")


def engine_speedups(latency: Mapping[str, Latency], engines: Mapping[str, str],
                    fp32: Mapping[str, str]) -> list[dict]:
    """Each model's speed-up over eager float32 and over its own engine's float32.

    Args:
        latency: model name -> latency, from one :func:`lightcnn.compare_latency` run (so
            the ratios pair the models' samples round by round).
        engines: model name -> engine tag (``"eager"``, ``"inductor"``, ``"ort"``, ...),
            for every model in ``latency``.
        fp32: engine tag -> the name of that engine's float32 model; names ``"eager"``
            and every engine in ``engines``.

    Returns:
        One dict per model, in ``latency``'s order: ``name``, ``engine``, ``batch_size``,
        ``latency`` (its :class:`~lightcnn.profile.Latency`), ``vs_eager_fp32`` and
        ``vs_engine_fp32`` (:class:`~lightcnn.profile.Ratio`; a reference's ratio to
        itself is 1).

    Raises:
        ValueError: a model is untagged, an engine has no float32 reference, or a
            reference is not timed or carries another engine's tag.
    """
    if not isinstance(latency, Mapping) or not latency or not all(
            isinstance(v, Latency) for v in latency.values()):
        raise ValueError("latency must be a non-empty dict of name -> Latency "
                         "(as from lc.compare_latency)")
    names = list(latency)
    _check_engines(names, engines, fp32)
    eager = latency[fp32[EAGER]]
    return [dict(name=name, engine=engines[name], batch_size=lat.batch_size, latency=lat,
                 vs_eager_fp32=speedup(eager, lat),
                 vs_engine_fp32=speedup(latency[fp32[engines[name]]], lat))
            for name, lat in latency.items()]


def compare_engines(models: Mapping[str, tuple[nn.Module, str]], fp32: Mapping[str, str],
                    batch_sizes: tuple[int, ...] = (1, 256),
                    input_shape: tuple[int, ...] = INPUT_SHAPE, threads: int = 2,
                    warmup: int = 10, repeats: int = 50, example: torch.Tensor | None = None,
                    number: int | None = 1, until_stable: bool = False,
                    max_number: int = MAX_NUMBER) -> list[dict]:
    """Time models of several engines side by side and give both ratios per row.

    At each batch size every model runs in one round-robin loop
    (:func:`lightcnn.compare_latency`), then :func:`engine_speedups` divides. Compile
    every compiled model at each batch size before calling (its first call compiles).

    Args:
        models: row name -> ``(model, engine tag)``; an ONNX Runtime session as a
            :class:`lightcnn.deploy.OnnxModel`.
        fp32: engine tag -> the row name of its float32 model (see :func:`engine_speedups`).
        example: a batch of real inputs, at least ``max(batch_sizes)`` long; batch ``b``
            times ``example[:b]`` (random inputs when ``None``).
        number, until_stable, max_number: see :func:`lightcnn.time_interleaved`.

    Returns:
        One dict per row: ``name``, ``engine``, and per batch size ``b``:
        ``latency_b{b}``, ``vs_eager_fp32_b{b}``, ``vs_engine_fp32_b{b}``. Show them with
        :func:`engine_table`.
    """
    if not isinstance(models, Mapping) or not models or not all(
            isinstance(v, tuple) and len(v) == 2 for v in models.values()):
        raise ValueError("models must be a non-empty dict of name -> (model, engine tag)")
    if not isinstance(batch_sizes, (tuple, list)) or not batch_sizes:
        raise ValueError(f"batch_sizes must be a non-empty tuple of ints, got {batch_sizes!r}")
    engines = {name: engine for name, (_, engine) in models.items()}
    _check_engines(list(models), engines, fp32)
    if example is not None and (not isinstance(example, torch.Tensor)
                                or len(example) < max(batch_sizes)):
        raise ValueError(f"example must be a tensor of at least {max(batch_sizes)} inputs, got "
                         f"{getattr(example, 'shape', type(example).__name__)}")
    rows = {name: dict(name=name, engine=engine) for name, engine in engines.items()}
    for b in batch_sizes:
        latency = compare_latency({name: model for name, (model, _) in models.items()}, b,
                                  input_shape, threads, warmup, repeats,
                                  None if example is None else example[:b], number,
                                  until_stable, max_number)
        for entry in engine_speedups(latency, engines, fp32):
            row = rows[entry["name"]]
            row[f"latency_b{b}"] = entry["latency"]
            row[f"vs_eager_fp32_b{b}"] = entry["vs_eager_fp32"]
            row[f"vs_engine_fp32_b{b}"] = entry["vs_engine_fp32"]
    return list(rows.values())


def engine_table(rows: list[dict]) -> Table:
    """:func:`compare_engines`' rows as a table: per batch size, the median in ms, the
    speed-up over eager fp32 and over the row's own engine's fp32. An unstable latency
    or ratio ends in ``?``, with a footnote."""
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise ValueError("rows must be a non-empty list of dicts (as from compare_engines)")
    batch_sizes = sorted({int(k[len("latency_b"):]) for r in rows for k in r
                          if k.startswith("latency_b")})
    ms = lambda lat: f"{lat.median_ms:.3f}"
    ratio = lambda r: f"{r.value:.2f}x"
    columns = [("name", "model", str), ("engine", "engine", str)]
    for b in batch_sizes:
        columns += [(f"latency_b{b}", f"ms b={b}", ms),
                    (f"vs_eager_fp32_b{b}", f"vs eager fp32 b={b}", ratio),
                    (f"vs_engine_fp32_b{b}", f"vs same engine fp32 b={b}", ratio)]
    marked = []
    for row in rows:
        unstable = {key for key, value in row.items()
                    if isinstance(value, (Latency, Ratio)) and not value.stable}
        marked.append({**row, UNSTABLE: unstable})
    return Table(marked, columns)


def verdict(ok: bool) -> str:
    """``"met"`` when a paper's claim holds in this book's run, ``"NOT met"`` otherwise."""
    if not isinstance(ok, (bool, np.bool_)):
        raise TypeError(f"ok must be a bool (a comparison), got {type(ok).__name__}: {ok!r}")
    return "met" if ok else "NOT met"


def relative_error(approx: torch.Tensor, reference: torch.Tensor) -> float:
    """``||approx - reference|| / ||reference||`` (Frobenius norms), e.g. of a low-rank
    weight against the full one.

    Raises:
        ValueError: the shapes differ, or ``reference`` is all zeros.
    """
    if not isinstance(approx, torch.Tensor) or not isinstance(reference, torch.Tensor):
        raise TypeError(f"approx and reference must be tensors, got {type(approx).__name__} "
                        f"and {type(reference).__name__}")
    if approx.shape != reference.shape:
        raise ValueError(f"approx and reference must have one shape, got "
                         f"{tuple(approx.shape)} and {tuple(reference.shape)}")
    norm = reference.norm()
    if norm == 0:
        raise ValueError("reference is all zeros: its relative error is undefined")
    return ((approx - reference).norm() / norm).item()


def _check_values(values, least: int = 2) -> list[float]:
    """``values`` as a list of at least ``least`` finite floats (runs of several seeds)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"values must be a list of numbers (one per seed), got "
                        f"{type(values).__name__}")
    if any(isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer))
           for v in values):
        raise TypeError(f"values must be numbers, got {list(values)!r}")
    if len(values) < least or not all(math.isfinite(v) for v in values):
        raise ValueError(f"values must hold at least {least} finite numbers (a standard "
                         f"deviation needs two), got {list(values)!r}")
    return [float(v) for v in values]


def mean_std(values: Sequence[float], sign: str = "", digits: int = 2) -> str:
    """``"mean ± std"`` of runs with different seeds: the sample mean and the sample
    standard deviation ``s = sqrt(sum (x - mean)^2 / (n - 1))``, ``digits`` decimals;
    ``sign="+"`` writes the mean's sign (for differences)."""
    values = _check_values(values)
    if sign not in ("", "+"):
        raise ValueError(f"sign must be '' or '+', got {sign!r}")
    if isinstance(digits, bool) or not isinstance(digits, int) or not 0 <= digits <= 6:
        raise ValueError(f"digits must be an int in [0, 6], got {digits!r}")
    return (f"{statistics.mean(values):{sign}.{digits}f} ± "
            f"{statistics.stdev(values):.{digits}f}")


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student's t confidence interval of the mean of ``values`` (paired differences, one
    per seed): ``mean ± t_{(1 + c)/2, n - 1} s / sqrt(n)``, with ``s`` the sample standard
    deviation. With 3 seeds, ``t_{0.975, 2} = 4.303``: the interval is wide, and a
    difference it keeps on one side of 0 is one that 3 seeds can see.

    Raises:
        TypeError, ValueError: fewer than 2 finite values, or ``confidence`` not in (0, 1).
    """
    from scipy.stats import t as student_t   # local: only seed statistics need scipy

    values = _check_values(values)
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) \
            or not 0 < confidence < 1:
        raise ValueError(f"confidence must be a number in (0, 1), got {confidence!r}")
    n = len(values)
    half = student_t.ppf((1 + confidence) / 2, n - 1) * statistics.stdev(values) / math.sqrt(n)
    mean = statistics.mean(values)
    return mean - half, mean + half


def paired_verdict(values: Sequence[float], above: str, below: str, neither: str,
                   confidence: float = 0.95) -> str:
    """``above`` when the t interval of the paired differences ``values`` lies above 0,
    ``below`` when it lies below, ``neither`` when it contains 0 (:func:`t_interval`)."""
    for name, text in (("above", above), ("below", below), ("neither", neither)):
        if not isinstance(text, str):
            raise TypeError(f"{name} must be a str, got {type(text).__name__}")
    low, high = t_interval(values, confidence)
    return above if low > 0 else below if high < 0 else neither
