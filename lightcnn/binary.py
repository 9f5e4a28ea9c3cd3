"""Binary networks: weights (and activations) of +1 and -1, trained with the straight-through estimator.

Courbariaux, Bengio, David, "BinaryConnect: Training Deep Neural Networks with binary
weights during propagations", arXiv 1511.00363. Hubara, Courbariaux, Soudry, El-Yaniv,
Bengio, "Binarized Neural Networks", arXiv 1602.02830. Rastegari, Ordonez, Redmon,
Farhadi, "XNOR-Net: ImageNet Classification Using Binary Convolutional Neural Networks",
arXiv 1603.05279. Liu, Wu, Luo, Yang, Liu, Cheng, "Bi-Real Net: Enhancing the Performance
of 1-bit CNNs With Improved Representational Capability and Advanced Training Algorithm",
arXiv 1808.00278 (the ApproxSign estimator).

A binary layer keeps a real-valued *latent* weight ``W`` for the optimizer and computes with
``sign(W)``. ``sign`` has zero gradient almost everywhere, so training passes the gradient
straight through, cancelled where the input is large (the clipped STE, the derivative of
``Htanh(x) = clip(x, -1, 1)``)::

    forward:  b = sign(x) = +1 if x >= 0 else -1
    backward: dL/dx = dL/db * 1{|x| <= 1}

and clips the latent weights to [-1, 1] after every step (:func:`clip_latent_weights`), so
that a weight never drifts where its gradient is always cancelled. Bi-Real Net's
*ApproxSign* (:func:`approx_sign`) keeps the forward ``sign`` but passes back the
derivative of a piecewise polynomial closer to it, a triangle instead of a box::

    backward: dL/dx = dL/db * (2 + 2x  for -1 <= x < 0;  2 - 2x  for 0 <= x < 1;  0 else)

Every scheme names the estimator of its activations' sign (``estimator``), and
:func:`binarize` and the layers take ``estimator=`` to choose another. The schemes:

=====================  =====================  ===============  ======================
scheme                 weights                activations      scales
=====================  =====================  ===============  ======================
``binaryconnect``      sign(W)                real             none
``binaryconnect_stochastic``  +1 w.p. Htanh-sigmoid(W)  real   none
``bwn``                alpha * sign(W)        real             alpha = mean|W| per
                                                               output channel
``bnn``                sign(W)                sign(x)          none
``xnor``               alpha * sign(W)        sign(x)          alpha, and K = box-filtered
                                                               mean_c |x| per position
``bireal``             alpha * sign(W)        sign(x), with    alpha
                                              ApproxSign
=====================  =====================  ===============  ======================

(``bireal`` is Bi-Real Net's layer, magnitude-aware binary weights and ApproxSign; its
real-valued shortcut around every binary conv is the network's, not the layer's.)

With weights *and* activations binary (``bnn``, ``xnor``), a dot product of length n is
``n - 2 * popcount(a XOR b)`` on bit-packed words: ``lightcnn.binary_kernels`` runs it.
Such layers pad their input with +1 instead of 0 (a bit cannot hold 0), so the packed
kernel reproduces the float simulation here exactly.

Taught in chapters/06_binary_networks.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_bool, check_ints, check_module, check_str, check_tensor
from .models import BaselineCNN, register_model
from .pruning import _is_masked

__all__ = ["Scheme", "SCHEMES", "ESTIMATORS", "sign_ste", "approx_sign",
           "stochastic_sign_ste", "BinaryConv2d",
           "BinaryLinear", "activation_scale_map", "binarize", "binary_layers", "clip_latent_weights",
           "register_clipping",
           "packed_weight_bytes", "binary_weight_bytes", "count_binary_macs",
           "xnor_speedup", "binary_cnn"]


@dataclass(frozen=True)
class Scheme:
    """How one binarization scheme treats weights and activations."""

    name: str
    stochastic: bool           # weights sampled in training (BinaryConnect, stochastic)
    weight_scale: bool         # alpha = mean |W| per output channel (BWN, XNOR-Net)
    binary_activations: bool   # sign(x) on the layer's input (BNN, XNOR-Net)
    activation_scale: bool     # XNOR-Net's K map (or beta = mean |x| for a linear layer)
    estimator: str = "ste"     # the gradient of the activations' sign: a key of ESTIMATORS

    def __post_init__(self) -> None:
        check_str("name", self.name)
        for field in ("stochastic", "weight_scale", "binary_activations", "activation_scale"):
            check_bool(field, getattr(self, field))
        check_str("estimator", self.estimator, ESTIMATORS)


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        # sign(0) = +1: every value is exactly +1 or -1, so it fits in one bit
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        # clipped straight-through estimator: the gradient of Htanh(x)
        return grad * (x.abs() <= 1).to(grad.dtype)


class _StochasticSignSTE(_SignSTE):
    # the same clipped STE backward; only the forward samples
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        # P(+1) = hard sigmoid(x) = clip((x + 1) / 2, 0, 1)   (BinaryConnect, eq. 3)
        p = ((x + 1) / 2).clamp(0, 1)
        return torch.where(torch.rand_like(x) < p, 1.0, -1.0).to(x.dtype)


def sign_ste(x: Tensor) -> Tensor:
    """``sign(x)`` in {-1, +1} (``sign(0) = +1``) with the clipped straight-through gradient
    ``1{|x| <= 1}``."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got "
                        f"{type(x).__name__ if not isinstance(x, Tensor) else x.dtype}")
    return _SignSTE.apply(x)


