"""Tests for lightcnn.integer: integer-only layer arithmetic against exact integers, the
fake-quantized float computation, and torchao's pt2e int8 graph."""

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lightcnn import integer as I
from lightcnn import quantization as Q


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


LAYERS = {
    "conv": lambda: nn.Conv2d(4, 6, 3, padding=1, stride=2),
    "dilated": lambda: nn.Conv2d(4, 6, 3, padding=2, dilation=2),
    "grouped": lambda: nn.Conv2d(6, 6, 3, padding=1, groups=3),
    "depthwise": lambda: nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False),
    "linear": lambda: nn.Linear(12, 5),
}


def _case(kind: str, symmetric: bool, per_channel: bool = True, seed: int = 0):
    """A layer, uint8 input codes and int8 weight codes with their quantization parameters."""
    torch.manual_seed(seed)
    layer = LAYERS[kind]()
    shape = (layer.in_channels, 7, 7) if isinstance(layer, nn.Conv2d) else (layer.in_features,)
    x = _randn(3, *shape, seed=seed) + 0.3
    s_x, z_x = Q.qparams(x.min(), x.max(), 8, symmetric=False)
    w = layer.weight.detach()
    rows = w.reshape(w.shape[0], -1)
    lo, hi = (rows.amin(1), rows.amax(1)) if per_channel else (w.min(), w.max())
    s_w, z_w = Q.qparams(lo, hi, 8, symmetric=symmetric, signed=True)
    q_w = Q.quantize(w, s_w, z_w, 8, signed=True, axis=0 if per_channel else None)
    return layer, Q.quantize(x, s_x, z_x, 8), float(s_x), int(z_x), q_w, s_w, z_w


def _float_output(layer, q_x, s_x, z_x, q_w, s_w, z_w) -> torch.Tensor:
    """The fake-quantized computation in float64: the layer on dequantized codes."""
    axis = 0 if torch.as_tensor(s_w).dim() else None
    x = Q.dequantize(q_x, s_x, z_x).double()
    w = Q.dequantize(q_w, s_w, z_w, axis=axis).double()
    b = layer.bias.double() if layer.bias is not None else None
    if isinstance(layer, nn.Linear):
        return F.linear(x, w, b)
    return F.conv2d(x, w, b, layer.stride, layer.padding, layer.dilation, layer.groups)


# ---------------------------------------------------------------- the accumulator

@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("symmetric", [True, False])
def test_four_terms_add_up_to_the_direct_accumulator_exactly(kind, symmetric):
    layer, q_x, s_x, z_x, q_w, s_w, z_w = _case(kind, symmetric)
    acc = I.accumulate(layer, q_x, z_x, q_w, z_w)
    terms = I.accumulate_terms(layer, q_x, z_x, q_w, z_w)
    assert acc.dtype == torch.int64 and all(t.shape == acc.shape for t in terms)
    assert torch.equal(sum(terms), acc)
    # the reference: the layer run on the centered codes in float64, exact for integers
    # below 2^53; zero padding of the centered codes is padding of the codes with Z_x
    centered_x = (q_x - z_x).double()
    centered_w = (q_w - torch.as_tensor(z_w).reshape(-1, *[1] * (q_w.dim() - 1))).double()
    if isinstance(layer, nn.Linear):
        ref = F.linear(centered_x, centered_w)
    else:
        ref = F.conv2d(centered_x, centered_w, None, layer.stride, layer.padding,
                       layer.dilation, layer.groups)
    assert torch.equal(acc, ref.long())
    # symmetric weights: the window-sum term (the only per-position cross term) vanishes
    if symmetric:
        assert not terms[1].any() and not terms[3].any()
    else:
        assert terms[1].any()


def test_the_constant_terms_follow_the_papers_expansion():
    layer, q_x, s_x, z_x, q_w, s_w, z_w = _case("conv", symmetric=False)
    _, _, weight_sum, constant = I.accumulate_terms(layer, q_x, z_x, q_w, z_w)
    k = 4 * 3 * 3  # (C_in / groups) kh kw
    for c in range(6):
        assert (weight_sum[:, c] == -z_x * q_w[c].sum()).all()
        assert (constant[:, c] == k * z_x * z_w[c]).all()


# ---------------------------------------------------------------- requantization

@settings(max_examples=200, deadline=None)
@given(m=st.floats(2.0**-31, 2.0**29, exclude_max=True, allow_nan=False))
def test_quantized_multiplier_keeps_31_bits(m):
    m0, n = I.quantize_multiplier(m)
    assert 2**30 <= m0 < 2**31
    # m0 2^-(31 + n) is M to within half a unit of the 31-bit mantissa
    approx = Fraction(int(m0), 2 ** (31 + int(n)))
    assert abs(approx - Fraction(m)) <= Fraction(1, 2 ** (32 + int(n)))


@settings(max_examples=300, deadline=None)
@given(v=st.integers(-2**31, 2**31 - 1), m=st.floats(2.0**-20, 4.0, allow_nan=False))
def test_fixed_point_multiply_rounds_half_up_exactly(v, m):
    m0, n = I.quantize_multiplier(m)
    out = I.fixed_point_multiply(torch.tensor([v]), m0, n)
    # the reference in exact rationals: floor(v m0 / 2^(31 + n) + 1/2)
    exact = Fraction(v * int(m0), 2 ** (31 + int(n)))
    assert int(out) == (exact + Fraction(1, 2)).__floor__()


def test_a_multiplier_that_rounds_up_to_one_carries_into_the_exponent():
    m0, n = I.quantize_multiplier(1 - 2.0**-40)
    assert (int(m0), int(n)) == (2**30, -1)   # 0.5 * 2^1 = 1


