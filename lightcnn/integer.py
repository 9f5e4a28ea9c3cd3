"""Integer-only arithmetic of one quantized layer, as an int8 kernel computes it.

Jacob et al., "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", CVPR 2018, arXiv 1712.05877, section 2.

Every tensor is stored as integer codes with a real scale and an integer zero point,
``r = S (q - Z)``: the input ``x`` as uint8 (``S_x, Z_x``), the weight as int8 (``S_w, Z_w``,
one pair per output channel when per channel), the output ``y`` as uint8 (``S_y, Z_y``).
A convolution or linear output ``y = b + sum_k w_k x_k`` then reads

    S_y (q_y - Z_y) = S_x S_w (q_b + sum_k (q_w,k - Z_w)(q_x,k - Z_x))

with the bias stored as int32 at scale ``S_x S_w`` and zero point 0, ``q_b = round(b /
(S_x S_w))``, so that it adds straight onto the accumulator. Solving for the output code:

    q_y = Z_y + M (q_b + acc),   acc = sum_k (q_w,k - Z_w)(q_x,k - Z_x),   M = S_x S_w / S_y

(the paper's eq. 4, with a bias). The accumulator, expanded (eq. 7-8), is four terms,

    acc = sum_k q_w,k q_x,k - Z_w sum_k q_x,k - Z_x sum_k q_w,k + K Z_x Z_w

over the ``K = (C_in / groups) kh kw`` products of one output. Only the first is a real
product per term; the weight sum is a constant per output channel (folded into the bias
once), and the window sum of the input is ``K`` additions per output position that vanish
when ``Z_w = 0``: the reason int8 backends quantize weights symmetrically.

``M`` is the only real number left. It is written ``M = M0 2^-n`` with ``M0`` in
``[0.5, 1)``, stored as the int32 fixed-point ``m0 = round(M0 2^31)``, and applied as an
int64 product and a rounding right shift, ``round(v m0 2^-(31 + n))`` (round half up: the
"single rounding" of TFLite and CMSIS-NN; gemmlowp rounds twice, which can differ by one in
rare ties). Then ``Z_y`` is added and the result clamped to ``[0, 255]`` (a fused ReLU
clamps at ``Z_y``, the code of 0, instead). The accumulator must fit int32: a real kernel
would wrap around silently, these functions raise.

Zero padding pads the *codes* with ``Z_x``, the code of real 0 (not with the integer 0).

Taught in chapters/05_quantization.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_bool, check_module, check_tensor, is_int, is_real

__all__ = ["X_RANGE", "W_RANGE", "INT32_RANGE", "quantize_multiplier", "fixed_point_multiply",
           "quantize_bias", "accumulate", "accumulate_terms", "integer_forward"]

X_RANGE = (0, 255)                   # uint8 activations (input and output)
W_RANGE = (-128, 127)                # int8 weights
INT32_RANGE = (-2**31, 2**31 - 1)    # the accumulator
# M = M0 2^-n with n in [-30, 30], so the shift 31 + n is in [1, 61]: the int64 product
# of an int32 accumulator and m0 < 2^31, plus the rounding half, stays below 2^63
MULTIPLIER_RANGE = (2.0**-31, 2.0**29)


# ---------------------------------------------------------------- checks

def _check_scale(name: str, value: float | torch.Tensor) -> torch.Tensor:
    """A positive finite scale, a number or a 0-d / 1-d tensor, as a float64 tensor."""
    if not (is_real(value) or isinstance(value, torch.Tensor)):
        raise TypeError(f"{name} must be a positive number or a tensor of them, got "
                        f"{type(value).__name__}: {value!r}")
    # a Python float straight to float64: through float32 it would lose 29 bits
    t = (torch.tensor(float(value), dtype=torch.float64) if is_real(value)
         else value.detach().double())
    if t.dim() > 1 or t.numel() == 0:
        raise ValueError(f"{name} must be a number or a 1-D tensor (one per channel), got "
                         f"shape {tuple(t.shape)}")
    if not (torch.isfinite(t).all() and (t > 0).all()):
        raise ValueError(f"{name} must be positive and finite, got {t.tolist()}")
    return t


def _check_zero_point(name: str, value: int | torch.Tensor,
                      bounds: tuple[int, int]) -> torch.Tensor:
    """An integer zero point in ``bounds``, an int or a 0-d / 1-d integer tensor, as int64."""
    if isinstance(value, torch.Tensor):
        check_tensor(name, value, (0, 1), integer=True, nonempty=True)
        t = value.detach().long()
    elif is_int(value):
        t = torch.tensor(int(value))
    else:
        raise TypeError(f"{name} must be an int or an integer tensor in [{bounds[0]}, "
                        f"{bounds[1]}], got {type(value).__name__}: {value!r}")
    if t.min() < bounds[0] or t.max() > bounds[1]:
        raise ValueError(f"{name} must be in [{bounds[0]}, {bounds[1]}], got {t.tolist()}")
    return t


def _check_codes(name: str, q: torch.Tensor, bounds: tuple[int, int], ndim) -> None:
    check_tensor(name, q, ndim, integer=True, nonempty=True)
    if q.min() < bounds[0] or q.max() > bounds[1]:
        raise ValueError(f"{name} must hold codes in [{bounds[0]}, {bounds[1]}], got values in "
                         f"[{q.min().item()}, {q.max().item()}]")


def _check_layer(layer: nn.Module) -> None:
    check_module("layer", layer, (nn.Conv2d, nn.Linear))
    if isinstance(layer, nn.Conv2d) and layer.padding_mode != "zeros":
        raise ValueError(f"layer must pad with zeros, got padding_mode={layer.padding_mode!r}")


def _per_channel(name: str, t: torch.Tensor, channels: int) -> torch.Tensor:
    """A 0-d or ``(channels,)`` parameter as ``(channels,)``."""
    if t.dim() == 1 and t.numel() not in (1, channels):
        raise ValueError(f"{name} must have 1 or {channels} entries (one per output channel), "
                         f"got {t.numel()}")
    return t.reshape(-1).expand(channels)


def _as_integers(name: str, value: int | torch.Tensor) -> torch.Tensor:
    """An int or a non-empty integer tensor, as an int64 tensor."""
    if is_int(value):
        return torch.tensor(int(value))
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be an int or an integer tensor, got "
                        f"{type(value).__name__}: {value!r}")
    check_tensor(name, value, integer=True, nonempty=True)
    return value.long()


def _check_int32(name: str, t: torch.Tensor) -> None:
    if t.numel() and (t.min() < INT32_RANGE[0] or t.max() > INT32_RANGE[1]):
        raise ValueError(f"{name} overflows int32 (values in [{t.min().item()}, "
                         f"{t.max().item()}]): an int32 kernel would wrap around")


# ---------------------------------------------------------------- requantization

def quantize_multiplier(multiplier: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``M = M0 2^-n`` with ``M0`` in ``[0.5, 1)``, as the int32 fixed-point ``m0 =
    round(M0 2^31)`` in ``[2^30, 2^31)`` and the integer ``n``.

    ``|m0 2^-(31 + n) - M| <= 2^-(32 + n) <= M 2^-31``: the fixed point keeps 31 bits of ``M``.

    Args:
        multiplier: ``M = S_x S_w / S_y``, a number or a tensor (one per output channel), in
            ``[2^-31, 2^29)`` (the paper finds ``M`` in ``(0, 1)`` in practice).

    Returns:
        int64 tensors ``(m0, n)`` shaped like ``multiplier``.
    """
    m = _check_scale("multiplier", multiplier)
    if (m < MULTIPLIER_RANGE[0]).any() or (m >= MULTIPLIER_RANGE[1]).any():
        raise ValueError(f"multiplier must be in [2^-31, 2^29), got {m.tolist()}")
    # frexp: M = mantissa * 2^exponent with mantissa in [0.5, 1), so n = -exponent
    mantissa, exponent = torch.frexp(m)
    m0 = torch.round(mantissa * 2.0**31).long()
    n = -exponent.long()
    # rounding can carry M0 up to exactly 1: 2^31 is 2^30 at the next power of two
    carry = m0 == 2**31
    return torch.where(carry, 2**30, m0), torch.where(carry, n - 1, n)