class _ApproxSign(_SignSTE):
    # the same forward sign; Bi-Real Net's backward
    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        # d/dx of ApproxSign: 2 + 2x on [-1, 0), 2 - 2x on [0, 1), 0 outside: 2 - 2|x|,
        # clamped at 0 (it is 0 at x = -1 and x = 1, where both pieces meet)
        return grad * (2 - 2 * x.abs()).clamp(min=0).to(grad.dtype)


def approx_sign(x: Tensor) -> Tensor:
    """``sign(x)`` in {-1, +1} (``sign(0) = +1``) with Bi-Real Net's ApproxSign gradient.

    The gradient is the derivative of the piecewise polynomial ``F(x) = -1`` for
    ``x < -1``, ``2x + x^2`` on ``[-1, 0)``, ``2x - x^2`` on ``[0, 1)``, ``+1`` from 1 on
    (Liu et al. 2018, eq. 7)::

        dF/dx = 2 + 2x  for -1 <= x < 0
                2 - 2x  for  0 <= x < 1
                0       otherwise

    ``F`` matches ``sign`` more closely than ``Htanh`` does, so its gradient (a triangle
    of area 2, the size of sign's jump, peaked at 0) is a closer estimate than the clipped
    STE's box ``1{|x| <= 1}``.
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got "
                        f"{type(x).__name__ if not isinstance(x, Tensor) else x.dtype}")
    return _ApproxSign.apply(x)


# the estimators a scheme or a layer can use for the sign of its activations
ESTIMATORS = {"ste": sign_ste, "approxsign": approx_sign}

# (after ESTIMATORS: a Scheme checks its estimator against it)
SCHEMES: dict[str, Scheme] = {s.name: s for s in (
    Scheme("binaryconnect", False, False, False, False),
    Scheme("binaryconnect_stochastic", True, False, False, False),
    Scheme("bwn", False, True, False, False),
    Scheme("bnn", False, False, True, False),
    Scheme("xnor", False, True, True, True),
    Scheme("bireal", False, True, True, False, estimator="approxsign"),
)}


def _estimator(name: str | None, scheme: Scheme) -> str:
    check_str("estimator", name, ESTIMATORS, none=True)
    return scheme.estimator if name is None else name


def stochastic_sign_ste(x: Tensor) -> Tensor:
    """+1 with probability ``clip((x + 1) / 2, 0, 1)``, else -1; clipped STE gradient."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating-point tensor")
    return _StochasticSignSTE.apply(x)


