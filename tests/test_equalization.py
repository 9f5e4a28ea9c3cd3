"""Tests for lightcnn.equalization: cross-layer equalization keeps the function and reaches
the paper's optimum; bias correction removes the mean error of quantized weights."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lightcnn as lc
from lightcnn import equalization as E
from lightcnn import quantization as Q


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _cbr(c_in, c_out, k, groups=1, act=True):
    layers = [nn.Conv2d(c_in, c_out, k, padding=k // 2, groups=groups, bias=False),
              nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, *([nn.ReLU()] if act else []))


def _spread_net(seed: int = 0, decades: float = 3.0) -> nn.Module:
    """A MobileNetV2-like block (stem, expand 1x1, depthwise 3x3, linear project 1x1, pool,
    classifier) whose depthwise channels are rescaled by factors spread over ``decades``
    decades, each undone in the project layer's input: the same function, with per-channel
    weight ranges after folding that one per-tensor scale cannot serve."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = nn.Sequential(_cbr(3, 16, 3), _cbr(16, 48, 1), _cbr(48, 48, 3, groups=48),
                        _cbr(48, 16, 1, act=False), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(16, 10))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 2, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.1, generator=g)
        # ReLU(d z) = d ReLU(z) for d > 0: scale the depthwise channel, unscale the reader
        d = 10 ** (decades * (torch.rand(48, generator=g) - 0.5))
        net[2][1].weight.mul_(d)
        net[2][1].bias.mul_(d)
        net[3][0].weight.div_(d.reshape(1, -1, 1, 1))
    return net.eval()


def _with_bn_statistics(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(_randn(8, 1, 28, 28, seed=5))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.1, 2.0)
                m.bias.normal_(0, 0.3)
    return model.eval()


def _precision(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """Per-channel precision products ``(r1_i / R1)(r2_i / R2)`` of the paper, section 4.1."""
    r1, r2 = r1.double(), r2.double()
    return (r1 / r1.max()) * (r2 / r2.max())


# ---------------------------------------------------------------- the formula on one pair

def test_two_layer_case_matches_the_hand_computation():
    # r1 = (2, 0.5) (rows of W1), r2 = (8, 0.125) (columns of W2):
    # s = sqrt(r1 / r2) = (0.5, 2), both ranges become sqrt(r1 r2) = (4, 0.25)
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[2.0, -1.0], [0.5, 0.25]]))
        net[0].bias.copy_(torch.tensor([1.0, -0.5]))
        net[2].weight.copy_(torch.tensor([[8.0, 0.125], [-4.0, -0.0625]]))
    assert E.find_pairs(net) == [("0", "2")]
    s = E.equalization_scales(E.channel_ranges(net[0], "output"), E.channel_ranges(net[2], "input"))
    assert torch.equal(s, torch.tensor([0.5, 2.0], dtype=torch.float64))
    eq = E.cross_layer_equalize(net)
    # powers of two: the scaled weights are exact
    assert torch.equal(eq[0].weight, torch.tensor([[4.0, -2.0], [0.25, 0.125]]))
    assert torch.equal(eq[0].bias, torch.tensor([2.0, -0.25]))
    assert torch.equal(eq[2].weight, torch.tensor([[4.0, 0.25], [-2.0, -0.125]]))
    assert torch.equal(eq[2].bias, net[2].bias)
    assert torch.equal(E.channel_ranges(eq[0], "output"), E.channel_ranges(eq[2], "input"))
    x = _randn(16, 2)
    with torch.no_grad():
        torch.testing.assert_close(eq(x), net(x))


