"""Design principles: one configurable CNN for controlled experiments.

Zagoruyko & Komodakis, "Wide Residual Networks", arXiv 1605.07146 (depth vs width at a
fixed cost). Ramachandran, Zoph & Le, "Searching for Activation Functions",
arXiv 1710.05941 (swish / SiLU). Howard et al., "Searching for MobileNetV3",
arXiv 1905.02244 (hard-swish). Srivastava et al., "Dropout", JMLR 2014.

An experiment about one design choice must hold everything else fixed. ``DesignCNN``
is a stack of stages; each stage repeats one block (a dense 3x3 conv, a
depthwise-separable conv or an inverted residual) ``depth`` times at one width, and every
stage after the first halves the resolution with a max pool. Its arguments are the
choices the chapter varies: depth and width per stage, the block, the activation, the
kernel size, dropout. With ``widths=(32, 64, 128)``, ``depths=(1, 2, 2)`` and dense
blocks it is the book's baseline (same layers, same counts).

:func:`fit_widths_to_macs` scales the widths so that networks of different depths cost
the same MACs, the control a depth-vs-width comparison needs.

Taught in chapters/02_design_principles.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from ._checks import check_float, check_int, check_ints, check_str
from .blocks import ConvBNAct, DepthwiseSeparable, InvertedResidual
from .models import register_model
from .profile import count_macs

__all__ = ["ACTIVATIONS", "BLOCKS", "DesignCNN", "design_cnn", "fit_widths_to_macs"]

# name -> module factory; LeakyReLU keeps a small slope (0.01) for negative inputs
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,          # swish: x * sigmoid(x)
    "hardswish": nn.Hardswish,  # x * relu6(x + 3) / 6, swish without the exponential
}
BLOCKS = ("conv", "dwsep", "mbconv")


def _block(kind: str, c_in: int, c_out: int, kernel_size: int,
           activation: Callable[[], nn.Module], expansion: int) -> nn.Module:
    if kind == "conv":
        return ConvBNAct(c_in, c_out, kernel_size, activation=activation)
    if kind == "dwsep":
        return DepthwiseSeparable(c_in, c_out, kernel_size, activation=activation)
    return InvertedResidual(c_in, c_out, c_in * expansion, kernel_size, activation=activation)


class DesignCNN(nn.Module):
    """A stem conv, stages of one repeated block, global average pooling, dropout, linear.

    ============  =============================================  ================
    part          layers                                         resolution
    ============  =============================================  ================
    stem          conv K x K to ``widths[0]`` (dense), BN, act   28x28
    stage 0       ``depths[0] - 1`` blocks at ``widths[0]``      28x28
    stage i > 0   max pool 2, ``depths[i]`` blocks, ``widths[i]``  halved each stage
    head          global average pool, dropout, linear           1x1
    ============  =============================================  ================

    The stem counts as the first layer of stage 0, so ``depths=(1, 2, 2)`` has five
    convolutions, like the baseline.

    Args:
        num_classes: outputs of the classifier.
        widths: output channels of each stage.
        depths: layers in each stage (at least 1 each).
        activation: a key of :data:`ACTIVATIONS`.
        block: ``"conv"`` (dense), ``"dwsep"`` (depthwise-separable) or ``"mbconv"``
            (inverted residual with ``expansion``), used for every layer but the stem.
        kernel_size: odd kernel size of every spatial convolution.
        dropout: before the classifier, in [0, 1).
        expansion: expansion ratio of ``"mbconv"`` blocks.
        in_channels: input channels.
    """

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (32, 64, 128),
                 depths: Sequence[int] = (1, 2, 2), activation: str = "relu",
                 block: str = "conv", kernel_size: int = 3, dropout: float = 0.2,
                 expansion: int = 4, in_channels: int = 1):
        super().__init__()
        check_int("num_classes", num_classes, 1)
        check_ints("widths", widths, 1, nonempty=False)
        check_ints("depths", depths, 1, nonempty=False)
        check_str("activation", activation, ACTIVATIONS)
        check_str("block", block, BLOCKS)
        check_float("dropout", dropout, 0, 1, high_open=True)
        check_int("in_channels", in_channels, 1)
        widths, depths = tuple(widths), tuple(depths)
        for name, values in (("widths", widths), ("depths", depths)):
            if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                                 for v in values):
                raise ValueError(f"{name} must be positive ints, got {values!r}")
        if len(widths) != len(depths):
            raise ValueError(f"widths and depths need one entry per stage, got {len(widths)} "
                             f"widths and {len(depths)} depths")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {BLOCKS}, got {block!r}")
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd positive int, got {kernel_size!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if not isinstance(expansion, int) or expansion < 1:
            raise ValueError(f"expansion must be a positive int, got {expansion!r}")
        act = ACTIVATIONS[activation]
        # the stem is dense whatever the block: a depthwise conv on one channel is useless
        layers: list[nn.Module] = [ConvBNAct(in_channels, widths[0], kernel_size, activation=act)]
        channels = widths[0]
        for i, (width, depth) in enumerate(zip(widths, depths)):
            if i > 0:
                layers.append(nn.MaxPool2d(2))  # (B, C, H, W) -> (B, C, H/2, W/2)
            for _ in range(depth - 1 if i == 0 else depth):
                layers.append(_block(block, channels, width, kernel_size, act, expansion))
                channels = width
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout),
                                        nn.Linear(channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model
def design_cnn(num_classes: int = 10, **kwargs) -> nn.Module:
    """A configurable CNN for design experiments (see :class:`DesignCNN`)."""
    return DesignCNN(num_classes=num_classes, **kwargs)


def fit_widths_to_macs(target_macs: int, depths: Sequence[int],
                       ratios: Sequence[int] = (1, 2, 4), max_base: int = 1024,
                       **kwargs) -> tuple[int, ...]:
    """The widest ``widths = base * ratios`` whose :class:`DesignCNN` costs at most
    ``target_macs`` MACs per 28x28 image.

    MACs grow monotonically with ``base`` (about quadratically), so a bisection over
    ``base`` finds the largest one within the budget.

    Args:
        target_macs: the MACs budget.
        depths: layers per stage, as for :class:`DesignCNN`.
        ratios: width of each stage relative to ``base``.
        max_base: the largest ``base`` tried.
        **kwargs: other :class:`DesignCNN` arguments (block, kernel_size, ...).

    Raises:
        ValueError: the budget is below the cost of ``base = 1``, or the lengths differ.
    """
    if isinstance(target_macs, bool) or not isinstance(target_macs, int) or target_macs < 1:
        raise ValueError(f"target_macs must be a positive int, got {target_macs!r}")
    check_ints("depths", depths, 1)
    check_ints("ratios", ratios, 1)
    check_int("max_base", max_base, 1)
    if len(ratios) != len(depths):
        raise ValueError(f"ratios and depths need one entry per stage, got {len(ratios)} "
                         f"and {len(depths)}")

    def macs(base: int) -> int:
        return count_macs(DesignCNN(widths=[base * r for r in ratios], depths=depths, **kwargs))

    if macs(1) > target_macs:
        raise ValueError(f"target_macs={target_macs:,d} is below the cheapest network of "
                         f"these depths ({macs(1):,d} MACs)")
    # bracket by doubling, then bisect: building the network at ``max_base`` first (481M
    # weights at 1024 and depths (2, 3, 3)) cost seconds a call, for a base near 20
    low, high = 1, 2  # invariant: macs(low) <= target
    while high < max_base and macs(high) <= target_macs:
        low, high = high, 2 * high
    if high >= max_base:
        high = max_base
        if macs(high) <= target_macs:
            return tuple(high * r for r in ratios)
    while high - low > 1:  # invariant: macs(low) <= target < macs(high)
        mid = (low + high) // 2
        if macs(mid) <= target_macs:
            low = mid
        else:
            high = mid
    return tuple(low * r for r in ratios)