def fixed_point_multiply(values: torch.Tensor, m0: int | torch.Tensor,
                         n: int | torch.Tensor) -> torch.Tensor:
    """``round(values m0 2^-(31 + n))`` in integers only, rounding halves up:
    ``(values m0 + 2^(30 + n)) >> (31 + n)`` with an arithmetic shift.

    Args:
        values: an integer tensor in the int32 range (the accumulators plus the bias).
        m0, n: from :func:`quantize_multiplier`: ints, or tensors that broadcast against
            ``values`` (per channel: shaped ``(C, 1, 1)`` for ``(N, C, H, W)`` values).

    Returns:
        An int64 tensor shaped like ``values``.
    """
    check_tensor("values", values, integer=True)
    _check_int32("values", values)
    m0, n = _as_integers("m0", m0), _as_integers("n", n)
    if m0.min() < 2**30 or m0.max() >= 2**31:
        raise ValueError(f"m0 must be in [2^30, 2^31) (M0 in [0.5, 1) as a 31-bit fraction), "
                         f"got values in [{m0.min().item()}, {m0.max().item()}]")
    shift = 31 + n.long()
    if shift.min() < 1 or shift.max() > 62:
        raise ValueError(f"n must be in [-30, 31], got values in [{n.min().item()}, "
                         f"{n.max().item()}]")
    # |values * m0| <= 2^31 * 2^31 = 2^62, and the rounding half is <= 2^61: no int64 overflow
    product = values.long() * m0.long()
    half = torch.ones_like(shift) << (shift - 1)
    return (product + half) >> shift  # >> of a signed int64 is arithmetic: it floors


