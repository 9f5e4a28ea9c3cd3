"""Tests for lightcnn.blocks: each block against an explicit computation or its formula."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models._utils import _make_divisible
from torchvision.models.shufflenetv2 import channel_shuffle as tv_channel_shuffle

from lightcnn.blocks import (ConvBNAct, DepthwiseSeparable, Fire, GhostBottleneck, GhostModule,
                             InvertedResidual, ShuffleUnitV1, ShuffleUnitV2, SqueezeExcite,
                             channel_shuffle, make_divisible)
from lightcnn.profile import count_macs, count_params


def _randomize_bn(model: nn.Module) -> None:
    """Non-trivial batch-norm statistics, so eval-mode checks test the affine map too."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)


# ---- make_divisible ------------------------------------------------------------------

def test_make_divisible_matches_torchvision():
    for v in [3.0, 8.0, 11.2, 12.0, 16 * 0.35, 32 * 0.75, 100.0, 1280 * 1.4, 960 / 4]:
        for d in (4, 8):
            assert make_divisible(v, d) == _make_divisible(v, d)


def test_make_divisible_rejects_nonpositive():
    with pytest.raises(ValueError, match="value"):
        make_divisible(0)


# ---- DepthwiseSeparable --------------------------------------------------------------

def test_depthwise_separable_equals_grouped_conv_then_pointwise():
    torch.manual_seed(0)
    c_in, c_out = 6, 10
    block = DepthwiseSeparable(c_in, c_out, kernel_size=3, stride=2, activation=None, norm=False)
    x = torch.randn(2, c_in, 9, 9)
    dw, pw = block.depthwise[0], block.pointwise[0]
    assert dw.weight.shape == (c_in, 1, 3, 3)  # one 3x3 filter per channel
    # explicit: depthwise = conv2d with groups=C, then a 1x1 conv mixing the channels
    ref = F.conv2d(x, dw.weight, dw.bias, stride=2, padding=1, groups=c_in)
    ref = F.conv2d(ref, pw.weight, pw.bias)
    torch.testing.assert_close(block(x), ref)


