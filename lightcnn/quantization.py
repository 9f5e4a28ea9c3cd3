"""Quantization arithmetic: uniform and fake quantization, observers, QAT/PTQ simulation,
k-means weight sharing and product quantization.

Jacob et al., "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", arXiv 1712.05877 (affine map, exact zero, training
with fake quantization). Bengio, Leonard & Courville, "Estimating or Propagating Gradients
Through Stochastic Neurons for Conditional Computation", arXiv 1308.3432 (straight-through
estimator). Han, Mao & Dally, "Deep Compression", arXiv 1510.00149 (k-means weight
sharing). Jegou, Douze & Schmid, "Product Quantization for Nearest Neighbor Search", TPAMI
2011; Wu et al., "Quantized Convolutional Neural Networks for Mobile Devices",
arXiv 1512.06473 (product quantization of CNN weights).

A b-bit uniform quantizer maps real ``x`` to an integer code and back,
``q = clamp(round(x / scale) + zero_point, qmin, qmax)``, ``x_hat = (q - zero_point) * scale``,
with ``[qmin, qmax] = [0, 2^b - 1]`` (unsigned) or ``[-2^(b-1), 2^(b-1) - 1]`` (signed):
error at most ``scale / 2`` inside ``[(qmin - zero_point) * scale, (qmax - zero_point) *
scale]``, clipping outside. Observers pick ``(scale, zero_point)`` from calibration data;
fake quantization (quantize, then dequantize in float) simulates the arithmetic, so
accuracy at 8, 6, 4, 3 or 2 bits is measured without integer kernels, and with a
straight-through gradient the network trains through it (QAT). Weight sharing stores b-bit
indices into a float32 codebook of ``2^b`` k-means centroids (non-uniform levels); product
quantization shares whole sub-vectors. Sizes count the indices bit-packed. Real int8
kernels (torchao) come in a later module.

Taught in chapters/05_quantization.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_bool, check_ints, check_module, check_str

__all__ = [
    "UNIFORM_BITS", "CODE_BITS", "qrange", "qparams", "quantize", "dequantize", "fake_quantize",
    "Observer", "MinMaxObserver", "PercentileObserver", "MSEObserver", "OBSERVERS",
    "quantization_mse",
    "FakeQuantize", "QuantWrapper", "prepare_qat", "ptq_simulate", "pack_bits", "unpack_bits",
    "kmeans_codebook", "kmeans_quantize", "finetune_centroids_grad", "product_quantize",
    "product_dequantize", "uniform_bytes", "uniform_model_bytes", "kmeans_bytes", "product_bytes",
]

UNIFORM_BITS = (2, 8)  # uniform quantizers; 1 bit is binarization, a chapter of its own
CODE_BITS = (1, 8)     # bit packing and codebooks
_EPS = torch.finfo(torch.float32).eps


# ---------------------------------------------------------------- argument checks

def _check_bits(bits: int, allowed: tuple[int, int] = UNIFORM_BITS, arg: str = "bits") -> int:
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) \
            or not allowed[0] <= bits <= allowed[1]:
        raise ValueError(f"{arg} must be an int in [{allowed[0]}, {allowed[1]}], got {bits!r}")
    return int(bits)


def _check_int(value: int, arg: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{arg} must be an int >= {low}, got {value!r}")
    return int(value)


def _check_tensor(t: torch.Tensor, arg: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{arg} must be a torch.Tensor, got {type(t).__name__}")
    if t.numel() == 0:
        raise ValueError(f"{arg} must have at least one entry, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{arg} must be finite, got NaN or infinity")


def _check_integers(t: torch.Tensor, arg: str) -> None:
    if not isinstance(t, torch.Tensor) or t.is_floating_point() or t.is_complex() \
            or t.dtype == torch.bool:
        got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
        raise TypeError(f"{arg} must be an integer torch.Tensor, got {got}")


def _check_axis(axis: int, ndim: int, arg: str) -> None:
    if isinstance(axis, bool) or not isinstance(axis, int) or not -ndim <= axis < ndim:
        raise ValueError(f"{arg} must be an int in [{-ndim}, {ndim - 1}] for a {ndim}-D tensor, "
                         f"got {axis!r}")


def _as_param(p: float | torch.Tensor, like: torch.Tensor, axis: int | None, arg: str,
              dtype: torch.dtype) -> torch.Tensor:
    """``scale`` or ``zero_point`` as a tensor that broadcasts against ``like``."""
    if isinstance(p, bool) or not isinstance(p, (numbers.Real, torch.Tensor)):
        raise TypeError(f"{arg} must be a number or a tensor, got {type(p).__name__}")
    p = torch.as_tensor(p).detach().to(dtype=dtype, device=like.device)
    if axis is not None:
        _check_axis(axis, like.dim(), "axis")
        if p.dim() > 1 or p.numel() not in (1, like.shape[axis]):
            raise ValueError(f"{arg} must have 1 or {like.shape[axis]} entries (one per channel "
                             f"along axis {axis}), got shape {tuple(p.shape)}")
        # (C,) -> (1, .., C, .., 1): one value per slice along axis
        return p.reshape([-1 if d == axis % like.dim() else 1 for d in range(like.dim())])
    # broadcasting must not grow x: p's dims, right-aligned, are 1 or equal to x's
    if p.dim() > like.dim() or any(a not in (1, b) for a, b in
                                   zip(p.shape[::-1], like.shape[::-1])):
        raise ValueError(f"{arg} of shape {tuple(p.shape)} does not broadcast to shape "
                         f"{tuple(like.shape)}; per channel use shape (C, 1, 1, 1) or pass axis")
    return p


def _check_number_or_tensor(value, arg: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, torch.Tensor)):
        raise TypeError(f"{arg} must be a number or a tensor, got {type(value).__name__}: "
                        f"{value!r}")


def _check_scale(s: torch.Tensor) -> None:
    if not (torch.isfinite(s).all() and (s > 0).all()):
        raise ValueError(f"scale must be positive and finite, got values down to {s.min().item()}")


def _prepare(x, scale, zero_point, bits, signed, axis):
    """Checked ``(scale, zero_point, qmin, qmax)`` for quantize and fake_quantize."""
    _check_tensor(x, "x")
    check_bool("signed", signed)
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    qmin, qmax = qrange(bits, signed)
    s = _as_param(scale, x, axis, "scale", x.dtype)
    _check_scale(s)
    zp = _as_param(zero_point, x, axis, "zero_point", x.dtype)
    if not torch.equal(zp, zp.round()) or zp.min() < qmin or zp.max() > qmax:
        raise ValueError(f"zero_point must hold integers in [{qmin}, {qmax}] (bits={bits}, "
                         f"signed={signed}), got values in [{zp.min().item()}, {zp.max().item()}]")
    return s, zp, qmin, qmax


# ---------------------------------------------------------------- uniform quantization

def qrange(bits: int, signed: bool = False) -> tuple[int, int]:
    """``(qmin, qmax)``: ``[0, 2^b - 1]`` unsigned, ``[-2^(b-1), 2^(b-1) - 1]`` signed."""
    bits = _check_bits(bits)
    check_bool("signed", signed)
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def qparams(x_min: float | torch.Tensor, x_max: float | torch.Tensor, bits: int,
            symmetric: bool, signed: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, zero_point)`` mapping ``[x_min, x_max]`` onto the b-bit codes.

    The range is first widened to include 0, so that zero (padding, ReLU outputs) is
    exactly representable. Asymmetric: ``scale = (max - min) / (qmax - qmin)``,
    ``zero_point = clamp(round(qmin - min / scale), qmin, qmax)``. Symmetric:
    ``scale = max(|min|, |max|) / qmax``, ``zero_point = 0``; signed, ``qmax = 2^(b-1) - 1``,
    so the grid is symmetric about 0 and the code ``-2^(b-1)`` stays unused (the
    "restricted" range; :func:`quantize` still accepts it); unsigned, ``qmax = 2^b - 1``
    (for non-negative data such as ReLU outputs: negatives clip to 0). Rounding ``zero_point`` may
    shift the representable range by up to ``scale / 2``, so every ``x`` in
    ``[x_min, x_max]`` is still within ``scale / 2`` of a level. A zero-width range gets
    ``scale = float32 eps``, never 0.

    Args:
        x_min, x_max: numbers or tensors (one per channel), ``x_min <= x_max``, finite.
        bits: code width, in ``UNIFORM_BITS``.
        symmetric: ``zero_point = 0`` (symmetric) or affine (asymmetric).
        signed: signed codes; None means signed when symmetric, unsigned otherwise.

    Returns:
        float32 ``scale`` and int64 ``zero_point`` of the broadcast shape of the range ends.
    """
    bits = _check_bits(bits)
    _check_number_or_tensor(x_min, "x_min")
    _check_number_or_tensor(x_max, "x_max")
    check_bool("symmetric", symmetric)
    check_bool("signed", signed, none=True)
    signed = bool(symmetric) if signed is None else bool(signed)
    lo, hi = torch.broadcast_tensors(*(torch.as_tensor(v).detach().float() for v in (x_min, x_max)))
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise ValueError("x_min and x_max must be finite, got NaN or infinity")
    if (lo > hi).any():
        raise ValueError(f"x_min must be <= x_max, got x_min={lo.tolist()}, x_max={hi.tolist()}")
    qmin, qmax = qrange(bits, signed)
    # widen to include 0: zero then falls exactly on the integer zero_point
    lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
    scale = torch.maximum(-lo, hi) / qmax if symmetric else (hi - lo) / (qmax - qmin)
    # a zero-width range (all zeros) still needs a positive step, or x / scale is NaN
    scale = torch.where(scale > 0, scale, torch.full_like(scale, _EPS))
    if symmetric:
        return scale, torch.zeros_like(scale, dtype=torch.int64)
    return scale, torch.round(qmin - lo / scale).clamp(qmin, qmax).to(torch.int64)


