"""Models for 28x28 grey images, and a registry that creates them by name.

LeCun, Bottou, Bengio, Haffner, "Gradient-Based Learning Applied to Document
Recognition", Proc. IEEE 1998 (LeNet-5). Simonyan & Zisserman, "Very Deep Convolutional
Networks for Large-Scale Image Recognition", arXiv 1409.1556 (stacks of 3x3 convs, the
pattern of the baseline).

``BaselineCNN`` is the book's reference model: every technique is measured against it.
It is a small VGG-style network (3x3 convs, batch norm, ReLU, max pooling, global average
pooling, one linear classifier) meant to reach 93% on Fashion-MNIST with under 0.3M parameters.

Taught in chapters/01_cnn_basics.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from ._checks import check_callable, check_float, check_int, check_str

__all__ = ["BaselineCNN", "LeNet5", "register_model", "create_model", "list_models"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: make a factory function creatable by its name."""
    check_callable("fn", fn)
    if not isinstance(getattr(fn, "__name__", None), str):
        raise TypeError(f"fn must be a named function (a def), got {fn!r}")
    if fn.__name__ in _REGISTRY:
        raise ValueError(f"model {fn.__name__!r} is already registered")
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(_REGISTRY)


def create_model(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """Create a registered model by name, e.g. ``create_model("baseline_cnn")``.

    Raises:
        ValueError: unknown name (the message lists the known ones) or bad num_classes.
    """
    check_str("name", name)
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return _REGISTRY[name](num_classes=num_classes, **kwargs)


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    # bias=False: the BatchNorm shift that follows makes a conv bias redundant.
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class BaselineCNN(nn.Module):
    """VGG-style CNN for 1x28x28 inputs.

    ========  ======================  ============  ==================================
    stage     layers                  output        why
    ========  ======================  ============  ==================================
    stem      conv3x3 c1, maxpool 2   c1 x 14x14    one input channel: cheap at 28x28
    stage 1   conv3x3 c2, conv3x3 c2  c2 x 14x14
              maxpool 2               c2 x 7x7      halve resolution, widen
    stage 2   conv3x3 c3, conv3x3 c3  c3 x 7x7
    head      global avg pool         c3            no large flatten -> Linear
              dropout, linear         num_classes
    ========  ======================  ============  ==================================

    Each conv is conv (no bias) -> BatchNorm -> ReLU. With the default widths
    ``(32, 64, 128)``: 279K parameters and 22M MACs per image.

    Args:
        num_classes: outputs of the classifier.
        widths: ``(c1, c2, c3)`` channels of the stem and the two stages.
        dropout: dropout probability before the classifier.
        in_channels: input channels (1 for grey images).
    """

    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int] = (32, 64, 128),
                 dropout: float = 0.2, in_channels: int = 1):
        super().__init__()
        check_int("num_classes", num_classes, 1)
        if not isinstance(widths, Sequence) or len(widths) != 3 or any(
                (not isinstance(w, int)) or w < 1 for w in widths):
            raise ValueError(f"widths must be three positive ints, got {widths!r}")
        check_float("dropout", dropout, 0, 1, high_open=True)
        check_int("in_channels", in_channels, 1)
        c1, c2, c3 = widths
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, c1),
            nn.MaxPool2d(2),                      # 28x28 -> 14x14
            _conv_bn_relu(c1, c2),
            _conv_bn_relu(c2, c2),
            nn.MaxPool2d(2),                      # 14x14 -> 7x7
            _conv_bn_relu(c2, c3),
            _conv_bn_relu(c3, c3),
            nn.AdaptiveAvgPool2d(1),              # (B, c3, 7, 7) -> (B, c3, 1, 1)
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout),
                                        nn.Linear(c3, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) for 28x28 inputs, with ReLU and max pooling.

    conv5x5(6, pad 2) 28x28 -> pool 14x14 -> conv5x5(16) 10x10 -> pool 5x5 ->
    flatten 400 -> 120 -> 84 -> num_classes. 61,706 parameters for 10 classes.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        check_int("num_classes", num_classes, 1)
        check_int("in_channels", in_channels, 1)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),                         # (B, 16, 5, 5) -> (B, 400)
            nn.Linear(16 * 5 * 5, 120), nn.ReLU(inplace=True),
            nn.Linear(120, 84), nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model
def baseline_cnn(num_classes: int = 10, **kwargs) -> nn.Module:
    """The book's baseline (see :class:`BaselineCNN`)."""
    return BaselineCNN(num_classes=num_classes, **kwargs)


@register_model
def lenet5(num_classes: int = 10, **kwargs) -> nn.Module:
    """LeNet-5 (see :class:`LeNet5`)."""
    return LeNet5(num_classes=num_classes, **kwargs)