def test_scales_follow_the_papers_formula_and_leave_dead_channels_alone():
    r1 = torch.tensor([1.0, 4.0, 0.0, 2.0, 3.0])
    r2 = torch.tensor([4.0, 1.0, 5.0, 0.0, 3.0])
    s = E.equalization_scales(r1, r2)
    # s_i = (1 / r2_i) sqrt(r1_i r2_i), eq. 10, where both ranges are positive
    live = torch.tensor([True, True, False, False, True])
    expected = (1 / r2[live].double()) * torch.sqrt(r1[live].double() * r2[live].double())
    torch.testing.assert_close(s[live], expected)
    assert torch.equal(s[~live], torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("second", ["conv", "depthwise", "grouped", "flatten_linear"])
def test_channel_ranges_and_rescaling_follow_the_input_channels(second):
    torch.manual_seed(0)
    first = nn.Conv2d(3, 6, 3, padding=1)
    layers = {"conv": nn.Conv2d(6, 4, 3, padding=1),
              "depthwise": nn.Conv2d(6, 6, 3, padding=1, groups=6),
              "grouped": nn.Conv2d(6, 4, 1, groups=2),
              "flatten_linear": nn.Linear(6 * 5 * 5, 3)}
    layer = layers[second]
    net = nn.Sequential(first, nn.ReLU(), *([nn.Flatten()] if second == "flatten_linear" else []),
                        layer)
    assert E.find_pairs(net) == [("0", str(len(net) - 1))]
    # the reference: the largest |w| of each input channel, by looping over channels
    w = layer.weight.detach()
    if second == "flatten_linear":
        expected = torch.stack([w[:, c * 25:(c + 1) * 25].abs().max() for c in range(6)])
    else:
        per_group = w.shape[1]
        out_per_group = w.shape[0] // layer.groups
        expected = torch.stack([w[(c // per_group) * out_per_group:(c // per_group + 1) * out_per_group,
                                  c % per_group].abs().max() for c in range(6)])
    assert torch.equal(E.channel_ranges(layer, "input", 6), expected)
    x = _randn(4, 3, 5, 5)
    with torch.no_grad():
        before = net(x)
        s = E.equalize_pair(first, layer)
        after = net(x)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(E.channel_ranges(first, "output").double(),
                               E.channel_ranges(layer, "input", 6).double(), rtol=1e-6, atol=0)
    assert (s > 0).all()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), log_s=st.lists(st.floats(-3, 3), min_size=6, max_size=6))
def test_no_other_scaling_beats_the_equalized_precision(seed, log_s):
    # the paper's optimum: every channel's precision product r1_i r2_i / (R1 R2) reaches its
    # bound r1_i r2_i / max_k r1_k r2_k (R1 R2 >= r1_k r2_k for every channel k)
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(6, 4, generator=g) * 10 ** (2 * torch.rand(6, 1, generator=g) - 1)
    w2 = torch.randn(3, 6, generator=g) * 10 ** (2 * torch.rand(1, 6, generator=g) - 1)
    first, second = nn.Linear(4, 6, bias=False), nn.Linear(6, 3, bias=False)
    with torch.no_grad():
        first.weight.copy_(w1)
        second.weight.copy_(w2)
    r1, r2 = E.channel_ranges(first, "output"), E.channel_ranges(second, "input")
    bound = (r1.double() * r2.double()) / (r1.double() * r2.double()).max()
    s = torch.tensor(log_s, dtype=torch.float64).exp()
    other = _precision(r1.double() / s, r2.double() * s)
    assert (other <= bound * (1 + 1e-9)).all()
    E.equalize_pair(first, second)
    optimum = _precision(E.channel_ranges(first, "output"), E.channel_ranges(second, "input"))
    torch.testing.assert_close(optimum, bound, rtol=1e-5, atol=0)


# ---------------------------------------------------------------- whole networks

@pytest.mark.parametrize("name", ["baseline_cnn", "mobilenet_v2", "mobilenet_v3_small"])
def test_equalized_network_computes_the_same_function(name):
    model = _with_bn_statistics(lc.create_model(name, **({"width_mult": 0.5} if name != "baseline_cnn" else {})))
    x = _randn(4, 1, 28, 28, seed=1)
    for relu6 in ("replace", "keep"):
        eq = E.cross_layer_equalize(model, relu6=relu6)
        reference = E.replace_relu6(model) if relu6 == "replace" else model
        with torch.no_grad():
            ref = reference(x)
            torch.testing.assert_close(eq(x), ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in eq.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # input untouched


def test_pairs_stop_at_residual_branches_bn_and_relu6():
    torch.manual_seed(0)
    model = lc.fuse_conv_bn(_with_bn_statistics(lc.create_model("mobilenet_v2", width_mult=0.25)))
    with_relu6, without = E.find_pairs(model), E.find_pairs(E.replace_relu6(model))
    modules = dict(model.named_modules())
    # with ReLU6 kept, only linear links are pairs: a project conv feeding the next expand
    # conv directly (blocks without a residual); every such pair has nothing in between
    assert with_relu6 and set(with_relu6) < set(without)
    for first, second in without:
        assert isinstance(modules[first], (nn.Conv2d, nn.Linear))
    # expand -> depthwise -> project: two pairs per inverted residual block, through ReLU
    block = "features.3.block"
    assert (f"{block}.0.0", f"{block}.1.0") in without
    assert (f"{block}.1.0", f"{block}.2.0") in without
    # the project conv of a residual block feeds the addition too: no pair out of it
    assert not any(first == f"{block}.2.0" for first, _ in without)
    # batch norm (its shift is not homogeneous) breaks a pair until it is folded
    unfolded = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3))
    assert E.find_pairs(unfolded) == []
    assert E.find_pairs(lc.fuse_conv_bn(unfolded)) == [("0", "3")]