class _BinaryMixin:
    """What a binary conv and a binary linear layer share: the weight's sign and alpha, and
    the sign of the input with the chosen estimator."""

    scheme: Scheme
    estimator: str
    weight: nn.Parameter

    def input_sign(self, x: Tensor) -> Tensor:
        """``sign(x)`` with the layer's estimator's gradient (clipped STE or ApproxSign).
        The weights always use the clipped STE: Bi-Real Net's ApproxSign is for
        activations (its weights get a magnitude-aware gradient, here ``alpha``'s)."""
        return ESTIMATORS[self.estimator](x)

    def weight_sign(self) -> Tensor:
        """``sign(W)`` (sampled in training for the stochastic scheme), STE gradient."""
        if self.scheme.stochastic and self.training:
            return stochastic_sign_ste(self.weight)
        return sign_ste(self.weight)

    def weight_alpha(self) -> Tensor:
        """``alpha_o = mean |W_o|`` over each output channel's inputs, shape ``(O,)``:
        the scale that minimises ``||W - alpha * sign(W)||^2`` (XNOR-Net, eq. 4)."""
        return self.weight.abs().flatten(1).mean(1)


def activation_scale_map(x: Tensor, kernel_size: tuple[int, int], stride: tuple[int, int],
                         padding: tuple[int, int]) -> Tensor:
    """XNOR-Net's ``K = A * k``: ``A = mean_c |x|``, convolved with a box ``k`` of
    ``1 / (kh kw)`` (zero padding), ``(B, C, H, W) -> (B, 1, H_out, W_out)``."""
    check_tensor("x", x, 4, floating=True)
    check_ints("kernel_size", kernel_size, 1, length=2)
    check_ints("stride", stride, 1, length=2)
    check_ints("padding", padding, 0, length=2)
    a = x.abs().mean(1, keepdim=True)
    box = torch.full((1, 1, *kernel_size), 1.0 / (kernel_size[0] * kernel_size[1]),
                     dtype=x.dtype)
    return F.conv2d(a, box, stride=stride, padding=padding)