def quantize(x: torch.Tensor, scale: float | torch.Tensor, zero_point: int | torch.Tensor,
             bits: int, signed: bool = False, axis: int | None = None) -> torch.Tensor:
    """Integer codes ``q = clamp(round(x / scale) + zero_point, qmin, qmax)``.

    ``round`` is torch's, halves to even (as ``torch.quantize_per_tensor``).

    Args:
        x: real values, floating point, finite, any shape.
        scale: step, positive: a number, or a tensor broadcastable to ``x`` (per channel:
            ``(C, 1, 1, 1)`` for a conv weight), or ``(C,)`` together with ``axis``.
        zero_point: the code of real 0, integers in ``[qmin, qmax]``, shaped like ``scale``.
        bits: code width, in ``UNIFORM_BITS``.
        signed: signed codes (see :func:`qrange`).
        axis: the dimension of ``x`` that a 1-D ``scale``/``zero_point`` runs along.

    Returns:
        An int64 tensor shaped like ``x``.
    """
    s, zp, qmin, qmax = _prepare(x, scale, zero_point, bits, signed, axis)
    return torch.clamp(torch.round(x.detach() / s) + zp, qmin, qmax).to(torch.int64)


def dequantize(q: torch.Tensor, scale: float | torch.Tensor, zero_point: int | torch.Tensor,
               axis: int | None = None) -> torch.Tensor:
    """``x_hat = (q - zero_point) * scale`` in float32 (arguments as in :func:`quantize`)."""
    _check_integers(q, "q")
    s = _as_param(scale, q, axis, "scale", torch.float32)
    _check_scale(s)
    zp = _as_param(zero_point, q, axis, "zero_point", torch.float32)
    if not torch.equal(zp, zp.round()):
        raise ValueError("zero_point must hold integers, got non-integer or NaN values")
    return (q.float() - zp) * s