def test_after_equalization_every_pair_is_at_the_papers_optimum():
    net = _spread_net()
    eq = E.cross_layer_equalize(net, tol=1e-6)
    modules = dict(eq.named_modules())
    pairs = E.find_pairs(eq)
    assert len(pairs) == 4  # stem-expand, expand-dw, dw-project, project-classifier
    for a, b in pairs:
        first, second = modules[a], modules[b]
        r1 = E.channel_ranges(first, "output")
        r2 = E.channel_ranges(second, "input", r1.numel())
        # proportional ranges (equal up to one factor per pair) ...
        ratio = r1.double() / r2.double()
        torch.testing.assert_close(ratio / ratio.mean(), torch.ones_like(ratio), rtol=1e-5, atol=0)
        # ... give every channel its largest precision product
        bound = (r1.double() * r2.double()) / (r1.double() * r2.double()).max()
        torch.testing.assert_close(_precision(r1, r2), bound, rtol=1e-5, atol=0)
    # the folded network was far from it: the depthwise channels' spread of 3 decades
    folded = dict(lc.fuse_conv_bn(net).named_modules())
    r1 = E.channel_ranges(folded["2.0"], "output")
    r2 = E.channel_ranges(folded["3.0"], "input")
    bound = (r1.double() * r2.double()) / (r1.double() * r2.double()).max()
    assert _precision(r1, r2).sum() < 0.1 * bound.sum()


def test_a_single_pair_converges_to_equal_ranges():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    with torch.no_grad():
        net[0].weight.mul_(10 ** torch.linspace(-2, 1, 8).reshape(-1, 1, 1, 1))
    eq = E.cross_layer_equalize(net)
    r1, r2 = E.channel_ranges(eq[0], "output"), E.channel_ranges(eq[2], "input")
    torch.testing.assert_close(r1, r2, rtol=1e-6, atol=0)
    r1_0, r2_0 = E.channel_ranges(net[0], "output"), E.channel_ranges(net[2], "input")
    torch.testing.assert_close(r1.double(), (r1_0.double() * r2_0.double()).sqrt(), rtol=1e-5, atol=0)


def test_equalization_rescues_per_tensor_int8_on_a_depthwise_network():
    net = _spread_net()
    x = _randn(64, 3, 16, 16, seed=1)
    calibration = [_randn(32, 3, 16, 16, seed=s) for s in (2, 3)]
    with torch.no_grad():
        ref = net(x)

    def relative_mse(model: nn.Module, bits: int = 8) -> float:
        q = Q.ptq_simulate(model, calibration, weight_bits=bits, activation_bits=8,
                           per_channel=False)
        with torch.no_grad():
            return ((q(x) - ref) ** 2).mean().item() / ref.var().item()

    folded, equalized = lc.fuse_conv_bn(net), E.cross_layer_equalize(net)
    before, after = relative_mse(folded), relative_mse(equalized)
    # measured: 1.4e-2 before, 1.5e-5 after (about 1000x)
    assert after < before / 100, (before, after)
    # bias correction removes what is left of the mean error at 4 bits (measured: 5e-3 -> 9e-6)
    at4 = relative_mse(equalized, bits=4)
    corrected = relative_mse(E.correct_bias(equalized, calibration, bits=4), bits=4)
    assert corrected < at4 / 10, (at4, corrected)


# ---------------------------------------------------------------- bias correction

def test_quantize_weight_is_the_weight_quantizer_of_ptq_simulate():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3)
    for per_channel in (False, True):
        q = Q.ptq_simulate(conv, [_randn(2, 3, 8, 8)], weight_bits=4, per_channel=per_channel)
        with torch.no_grad():
            expected = q.weight_fake_quant(conv.weight)
        assert torch.equal(E.quantize_weight(conv.weight, 4, per_channel), expected)


def test_output_error_is_the_weight_error_times_the_mean_input():
    torch.manual_seed(0)
    linear = nn.Linear(6, 4)
    x = _randn(100, 6).relu() + 0.5  # inputs with a nonzero mean, as after a ReLU
    w_q = E.quantize_weight(linear.weight, 3)
    expected = (w_q - linear.weight.detach()) @ x.mean(0)
    torch.testing.assert_close(E.output_error(linear, x, w_q), expected)
    # a sequence of tokens (N, T, features): the mean over every token
    torch.testing.assert_close(E.output_error(linear, x.reshape(10, 10, 6), w_q), expected)
    # a convolution: per-channel mean of conv(x, W_q) - conv(x, W), zero padding included
    conv = nn.Conv2d(3, 4, 3, padding=1)
    xc = _randn(8, 3, 6, 6).relu()
    w_q = E.quantize_weight(conv.weight, 3)
    with torch.no_grad():
        direct = (F.conv2d(xc, w_q, padding=1) - F.conv2d(xc, conv.weight, padding=1)).mean((0, 2, 3))
    torch.testing.assert_close(E.output_error(conv, xc, w_q), direct, rtol=1e-5, atol=1e-6)
    # a 1x1 convolution has no border: (W_q - W) E[x] per channel exactly
    pointwise = nn.Conv2d(3, 4, 1)
    w_q = E.quantize_weight(pointwise.weight, 3)
    expected = (w_q - pointwise.weight.detach())[:, :, 0, 0] @ xc.mean((0, 2, 3))
    torch.testing.assert_close(E.output_error(pointwise, xc, w_q), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["conv", "depthwise", "linear"])