def quantize_bias(bias: torch.Tensor, x_scale: float | torch.Tensor,
                  w_scale: float | torch.Tensor) -> torch.Tensor:
    """The int32 bias codes ``q_b = round(b / (S_x S_w))`` (scale ``S_x S_w``, zero point 0),
    one per output channel (``w_scale`` a number, or one per channel)."""
    check_tensor("bias", bias, 1, floating=True, nonempty=True)
    s_x, s_w = _check_scale("x_scale", x_scale), _check_scale("w_scale", w_scale)
    if s_x.numel() != 1:
        raise ValueError(f"x_scale must be one number (per-tensor activations), got {s_x.numel()}")
    s_w = _per_channel("w_scale", s_w, bias.numel())
    # float64: b / (S_x S_w) keeps its integer part exact up to 2^53
    q = torch.round(bias.detach().double() / (s_x * s_w)).long()
    _check_int32("bias / (x_scale * w_scale)", q)
    return q


# ---------------------------------------------------------------- accumulation

def _padding(layer: nn.Conv2d) -> tuple[int, int]:
    if layer.padding == "same":
        raise ValueError("layer must use explicit padding (padding='same' is not supported)")
    return (0, 0) if layer.padding == "valid" else layer.padding


def _patches(layer: nn.Conv2d | nn.Linear, q_x: torch.Tensor, pad_value: int) -> torch.Tensor:
    """Input codes as ``(N, groups, K, L)``: the ``K`` codes each of the ``L`` outputs of a
    group reads (a Linear layer: one group, one output position)."""
    if isinstance(layer, nn.Linear):
        return q_x.long().reshape(q_x.shape[0], 1, -1, 1)   # (N, in) -> (N, 1, in, 1)
    ph, pw = _padding(layer)
    # pad with the code of real 0, then unfold without padding; float64 holds the uint8
    # codes exactly, and the patches go back to int64 before any product
    x = F.pad(q_x.double(), (pw, pw, ph, ph), value=float(pad_value))
    cols = F.unfold(x, layer.kernel_size, dilation=layer.dilation, stride=layer.stride)
    # (N, C_in*kh*kw, L) -> (N, groups, K, L)
    return cols.long().reshape(q_x.shape[0], layer.groups, -1, cols.shape[-1])