class _FakeQuantSTE(torch.autograd.Function):
    """Quantize-dequantize in float; backward is the clipped straight-through estimator."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax):
        q = torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)
        lo, hi = (qmin - zero_point) * scale, (qmax - zero_point) * scale
        ctx.save_for_backward((x >= lo) & (x <= hi))
        return (q - zero_point) * scale

    @staticmethod
    def backward(ctx, grad):
        # d round(u)/du is 0 almost everywhere: pass the gradient through as if it were 1,
        # except where the clamp cut x off (clipped STE)
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


def fake_quantize(x: torch.Tensor, scale: float | torch.Tensor, zero_point: int | torch.Tensor,
                  bits: int, signed: bool = False, axis: int | None = None) -> torch.Tensor:
    """``dequantize(quantize(x))`` in ``x``'s dtype, differentiable in ``x``.

    Gradient (clipped straight-through estimator): 1 where ``(qmin - zero_point) * scale
    <= x <= (qmax - zero_point) * scale``, 0 outside; none for ``scale`` and ``zero_point``.
    Arguments as in :func:`quantize`.
    """
    s, zp, qmin, qmax = _prepare(x, scale, zero_point, bits, signed, axis)
    return _FakeQuantSTE.apply(x, s, zp, qmin, qmax)


# ---------------------------------------------------------------- observers

class Observer:
    """Calibration observer: ``update(x)`` for each batch, then ``scale_zero_point()``.

    Every observer keeps the running min and max of each channel; a subclass picks the
    clipping range ``[lo, hi]`` handed to :func:`qparams` in :meth:`clip_range`. The running
    statistics (what :meth:`update` accumulates, tensors only) come out of
    :meth:`state_dict` and go back with :meth:`load_state_dict`, so a training run resumes.

    Args:
        bits: code width, in ``UNIFORM_BITS``.
        symmetric: symmetric or asymmetric mapping (see :func:`qparams`).
        per_channel_axis: the dimension of ``x`` holding channels (one range each), or
            None for one range over the whole tensor.
        signed: signed codes; None means signed when symmetric.
    """

    def __init__(self, bits: int = 8, symmetric: bool = False,
                 per_channel_axis: int | None = None, signed: bool | None = None):
        self.bits = _check_bits(bits)
        if per_channel_axis is not None and (isinstance(per_channel_axis, bool)
                                             or not isinstance(per_channel_axis, int)):
            raise ValueError(f"per_channel_axis must be an int or None, got {per_channel_axis!r}")
        check_bool("symmetric", symmetric)
        check_bool("signed", signed, none=True)
        self.symmetric, self.per_channel_axis = bool(symmetric), per_channel_axis
        self.signed = self.symmetric if signed is None else bool(signed)
        self.min: torch.Tensor | None = None
        self.max: torch.Tensor | None = None

    # the keys of state_dict(): the statistics this class accumulates
    _STATE: tuple[str, ...] = ("min", "max")

    def update(self, x: torch.Tensor) -> None:
        """Add a batch (or a weight) to the statistics.

        Raises:
            ValueError: ``x`` empty or not finite, no such axis, or a channel count that
                differs from earlier batches.
        """
        _check_tensor(x, "x")
        x, axis = x.detach().float(), self.per_channel_axis
        if axis is not None:
            _check_axis(axis, x.dim(), "per_channel_axis")
        # (.., C, ..) -> (C, N): one row per channel (one row in all when per tensor)
        rows = x.reshape(1, -1) if axis is None else x.movedim(axis, 0).reshape(x.shape[axis], -1)
        if self.min is not None and rows.shape[0] != self.min.numel():
            raise ValueError(f"x has {rows.shape[0]} channels, earlier batches had "
                             f"{self.min.numel()}")
        if self.min is not None and self.min.device != rows.device:
            # statistics loaded on another device than the data's (a checkpoint read on the
            # CPU into a model already on the GPU) follow the data
            self._map_tensors(lambda t: t.to(rows.device))
        self._observe(rows)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The running statistics: ``min`` and ``max``, ``(C,)`` (``(1,)`` per tensor), and
        for sample observers ``sample`` ``(C, n)`` and ``stride`` (0-d: every
        ``stride``-th value is kept). Empty before the first :meth:`update`. The tensors
        are the observer's own (it replaces them, never changes them in place)."""
        return {} if self.min is None else {"min": self.min, "max": self.max}

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Continue from the statistics :meth:`state_dict` returned (copies of them); an
        empty one forgets every batch seen so far.

        Raises:
            TypeError: not a mapping of tensors.
            ValueError: other keys than this observer's, or shapes that do not fit it or
                each other (another channel count, several channels per tensor).
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping of name -> tensor (an "
                            f"Observer.state_dict()), got {type(state_dict).__name__}")
        if set(state_dict) not in (set(), set(self._STATE)):
            raise ValueError(f"state_dict must hold {list(self._STATE)} (or nothing: an "
                             f"observer that has seen no data), got {sorted(state_dict)}")
        for key, value in state_dict.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"state_dict[{key!r}] must be a torch.Tensor, got "
                                f"{type(value).__name__}")
        if state_dict:
            self._check_state(state_dict)
        self._load({k: v.detach().clone() for k, v in state_dict.items()})

    def _check_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Raise ``ValueError`` where a full :meth:`state_dict` does not fit this observer."""
        lo, hi = state["min"], state["max"]
        if lo.dim() != 1 or lo.shape != hi.shape:
            raise ValueError(f"state_dict's min and max must be 1-D, one value per channel, "
                             f"of one shape; got {tuple(lo.shape)} and {tuple(hi.shape)}")
        if self.per_channel_axis is None and lo.numel() != 1:
            raise ValueError(f"state_dict holds {lo.numel()} channels; an observer with "
                             "per_channel_axis=None keeps one range")

    def _load(self, state: dict[str, torch.Tensor]) -> None:
        """Set the statistics from a checked, copied :meth:`state_dict` (empty: none)."""
        self.min, self.max = state.get("min"), state.get("max")

    def _map_tensors(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace every statistic ``t`` by ``fn(t)`` (another device, a float dtype); the
        integer ones (the sample's stride) are counts and stay as they are."""
        self._load({k: fn(v) if v.is_floating_point() else v
                    for k, v in self.state_dict().items()})

    def _observe(self, rows: torch.Tensor) -> None:
        lo, hi = rows.min(dim=1).values, rows.max(dim=1).values
        first = self.min is None
        self.min = lo if first else torch.minimum(self.min, lo)
        self.max = hi if first else torch.maximum(self.max, hi)

    def clip_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lo, hi)`` per channel, before :func:`qparams` widens it to include 0."""
        if self.min is None:
            raise ValueError(f"{type(self).__name__}: calibration without data; "
                             "call update(x) on at least one batch first")
        return self._range()

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.min, self.max

    def scale_zero_point(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero_point)``, 0-d tensors (or ``(C,)`` per channel).

        Raises:
            ValueError: calibration without data (no :meth:`update` yet).
        """
        scale, zero_point = qparams(*self.clip_range(), self.bits, self.symmetric, self.signed)
        if self.per_channel_axis is None:
            return scale.reshape(()), zero_point.reshape(())
        return scale, zero_point

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(bits={self.bits}, symmetric={self.symmetric}, "
                f"per_channel_axis={self.per_channel_axis}, signed={self.signed})")