def test_depthwise_separable_with_bn_relu_in_eval():
    torch.manual_seed(0)
    block = DepthwiseSeparable(4, 8)
    _randomize_bn(block)
    block.eval()
    x = torch.randn(2, 4, 7, 7)
    (dw, dw_bn, _), (pw, pw_bn, _) = block.depthwise, block.pointwise

    def bn(z, m):
        return F.batch_norm(z, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    ref = F.relu(bn(F.conv2d(x, dw.weight, padding=1, groups=4), dw_bn))
    ref = F.relu(bn(F.conv2d(ref, pw.weight), pw_bn))
    torch.testing.assert_close(block(x), ref)


def test_depthwise_separable_counts_follow_formula():
    k, c_in, c_out, h = 3, 32, 64, 14
    block = DepthwiseSeparable(c_in, c_out, k)
    assert count_params(block) == k * k * c_in + c_in * c_out + 2 * (c_in + c_out)
    assert count_macs(block, (c_in, h, h)) == (k * k * c_in + c_in * c_out) * h * h
    dense = ConvBNAct(c_in, c_out, k)
    ratio = count_macs(block, (c_in, h, h)) / count_macs(dense, (c_in, h, h))
    assert ratio == pytest.approx(1 / c_out + 1 / k ** 2)


# ---- channel_shuffle -----------------------------------------------------------------

@pytest.mark.parametrize("channels,groups", [(6, 2), (6, 3), (12, 4), (8, 1), (9, 9)])
def test_channel_shuffle_is_a_permutation_and_inverts(channels, groups):
    x = torch.arange(channels, dtype=torch.float32).view(1, channels, 1, 1).expand(2, -1, 3, 3)
    y = channel_shuffle(x, groups)
    order = y[0, :, 0, 0].long()
    assert sorted(order.tolist()) == list(range(channels))  # every channel exactly once
    per_group = channels // groups
    # output position i * groups + g holds input channel g * per_group + i
    expected = [g * per_group + i for i in range(per_group) for g in range(groups)]
    assert order.tolist() == expected
    torch.testing.assert_close(y, tv_channel_shuffle(x.contiguous(), groups), rtol=0, atol=0)
    torch.testing.assert_close(channel_shuffle(y, per_group), x, rtol=0, atol=0)


def test_channel_shuffle_rejects_bad_groups():
    x = torch.zeros(1, 6, 2, 2)
    with pytest.raises(ValueError, match=r"groups=4.*channels=6"):
        channel_shuffle(x, 4)
    with pytest.raises(ValueError, match="groups"):
        channel_shuffle(x, 0)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        channel_shuffle(torch.zeros(6, 2, 2), 2)


# ---- validation ----------------------------------------------------------------------

def test_groups_not_dividing_channels_is_rejected():
    with pytest.raises(ValueError, match=r"groups=4.*in_channels=6"):
        ConvBNAct(6, 8, groups=4)
    with pytest.raises(ValueError, match=r"groups=3.*out_channels=8"):
        ConvBNAct(6, 8, groups=3)
    with pytest.raises(ValueError, match=r"groups=3"):
        ShuffleUnitV1(30, 100, groups=3, stride=2)


@pytest.mark.parametrize("make", [
    lambda: ConvBNAct(0, 8),
    lambda: ConvBNAct(8, -1),
    lambda: DepthwiseSeparable(8, 0),
    lambda: InvertedResidual(8, 8, 0),
    lambda: SqueezeExcite(8, 0),
    lambda: Fire(8, 0, 4, 4),
    lambda: ShuffleUnitV2(0, 8, 2),
    lambda: GhostModule(8, 0),
    lambda: GhostBottleneck(8, 0, 8),
])
def test_nonpositive_channels_are_rejected(make):
    with pytest.raises(ValueError, match="must be a positive int"):
        make()


def test_bad_strides_and_shapes_are_rejected():
    with pytest.raises(ValueError, match="stride"):
        InvertedResidual(8, 8, 16, stride=3)
    with pytest.raises(ValueError, match="in_channels=8 must equal out_channels=16"):
        ShuffleUnitV2(8, 16, stride=1)
    with pytest.raises(ValueError, match="ratio"):
        GhostModule(8, 8, ratio=1)
    with pytest.raises(ValueError, match="se_channels"):
        InvertedResidual(8, 8, 16, se_channels=-1)


# ---- SqueezeExcite, InvertedResidual ---------------------------------------------------

def test_squeeze_excite_equals_explicit_gate():
    torch.manual_seed(0)
    se = SqueezeExcite(8, 2, gate=nn.Hardsigmoid)
    x = torch.randn(2, 8, 5, 5)
    s = x.mean((2, 3), keepdim=True)
    s = F.conv2d(F.relu(F.conv2d(s, se.reduce.weight, se.reduce.bias)), se.expand.weight,
                 se.expand.bias)
    torch.testing.assert_close(se(x), x * F.hardsigmoid(s))
    assert count_params(se) == 2 * 8 * 2 + 8 + 2
    assert count_macs(se, (8, 5, 5)) == 2 * 8 * 2


def test_inverted_residual_adds_input_only_at_stride_1_same_width():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 6)
    block = InvertedResidual(8, 8, 48).eval()
    # zero the projection's batch norm: the branch outputs 0, the block returns x
    nn.init.zeros_(block.block[-1][1].weight)
    torch.testing.assert_close(block(x), x)
    assert not InvertedResidual(8, 16, 48).use_residual
    assert not InvertedResidual(8, 8, 48, stride=2).use_residual
    assert InvertedResidual(8, 8, 8).block[0][0].groups == 8  # no expansion conv when E = C_in