def _output_shape(layer: nn.Conv2d | nn.Linear, q_x: torch.Tensor,
                  flat: torch.Tensor) -> torch.Tensor:
    """``(N, groups, out/groups, L)`` -> the layer's output shape."""
    n = q_x.shape[0]
    if isinstance(layer, nn.Linear):
        return flat.reshape(n, -1)
    kh, kw = layer.kernel_size
    (sh, sw), (dh, dw) = layer.stride, layer.dilation
    ph, pw = _padding(layer)
    h = (q_x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    w = (q_x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return flat.reshape(n, -1, h, w)


def _prepare(layer, q_x, x_zero_point, q_w, w_zero_point):
    """Checked codes and zero points: ``(patches, weights (g, out/g, K), Z_x, Z_w (C_out,))``."""
    _check_layer(layer)
    _check_codes("q_x", q_x, X_RANGE, 4 if isinstance(layer, nn.Conv2d) else 2)
    expected = layer.in_channels if isinstance(layer, nn.Conv2d) else layer.in_features
    if q_x.shape[1] != expected:
        raise ValueError(f"q_x must have {expected} channels (the layer's input), got shape "
                         f"{tuple(q_x.shape)}")
    _check_codes("q_w", q_w, W_RANGE, layer.weight.dim())
    if q_w.shape != layer.weight.shape:
        raise ValueError(f"q_w must be shaped like layer.weight {tuple(layer.weight.shape)}, "
                         f"got {tuple(q_w.shape)}")
    z_x = _check_zero_point("x_zero_point", x_zero_point, X_RANGE)
    if z_x.numel() != 1:
        raise ValueError("x_zero_point must be one integer (per-tensor activations), got "
                         f"{z_x.numel()}")
    out = q_w.shape[0]
    z_w = _check_zero_point("w_zero_point", w_zero_point, W_RANGE)
    z_w = _per_channel("w_zero_point", z_w, out)
    groups = layer.groups if isinstance(layer, nn.Conv2d) else 1
    z_x = int(z_x)
    # (out, in/g, kh, kw) -> (g, out/g, K)
    weights = q_w.long().reshape(groups, out // groups, -1)
    return _patches(layer, q_x, z_x), weights, z_x, z_w


def accumulate(layer: nn.Conv2d | nn.Linear, q_x: torch.Tensor, x_zero_point: int,
               q_w: torch.Tensor, w_zero_point: int | torch.Tensor) -> torch.Tensor:
    """The int32 accumulators ``acc = sum_k (q_w,k - Z_w)(q_x,k - Z_x)``, computed directly.

    Args:
        layer: the ``nn.Conv2d`` or ``nn.Linear`` whose geometry (stride, padding,
            dilation, groups) the codes go through; its float weight and bias are not used.
        q_x: uint8 input codes (any integer dtype), ``(N, C_in, H, W)`` or ``(N, in)``.
        x_zero_point: ``Z_x``, an int in ``[0, 255]``.
        q_w: int8 weight codes shaped like ``layer.weight``.
        w_zero_point: ``Z_w``, an int in ``[-128, 127]`` or one per output channel.

    Returns:
        An int64 tensor of the layer's output shape, every value in the int32 range.

    Raises:
        ValueError: codes out of range, or an accumulator that overflows int32.
    """
    patches, weights, z_x, z_w = _prepare(layer, q_x, x_zero_point, q_w, w_zero_point)
    g = weights.shape[0]
    # (g, out/g, K) @ (N, g, K, L) -> (N, g, out/g, L): integer products, int64 sums
    centered_w = weights - z_w.reshape(g, -1, 1)
    acc = torch.matmul(centered_w, patches - z_x)
    _check_int32("the accumulator", acc)
    return _output_shape(layer, q_x, acc)


def accumulate_terms(layer: nn.Conv2d | nn.Linear, q_x: torch.Tensor, x_zero_point: int,
                     q_w: torch.Tensor, w_zero_point: int | torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The four terms of the expanded accumulator (Jacob et al., eq. 7-8), each shaped like
    the layer's output (arguments as in :func:`accumulate`):

    1. ``sum_k q_w,k q_x,k``: the only term with a product per input (the int8 GEMM);
    2. ``-Z_w sum_k q_x,k``: a window sum of input codes, zero when ``Z_w = 0``;
    3. ``-Z_x sum_k q_w,k``: a constant per output channel (foldable into the bias);
    4. ``K Z_x Z_w``: a constant per output channel, ``K = (C_in / groups) kh kw``.

    Their sum is :func:`accumulate`'s result exactly (integers, no rounding).
    """
    patches, weights, z_x, z_w = _prepare(layer, q_x, x_zero_point, q_w, w_zero_point)
    g, per_group, k = weights.shape
    z_w = z_w.reshape(g, per_group, 1)
    products = torch.matmul(weights, patches)                            # (N, g, out/g, L)
    window = -z_w * patches.sum(2, keepdim=True)                         # (N, g, out/g, L)
    weight_sum = (-z_x * weights.sum(2, keepdim=True)).expand_as(products)  # (g, out/g, 1)
    constant = (k * z_x * z_w).expand_as(products)                       # (g, out/g, 1)
    return tuple(_output_shape(layer, q_x, t.contiguous())
                 for t in (products, window, weight_sum, constant))


def integer_forward(layer: nn.Conv2d | nn.Linear, q_x: torch.Tensor,
                    x_scale: float, x_zero_point: int, q_w: torch.Tensor,
                    w_scale: float | torch.Tensor, w_zero_point: int | torch.Tensor,
                    y_scale: float, y_zero_point: int, relu: bool = False) -> torch.Tensor:
    """The uint8 output codes of ``layer`` computed in integers only:

        q_y = clamp(Z_y + round(M (q_b + acc)), lo, 255),   M = S_x S_w / S_y

    with ``acc`` from :func:`accumulate`, ``q_b`` from :func:`quantize_bias` (``layer``'s
    float bias; none: 0), ``M`` as :func:`quantize_multiplier`'s ``m0 2^-(31 + n)`` (one per
    output channel when ``w_scale`` is), :func:`fixed_point_multiply`, and ``lo = Z_y`` with a
    fused ReLU, 0 without.

    It equals the fake-quantized float computation, ``quantize(b + conv(dequantize(q_x),
    dequantize(q_w)), S_y, Z_y)``, within one output code when ``M < 2``: rounding the bias
    moves the value before the last rounding by at most ``M / 2``, the fixed-point ``M0``
    by ``|M (q_b + acc)| 2^-31``.

    Args:
        layer: the float ``nn.Conv2d`` or ``nn.Linear`` (geometry and bias).
        q_x, x_scale, x_zero_point: the uint8 input codes and their per-tensor ``S_x, Z_x``.
        q_w, w_scale, w_zero_point: the int8 weight codes, shaped like ``layer.weight``, and
            ``S_w, Z_w`` per tensor (numbers) or per output channel (tensors ``(C_out,)``).
        y_scale, y_zero_point: the output's per-tensor ``S_y, Z_y``.
        relu: fuse a ReLU (clamp at ``Z_y``).

    Returns:
        int64 codes in ``[0, 255]`` of the layer's output shape.
    """
    check_bool("relu", relu)
    acc = accumulate(layer, q_x, x_zero_point, q_w, w_zero_point)
    out = acc.shape[1]
    s_x = _check_scale("x_scale", x_scale)
    s_w = _per_channel("w_scale", _check_scale("w_scale", w_scale), out)
    s_y = _check_scale("y_scale", y_scale)
    if s_x.numel() != 1 or s_y.numel() != 1:
        raise ValueError("x_scale and y_scale must be one number each (per-tensor activations)")
    z_y = _check_zero_point("y_zero_point", y_zero_point, X_RANGE)
    if z_y.numel() != 1:
        raise ValueError(f"y_zero_point must be one integer, got {z_y.numel()}")
    bias = layer.bias if layer.bias is not None else torch.zeros(out)
    q_b = quantize_bias(bias, s_x, s_w)
    m0, n = quantize_multiplier(s_x * s_w / s_y)
    # (C,) -> (C, 1, 1) against (N, C, H, W), or (C,) against (N, C)
    view = (-1, 1, 1) if acc.dim() == 4 else (-1,)
    total = acc + q_b.reshape(view)
    _check_int32("the accumulator plus the bias", total)
    q_y = int(z_y) + fixed_point_multiply(total, m0.reshape(view), n.reshape(view))
    return q_y.clamp(int(z_y) if relu else X_RANGE[0], X_RANGE[1])