class MinMaxObserver(Observer):
    """Range = running ``[min, max]``, or an exponential moving average of batch ranges.

    With ``averaging_constant = c``: ``min <- min + c * (batch_min - min)`` (same for max),
    from the first batch's range on. ``c = 0.01`` is PyTorch's default for QAT activations;
    ``c = 1`` follows the latest tensor only (for weights, which move every step).
    """

    def __init__(self, bits: int = 8, symmetric: bool = False,
                 per_channel_axis: int | None = None, signed: bool | None = None, *,
                 averaging_constant: float | None = None):
        super().__init__(bits, symmetric, per_channel_axis, signed)
        if averaging_constant is not None and (not isinstance(averaging_constant, numbers.Real)
                                               or not 0.0 < averaging_constant <= 1.0):
            raise ValueError("averaging_constant must be None or in (0, 1], "
                             f"got {averaging_constant!r}")
        self.averaging_constant = averaging_constant

    def _observe(self, rows: torch.Tensor) -> None:
        c = self.averaging_constant
        if c is None or self.min is None:
            return super()._observe(rows)
        self.min = self.min + c * (rows.min(dim=1).values - self.min)
        self.max = self.max + c * (rows.max(dim=1).values - self.max)


class _SampleObserver(Observer):
    """Also keeps a bounded, deterministic sample of each channel for range searches."""

    _STATE = ("min", "max", "sample", "stride")

    def __init__(self, bits: int = 8, symmetric: bool = False,
                 per_channel_axis: int | None = None, signed: bool | None = None, *,
                 max_samples: int = 2**16):
        super().__init__(bits, symmetric, per_channel_axis, signed)
        self.max_samples = _check_int(max_samples, "max_samples", 1)
        self.sample: torch.Tensor | None = None
        self._stride = 1

    def _observe(self, rows: torch.Tensor) -> None:
        super()._observe(rows)
        # keep every stride-th value; doubling the stride (and thinning what is kept) when
        # the sample outgrows max_samples keeps one sampling rate for all batches
        new = rows[:, :: self._stride]
        self.sample = new if self.sample is None else torch.cat([self.sample, new], dim=1)
        while self.sample.shape[1] > max(1, self.max_samples // rows.shape[0]):
            self.sample, self._stride = self.sample[:, ::2], self._stride * 2

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = super().state_dict()
        if state:   # the stride as a tensor: state dicts and weights_only files hold tensors
            state.update(sample=self.sample, stride=torch.tensor(self._stride))
        return state

    def _check_state(self, state: Mapping[str, torch.Tensor]) -> None:
        super()._check_state(state)
        sample, stride, channels = state["sample"], state["stride"], state["min"].numel()
        if sample.dim() != 2 or sample.shape[0] != channels:
            raise ValueError(f"state_dict's sample must be (C, n) with C = {channels} channels, "
                             f"got shape {tuple(sample.shape)}")
        if stride.numel() != 1 or stride.is_floating_point() or int(stride) < 1:
            raise ValueError(f"state_dict's stride must be one integer >= 1, got {stride!r}")

    def _load(self, state: dict[str, torch.Tensor]) -> None:
        super()._load(state)
        self.sample = state.get("sample")
        self._stride = int(state["stride"]) if state else 1


class PercentileObserver(_SampleObserver):
    """Range = the ``(100 - p)``-th and ``p``-th percentiles of the observed values.

    Clipping the rarest outliers makes the step finer for the bulk. Percentiles (linear
    interpolation) are taken over a sample of at most ``max_samples`` values.
    """

    def __init__(self, bits: int = 8, symmetric: bool = False,
                 per_channel_axis: int | None = None, signed: bool | None = None, *,
                 percentile: float = 99.99, max_samples: int = 2**16):
        super().__init__(bits, symmetric, per_channel_axis, signed, max_samples=max_samples)
        if not isinstance(percentile, numbers.Real) or not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile!r}")
        self.percentile = float(percentile)

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.percentile / 100.0
        return torch.quantile(self.sample, 1.0 - p, dim=1), torch.quantile(self.sample, p, dim=1)


class MSEObserver(_SampleObserver):
    """Range = ``f * [min, max]``, ``f`` in ``{1, (grid-1)/grid, .., 1/grid}`` minimising
    ``mean((x - fake_quantize(x))^2)`` over the sample, per channel.

    ``f = 1`` (min/max) is tried first and kept on ties, so on the sample the MSE is never
    above min/max's; with outliers a smaller ``f`` trades clipping for a finer step.
    """

    def __init__(self, bits: int = 8, symmetric: bool = False,
                 per_channel_axis: int | None = None, signed: bool | None = None, *,
                 grid: int = 100, max_samples: int = 2**16):
        super().__init__(bits, symmetric, per_channel_axis, signed, max_samples=max_samples)
        self.grid = _check_int(grid, "grid", 1)

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        qmin, qmax = qrange(self.bits, self.signed)
        best_err, best_f = torch.full_like(self.min, math.inf), torch.ones_like(self.min)
        for k in range(self.grid, 0, -1):
            f = k / self.grid
            scale, zp = qparams(self.min * f, self.max * f, self.bits, self.symmetric, self.signed)
            # (C, 1) parameters against the (C, N) sample: one MSE per channel
            x_hat = _FakeQuantSTE.apply(self.sample, scale[:, None], zp[:, None].float(),
                                        qmin, qmax)
            err = (x_hat - self.sample).pow(2).mean(dim=1)
            # strict <: on ties keep the wider range (less clipping)
            best_f = torch.where(err < best_err, f, best_f)
            best_err = torch.minimum(err, best_err)
        return self.min * best_f, self.max * best_f


OBSERVERS: dict[str, type[Observer]] = {
    "minmax": MinMaxObserver, "percentile": PercentileObserver, "mse": MSEObserver}


