"""Lightweight CNN families, written as the stage tables of their papers.

Howard et al., "MobileNets", arXiv 1704.04861. Sandler et al., "MobileNetV2: Inverted
Residuals and Linear Bottlenecks", arXiv 1801.04381. Howard et al., "Searching for
MobileNetV3", arXiv 1905.02244. Zhang et al., "ShuffleNet", arXiv 1707.01083. Ma et al.,
"ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design",
arXiv 1807.11164. Iandola et al., "SqueezeNet", arXiv 1602.07360. Tan & Le,
"EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
arXiv 1905.11946. Han et al., "GhostNet: More Features from Cheap Operations",
arXiv 1911.11907.

Each family is a stem, a table of stages built from :mod:`lightcnn.blocks`, and a head.
Every factory takes ``num_classes``, ``width_mult`` (channels scaled and rounded as the
paper's code does) and ``config``:

* ``"imagenet"``: 3x224x224 inputs and the paper's full stem (32x downsampling to 7x7).
  Parameter and MAC counts then equal torchvision's models (or the papers' tables for
  MobileNetV1, ShuffleNetV1 and GhostNet, which torchvision lacks).
* ``"fmnist"`` (default): 1x28x28 inputs. The stem conv gets stride 1 and the first
  downsampling after it (a max pool or the first stride-2 stage) is dropped, so the
  network downsamples 8x (28 -> 14 -> 7 -> 4) instead of reducing 28x28 to 1x1 early.
  SqueezeNet, which downsamples only 16x on ImageNet (224 -> 13), loses just the stem
  stride (28 -> 14 -> 7 -> 3).

``create_model("mobilenet_v2", num_classes=10, width_mult=0.5)`` gives the Fashion-MNIST
model; ``create_model("mobilenet_v2", num_classes=1000, config="imagenet")`` the paper's.

Taught in chapters/03_light_architectures.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ._checks import check_bool, check_float, check_int, check_sequence, check_str
from .blocks import (ConvBNAct, DepthwiseSeparable, Fire, GhostBottleneck, InvertedResidual,
                     ShuffleUnitV1, ShuffleUnitV2, make_divisible)
from .models import register_model

__all__ = [
    "CONFIGS", "compound_scaling", "MobileNetV1", "MobileNetV2", "MobileNetV3",
    "ShuffleNetV1", "ShuffleNetV2", "SqueezeNet", "EfficientNet", "GhostNet",
    "mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
    "shufflenet_v1", "shufflenet_v2", "squeezenet1_0", "squeezenet1_1", "efficientnet_b0",
    "ghostnet",
]

# config name -> input channels; "imagenet" also keeps the paper's stride-2 stem.
CONFIGS = {"fmnist": 1, "imagenet": 3}

# ---------------------------------------------------------------------------------------
# Stage tables
# ---------------------------------------------------------------------------------------

# MobileNetV1 (Howard et al. 2017, Table 1), after a 3x3 stride-2 conv to 32 channels:
# depthwise-separable layers to c channels, n times, the first with stride s.
MOBILENET_V1_STAGES = [
    # c,   n, s
    (64,   1, 1),
    (128,  2, 2),
    (256,  2, 2),
    (512,  6, 2),
    (1024, 2, 2),
]

# MobileNetV2 (Sandler et al. 2018, Table 2), after a 3x3 stride-2 conv to 32 channels:
# inverted residuals with expansion t to c channels, n times, the first with stride s.
MOBILENET_V2_STAGES = [
    # t, c,   n, s
    (1, 16,  1, 1),
    (6, 24,  2, 2),
    (6, 32,  3, 2),
    (6, 64,  4, 2),
    (6, 96,  3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]

# MobileNetV3 (Howard et al. 2019, Tables 1 and 2), after a 3x3 stride-2 conv to 16
# channels with hard-swish: one bneck per row, kernel k, expanded width exp, output c,
# squeeze-excite or not, nonlinearity nl (RE = ReLU, HS = hard-swish), stride s.
MOBILENET_V3_LARGE_STAGES = [
    # k, exp, c,   se,    nl,   s
    (3, 16,  16,  False, "RE", 1),
    (3, 64,  24,  False, "RE", 2),
    (3, 72,  24,  False, "RE", 1),
    (5, 72,  40,  True,  "RE", 2),
    (5, 120, 40,  True,  "RE", 1),
    (5, 120, 40,  True,  "RE", 1),
    (3, 240, 80,  False, "HS", 2),
    (3, 200, 80,  False, "HS", 1),
    (3, 184, 80,  False, "HS", 1),
    (3, 184, 80,  False, "HS", 1),
    (3, 480, 112, True,  "HS", 1),
    (3, 672, 112, True,  "HS", 1),
    (5, 672, 160, True,  "HS", 2),
    (5, 960, 160, True,  "HS", 1),
    (5, 960, 160, True,  "HS", 1),
]
MOBILENET_V3_SMALL_STAGES = [
    # k, exp, c,  se,    nl,   s
    (3, 16,  16, True,  "RE", 2),
    (3, 72,  24, False, "RE", 2),
    (3, 88,  24, False, "RE", 1),
    (5, 96,  40, True,  "HS", 2),
    (5, 240, 40, True,  "HS", 1),
    (5, 240, 40, True,  "HS", 1),
    (5, 120, 48, True,  "HS", 1),
    (5, 144, 48, True,  "HS", 1),
    (5, 288, 96, True,  "HS", 2),
    (5, 576, 96, True,  "HS", 1),
    (5, 576, 96, True,  "HS", 1),
]
_NONLINEARITY = {"RE": nn.ReLU, "HS": nn.Hardswish}

# ShuffleNetV1 (Zhang et al. 2018, Table 1): output channels of stages 2-4 for g groups,
# after a 3x3 stride-2 conv to 24 channels and a 3x3 stride-2 max pool. Each stage starts
# with a stride-2 unit; the units per stage are (4, 8, 4).
SHUFFLENET_V1_CHANNELS = {
    # g: stage 2, 3, 4
    1: (144, 288, 576),
    2: (200, 400, 800),
    3: (240, 480, 960),
    4: (272, 544, 1088),
    8: (384, 768, 1536),
}
SHUFFLENET_REPEATS = (4, 8, 4)

# ShuffleNetV2 (Ma et al. 2018, Table 5): output channels of stages 2-4 and of conv5 per
# width multiplier; same stem and units per stage as ShuffleNetV1.
SHUFFLENET_V2_CHANNELS = {
    # width: stage 2, 3, 4, conv5
    0.5: (48,  96,  192, 1024),
    1.0: (116, 232, 464, 1024),
    1.5: (176, 352, 704, 1024),
    2.0: (244, 488, 976, 2048),
}

# SqueezeNet (Iandola et al. 2016, Table 1 for v1.0; v1.1 from the authors' repository):
# stem conv (channels, kernel), then Fire modules (squeeze s, expand 1x1 e1, expand 3x3
# e3) and "M" = 3x3 stride-2 max pool. The stem is followed by a max pool too.
SQUEEZENET_STAGES = {
    "1_0": ((96, 7), [(16, 64, 64), (16, 64, 64), (32, 128, 128), "M",
                      (32, 128, 128), (48, 192, 192), (48, 192, 192), (64, 256, 256), "M",
                      (64, 256, 256)]),
    "1_1": ((64, 3), [(16, 64, 64), (16, 64, 64), "M",
                      (32, 128, 128), (32, 128, 128), "M",
                      (48, 192, 192), (48, 192, 192), (64, 256, 256), (64, 256, 256)]),
}

# EfficientNet-B0 (Tan & Le 2019, Table 1), after a 3x3 stride-2 conv to 32 channels:
# MBConv with expansion t and kernel k to c channels, n times, the first with stride s.
EFFICIENTNET_B0_STAGES = [
    # t, k, c,   n, s
    (1, 3, 16,  1, 1),
    (6, 3, 24,  2, 2),
    (6, 5, 40,  2, 2),
    (6, 3, 80,  3, 2),
    (6, 5, 112, 3, 1),
    (6, 5, 192, 4, 2),
    (6, 3, 320, 1, 1),
]

# GhostNet (Han et al. 2020, Table 1), after a 3x3 stride-2 conv to 16 channels: one
# Ghost bottleneck per row, kernel k, expanded width exp, output c, SE or not, stride s.
GHOSTNET_STAGES = [
    # k, exp, c,   se,    s
    (3, 16,  16,  False, 1),
    (3, 48,  24,  False, 2),
    (3, 72,  24,  False, 1),
    (5, 72,  40,  True,  2),
    (5, 120, 40,  True,  1),
    (3, 240, 80,  False, 2),
    (3, 200, 80,  False, 1),
    (3, 184, 80,  False, 1),
    (3, 184, 80,  False, 1),
    (3, 480, 112, True,  1),
    (3, 672, 112, True,  1),
    (5, 672, 160, True,  2),
    (5, 960, 160, False, 1),
    (5, 960, 160, True,  1),
    (5, 960, 160, False, 1),
    (5, 960, 160, True,  1),
]

# ---------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------


def _check_args(num_classes: int, width_mult: float, config: str) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if (isinstance(width_mult, bool) or not isinstance(width_mult, (int, float))
            or not math.isfinite(width_mult) or width_mult <= 0):
        raise ValueError(f"width_mult must be a finite number > 0, got {width_mult!r}")
    check_str("config", config, CONFIGS)


def _check_model(num_classes: int, width_mult: float, in_channels: int, stem_stride: int,
                 dropout: float) -> None:
    # the arguments every model class takes
    check_int("num_classes", num_classes, 1)
    check_float("width_mult", width_mult, 0, low_open=True)
    check_int("in_channels", in_channels, 1)
    check_int("stem_stride", stem_stride, 1)
    check_float("dropout", dropout, 0, 1)


def _check_stages(stages: Sequence[tuple], columns: str, nonempty: bool = False) -> None:
    # a stage table: rows of len(columns.split(", ")) values, e.g. "(t, c, n, s)"
    check_sequence("stages", stages, nonempty=nonempty)
    width = len(columns.split(","))
    for row in stages:
        if not isinstance(row, (tuple, list)) or len(row) != width:
            raise ValueError(f"stages must hold rows {columns}, got a row {row!r}")


def _stem_stride(config: str) -> int:
    return 2 if config == "imagenet" else 1


def _drop_first_downsample(table: Sequence[tuple], config: str) -> list[tuple]:
    """For 28x28 inputs, give the first stride-2 row of a table (stride last) stride 1."""
    rows = [tuple(row) for row in table]
    if config == "fmnist":
        for i, row in enumerate(rows):
            if row[-1] == 2:
                rows[i] = row[:-1] + (1,)
                break
    return rows


def _init_weights(model: nn.Module) -> None:
    # He init with fan_out for convs, identity batch norms, small linear weights: the
    # recipe of torchvision's MobileNets, so the models train from scratch as theirs do
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def _linear_head(in_features: int, num_classes: int, dropout: float) -> nn.Sequential:
    # (B, C, 1, 1) -> (B, C) -> (B, num_classes)
    return nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(in_features, num_classes))


class _Classifier(nn.Module):
    """features -> global average pool -> classifier, the layout shared by every family."""

    features: nn.Sequential
    pool: nn.Module
    classifier: nn.Sequential

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B, C, 1, 1): the head's cost does not depend on the input size
        return self.classifier(self.pool(self.features(x)))


# ---------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------


class MobileNetV1(_Classifier):
    """MobileNetV1: a 3x3 conv, then 13 depthwise-separable layers, then a linear layer.

    At width 1.0 on ImageNet: 4.2M parameters, 569M MACs (Howard et al. 2017, Table 8).

    Args:
        stages: rows ``(c, n, s)`` as in :data:`MOBILENET_V1_STAGES`.
        num_classes: outputs of the classifier.
        width_mult: channel multiplier alpha; widths rounded to multiples of 8.
        in_channels: input channels.
        stem_stride: stride of the first conv.
        dropout: before the classifier.
    """

    def __init__(self, stages: Sequence[tuple[int, int, int]] = MOBILENET_V1_STAGES,
                 num_classes: int = 1000, width_mult: float = 1.0, in_channels: int = 3,
                 stem_stride: int = 2, dropout: float = 0.2):
        super().__init__()
        _check_stages(stages, "(c, n, s)")
        _check_model(num_classes, width_mult, in_channels, stem_stride, dropout)
        channels = make_divisible(32 * width_mult)
        layers: list[nn.Module] = [ConvBNAct(in_channels, channels, 3, stem_stride)]
        for c, n, s in stages:
            out = make_divisible(c * width_mult)
            for i in range(n):
                layers.append(DepthwiseSeparable(channels, out, 3, s if i == 0 else 1))
                channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = _linear_head(channels, num_classes, dropout)
        _init_weights(self)


class MobileNetV2(_Classifier):
    """MobileNetV2: a 3x3 conv, 17 inverted residuals (ReLU6), a 1x1 conv to 1280, linear.

    Mirrors torchvision's ``mobilenet_v2``: expanded width ``round(C_in * t)``, last conv
    ``1280 * max(1, width_mult)``, widths rounded with :func:`make_divisible`.

    Args:
        stages: rows ``(t, c, n, s)`` as in :data:`MOBILENET_V2_STAGES`.
        num_classes: outputs of the classifier.
        width_mult: channel multiplier.
        in_channels: input channels.
        stem_stride: stride of the first conv.
        dropout: before the classifier.
    """

    def __init__(self, stages: Sequence[tuple[int, int, int, int]] = MOBILENET_V2_STAGES,
                 num_classes: int = 1000, width_mult: float = 1.0, in_channels: int = 3,
                 stem_stride: int = 2, dropout: float = 0.2):
        super().__init__()
        _check_stages(stages, "(t, c, n, s)")
        _check_model(num_classes, width_mult, in_channels, stem_stride, dropout)
        channels = make_divisible(32 * width_mult)
        last_channels = make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [ConvBNAct(in_channels, channels, 3, stem_stride,
                                             activation=nn.ReLU6)]
        for t, c, n, s in stages:
            out = make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(channels, out, int(round(channels * t)), 3,
                                               s if i == 0 else 1, nn.ReLU6))
                channels = out
        layers.append(ConvBNAct(channels, last_channels, 1, activation=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = _linear_head(last_channels, num_classes, dropout)
        _init_weights(self)


class MobileNetV3(_Classifier):
    """MobileNetV3: hard-swish stem, bnecks (MBConv with optional hard-sigmoid SE), a 1x1
    conv to 6x the last width, pooling, then a hidden linear layer and the classifier.

    Mirrors torchvision's ``mobilenet_v3_*``: SE squeeze width ``make_divisible(exp // 4)``,
    penultimate width scaled by ``width_mult``. Batch norm keeps PyTorch's eps and momentum
    (torchvision uses 1e-3 and 0.01; the counts do not depend on them).

    Args:
        stages: rows ``(k, exp, c, se, nl, s)`` as in :data:`MOBILENET_V3_LARGE_STAGES`.
        last_channels: width of the penultimate linear layer (1280 large, 1024 small).
        num_classes: outputs of the classifier.
        width_mult: channel multiplier (also applied to ``last_channels``).
        in_channels: input channels.
        stem_stride: stride of the first conv.
        dropout: before the classifier.
    """

    def __init__(self, stages: Sequence[tuple], last_channels: int, num_classes: int = 1000,
                 width_mult: float = 1.0, in_channels: int = 3, stem_stride: int = 2,
                 dropout: float = 0.2):
        super().__init__()
        _check_stages(stages, "(k, exp, c, se, nl, s)")
        check_int("last_channels", last_channels, 1)
        _check_model(num_classes, width_mult, in_channels, stem_stride, dropout)
        channels = make_divisible(16 * width_mult)
        layers: list[nn.Module] = [ConvBNAct(in_channels, channels, 3, stem_stride,
                                             activation=nn.Hardswish)]
        for k, exp, c, se, nl, s in stages:
            out, expanded = make_divisible(c * width_mult), make_divisible(exp * width_mult)
            se_channels = make_divisible(expanded // 4) if se else 0
            layers.append(InvertedResidual(channels, out, expanded, k, s, _NONLINEARITY[nl],
                                           se_channels, nn.ReLU, nn.Hardsigmoid))
            channels = out
        # the last 1x1 conv runs at 7x7; the wide linear layer after pooling costs little
        layers.append(ConvBNAct(channels, 6 * channels, 1, activation=nn.Hardswish))
        last_channels = make_divisible(last_channels * width_mult)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(6 * channels, last_channels), nn.Hardswish(),
            nn.Dropout(dropout), nn.Linear(last_channels, num_classes))
        _init_weights(self)


class ShuffleNetV1(_Classifier):
    """ShuffleNetV1: 3x3 conv, max pool, three stages of shuffle units, linear.

    The first unit of stage 2 has a dense first 1x1 conv (24 input channels are too few to
    split). At 1x with g = 3 on ImageNet: 1.9M parameters, 140M MACs (Zhang et al. 2018,
    Table 2).

    Args:
        groups: ``g`` of the grouped 1x1 convs, a key of :data:`SHUFFLENET_V1_CHANNELS`.
        num_classes: outputs of the classifier.
        width_mult: channel multiplier; stage widths rounded to multiples of ``4*g`` so
            the bottleneck (a quarter) splits into ``g`` groups.
        in_channels: input channels.
        stem_stride: stride of the first conv; 1 also drops the max pool.
        dropout: before the classifier.
    """

    def __init__(self, groups: int = 3, num_classes: int = 1000, width_mult: float = 1.0,
                 in_channels: int = 3, stem_stride: int = 2, dropout: float = 0.0):
        super().__init__()
        check_int("groups", groups, 1)
        _check_model(num_classes, width_mult, in_channels, stem_stride, dropout)
        if groups not in SHUFFLENET_V1_CHANNELS:
            raise ValueError(f"groups must be one of {sorted(SHUFFLENET_V1_CHANNELS)}, "
                             f"got {groups!r}")
        channels = make_divisible(24 * width_mult, groups)
        layers: list[nn.Module] = [
            ConvBNAct(in_channels, channels, 3, stem_stride),
            nn.MaxPool2d(3, 2, 1) if stem_stride == 2 else nn.Identity()]
        for stage, (c, n) in enumerate(zip(SHUFFLENET_V1_CHANNELS[groups], SHUFFLENET_REPEATS)):
            out = make_divisible(c * width_mult, 4 * groups)
            for i in range(n):
                layers.append(ShuffleUnitV1(channels, out, groups, 2 if i == 0 else 1,
                                            group_first_conv=stage > 0 or i > 0))
                channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = _linear_head(channels, num_classes, dropout)
        _init_weights(self)


class ShuffleNetV2(_Classifier):
    """ShuffleNetV2: 3x3 conv, max pool, three stages of split units, 1x1 conv5, linear.

    Mirrors torchvision's ``shufflenet_v2_x*``.

    Args:
        num_classes: outputs of the classifier.
        width_mult: a key of :data:`SHUFFLENET_V2_CHANNELS` takes the paper's widths;
            any other scales the 1x widths (rounded to multiples of 4).
        in_channels: input channels.
        stem_stride: stride of the first conv; 1 also drops the max pool.
        dropout: before the classifier.
    """

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, in_channels: int = 3,
                 stem_stride: int = 2, dropout: float = 0.0):
        super().__init__()
        _check_model(num_classes, width_mult, in_channels, stem_stride, dropout)
        if width_mult in SHUFFLENET_V2_CHANNELS:
            *widths, last = SHUFFLENET_V2_CHANNELS[width_mult]
        else:
            *widths, last = [make_divisible(c * width_mult, 4)
                             for c in SHUFFLENET_V2_CHANNELS[1.0]]
        channels = 24
        layers: list[nn.Module] = [
            ConvBNAct(in_channels, channels, 3, stem_stride),
            nn.MaxPool2d(3, 2, 1) if stem_stride == 2 else nn.Identity()]
        for out, n in zip(widths, SHUFFLENET_REPEATS):
            for i in range(n):
                layers.append(ShuffleUnitV2(channels, out, 2 if i == 0 else 1))
                channels = out
        layers.append(ConvBNAct(channels, last, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = _linear_head(last, num_classes, dropout)
        _init_weights(self)


class SqueezeNet(_Classifier):
    """SqueezeNet: a conv, Fire modules between max pools, a 1x1 conv classifier.

    No linear layer: the last conv maps to ``num_classes`` channels and global pooling
    gives the logits. Without ``norm`` (the paper, and the ImageNet configuration) there is
    no batch norm and it mirrors torchvision's ``squeezenet1_0``/``1_1``. The Fashion-MNIST
    configuration adds batch norm after every conv but the classifier: without it the
    book's recipe (one-cycle to learning rate 0.1) makes the network diverge (chapter 03).

    Args:
        version: ``"1_0"`` or ``"1_1"`` (2.4x fewer MACs, same accuracy).
        num_classes: outputs of the classifier.
        width_mult: channel multiplier, widths rounded to multiples of 8.
        in_channels: input channels.
        stem_stride: stride of the first conv; 1 also pads it ("same" output size).
        dropout: before the classifier conv.
        norm: batch norm after the stem and every Fire conv (not in the paper).
        relu_head: a ReLU after the classifier conv, as in the paper and torchvision, so
            every class score is >= 0; False leaves the scores linear (chapter 07 tests
            what the ReLU does to a distilled student). Same parameters either way.
    """

    def __init__(self, version: str = "1_0", num_classes: int = 1000, width_mult: float = 1.0,
                 in_channels: int = 3, stem_stride: int = 2, dropout: float = 0.5,
                 norm: bool = False, relu_head: bool = True):
        super().__init__()
        check_str("version", version, SQUEEZENET_STAGES)
        _check_model(num_classes, width_mult, in_channels, stem_stride, dropout)
        check_bool("norm", norm)
        check_bool("relu_head", relu_head)
        (stem, kernel), table = SQUEEZENET_STAGES[version]
        channels = make_divisible(stem * width_mult)

        def pool() -> nn.Module:
            # ceil_mode keeps the border pixels (torchvision): 109 -> 54 -> 27 -> 13 in v1.0
            return nn.MaxPool2d(3, 2, ceil_mode=True)

        layers: list[nn.Module] = [
            ConvBNAct(in_channels, channels, kernel, stem_stride, norm=norm,
                      padding=0 if stem_stride == 2 else kernel // 2), pool()]
        for row in table:
            if row == "M":
                layers.append(pool())
                continue
            s, e1, e3 = (make_divisible(c * width_mult) for c in row)
            layers.append(Fire(channels, s, e1, e3, norm=norm))
            channels = e1 + e3
        self.features = nn.Sequential(*layers)
        # a 1x1 conv as classifier, then pooling: (B, num_classes, H, W) -> (B, num_classes)
        self.classifier = nn.Sequential(nn.Dropout(dropout),
                                        ConvBNAct(channels, num_classes, 1, norm=False,
                                                  activation=nn.ReLU if relu_head else None),
                                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.pool = nn.Identity()
        _init_weights(self)
        nn.init.normal_(self.classifier[1][0].weight, 0, 0.01)


class EfficientNet(_Classifier):
    """EfficientNet: MBConv blocks with SiLU and SE everywhere, a 1x1 conv to 4x the last
    width, linear. B0 was found by architecture search; B1-B7 scale it with
    :func:`compound_scaling`.

    Mirrors torchvision's ``efficientnet_b0``: expanded width ``make_divisible(C_in * t)``,
    SE squeeze width ``max(1, C_in // 4)`` of the block's input, depth ``ceil(n * d)``.
    Stochastic depth is not implemented (it changes training, not the counts).

    Args:
        stages: rows ``(t, k, c, n, s)`` as in :data:`EFFICIENTNET_B0_STAGES`.
        num_classes: outputs of the classifier.
        width_mult: channel multiplier ``w``.
        depth_mult: layer multiplier ``d``.
        in_channels: input channels.
        stem_stride: stride of the first conv.
        dropout: before the classifier.
    """

    def __init__(self, stages: Sequence[tuple] = EFFICIENTNET_B0_STAGES, num_classes: int = 1000,
                 width_mult: float = 1.0, depth_mult: float = 1.0, in_channels: int = 3,
                 stem_stride: int = 2, dropout: float = 0.2):
        super().__init__()
        _check_stages(stages, "(t, k, c, n, s)")
        _check_model(num_classes, width_mult, in_channels, stem_stride, dropout)
        check_float("depth_mult", depth_mult, 0, low_open=True)
        channels = make_divisible(32 * width_mult)
        layers: list[nn.Module] = [ConvBNAct(in_channels, channels, 3, stem_stride,
                                             activation=nn.SiLU)]
        for t, k, c, n, s in stages:
            out = make_divisible(c * width_mult)
            for i in range(int(math.ceil(n * depth_mult))):
                layers.append(InvertedResidual(
                    channels, out, make_divisible(channels * t), k, s if i == 0 else 1,
                    nn.SiLU, max(1, channels // 4), nn.SiLU, nn.Sigmoid))
                channels = out
        layers.append(ConvBNAct(channels, 4 * channels, 1, activation=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = _linear_head(4 * channels, num_classes, dropout)
        _init_weights(self)


class GhostNet(_Classifier):
    """GhostNet: a 3x3 conv, Ghost bottlenecks, a 1x1 conv to 960, pooling, a 1x1 conv to
    1280 (with bias, on the pooled 1x1 map), linear.

    Mirrors the authors' code (huawei-noah/ghostnet): widths rounded to multiples of 4,
    SE squeeze width ``make_divisible(exp / 4, 4)`` with a hard-sigmoid gate. At width 1.0
    on ImageNet: 5.2M parameters, 141M MACs (Han et al. 2020, Table 7).

    Args:
        stages: rows ``(k, exp, c, se, s)`` as in :data:`GHOSTNET_STAGES`.
        num_classes: outputs of the classifier.
        width_mult: channel multiplier.
        in_channels: input channels.
        stem_stride: stride of the first conv.
        dropout: before the classifier.
    """

    def __init__(self, stages: Sequence[tuple] = GHOSTNET_STAGES, num_classes: int = 1000,
                 width_mult: float = 1.0, in_channels: int = 3, stem_stride: int = 2,
                 dropout: float = 0.2):
        super().__init__()
        _check_stages(stages, "(k, exp, c, se, s)", nonempty=True)
        _check_model(num_classes, width_mult, in_channels, stem_stride, dropout)
        channels = make_divisible(16 * width_mult, 4)
        layers: list[nn.Module] = [ConvBNAct(in_channels, channels, 3, stem_stride)]
        for k, exp, c, se, s in stages:
            out, mid = make_divisible(c * width_mult, 4), make_divisible(exp * width_mult, 4)
            layers.append(GhostBottleneck(channels, mid, out, k, s,
                                          make_divisible(mid / 4, 4) if se else 0))
            channels = out
        last = make_divisible(stages[-1][1] * width_mult, 4)
        layers.append(ConvBNAct(channels, last, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            ConvBNAct(last, 1280, 1, norm=False), nn.Flatten(), nn.Dropout(dropout),
            nn.Linear(1280, num_classes))
        _init_weights(self)


def compound_scaling(phi: float, alpha: float = 1.2, beta: float = 1.1, gamma: float = 1.15,
                     base_resolution: int = 224) -> tuple[float, float, int]:
    """EfficientNet's compound scaling: depth ``alpha**phi``, width ``beta**phi``,
    resolution ``gamma**phi`` times the base (Tan & Le 2019, eq. 3).

    MACs grow as ``d * w**2 * r**2``; the grid-searched ``alpha * beta**2 * gamma**2``
    = 1.92 ~ 2 makes each unit of ``phi`` about double the MACs.

    Args:
        phi: the compound coefficient (0 is B0).
        alpha: depth base.
        beta: width base.
        gamma: resolution base.
        base_resolution: input side of the phi = 0 model, in pixels.

    Returns:
        ``(depth_mult, width_mult, resolution)``, the resolution rounded to whole pixels.
    """
    if isinstance(phi, bool) or not isinstance(phi, (int, float)) or not math.isfinite(phi):
        raise ValueError(f"phi must be a finite number, got {phi!r}")
    for name, base in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        check_float(name, base, 1.0)
    if isinstance(base_resolution, bool) or not isinstance(base_resolution, int) \
            or base_resolution < 1:
        raise ValueError(f"base_resolution must be a positive int, got {base_resolution!r}")
    return alpha ** phi, beta ** phi, int(round(base_resolution * gamma ** phi))


# ---------------------------------------------------------------------------------------
# Factories: create_model(name, num_classes=10, width_mult=1.0, config="fmnist")
# ---------------------------------------------------------------------------------------


@register_model
def mobilenet_v1(num_classes: int = 10, width_mult: float = 1.0, config: str = "fmnist"
                 ) -> nn.Module:
    """MobileNetV1 (see :class:`MobileNetV1`)."""
    _check_args(num_classes, width_mult, config)
    return MobileNetV1(_drop_first_downsample(MOBILENET_V1_STAGES, config), num_classes,
                       width_mult, CONFIGS[config], _stem_stride(config))


@register_model
def mobilenet_v2(num_classes: int = 10, width_mult: float = 1.0, config: str = "fmnist"
                 ) -> nn.Module:
    """MobileNetV2 (see :class:`MobileNetV2`)."""
    _check_args(num_classes, width_mult, config)
    return MobileNetV2(_drop_first_downsample(MOBILENET_V2_STAGES, config), num_classes,
                       width_mult, CONFIGS[config], _stem_stride(config))


@register_model
def mobilenet_v3_large(num_classes: int = 10, width_mult: float = 1.0, config: str = "fmnist"
                       ) -> nn.Module:
    """MobileNetV3-Large (see :class:`MobileNetV3`)."""
    _check_args(num_classes, width_mult, config)
    return MobileNetV3(_drop_first_downsample(MOBILENET_V3_LARGE_STAGES, config), 1280,
                       num_classes, width_mult, CONFIGS[config], _stem_stride(config))


@register_model
def mobilenet_v3_small(num_classes: int = 10, width_mult: float = 1.0, config: str = "fmnist"
                       ) -> nn.Module:
    """MobileNetV3-Small (see :class:`MobileNetV3`)."""
    _check_args(num_classes, width_mult, config)
    return MobileNetV3(_drop_first_downsample(MOBILENET_V3_SMALL_STAGES, config), 1024,
                       num_classes, width_mult, CONFIGS[config], _stem_stride(config))


@register_model
def shufflenet_v1(num_classes: int = 10, width_mult: float = 1.0, config: str = "fmnist",
                  groups: int = 3) -> nn.Module:
    """ShuffleNetV1, g = 3 unless given (see :class:`ShuffleNetV1`)."""
    _check_args(num_classes, width_mult, config)
    return ShuffleNetV1(groups, num_classes, width_mult, CONFIGS[config], _stem_stride(config))


@register_model
def shufflenet_v2(num_classes: int = 10, width_mult: float = 1.0, config: str = "fmnist"
                  ) -> nn.Module:
    """ShuffleNetV2 (see :class:`ShuffleNetV2`)."""
    _check_args(num_classes, width_mult, config)
    return ShuffleNetV2(num_classes, width_mult, CONFIGS[config], _stem_stride(config))


@register_model
def squeezenet1_0(num_classes: int = 10, width_mult: float = 1.0, config: str = "fmnist",
                  relu_head: bool = True) -> nn.Module:
    """SqueezeNet 1.0 (see :class:`SqueezeNet`; ``relu_head=False``: linear class
    scores)."""
    _check_args(num_classes, width_mult, config)
    return SqueezeNet("1_0", num_classes, width_mult, CONFIGS[config], _stem_stride(config),
                      norm=config == "fmnist", relu_head=relu_head)


@register_model
def squeezenet1_1(num_classes: int = 10, width_mult: float = 1.0, config: str = "fmnist",
                  relu_head: bool = True) -> nn.Module:
    """SqueezeNet 1.1 (see :class:`SqueezeNet`; ``relu_head=False``: linear class
    scores)."""
    _check_args(num_classes, width_mult, config)
    return SqueezeNet("1_1", num_classes, width_mult, CONFIGS[config], _stem_stride(config),
                      norm=config == "fmnist", relu_head=relu_head)


@register_model
def efficientnet_b0(num_classes: int = 10, width_mult: float = 1.0, config: str = "fmnist",
                    depth_mult: float = 1.0) -> nn.Module:
    """EfficientNet-B0 (see :class:`EfficientNet`); pass multipliers from
    :func:`compound_scaling` for a larger member of the family."""
    _check_args(num_classes, width_mult, config)
    if isinstance(depth_mult, bool) or not isinstance(depth_mult, (int, float)) \
            or not math.isfinite(depth_mult) or depth_mult <= 0:
        raise ValueError(f"depth_mult must be a finite number > 0, got {depth_mult!r}")
    return EfficientNet(_drop_first_downsample(EFFICIENTNET_B0_STAGES, config), num_classes,
                        width_mult, depth_mult, CONFIGS[config], _stem_stride(config))


@register_model
def ghostnet(num_classes: int = 10, width_mult: float = 1.0, config: str = "fmnist"
             ) -> nn.Module:
    """GhostNet (see :class:`GhostNet`)."""
    _check_args(num_classes, width_mult, config)
    return GhostNet(_drop_first_downsample(GHOSTNET_STAGES, config), num_classes, width_mult,
                    CONFIGS[config], _stem_stride(config))