def test_bias_is_stored_at_the_accumulators_scale():
    bias = torch.tensor([0.5, -0.25, 0.0])
    q_b = I.quantize_bias(bias, 0.1, torch.tensor([0.01, 0.02, 0.03]))
    assert q_b.tolist() == [500, -125, 0]  # round(b / (S_x S_w))


# ---------------------------------------------------------------- the whole layer

@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("symmetric, per_channel", [(True, True), (True, False), (False, True)])
def test_integer_output_is_within_one_code_of_the_fake_quantized_float(kind, symmetric, per_channel):
    layer, q_x, s_x, z_x, q_w, s_w, z_w = _case(kind, symmetric, per_channel)
    y = _float_output(layer, q_x, s_x, z_x, q_w, s_w, z_w)
    s_y, z_y = Q.qparams(y.min(), y.max(), 8, symmetric=False)
    q_ref = torch.clamp(torch.round(y / float(s_y)) + int(z_y), 0, 255).long()
    q_y = I.integer_forward(layer, q_x, s_x, z_x, q_w, s_w, z_w, float(s_y), int(z_y))
    assert q_y.shape == q_ref.shape and q_y.dtype == torch.int64
    diff = (q_y - q_ref).abs()
    assert diff.max() <= 1
    assert (diff == 0).float().mean() > 0.99  # one-code differences are rare ties
    # a fused ReLU clamps at the code of real 0
    q_relu = I.integer_forward(layer, q_x, s_x, z_x, q_w, s_w, z_w, float(s_y), int(z_y), relu=True)
    assert torch.equal(q_relu, q_y.clamp(min=int(z_y)))


def test_integer_output_matches_torchaos_pt2e_int8_graph():
    pytest.importorskip("torchao")
    from lightcnn import int8

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1)).eval()
    q = int8.quantize_int8(model, [_randn(8, 3, 6, 6, seed=s) for s in (1, 2)])
    ops = torch.ops.quantized_decomposed
    calls = {node.target: node for node in q.graph.nodes if node.op == "call_function"}
    # the graph's own parameters: per-tensor uint8 input, per-channel symmetric int8 weight
    _, s_x, z_x, *_ = calls[ops.quantize_per_tensor.default].args
    q_w, s_w, z_w = (getattr(q, node.target) for node in
                     calls[ops.dequantize_per_channel.default].args[:3])
    assert q_w.dtype == torch.int8 and not z_w.any()
    x = _randn(4, 3, 6, 6, seed=3)
    q_x = ops.quantize_per_tensor(x, s_x, z_x, 0, 255, torch.uint8)  # the graph's rounding
    with torch.no_grad():
        y = q(x)  # dequantize -> float conv -> float output
    # the int32 accumulator plus the int32 bias, at scale S_x S_w, is pt2e's float output
    # up to the bias rounding (half a step S_x S_w) and float32 sums
    acc = I.accumulate(model[0], q_x, z_x, q_w, z_w)
    q_b = I.quantize_bias(model[0].bias, s_x, s_w)
    step = (s_x * s_w.double()).reshape(-1, 1, 1)
    dequantized = (acc + q_b.reshape(-1, 1, 1)).double() * step
    assert ((dequantized - y).abs() <= step / 2 + 1e-5 * y.abs().max()).all()
    # requantized to uint8: within one code of quantizing pt2e's output, nearly always equal
    s_y, z_y = Q.qparams(y.min(), y.max(), 8, symmetric=False)
    q_y = I.integer_forward(model[0], q_x, s_x, z_x, q_w, s_w, z_w, float(s_y), int(z_y))
    q_ref = ops.quantize_per_tensor(y, float(s_y), int(z_y), 0, 255, torch.uint8).long()
    diff = (q_y - q_ref).abs()
    assert diff.max() <= 1 and (diff == 0).float().mean() > 0.99


# ---------------------------------------------------------------- bad input

def test_bad_arguments_are_rejected():
    layer, q_x, s_x, z_x, q_w, s_w, z_w = _case("conv", symmetric=True)
    with pytest.raises(ValueError, match="q_x must hold codes in \\[0, 255\\]"):
        I.accumulate(layer, q_x - 1000, z_x, q_w, z_w)
    with pytest.raises(TypeError, match="q_x must hold integers"):
        I.accumulate(layer, q_x.float(), z_x, q_w, z_w)
    with pytest.raises(ValueError, match="q_w must be shaped like layer.weight"):
        I.accumulate(layer, q_x, z_x, q_w[:2], z_w)
    with pytest.raises(ValueError, match="x_zero_point must be in \\[0, 255\\]"):
        I.accumulate(layer, q_x, 300, q_w, z_w)
    with pytest.raises(ValueError, match="w_zero_point must have 1 or 6 entries"):
        I.accumulate(layer, q_x, z_x, q_w, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="multiplier must be in"):
        I.quantize_multiplier(2.0**40)
    with pytest.raises(ValueError, match="multiplier must be positive"):
        I.quantize_multiplier(-0.5)
    with pytest.raises(ValueError, match="values overflows int32"):
        I.fixed_point_multiply(torch.tensor([2**40]), 2**30, 0)
    with pytest.raises(ValueError, match="m0 must be in"):
        I.fixed_point_multiply(torch.tensor([1]), 5, 0)
    with pytest.raises(ValueError, match="y_scale must be positive"):
        I.integer_forward(layer, q_x, s_x, z_x, q_w, s_w, z_w, 0.0, 0)
    # a wide layer of extreme codes overflows the int32 accumulator
    wide = nn.Linear(2**18, 1)
    with pytest.raises(ValueError, match="overflows int32"):
        I.accumulate(wide, torch.full((1, 2**18), 255), 0, torch.full((1, 2**18), 127), 0)