def quantization_mse(x: torch.Tensor, bits: int, symmetric: bool, axis: int | None = None,
                     observer: str = "minmax") -> tuple[float, torch.Tensor]:
    """``mean((x - x_hat)^2)`` with ``x_hat = dequantize(quantize(x))`` at the scale that an
    observer picks from ``x`` itself, and that scale.

    For rounding alone (no clipping) and values spread over many steps the error is
    uniform on ``[-s/2, s/2]``, so the MSE is close to ``s^2 / 12``; every extra bit halves
    ``s`` and divides the MSE by about 4.

    Args:
        x: the tensor to quantize (a weight, or a batch of activations).
        bits: code width, in ``UNIFORM_BITS``.
        symmetric: symmetric signed codes (weights) or asymmetric unsigned (activations).
        axis: the channel dimension for one scale per channel, or None for one in all.
        observer: how the range is chosen: ``"minmax"``, ``"percentile"`` or ``"mse"``.

    Returns:
        ``(mse, scale)``: a float, and the scale (0-d, or ``(C,)`` per channel).
    """
    check_str("observer", observer, OBSERVERS)
    _check_tensor(x, "x")
    if axis is not None:
        _check_axis(axis, x.dim(), "axis")
    obs = OBSERVERS[observer](bits, symmetric, per_channel_axis=axis)
    obs.update(x)
    scale, zero_point = obs.scale_zero_point()
    q = quantize(x, scale, zero_point, bits, signed=obs.signed, axis=axis)
    x_hat = dequantize(q, scale, zero_point, axis=axis)
    return (x.detach().float() - x_hat).pow(2).mean().item(), scale


# ---------------------------------------------------------------- simulated quantization

class FakeQuantize(nn.Module):
    """Observe, then fake-quantize: the quantizer that QAT and simulated PTQ insert.

    In train mode with ``observer_enabled``, each forward first updates the observer, and
    ``(scale, zero_point)`` (buffers) are recomputed from it; in eval mode, or once frozen,
    they stay fixed. Gradient: the clipped STE of :func:`fake_quantize`. Extra keyword
    arguments go to ``observer_cls`` (e.g. ``averaging_constant``).

    The state dict holds, besides ``scale`` and ``zero_point`` (once computed), what makes
    the next forward what it would have been, so a checkpoint resumes training bit for
    bit: the flags ``observer_enabled``, ``fake_quant_enabled`` and ``stale`` (0-d bool
    tensors; ``stale``: new statistics since ``scale`` was computed) and the observer's
    running statistics as ``observer.<name>`` (:meth:`Observer.state_dict`: ``min``,
    ``max``, sample observers' ``sample`` and ``stride``; none before the first batch, and
    none once frozen: a frozen quantizer no longer observes, and loads with an empty one).
    A state dict without the flags (saved before they were stored) still loads: the
    observer keeps its own statistics and the loaded pair is used until new ones arrive.
    """

    # the flags stored in the state dict, as the attribute each one sets
    _FLAGS = {"observer_enabled": "observer_enabled", "fake_quant_enabled": "fake_quant_enabled",
              "stale": "_stale"}

    def __init__(self, bits: int = 8, symmetric: bool = False,
                 per_channel_axis: int | None = None,
                 observer_cls: type[Observer] = MinMaxObserver, signed: bool | None = None,
                 **observer_kwargs):
        super().__init__()
        if not (isinstance(observer_cls, type) and issubclass(observer_cls, Observer)):
            raise TypeError(f"observer_cls must be an Observer subclass, got {observer_cls!r}")
        self.observer = observer_cls(bits, symmetric, per_channel_axis, signed, **observer_kwargs)
        self.observer_enabled, self.fake_quant_enabled, self._stale = True, True, True
        self.register_buffer("scale", None)
        self.register_buffer("zero_point", None)

    def freeze(self) -> None:
        """Stop observing; fix ``(scale, zero_point)`` from the statistics so far."""
        self.observer_enabled, self._stale = False, False
        self.scale, self.zero_point = self.observer.scale_zero_point()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.observer_enabled:
            self.observer.update(x)
            self._stale = True
        if not self.fake_quant_enabled:
            return x
        if self._stale:  # the (MSE: costly) range search runs only after new statistics
            self.scale, self.zero_point = self.observer.scale_zero_point()
            self._stale = False
        o = self.observer
        return fake_quantize(x, self.scale, self.zero_point, o.bits, o.signed, o.per_channel_axis)

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        # the flags and the observer's statistics are plain attributes, not buffers; stored
        # as tensors beside them, since the zoo's safetensors files hold nothing else
        for key, attribute in self._FLAGS.items():
            destination[prefix + key] = torch.tensor(getattr(self, attribute))
        # a frozen quantizer no longer observes: its observer is not stored (a calibrated
        # PTQ model would otherwise carry every sample an MSE or percentile observer kept)
        if self.observer_enabled:
            for key, value in self.observer.state_dict().items():
                destination[f"{prefix}observer.{key}"] = value

    def _apply(self, fn, recurse=True) -> FakeQuantize:
        # .to(), .cuda(), .double() reach buffers through _apply; the observer's statistics
        # go the same way, so a model moved back to the CPU saves no GPU tensor
        self.observer._map_tensors(fn)
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        # The flags and the observer's statistics are not buffers: taken out of the (per
        # module) copy of the state dict here, so nn.Module does not call them unexpected
        flags = {k: state_dict.pop(prefix + k) for k in self._FLAGS if prefix + k in state_dict}
        observed = ({k[len(prefix + "observer."):]: state_dict.pop(k) for k in list(state_dict)
                     if k.startswith(prefix + "observer.")} if flags else {})
        # A quantizer that has observed nothing holds no (scale, zero_point) yet: give the
        # buffers the stored shapes (one value per tensor, or per channel), so a QAT model
        # saved after training loads into a fresh prepare_qat copy. The loaded pair is used
        # until new statistics arrive (a forward in train mode), as the saved model used it.
        stored = {n: state_dict.get(prefix + n) for n in ("scale", "zero_point")}
        for name, value in stored.items():
            if value is None or getattr(self, name) is not None:
                continue
            if self.observer.per_channel_axis is None and value.numel() != 1:
                error_msgs.append(f"size mismatch for {prefix}{name}: a per-tensor quantizer "
                                  f"holds one value, the checkpoint {tuple(value.shape)}")
                continue
            setattr(self, name, torch.empty_like(value))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if not flags:   # the first format: no flags, no statistics (the observer keeps its own)
            if all(getattr(self, n) is not None for n in stored) and all(
                    v is not None for v in stored.values()):
                self._stale = False
            return
        missing_keys.extend(prefix + k for k in self._FLAGS if k not in flags)
        try:
            self.observer.load_state_dict(observed)
        except (TypeError, ValueError) as err:
            error_msgs.append(f"{prefix}observer: {err}")
            return
        for key, value in flags.items():
            setattr(self, self._FLAGS[key], bool(value))

    def extra_repr(self) -> str:
        return repr(self.observer)


