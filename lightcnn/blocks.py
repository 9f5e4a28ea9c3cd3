"""Building blocks of lightweight CNNs: cheap convolutions that replace a dense 3x3 conv.

Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
Applications", arXiv 1704.04861 (depthwise-separable conv). Sandler et al., "MobileNetV2:
Inverted Residuals and Linear Bottlenecks", arXiv 1801.04381. Howard et al., "Searching
for MobileNetV3", arXiv 1905.02244 (hard-swish, SE in the bottleneck). Hu et al.,
"Squeeze-and-Excitation Networks", arXiv 1709.01507. Iandola et al., "SqueezeNet",
arXiv 1602.07360 (Fire module). Zhang et al., "ShuffleNet", arXiv 1707.01083 (group 1x1
conv + channel shuffle). Ma et al., "ShuffleNet V2", arXiv 1807.11164 (channel split).
Han et al., "GhostNet: More Features from Cheap Operations", arXiv 1911.11907.

A dense K x K convolution from C_in to C_out channels costs K*K*C_in*C_out MACs per
output pixel. Every block here spends less by factoring it: a depthwise conv filters each
channel on its own (K*K*C per pixel) and a 1x1 conv mixes channels (C_in*C_out per
pixel), a grouped 1x1 conv mixes only within groups (then a shuffle lets groups talk),
a Fire module squeezes the channels before the 3x3, a Ghost module makes half of its
outputs from the other half with a cheap depthwise conv. MACs below count convolutions
and linear layers only (as the papers and :func:`lightcnn.profile.count_macs` do);
``H_out x W_out`` is the output size. Parameter counts include batch norm (2 per channel).

Taught in chapters/03_light_architectures.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable

import torch
from torch import nn

from ._checks import check_bool, check_callable, check_float, check_int, check_tensor

__all__ = [
    "make_divisible", "channel_shuffle", "ConvBNAct", "DepthwiseSeparable", "SqueezeExcite",
    "InvertedResidual", "Fire", "ShuffleUnitV1", "ShuffleUnitV2", "GhostModule",
    "GhostBottleneck",
]

Activation = Callable[[], nn.Module]


def _check_channels(**channels: int) -> None:
    for name, value in channels.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_groups(groups: int, **channels: int) -> None:
    _check_channels(groups=groups)
    for name, value in channels.items():
        if value % groups:
            raise ValueError(f"groups={groups} must divide {name}={value}")


def _check_stride(stride: int, allowed: tuple[int, ...] = (1, 2)) -> None:
    if stride not in allowed:
        raise ValueError(f"stride must be one of {allowed}, got {stride!r}")


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never more than 10% down.

    The rule of the TensorFlow MobileNet code (and torchvision's ``_make_divisible``):
    channel counts that are multiples of 8 map well onto SIMD lanes, and width multipliers
    would otherwise give widths like 0.35 * 32 = 11.2.

    Args:
        value: the unrounded width, e.g. ``c * width_mult``.
        divisor: the multiple to round to.
        min_value: the smallest width returned (``divisor`` if not given).
    """
    check_float("value", value, 0, low_open=True)
    _check_channels(divisor=divisor)
    check_int("min_value", min_value, 1, none=True)
    min_value = divisor if min_value is None else min_value
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    # rounding to the nearest multiple may lose too much width at small values: step back up
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` groups (Zhang et al. 2018, Fig. 1c).

    Channel ``g * (C // groups) + i`` moves to position ``i * groups + g``, so that after a
    grouped conv the next grouped conv sees one channel of every group. It is a fixed
    permutation: shuffling again with ``C // groups`` groups restores the input. No
    parameters, no MACs (a memory copy).

    Args:
        x: a ``(B, C, H, W)`` tensor.
        groups: number of groups; must divide ``C``.
    """
    check_tensor("x", x)
    if x.dim() != 4:
        raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
    batch, channels, height, width = x.shape
    _check_groups(groups, channels=channels)
    # (B, C, H, W) -> (B, g, C/g, H, W): split the channels into their groups
    x = x.view(batch, groups, channels // groups, height, width)
    # (B, g, C/g, H, W) -> (B, C/g, g, H, W): the transpose is the shuffle itself
    x = x.transpose(1, 2).contiguous()
    return x.view(batch, channels, height, width)


class ConvBNAct(nn.Sequential):
    """Conv2d -> BatchNorm2d -> activation, the unit every block is made of.

    Params: ``K*K*(C_in/groups)*C_out`` weights + ``2*C_out`` (batch norm), or
    ``+ C_out`` bias instead of batch norm when ``norm=False``.
    MACs: ``K*K*(C_in/groups)*C_out*H_out*W_out``.

    Args:
        in_channels: input channels ``C_in``.
        out_channels: output channels ``C_out``.
        kernel_size: ``K``.
        stride: convolution stride.
        groups: convolution groups (``groups = C_in = C_out`` makes it depthwise).
        activation: a module factory such as ``nn.ReLU`` or ``nn.Hardswish``; None for a
            linear output (the projection of a linear bottleneck).
        norm: add batch norm; without it the conv gets a bias.
        padding: conv padding; ``K // 2`` ("same" at stride 1) if not given.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, groups: int = 1, activation: Activation | None = nn.ReLU,
                 norm: bool = True, padding: int | None = None):
        _check_channels(in_channels=in_channels, out_channels=out_channels,
                        kernel_size=kernel_size, stride=stride)
        _check_groups(groups, in_channels=in_channels, out_channels=out_channels)
        check_callable("activation", activation, none=True)
        check_bool("norm", norm)
        check_int("padding", padding, 0, none=True)
        padding = kernel_size // 2 if padding is None else padding
        # no conv bias before batch norm: the norm's shift beta makes it redundant
        layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel_size, stride,
                                             padding, groups=groups, bias=not norm)]
        if norm:
            layers.append(nn.BatchNorm2d(out_channels))
        if activation is not None:
            layers.append(activation())
        super().__init__(*layers)


class DepthwiseSeparable(nn.Sequential):
    """Depthwise K x K conv then pointwise 1x1 conv (MobileNetV1, Howard et al. 2017).

    Params: ``K*K*C_in + C_in*C_out`` (+ ``2*(C_in + C_out)`` batch norm).
    MACs: ``(K*K*C_in + C_in*C_out) * H_out*W_out``, a fraction
    ``1/C_out + 1/K**2`` of a dense K x K conv (about 8-9x less for K = 3).

    Args:
        in_channels: input channels ``C_in`` (the depthwise conv keeps them).
        out_channels: output channels ``C_out`` of the pointwise conv.
        kernel_size: ``K`` of the depthwise conv.
        stride: stride of the depthwise conv.
        activation: after each of the two convs; None for none.
        norm: batch norm after each conv (else the convs get biases).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, activation: Activation | None = nn.ReLU, norm: bool = True):
        _check_channels(in_channels=in_channels, out_channels=out_channels,
                        kernel_size=kernel_size, stride=stride)
        check_callable("activation", activation, none=True)
        check_bool("norm", norm)
        super().__init__(OrderedDict(
            # groups = C_in: each filter sees one channel, spatial filtering only
            depthwise=ConvBNAct(in_channels, in_channels, kernel_size, stride,
                                groups=in_channels, activation=activation, norm=norm),
            # 1x1 conv: all of the channel mixing, no spatial extent
            pointwise=ConvBNAct(in_channels, out_channels, 1, activation=activation, norm=norm),
        ))


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: rescale each channel by a gate computed from all channels.

    Global average pool ``(B, C, H, W) -> (B, C, 1, 1)``, 1x1 conv to ``S`` channels,
    activation, 1x1 conv back to ``C``, gate (sigmoid, or hard-sigmoid in MobileNetV3 and
    GhostNet), multiply with the input.

    Params: ``2*C*S + C + S`` (two 1x1 convs with biases). MACs: ``2*C*S`` (the convs run
    on a 1x1 map; pooling and the product are not counted).

    Args:
        channels: ``C``, channels in and out.
        squeeze_channels: ``S``, the bottleneck width (``C/4`` in MobileNetV3, rounded).
        activation: between the two convs.
        gate: turns the logits into per-channel scales.
    """

    def __init__(self, channels: int, squeeze_channels: int, activation: Activation = nn.ReLU,
                 gate: Activation = nn.Sigmoid):
        super().__init__()
        _check_channels(channels=channels, squeeze_channels=squeeze_channels)
        check_callable("activation", activation)
        check_callable("gate", gate)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, squeeze_channels, 1)
        self.activation = activation()
        self.expand = nn.Conv2d(squeeze_channels, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B, C, 1, 1): one descriptor per channel, the "squeeze"
        scale = self.gate(self.expand(self.activation(self.reduce(self.pool(x)))))
        return x * scale


class InvertedResidual(nn.Module):
    """MBConv: expand 1x1, depthwise K x K, optional SE, linear 1x1 projection, residual.

    The block is narrow at its ends and wide (``E`` channels) in the middle; the
    projection has no activation (the "linear bottleneck": ReLU on a narrow tensor loses
    information, Sandler et al. 2018, section 3.2). The input is added back when
    ``stride == 1`` and ``C_in == C_out``.

    Params: ``C_in*E`` (only when ``E != C_in``) ``+ K*K*E + E*C_out``
    ``+ 2*E*S + E + S`` (SE, when ``S > 0``) ``+ 2*(E + E + C_out)`` (batch norm).
    MACs: ``C_in*E*H_in*W_in + (K*K*E + E*C_out)*H_out*W_out + 2*E*S``.

    Args:
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        expanded_channels: ``E``; ``C_in * t`` for expansion ratio ``t`` (computed and
            rounded by the caller, as the papers round differently).
        kernel_size: ``K`` of the depthwise conv.
        stride: stride of the depthwise conv.
        activation: ``nn.ReLU6`` (MobileNetV2), ``nn.Hardswish`` or ``nn.ReLU``
            (MobileNetV3), ``nn.SiLU`` (EfficientNet).
        se_channels: ``S``, squeeze width of the SE module; 0 for no SE.
        se_activation: activation inside SE.
        se_gate: gate of SE (``nn.Hardsigmoid`` in MobileNetV3).
    """

    def __init__(self, in_channels: int, out_channels: int, expanded_channels: int,
                 kernel_size: int = 3, stride: int = 1, activation: Activation = nn.ReLU6,
                 se_channels: int = 0, se_activation: Activation = nn.ReLU,
                 se_gate: Activation = nn.Sigmoid):
        super().__init__()
        _check_channels(in_channels=in_channels, out_channels=out_channels,
                        expanded_channels=expanded_channels, kernel_size=kernel_size)
        _check_stride(stride)
        if not isinstance(se_channels, int) or se_channels < 0:
            raise ValueError(f"se_channels must be an int >= 0, got {se_channels!r}")
        check_callable("activation", activation)
        check_callable("se_activation", se_activation)
        check_callable("se_gate", se_gate)
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expanded_channels != in_channels:
            # expand: a wide tensor for the depthwise conv to filter, cheap at 1x1
            layers.append(ConvBNAct(in_channels, expanded_channels, 1, activation=activation))
        # depthwise: the only spatial filtering, K*K MACs per channel and pixel
        layers.append(ConvBNAct(expanded_channels, expanded_channels, kernel_size, stride,
                                groups=expanded_channels, activation=activation))
        if se_channels:
            layers.append(SqueezeExcite(expanded_channels, se_channels, se_activation, se_gate))
        # project: back to a narrow tensor, linear so no information is cut by the ReLU
        layers.append(ConvBNAct(expanded_channels, out_channels, 1, activation=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class Fire(nn.Module):
    """SqueezeNet's Fire module: 1x1 squeeze, then 1x1 and 3x3 expand side by side.

    Squeezing to ``S < C_in`` channels before the 3x3 convs cuts their input width
    (Iandola et al. 2016, strategy 2); half the expand filters are 1x1 (strategy 1).
    Convs have biases and no batch norm, as in the paper, unless ``norm`` is set.

    Params: ``C_in*S + S*E1 + 9*S*E3 + S + E1 + E3`` (with ``norm``: no biases, and
    ``2*(S + E1 + E3)`` batch-norm parameters instead).
    MACs: ``(C_in*S + S*E1 + 9*S*E3) * H*W``.

    Args:
        in_channels: ``C_in``.
        squeeze_channels: ``S``.
        expand1x1_channels: ``E1``.
        expand3x3_channels: ``E3``; the output has ``E1 + E3`` channels.
        norm: batch norm after each conv (the paper predates its common use).
    """

    def __init__(self, in_channels: int, squeeze_channels: int, expand1x1_channels: int,
                 expand3x3_channels: int, norm: bool = False):
        super().__init__()
        _check_channels(in_channels=in_channels, squeeze_channels=squeeze_channels,
                        expand1x1_channels=expand1x1_channels,
                        expand3x3_channels=expand3x3_channels)
        check_bool("norm", norm)
        self.squeeze = ConvBNAct(in_channels, squeeze_channels, 1, norm=norm)
        self.expand1x1 = ConvBNAct(squeeze_channels, expand1x1_channels, 1, norm=norm)
        self.expand3x3 = ConvBNAct(squeeze_channels, expand3x3_channels, 3, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze(x)
        # (B, S, H, W) -> (B, E1 + E3, H, W)
        return torch.cat([self.expand1x1(x), self.expand3x3(x)], dim=1)


class ShuffleUnitV1(nn.Module):
    """ShuffleNet unit: group 1x1 conv, channel shuffle, depthwise 3x3, group 1x1 conv.

    At stride 1 the output is ``ReLU(x + branch(x))``; at stride 2 it is
    ``cat(avgpool3x3(x), ReLU(branch(x)))``, so the branch makes ``C_out - C_in``
    channels. The bottleneck has ``M = C_out / 4`` channels (Zhang et al. 2018, sec. 3.2).

    Params: ``C_in*M/g1 + 9*M + M*B/g`` (+ ``2*(2*M + B)`` batch norm), with
    ``B = C_out`` at stride 1 or ``C_out - C_in`` at stride 2, and ``g1 = 1`` for the
    first unit of the network (its input is too narrow to split) else ``g``.
    MACs: ``C_in*M/g1*H_in*W_in + (9*M + M*B/g)*H_out*W_out``.

    Args:
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        groups: ``g`` of the 1x1 convs.
        stride: 1 or 2.
        group_first_conv: False makes the first 1x1 conv dense.
        mid_channels: ``M``; ``C_out // 4`` if not given.
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int = 3, stride: int = 1,
                 group_first_conv: bool = True, mid_channels: int | None = None):
        super().__init__()
        _check_channels(in_channels=in_channels, out_channels=out_channels)
        _check_stride(stride)
        check_bool("group_first_conv", group_first_conv)
        check_int("mid_channels", mid_channels, 1, none=True)
        mid_channels = out_channels // 4 if mid_channels is None else mid_channels
        branch_channels = out_channels - in_channels if stride == 2 else out_channels
        if stride == 1 and in_channels != out_channels:
            raise ValueError(f"stride 1 adds the input: in_channels={in_channels} must equal "
                             f"out_channels={out_channels}")
        _check_channels(mid_channels=mid_channels, branch_channels=branch_channels)
        first_groups = groups if group_first_conv else 1
        _check_groups(first_groups, in_channels=in_channels)
        _check_groups(groups, mid_channels=mid_channels, branch_channels=branch_channels)
        self.stride = stride
        self.groups = groups
        self.compress = ConvBNAct(in_channels, mid_channels, 1, groups=first_groups)
        self.depthwise = ConvBNAct(mid_channels, mid_channels, 3, stride, groups=mid_channels,
                                   activation=None)
        self.expand = ConvBNAct(mid_channels, branch_channels, 1, groups=groups,
                                activation=None)
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.compress(x)
        # without the shuffle, each output group of the next group conv would only ever
        # see the channels of one input group
        if self.groups > 1:
            out = channel_shuffle(out, self.groups)
        out = self.expand(self.depthwise(out))
        if self.stride == 1:
            return self.relu(x + out)
        # stride 2: concatenating (not adding) widens the network at no extra cost
        return torch.cat([self.shortcut(x), self.relu(out)], dim=1)


class ShuffleUnitV2(nn.Module):
    """ShuffleNetV2 unit: split the channels, transform one half, concatenate, shuffle.

    At stride 1 half of the channels pass untouched (equal widths in and out and no
    element-wise add: guidelines G1 and G4 of Ma et al. 2018); the other half goes
    through 1x1 -> depthwise 3x3 -> 1x1. At stride 2 both branches see the whole input
    and each makes ``C_out/2`` channels. ``channel_shuffle(., 2)`` mixes the halves.

    Params, with ``B = C_out/2``: stride 1: ``2*B*B + 9*B`` (+ ``6*B`` batch norm);
    stride 2: ``9*C_in + C_in*B`` (left) ``+ C_in*B + 9*B + B*B`` (right)
    (+ ``2*C_in + 8*B`` batch norm).
    MACs: stride 1: ``(2*B*B + 9*B)*H*W``; stride 2:
    ``C_in*B*H_in*W_in + (9*C_in + C_in*B + 9*B + B*B)*H_out*W_out``.

    Args:
        in_channels: ``C_in`` (equal to ``C_out`` at stride 1).
        out_channels: ``C_out``, even.
        stride: 1 or 2.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        _check_channels(in_channels=in_channels, out_channels=out_channels)
        _check_stride(stride)
        _check_groups(2, out_channels=out_channels)
        if stride == 1 and in_channels != out_channels:
            raise ValueError(f"stride 1 splits the input in half: in_channels={in_channels} "
                             f"must equal out_channels={out_channels}")
        self.stride = stride
        branch = out_channels // 2
        if stride == 2:
            self.left = nn.Sequential(
                ConvBNAct(in_channels, in_channels, 3, 2, groups=in_channels, activation=None),
                ConvBNAct(in_channels, branch, 1))
        else:
            self.left = nn.Identity()
        branch_in = in_channels if stride == 2 else branch
        self.right = nn.Sequential(
            ConvBNAct(branch_in, branch, 1),
            # no activation after the depthwise conv, as in the paper's Fig. 3
            ConvBNAct(branch, branch, 3, stride, groups=branch, activation=None),
            ConvBNAct(branch, branch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            # (B, C, H, W) -> two (B, C/2, H, W): the channel split
            left, right = x.chunk(2, dim=1)
            out = torch.cat([left, self.right(right)], dim=1)
        else:
            out = torch.cat([self.left(x), self.right(x)], dim=1)
        return channel_shuffle(out, 2)


class GhostModule(nn.Module):
    """Ghost module: a few "intrinsic" maps from a 1x1 conv, the rest from cheap depthwise ops.

    With ratio ``s``, a primary conv makes ``m = ceil(C_out / s)`` maps and a depthwise
    ``d x d`` conv makes ``(s - 1)`` "ghost" maps from each; the first ``C_out`` of the
    concatenation are kept. Costs about ``1/s`` of a dense conv (Han et al. 2020, eq. 4).

    Params: ``K*K*C_in*m + d*d*m*(s - 1)`` (+ ``2*m*s`` batch norm).
    MACs: ``(K*K*C_in*m + d*d*m*(s - 1)) * H_out*W_out``.

    Args:
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        kernel_size: ``K`` of the primary conv.
        ratio: ``s``, at least 2.
        dw_size: ``d`` of the cheap depthwise conv.
        stride: stride of the primary conv.
        activation: after both convs; None for the linear second module of a bottleneck.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1,
                 ratio: int = 2, dw_size: int = 3, stride: int = 1,
                 activation: Activation | None = nn.ReLU):
        super().__init__()
        _check_channels(in_channels=in_channels, out_channels=out_channels,
                        kernel_size=kernel_size, dw_size=dw_size, stride=stride)
        if not isinstance(ratio, int) or ratio < 2:
            raise ValueError(f"ratio must be an int >= 2, got {ratio!r}")
        check_callable("activation", activation, none=True)
        self.out_channels = out_channels
        init_channels = math.ceil(out_channels / ratio)
        self.primary = ConvBNAct(in_channels, init_channels, kernel_size, stride,
                                 activation=activation)
        # each intrinsic map yields ratio - 1 ghosts: groups = init_channels
        self.cheap = ConvBNAct(init_channels, init_channels * (ratio - 1), dw_size,
                               groups=init_channels, activation=activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        intrinsic = self.primary(x)
        out = torch.cat([intrinsic, self.cheap(intrinsic)], dim=1)
        # ceil() may give one map too many when C_out is not a multiple of the ratio
        return out[:, :self.out_channels]


class GhostBottleneck(nn.Module):
    """Ghost bottleneck: Ghost module (expand), [depthwise stride 2], [SE], Ghost module
    (linear projection), plus a shortcut (Han et al. 2020, Fig. 3).

    The shortcut is the identity when ``stride == 1`` and ``C_in == C_out``, else a
    depthwise ``K x K`` conv with the block's stride and a 1x1 conv (each with batch norm).

    Params: ``GhostModule(C_in, E) + K*K*E`` (stride 2) ``+ 2*E*S + E + S`` (SE)
    ``+ GhostModule(E, C_out)`` ``+ K*K*C_in + C_in*C_out`` (projecting shortcut),
    batch norm included in each part.
    MACs: the same terms, each times its output size.

    Args:
        in_channels: ``C_in``.
        mid_channels: ``E``, the expanded width.
        out_channels: ``C_out``.
        kernel_size: ``K`` of the depthwise convs.
        stride: 1 or 2.
        se_channels: ``S``; 0 for no SE.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int,
                 kernel_size: int = 3, stride: int = 1, se_channels: int = 0):
        super().__init__()
        _check_channels(in_channels=in_channels, mid_channels=mid_channels,
                        out_channels=out_channels, kernel_size=kernel_size)
        _check_stride(stride)
        check_int("se_channels", se_channels, 0)
        layers: list[nn.Module] = [GhostModule(in_channels, mid_channels)]
        if stride == 2:
            # the Ghost modules are 1x1: downsampling needs its own depthwise conv
            layers.append(ConvBNAct(mid_channels, mid_channels, kernel_size, 2,
                                    groups=mid_channels, activation=None))
        if se_channels:
            layers.append(SqueezeExcite(mid_channels, se_channels, nn.ReLU, nn.Hardsigmoid))
        # linear projection, as in MobileNetV2's bottleneck
        layers.append(GhostModule(mid_channels, out_channels, activation=None))
        self.block = nn.Sequential(*layers)
        if stride == 1 and in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = DepthwiseSeparable(in_channels, out_channels, kernel_size, stride,
                                               activation=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) + self.shortcut(x)