class BinaryConv2d(_BinaryMixin, nn.Conv2d):
    """A ``Conv2d`` that computes with binary weights, and binary inputs for ``bnn``/``xnor``.

    ``y = (x_b * sign(W)) * alpha * K + bias``, with ``x_b = sign(x)`` padded with +1 for
    schemes with binary activations (``x`` itself, zero-padded, otherwise); ``alpha = 1`` and
    ``K = 1`` where the scheme has no scale. The product with the ``+-1`` tensors comes first,
    so its sums are exact integers, as in the packed kernel. ``estimator`` (``"ste"`` or
    ``"approxsign"``; default: the scheme's) is the gradient of ``sign(x)``.
    """

    def __init__(self, *args, scheme: str = "bnn", estimator: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.scheme = _scheme(scheme)
        self.estimator = _estimator(estimator, self.scheme)
        if self.padding_mode != "zeros":
            raise ValueError(f"padding_mode must be 'zeros', got {self.padding_mode!r}")
        if isinstance(self.padding, str):
            raise ValueError(f"padding must be ints, got {self.padding!r}")

    def activation_scale(self, x: Tensor) -> Tensor:
        """XNOR-Net's ``K = (mean_c |x|) * k``: the mean absolute input over channels, box
        filtered with the kernel's size and stride, shape ``(B, 1, H_out, W_out)``."""
        return activation_scale_map(x, self.kernel_size, self.stride, self.padding)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight_sign()
        if self.scheme.binary_activations:
            ph, pw = self.padding
            # pad with +1: a bit holds only +1 or -1, and the packed kernel pads the same way
            xb = F.pad(self.input_sign(x), (pw, pw, ph, ph), value=1.0)
            y = F.conv2d(xb, w, None, self.stride, 0, self.dilation, self.groups)
        else:
            y = F.conv2d(x, w, None, self.stride, self.padding, self.dilation, self.groups)
        if self.scheme.weight_scale:
            y = y * self.weight_alpha().view(1, -1, 1, 1)
        if self.scheme.activation_scale:
            y = y * self.activation_scale(x)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y

    def extra_repr(self) -> str:
        return super().extra_repr() + _scheme_repr(self)


class BinaryLinear(_BinaryMixin, nn.Linear):
    """A ``Linear`` with binary weights (and inputs): ``y = (x_b sign(W)^T) * alpha * beta + b``,
    ``beta = mean |x|`` per sample for ``xnor``; ``estimator`` as for :class:`BinaryConv2d`."""

    def __init__(self, *args, scheme: str = "bnn", estimator: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.scheme = _scheme(scheme)
        self.estimator = _estimator(estimator, self.scheme)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight_sign()
        xb = self.input_sign(x) if self.scheme.binary_activations else x
        y = F.linear(xb, w)
        if self.scheme.weight_scale:
            y = y * self.weight_alpha()
        if self.scheme.activation_scale:
            y = y * x.abs().mean(-1, keepdim=True)
        if self.bias is not None:
            y = y + self.bias
        return y

    def extra_repr(self) -> str:
        return super().extra_repr() + _scheme_repr(self)


def _scheme_repr(layer: _BinaryMixin) -> str:
    estimator = f", estimator={layer.estimator}" if layer.scheme.binary_activations else ""
    return f", scheme={layer.scheme.name}{estimator}"


def _scheme(name: str) -> Scheme:
    check_str("scheme", name, SCHEMES)
    return SCHEMES[name]


def _check_names(name: str, value) -> None:
    """``value`` is a collection of layer names (a list, tuple or set of str; not one str,
    whose letters would be taken for names, nor a dict)."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        text = repr(value)
        raise TypeError(f"{name} must be a list, tuple or set of layer names, got "
                        f"{type(value).__name__}: {text if len(text) <= 80 else text[:77] + '...'}")


# Layers with no weights to binarize, which binarize leaves as they are.
_PASSIVE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm, nn.Identity,
            nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.SiLU, nn.Hardswish, nn.Hardsigmoid,
            nn.Sigmoid, nn.GELU, nn.Tanh, nn.LeakyReLU, nn.PReLU, nn.MaxPool2d,
            nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten,
            nn.Dropout, nn.Sequential, nn.ModuleList, nn.ModuleDict)


def binarize(model: nn.Module, scheme: str, keep_first_last: bool = True,
             pointwise: bool = True, skip: Iterable[str] = (), estimator: str | None = None
             ) -> nn.Module:
    """A copy of ``model`` whose ``Conv2d`` and ``Linear`` layers compute with binary weights.

    The latent weights start from the model's own (a trained model is converted, a fresh
    one trained from scratch). Batch norm, pooling and the classifier's bias are unchanged.

    Args:
        scheme: one of :data:`SCHEMES`.
        keep_first_last: leave the first conv and the last linear layer in full precision.
            The first sees the raw image (one or three channels: ``sign`` of the pixels
            destroys most of it, and it holds few weights and MACs); the last decides the
            class from a few hundred features. XNOR-Net's released AlexNet keeps both real;
            BNN binarizes every layer's weights, the first and last included, and keeps only
            the first layer's input non-binary (8-bit fixed point).
        pointwise: also binarize 1x1 convs. A 1x1 conv has only ``C_in`` inputs per
            output, so by ``S = 64 c N_W / (c N_W + 64)`` it gains less speed than a 3x3
            one and its +-1 dot products are the coarsest; networks built of 1x1 layers
            (MobileNets) lose the most accuracy when binarized.
        skip: names of layers to keep in full precision.
        estimator: the gradient of the activations' sign, ``"ste"`` (clipped) or
            ``"approxsign"`` (Bi-Real Net); ``None`` takes the scheme's.

    For schemes with binary activations, every ``ReLU``/``ReLU6`` becomes ``Hardtanh``: the
    sign of a ReLU output is +1 everywhere, and Htanh is the activation whose gradient the
    STE uses.

    Raises:
        TypeError: an argument of the wrong type (named).
        ValueError: unknown scheme or estimator; a grouped (e.g. depthwise) conv, a conv
            with other than zero padding, or a module with weights of an unsupported type
            (named).
    """
    check_module("model", model)
    scheme_ = _scheme(scheme)
    estimator = _estimator(estimator, scheme_)
    check_bool("keep_first_last", keep_first_last)
    check_bool("pointwise", pointwise)
    _check_names("skip", skip)
    skip = set(skip)
    bad = [n for n in skip if not isinstance(n, str)]
    if bad:
        raise TypeError(f"skip must hold layer names (str), got {bad[0]!r}")
    names = {n for n, _ in model.named_modules()}
    if skip - names:
        raise ValueError(f"skip names layers the model does not have: {sorted(skip - names)}")
    model = copy.deepcopy(model)
    weighted = [(n, m) for n, m in model.named_modules()
                if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not weighted:
        raise ValueError("model has no Conv2d or Linear layer to binarize")
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, BinaryConv2d, BinaryLinear)):
            continue
        own = list(module.parameters(recurse=False))
        if own and not isinstance(module, _PASSIVE):
            raise ValueError(f"layer {name!r} ({type(module).__name__}) has weights "
                             "binarize cannot handle; supported: Conv2d (groups=1), Linear")
    convs = [n for n, m in weighted if isinstance(m, nn.Conv2d)]
    linears = [n for n, m in weighted if isinstance(m, nn.Linear)]
    keep = set(skip)
    if keep_first_last:
        keep |= set(convs[:1] + linears[-1:])
    for name, module in weighted:
        if name in keep or isinstance(module, (BinaryConv2d, BinaryLinear)):
            continue
        if _is_masked(module):
            raise ValueError(f"layer {name!r} carries a pruning mask; make it permanent "
                             "first (lightcnn.pruning.remove_masks)")
        if isinstance(module, nn.Conv2d):
            if module.kernel_size == (1, 1) and not pointwise:
                continue
            if module.groups != 1:
                raise ValueError(f"layer {name!r} is a grouped conv (groups={module.groups}); "
                                 "binarize supports groups=1 (pass it in skip= to keep it "
                                 "in full precision)")
            if module.padding_mode != "zeros" or isinstance(module.padding, str):
                raise ValueError(f"layer {name!r}: padding must be ints with padding_mode "
                                 f"'zeros', got {module.padding!r}, {module.padding_mode!r}")
            new = BinaryConv2d(module.in_channels, module.out_channels, module.kernel_size,
                               module.stride, module.padding, module.dilation, module.groups,
                               module.bias is not None, scheme=scheme, estimator=estimator)
        else:
            new = BinaryLinear(module.in_features, module.out_features,
                               module.bias is not None, scheme=scheme, estimator=estimator)
        new.load_state_dict(module.state_dict())
        model.set_submodule(name, new)
    if scheme_.binary_activations:
        for name, module in list(model.named_modules()):
            if isinstance(module, (nn.ReLU, nn.ReLU6)):
                model.set_submodule(name, nn.Hardtanh())
    clip_latent_weights(model)
    return model


def binary_layers(model: nn.Module) -> dict[str, BinaryConv2d | BinaryLinear]:
    """The binary layers of ``model`` by name."""
    check_module("model", model)
    return {n: m for n, m in model.named_modules()
            if isinstance(m, (BinaryConv2d, BinaryLinear))}


@torch.no_grad()
def clip_latent_weights(model: nn.Module) -> None:
    """Clip every binary layer's latent weights to [-1, 1] (pass as ``lc.fit``'s
    ``after_step``): beyond it the STE gradient is zero and a weight could never return."""
    check_module("model", model)
    for module in binary_layers(model).values():
        module.weight.clamp_(-1.0, 1.0)


def register_clipping(optimizer: torch.optim.Optimizer, model: nn.Module
                      ) -> torch.utils.hooks.RemovableHandle:
    """Clip ``model``'s latent weights after every ``optimizer.step()``, in any loop.

    Registers :func:`clip_latent_weights` as the optimizer's step post-hook
    (``optimizer.register_step_post_hook``), so a loop of one's own needs no extra line
    and cannot forget it; ``model`` may be DDP-wrapped (every process clips the same
    weights). Call ``.remove()`` on the returned handle to stop.

    Raises:
        TypeError: ``optimizer`` is not a ``torch.optim.Optimizer``.
        ValueError: ``model`` has no binary layer (nothing to clip).
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got "
                        f"{type(optimizer).__name__}")
    if not isinstance(model, nn.Module) or not binary_layers(model):
        raise ValueError("model has no BinaryConv2d or BinaryLinear layer: nothing to clip "
                         "(binarize it first)")
    return optimizer.register_step_post_hook(lambda opt, args, kwargs: clip_latent_weights(model))