class QuantWrapper(nn.Module):
    """A ``Conv2d`` or ``Linear`` computed on fake-quantized input and weight.

    ``y = module(input_fake_quant(x))`` with ``weight_fake_quant(module.weight)`` as the
    weight; the bias stays float (real kernels add it in int32). Masks from
    ``torch.nn.utils.prune`` must be removed first (the forward pre-hook is bypassed).
    """

    def __init__(self, module: nn.Conv2d | nn.Linear, weight_fake_quant: FakeQuantize,
                 input_fake_quant: FakeQuantize):
        super().__init__()
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            raise TypeError(f"module must be nn.Conv2d or nn.Linear, got {type(module).__name__}")
        check_module("weight_fake_quant", weight_fake_quant)
        check_module("input_fake_quant", input_fake_quant)
        self.module, self.weight_fake_quant = module, weight_fake_quant
        self.input_fake_quant = input_fake_quant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w = self.input_fake_quant(x), self.weight_fake_quant(self.module.weight)
        if isinstance(self.module, nn.Conv2d):
            return self.module._conv_forward(x, w, self.module.bias)
        return F.linear(x, w, self.module.bias)


def _wrap_layers(model: nn.Module, weight_bits: int, activation_bits: int, per_channel: bool,
                 make: Callable[..., FakeQuantize], edge_bits: int | None = None) -> nn.Module:
    """A deep copy with every Conv2d/Linear in a :class:`QuantWrapper`: weights symmetric
    signed (per output channel, axis 0, when ``per_channel``), inputs asymmetric unsigned;
    with ``edge_bits``, the first and the last of them (in module order) at that width."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_bits(weight_bits, arg="weight_bits")
    _check_bits(activation_bits, arg="activation_bits")
    check_bool("per_channel", per_channel)
    if edge_bits is not None:
        _check_bits(edge_bits, arg="edge_bits")
    model = copy.deepcopy(model)

    def wrap(layer, w_bits=weight_bits, a_bits=activation_bits):
        return QuantWrapper(layer, make(w_bits, True, 0 if per_channel else None, weight=True),
                            make(a_bits, False, None, weight=False))

    if isinstance(model, (nn.Conv2d, nn.Linear)):
        return wrap(model)
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    edges = {names[0], names[-1]} if edge_bits is not None and names else set()
    for name in names:
        parent, _, child = name.rpartition(".")
        layer = model.get_submodule(name)
        setattr(model.get_submodule(parent), child,
                wrap(layer, edge_bits, edge_bits) if name in edges else wrap(layer))
    return model


def prepare_qat(model: nn.Module, weight_bits: int = 8, activation_bits: int = 8,
                per_channel: bool = True, edge_bits: int | None = None) -> nn.Module:
    """A copy of ``model`` with every Conv2d and Linear wrapped for quantization-aware training.

    Weights: symmetric signed, per output channel when ``per_channel``, range of the
    current weight at each training forward (``averaging_constant=1``): with ``b`` bits the
    codes run over ``[-(2^(b-1) - 1), 2^(b-1) - 1]``, so 2 bits give three levels, a
    ternary grid. Input activations: asymmetric unsigned, moving average of batch ranges
    (constant 0.01, PyTorch's default). Run one forward in train mode before evaluating:
    eval uses the last training ranges.

    Args:
        edge_bits: the first and the last Conv2d/Linear (in module order: the layer that
            sees the pixels and the classifier) quantized to this many bits, weights and
            inputs, instead of ``weight_bits``/``activation_bits``; None: like the others.
    """
    return _wrap_layers(model, weight_bits, activation_bits, per_channel,
                        lambda bits, sym, axis, weight: FakeQuantize(
                            bits, sym, axis, averaging_constant=1.0 if weight else 0.01),
                        edge_bits)


def ptq_simulate(model: nn.Module, calib_batches: Iterable[torch.Tensor | tuple],
                 weight_bits: int = 8, activation_bits: int = 8, per_channel: bool = True,
                 observer: str = "minmax") -> nn.Module:
    """Simulated post-training quantization: a copy with calibrated, frozen fake quantizers.

    Quantizers as in :func:`prepare_qat`, built from ``OBSERVERS[observer]`` (min/max is
    the running one). Calibration runs the copy in eval mode with fake quantization off
    (float activations are observed, as in PyTorch), then freezes every quantizer, so
    evaluation or further training never moves the ranges.

    Args:
        model: the float network (not modified).
        calib_batches: tensors ``x`` or ``(x, y, ..)`` tuples, e.g. a DataLoader.
        weight_bits, activation_bits: code widths, in ``UNIFORM_BITS``.
        per_channel: one weight range per output channel.
        observer: ``"minmax"``, ``"percentile"`` or ``"mse"``.

    Raises:
        ValueError: bad bits or observer name, or no batch (calibration without data).
    """
    check_str("observer", observer, OBSERVERS)
    if isinstance(calib_batches, (str, bytes)) or not isinstance(calib_batches, Iterable):
        raise TypeError("calib_batches must be an iterable of batches (a DataLoader, a list "
                        f"of tensors), got {type(calib_batches).__name__}")
    cls = OBSERVERS[observer]
    qmodel = _wrap_layers(model, weight_bits, activation_bits, per_channel,
                          lambda bits, sym, axis, weight: FakeQuantize(bits, sym, axis, cls))
    quantizers = [m for m in qmodel.modules() if isinstance(m, FakeQuantize)]
    # BatchNorm and Dropout in eval mode; only the quantizers train, i.e. observe
    qmodel.eval()
    for fq in quantizers:
        fq.train()
        fq.fake_quant_enabled = False
    seen = 0
    with torch.no_grad():
        for batch in calib_batches:
            qmodel(batch[0] if isinstance(batch, (tuple, list)) else batch)
            seen += 1
    if seen == 0:
        raise ValueError("calib_batches is empty: calibration without data")
    for fq in quantizers:
        fq.eval()
        fq.fake_quant_enabled = True
        fq.freeze()
    return qmodel


# ---------------------------------------------------------------- bit packing

def pack_bits(q: torch.Tensor, bits: int) -> bytes:
    """Codes in ``[0, 2^bits)`` packed densely into ``ceil(numel * bits / 8)`` bytes.

    Little-endian bit order: code ``i`` fills stream bits ``i*bits .. i*bits + bits - 1``,
    least significant bit first, and stream bit ``k`` is bit ``k % 8`` (0 = least
    significant) of byte ``k // 8``; the last byte is zero-padded. Pack signed codes as
    ``q - qmin``.
    """
    bits = _check_bits(bits, CODE_BITS)
    _check_integers(q, "q")
    q = q.detach().long()  # compare in int64: 2^8 wraps to 0 in uint8
    if q.numel() and (q.min() < 0 or q.max() >= 2**bits):
        raise ValueError(f"q must hold codes in [0, {2**bits - 1}] for bits={bits}, "
                         f"got values in [{q.min().item()}, {q.max().item()}]")
    values = q.cpu().reshape(-1).numpy().astype(np.uint8)
    # (n,) -> (n, bits): bit j of each code, least significant first
    planes = (values[:, None] >> np.arange(bits, dtype=np.uint8)) & 1
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def unpack_bits(blob: bytes, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: a 1-D int64 tensor of ``numel`` codes."""
    bits, numel = _check_bits(bits, CODE_BITS), _check_int(numel, "numel", 0)
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise TypeError(f"blob must be bytes, got {type(blob).__name__}")
    if len(blob) != math.ceil(numel * bits / 8):
        raise ValueError(f"blob must have ceil({numel} * {bits} / 8) = "
                         f"{math.ceil(numel * bits / 8)} bytes, got {len(blob)}")
    stream = np.unpackbits(np.frombuffer(bytes(blob), dtype=np.uint8), bitorder="little")
    # (numel * bits,) -> (numel, bits) -> sum_j bit_j * 2^j
    planes = stream[: numel * bits].reshape(numel, bits).astype(np.int64)
    return torch.from_numpy(planes @ (1 << np.arange(bits, dtype=np.int64)))


# ---------------------------------------------------------------- weight sharing

def _nearest_1d(w: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    # on a line, sorted centroids split it at their midpoints: a binary search replaces
    # the (n, k) distance matrix (a value on a midpoint goes to the lower centroid)
    order = torch.argsort(codebook, stable=True)
    c = codebook[order]
    return order[torch.searchsorted((c[1:] + c[:-1]) / 2, w)]


def kmeans_codebook(weight: torch.Tensor, bits: int, iters: int = 20,
                    init: str = "linear") -> tuple[torch.Tensor, torch.Tensor]:
    """1-D k-means (Lloyd) with ``k = 2^bits`` centroids over all entries of ``weight``.

    Each step assigns every weight to its nearest centroid, then moves each centroid to
    the mean of its weights (an empty cluster keeps its centroid), until no assignment
    changes or after ``iters`` steps. ``init="linear"`` spaces the centroids evenly over
    ``[min, max]``, Han et al.'s best as it keeps the rare large weights; ``"density"``
    places them at evenly spaced quantiles. Deterministic.

    Returns:
        ``codebook`` ``(2^bits,)`` in ``weight``'s dtype and int64 ``indices`` in
        ``[0, 2^bits)`` shaped like ``weight``, nearest to the returned codebook.
    """
    _check_tensor(weight, "weight")
    bits, iters = _check_bits(bits, CODE_BITS), _check_int(iters, "iters", 0)
    if init not in ("linear", "density"):
        raise ValueError(f"init must be 'linear' or 'density', got {init!r}")
    w, k = weight.detach().reshape(-1).double(), 2**bits
    if init == "linear":
        codebook = torch.linspace(w.min().item(), w.max().item(), k, dtype=torch.float64)
    else:
        codebook = torch.quantile(w, torch.linspace(0.0, 1.0, k, dtype=torch.float64))
    indices = _nearest_1d(w, codebook)
    for _ in range(iters):
        # Lloyd step: the mean of a cluster is the value that minimises its squared error
        counts = torch.bincount(indices, minlength=k)
        sums = torch.zeros(k, dtype=torch.float64).scatter_add_(0, indices, w)
        codebook = torch.where(counts > 0, sums / counts.clamp(min=1), codebook)
        new = _nearest_1d(w, codebook)
        if torch.equal(new, indices):
            break
        indices = new
    return codebook.to(weight.dtype), indices.reshape(weight.shape)


def kmeans_quantize(weight: torch.Tensor, bits: int, iters: int = 20,
                    init: str = "linear") -> torch.Tensor:
    """``codebook[indices]``: each entry of ``weight`` replaced by its k-means centroid."""
    codebook, indices = kmeans_codebook(weight, bits, iters, init)
    return codebook[indices]


def finetune_centroids_grad(weight_grad: torch.Tensor, indices: torch.Tensor,
                            num_centroids: int) -> torch.Tensor:
    """Per-centroid gradient ``dL/dc_k = sum over {i : indices_i = k} of dL/dw_i``.

    A centroid is every weight of its cluster at once, so its gradient is the sum of
    theirs (Han et al., section 3.3, eq. 3); fine-tuning steps ``c_k <- c_k - lr * dL/dc_k``.
    Returns a ``(num_centroids,)`` tensor in ``weight_grad``'s dtype.
    """
    _check_tensor(weight_grad, "weight_grad")
    _check_integers(indices, "indices")
    num_centroids = _check_int(num_centroids, "num_centroids", 1)
    if indices.shape != weight_grad.shape:
        raise ValueError(f"indices shape {tuple(indices.shape)} differs from weight_grad "
                         f"shape {tuple(weight_grad.shape)}")
    if indices.min() < 0 or indices.max() >= num_centroids:
        raise ValueError(f"indices must be in [0, {num_centroids - 1}], got values in "
                         f"[{indices.min().item()}, {indices.max().item()}]")
    return torch.zeros(num_centroids, dtype=weight_grad.dtype).scatter_add_(
        0, indices.reshape(-1).long(), weight_grad.reshape(-1))


def product_quantize(weight: torch.Tensor, subvector_dim: int, bits: int,
                     iters: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Product quantization of the rows of ``weight`` (a conv weight as ``(out, in*kh*kw)``).

    The ``D`` columns split into ``M = D / subvector_dim`` blocks; in each block k-means
    clusters the ``out`` sub-vectors into ``2^bits`` codewords (deterministic init: rows at
    evenly spaced positions), and each row keeps one code per block.

    Returns:
        ``codebooks`` ``(M, 2^bits, subvector_dim)`` and int64 ``codes`` ``(out, M)``, for
        :func:`product_dequantize`.
    """
    _check_tensor(weight, "weight")
    d, bits = _check_int(subvector_dim, "subvector_dim", 1), _check_bits(bits, CODE_BITS)
    iters = _check_int(iters, "iters", 0)
    if weight.dim() < 2:
        raise ValueError(f"weight must be at least 2-D, got shape {tuple(weight.shape)}")
    w = weight.detach().reshape(weight.shape[0], -1).double()
    (n, cols), k = w.shape, 2**bits
    if cols % d:
        raise ValueError(f"subvector_dim must divide the {cols} columns of weight, got {d}")
    # (n, M*d) -> (M, n, d): one k-means problem per block of columns
    vectors = w.reshape(n, cols // d, d).transpose(0, 1)
    codebooks = vectors[:, torch.linspace(0, n - 1, k).round().long()].clone()  # (M, k, d)

    def assign(cb: torch.Tensor) -> torch.Tensor:  # (M, n, k) distances -> (M, n) codes
        return torch.cdist(vectors, cb, compute_mode="donot_use_mm_for_euclid_dist").argmin(2)

    codes = assign(codebooks)
    for _ in range(iters):
        # Lloyd step per block: each codeword moves to the mean of the sub-vectors it codes
        one_hot = F.one_hot(codes, k).double()  # (M, n, k)
        counts = one_hot.sum(1)[..., None]      # (M, k, 1)
        codebooks = torch.where(counts > 0, one_hot.transpose(1, 2) @ vectors / counts.clamp(min=1),
                                codebooks)
        new = assign(codebooks)
        if torch.equal(new, codes):
            break
        codes = new
    return codebooks.to(weight.dtype), codes.T.contiguous()


def product_dequantize(codebooks: torch.Tensor, codes: torch.Tensor,
                       shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """The weight of ``shape`` rebuilt from :func:`product_quantize`'s codebooks and codes."""
    if not (isinstance(codebooks, torch.Tensor) and codebooks.dim() == 3):
        raise ValueError("codebooks must be an (M, 2^bits, subvector_dim) tensor")
    m, k, d = codebooks.shape
    _check_integers(codes, "codes")
    check_ints("shape", shape, 0)
    if codes.dim() != 2 or codes.shape[1] != m or codes.min() < 0 or codes.max() >= k:
        raise ValueError(f"codes must be an (out, {m}) tensor of codes in [0, {k - 1}]")
    if math.prod(shape) != codes.shape[0] * m * d:
        raise ValueError(f"shape {tuple(shape)} must hold {codes.shape[0]} x {m * d} entries")
    # codes (n, M) pick one codeword per block: (M, n, d) -> (n, M*d)
    parts = codebooks[torch.arange(m)[:, None], codes.T.long()]
    return parts.transpose(0, 1).reshape(codes.shape[0], m * d).reshape(tuple(shape))


# ---------------------------------------------------------------- stored sizes

def uniform_bytes(numel: int, bits: int, num_scales: int = 1, symmetric: bool = False) -> int:
    """``ceil(numel * bits / 8) + num_scales * (4 + z)``: bit-packed codes, a float32 scale
    per channel (or one), and ``z = 1`` byte per zero point if asymmetric (``0`` if symmetric)."""
    numel, bits = _check_int(numel, "numel", 0), _check_bits(bits)
    num_scales = _check_int(num_scales, "num_scales", 1)
    check_bool("symmetric", symmetric)
    return math.ceil(numel * bits / 8) + num_scales * (4 + (0 if symmetric else 1))


def uniform_model_bytes(model: nn.Module, bits: int) -> int:
    """Stored bytes of ``model`` with every Conv2d/Linear weight at ``bits``, as
    :func:`uniform_bytes` with ``symmetric=True`` and one float32 scale per output channel,
    and every other floating-point parameter and buffer (biases, batch norm) in float32,
    4 bytes an entry. Integer buffers (batch norm's step counter) are not stored.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: ``bits`` outside ``UNIFORM_BITS``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    bits = _check_bits(bits)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    quantized = {id(m.weight) for m in layers}
    weights = sum(uniform_bytes(m.weight.numel(), bits, m.weight.shape[0], symmetric=True)
                  for m in layers)
    # a tensor shared by two modules is stored once
    others = {id(t): t for t in [*model.parameters(), *model.buffers()]
              if t.is_floating_point() and id(t) not in quantized}
    return weights + sum(4 * t.numel() for t in others.values())


def kmeans_bytes(numel: int, bits: int) -> int:
    """``ceil(numel * bits / 8) + 4 * 2^bits``: bit-packed indices and a float32 codebook."""
    numel, bits = _check_int(numel, "numel", 0), _check_bits(bits, CODE_BITS)
    return math.ceil(numel * bits / 8) + 4 * 2**bits


def product_bytes(rows: int, cols: int, subvector_dim: int, bits: int) -> int:
    """``ceil(rows * M * bits / 8) + 4 * M * 2^bits * subvector_dim`` with
    ``M = cols / subvector_dim``: bit-packed codes and float32 codebooks."""
    rows, cols = _check_int(rows, "rows", 0), _check_int(cols, "cols", 1)
    d, bits = _check_int(subvector_dim, "subvector_dim", 1), _check_bits(bits, CODE_BITS)
    if cols % d:
        raise ValueError(f"subvector_dim must divide cols={cols}, got {d}")
    return math.ceil(rows * (cols // d) * bits / 8) + 4 * cols * 2**bits