def test_inverted_residual_counts_follow_formula():
    c_in, e, c_out, s, k, h = 16, 64, 24, 16, 5, 8
    block = InvertedResidual(c_in, c_out, e, k, stride=2, activation=nn.Hardswish,
                             se_channels=s, se_gate=nn.Hardsigmoid)
    params = c_in * e + k * k * e + e * c_out + (2 * e * s + e + s) + 2 * (e + e + c_out)
    assert count_params(block) == params
    h_out = h // 2
    macs = c_in * e * h * h + (k * k * e + e * c_out) * h_out * h_out + 2 * e * s
    assert count_macs(block, (c_in, h, h)) == macs
    assert block(torch.randn(2, c_in, h, h)).shape == (2, c_out, h_out, h_out)


# ---- Fire, ShuffleNet units, Ghost ----------------------------------------------------

def test_fire_counts_and_shape():
    fire = Fire(96, 16, 64, 64)
    assert count_params(fire) == 96 * 16 + 16 * 64 + 9 * 16 * 64 + 16 + 64 + 64
    assert count_macs(fire, (96, 10, 10)) == (96 * 16 + 16 * 64 + 9 * 16 * 64) * 100
    assert fire(torch.randn(2, 96, 10, 10)).shape == (2, 128, 10, 10)


def test_shuffle_unit_v1_shapes_and_counts():
    unit = ShuffleUnitV1(240, 240, groups=3, stride=1)
    x = torch.randn(2, 240, 8, 8)
    assert unit(x).shape == x.shape
    m = 60
    assert count_params(unit) == 240 * m // 3 + 9 * m + m * 240 // 3 + 2 * (2 * m + 240)
    down = ShuffleUnitV1(24, 240, groups=3, stride=2, group_first_conv=False)
    assert down(torch.randn(2, 24, 8, 8)).shape == (2, 240, 4, 4)
    assert down.compress[0].groups == 1 and down.expand[0].out_channels == 240 - 24


def test_shuffle_unit_v2_shapes_and_counts():
    b = 58
    unit = ShuffleUnitV2(116, 116, stride=1)
    assert unit(torch.randn(2, 116, 7, 7)).shape == (2, 116, 7, 7)
    assert count_params(unit) == 2 * b * b + 9 * b + 6 * b
    assert count_macs(unit, (116, 7, 7)) == (2 * b * b + 9 * b) * 49
    down = ShuffleUnitV2(24, 116, stride=2)
    assert down(torch.randn(2, 24, 8, 8)).shape == (2, 116, 4, 4)
    assert count_params(down) == 9 * 24 + 24 * b + 24 * b + 9 * b + b * b + 2 * 24 + 8 * b


def test_ghost_module_counts_and_odd_widths():
    c_in, c_out, h = 16, 32, 6
    ghost = GhostModule(c_in, c_out)
    m = c_out // 2
    assert count_params(ghost) == c_in * m + 9 * m + 2 * m * 2
    assert count_macs(ghost, (c_in, h, h)) == (c_in * m + 9 * m) * h * h
    # ceil(7 / 2) = 4 intrinsic maps make 8, the block keeps 7
    assert GhostModule(4, 7)(torch.randn(2, 4, 5, 5)).shape == (2, 7, 5, 5)


def test_ghost_bottleneck_shapes_and_shortcut():
    same = GhostBottleneck(16, 48, 16)
    assert isinstance(same.shortcut, nn.Identity)
    assert same(torch.randn(2, 16, 8, 8)).shape == (2, 16, 8, 8)
    down = GhostBottleneck(16, 48, 24, kernel_size=5, stride=2, se_channels=12)
    assert down(torch.randn(2, 16, 8, 8)).shape == (2, 24, 4, 4)
    assert isinstance(down.shortcut, DepthwiseSeparable)


def test_fire_with_norm_swaps_biases_for_batch_norm():
    from lightcnn.blocks import Fire
    plain, normed = Fire(16, 4, 8, 8), Fire(16, 4, 8, 8, norm=True)
    s, e1, e3 = 4, 8, 8
    weights = 16 * s + s * e1 + 9 * s * e3
    assert sum(p.numel() for p in plain.parameters()) == weights + s + e1 + e3
    assert sum(p.numel() for p in normed.parameters()) == weights + 2 * (s + e1 + e3)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in normed.modules()) == 3