def packed_weight_bytes(out_features: int, fan_in: int) -> int:
    """Bytes of ``out_features`` rows of ``fan_in`` signs packed into 64-bit words:
    ``out * ceil(fan_in / 64) * 8`` (each row padded to whole words, as the kernel reads it)."""
    for arg, v in (("out_features", out_features), ("fan_in", fan_in)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{arg} must be a positive int, got {v!r}")
    return out_features * (-(-fan_in // 64)) * 8


def binary_weight_bytes(model: nn.Module) -> dict[str, int | float]:
    """Stored bytes of the binarized layers, counted as a deployed model holds them.

    Returns a dict: ``fp32_bytes`` (their weights as float32), ``packed_bytes`` (the signs,
    :func:`packed_weight_bytes`), ``scale_bytes`` (float32 alpha per output channel, for
    ``bwn``/``xnor``), ``bias_bytes``, ``binary_bytes`` (the three together), ``ratio``
    (``fp32_bytes + bias_bytes`` over ``binary_bytes``), and ``ratio_without_scales``.
    """
    check_module("model", model)
    layers = binary_layers(model)
    if not layers:
        raise ValueError("model has no binary layers (call binarize first)")
    fp32 = packed = scales = bias = 0
    for m in layers.values():
        out = m.weight.shape[0]
        fan_in = m.weight[0].numel()
        fp32 += 4 * m.weight.numel()
        packed += packed_weight_bytes(out, fan_in)
        scales += 4 * out if m.scheme.weight_scale else 0
        bias += 4 * out if m.bias is not None else 0
    return {"fp32_bytes": fp32, "packed_bytes": packed, "scale_bytes": scales,
            "bias_bytes": bias, "binary_bytes": packed + scales + bias,
            "ratio": (fp32 + bias) / (packed + scales + bias),
            "ratio_without_scales": (fp32 + bias) / (packed + bias)}


def count_binary_macs(model: nn.Module, input_shape: tuple[int, ...] = (1, 28, 28)
                      ) -> dict[str, int]:
    """MACs at batch 1 split into ``binary`` (both operands +-1: XNOR and popcount) and
    ``real`` (everything else, including weight-only binary layers, whose products with
    real activations become additions and subtractions)."""
    from .profile import count_macs_by_module  # local: profile imports nothing from here

    per_module = count_macs_by_module(model, input_shape)
    layers = binary_layers(model)
    binary = sum(v for n, v in per_module.items()
                 if n in layers and layers[n].scheme.binary_activations)
    return {"binary": binary, "real": sum(per_module.values()) - binary}


def xnor_speedup(channels: int, weight_size: int, word_bits: int = 64) -> float:
    """XNOR-Net's speed-up of a binary over a float conv: ``S = w c N_W / (c N_W + w)``.

    ``c`` input channels, ``N_W`` weights per channel (k*k); ``w`` binary operations per
    instruction (64 on a 64-bit CPU), the ``+ w`` term being the float work per output
    (scales) that binarization cannot remove (Rastegari et al. 2016, section 3.2).
    """
    for arg, v in (("channels", channels), ("weight_size", weight_size),
                   ("word_bits", word_bits)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{arg} must be a positive int, got {v!r}")
    n = channels * weight_size
    return word_bits * n / (n + word_bits)


@register_model
def binary_cnn(num_classes: int = 10, scheme: str = "bnn", keep_first_last: bool = True,
               estimator: str | None = None, **kwargs) -> nn.Module:
    """The book's baseline CNN binarized with ``scheme`` (see :func:`binarize`), so the zoo
    can train and cache it: ``lc.zoo.get_trained("binary_cnn", scheme="xnor")``."""
    _estimator(estimator, _scheme(scheme))
    check_bool("keep_first_last", keep_first_last)
    return binarize(BaselineCNN(num_classes=num_classes, **kwargs), scheme, keep_first_last,
                    estimator=estimator)