def test_bias_correction_restores_each_layers_mean_output(kind):
    torch.manual_seed(0)
    layer = {"conv": nn.Conv2d(3, 6, 3, padding=1),
             "depthwise": nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False),
             "linear": nn.Linear(12, 5)}[kind]
    shape = {"conv": (3, 7, 7), "depthwise": (6, 7, 7), "linear": (12,)}[kind]
    # batches of different sizes: the mean is over every output seen, not of batch means
    calibration = [_randn(n, *shape, seed=s).relu() + 0.2 for s, n in ((1, 5), (2, 11), (3, 3))]
    bits = 3
    corrected = E.correct_bias(layer, calibration, bits=bits)
    x = torch.cat(calibration)
    channels = (0, 2, 3) if kind != "linear" else (0,)
    w_q = E.quantize_weight(layer.weight, bits)

    def mean_output(weight, bias):
        y = F.linear(x, weight, bias) if kind == "linear" else layer._conv_forward(x, weight, bias)
        return y.mean(channels)

    with torch.no_grad():
        float_mean = mean_output(layer.weight, layer.bias)
        quantized_mean = mean_output(w_q, layer.bias)
        corrected_mean = mean_output(w_q, corrected.bias)
    error_before = (quantized_mean - float_mean).abs().max()
    error_after = (corrected_mean - float_mean).abs().max()
    assert error_before > 1e-2 * float_mean.abs().max()
    assert error_after < 1e-5 * float_mean.abs().max() + 1e-6
    assert torch.equal(corrected.weight, layer.weight)  # weights stay float
    assert (layer.bias is None) == (kind == "depthwise")  # the input is untouched


def test_bias_correction_uses_each_layers_float_input_in_a_network():
    net = lc.fuse_conv_bn(_spread_net())
    calibration = [_randn(16, 3, 8, 8, seed=s) for s in (1, 2)]
    corrected = E.correct_bias(net, calibration, bits=4, per_channel=True)
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, name=name: inputs.setdefault(name, []).append(a[0]))
             for name, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for x in calibration:
            net(x)
    for h in hooks:
        h.remove()
    fixed = dict(corrected.named_modules())
    for name, xs in inputs.items():
        layer, x = dict(net.named_modules())[name], torch.cat(xs)
        w_q = E.quantize_weight(layer.weight, 4, per_channel=True)
        expected = (layer.bias if layer.bias is not None else 0) - E.output_error(layer, x, w_q)
        torch.testing.assert_close(fixed[name].bias, expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- bad input

def test_bad_arguments_are_rejected():
    conv = nn.Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match="side must be one of"):
        E.channel_ranges(conv, "sideways")
    with pytest.raises(TypeError, match="layer must be"):
        E.channel_ranges(nn.ReLU())
    with pytest.raises(ValueError, match="channels must be the Conv2d's in_channels"):
        E.channel_ranges(conv, "input", 4)
    with pytest.raises(ValueError, match="r1 must hold finite ranges"):
        E.equalization_scales(torch.tensor([-1.0]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="one range per channel"):
        E.equalization_scales(torch.ones(2), torch.ones(3))
    with pytest.raises(ValueError, match="second must read the 4 output channels"):
        E.equalize_pair(conv, nn.Conv2d(5, 2, 1))
    with pytest.raises(ValueError, match="relu6 must be one of"):
        E.cross_layer_equalize(conv, relu6="clip")
    with pytest.raises(ValueError, match="tol must be"):
        E.cross_layer_equalize(conv, tol=0.0)
    with pytest.raises(ValueError, match="calibration yielded no batch"):
        E.correct_bias(conv, [])
    with pytest.raises(TypeError, match="calibration must be an iterable"):
        E.correct_bias(conv, _randn(2, 3, 5, 5))
    with pytest.raises(ValueError, match="quantized_weight must be shaped like"):
        E.output_error(conv, _randn(2, 3, 5, 5), torch.zeros(4, 3, 1, 1))
    with pytest.raises(ValueError, match="bits must be an int in"):
        E.quantize_weight(conv.weight, 1)
