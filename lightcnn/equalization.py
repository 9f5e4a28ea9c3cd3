"""Cross-layer equalization and bias correction: post-training fixes for per-tensor weights.

Nagel, van Baalen, Blankevoort & Welling, "Data-Free Quantization Through Weight
Equalization and Bias Correction", ICCV 2019, arXiv 1906.04721 (sections 4.1 and 4.2,
appendix A). AIMET ships both as post-training correctors; NNCF ships bias correction.

After batch norm is folded, the output channels of one layer can have weight ranges that
differ by orders of magnitude (MobileNets' depthwise convolutions are the known case):
one per-tensor scale then leaves the small channels with a handful of levels, or none.
If the activation between two layers is positively homogeneous, ``f(s x) = s f(x)`` for
``s > 0`` (ReLU, leaky ReLU, max and average pooling, the identity), output channel ``i`` of
the first layer can be divided by ``s_i`` and input channel ``i`` of the second multiplied
by ``s_i`` without changing the network's function:

    W1' = S^-1 W1,  b1' = S^-1 b1,  W2' = W2 S,   S = diag(s) with s_i > 0.

Let ``r1_i`` be the range of output channel ``i`` of W1 and ``r2_i`` that of input channel
``i`` of W2 (here ``max |w|``: the book's weights are symmetric; ``max - min`` scales the
same way). Scaling makes them ``r1_i' = r1_i / s_i`` and ``r2_i' = s_i r2_i``. With one
scale per tensor, channel ``i`` uses the share ``p_i = r_i' / R'`` of its tensor's range
``R' = max_k r_k'`` (its "precision"), and the paper maximizes the total precision

    sum_i p1_i p2_i = sum_i r1_i' r2_i' / (R1' R2') = sum_i r1_i r2_i / (R1' R2').

The numerator does not depend on ``s``. The denominator is bounded below by every
channel's product, ``R1' R2' >= r1_k' r2_k' = r1_k r2_k``, so ``R1' R2' >= max_k r1_k r2_k``.
Choosing

    s_i = (1 / r2_i) sqrt(r1_i r2_i) = sqrt(r1_i / r2_i)          (the paper's eq. 10)

makes both ranges of every channel ``sqrt(r1_i r2_i)``, so ``R1' = R2' = max_k sqrt(r1_k
r2_k)`` and the bound is reached (appendix A): the total, and each channel's own product
``p1_i p2_i = r1_i r2_i / max_k r1_k r2_k``, are as large as any scaling can make them.
Pairs share layers (in a chain W1, W2, W3, equalizing (2, 3) rescales W2's rows, which
moves the ranges of (1, 2)), so the pairs are equalized in turn until the scales stop
moving (the paper iterates to convergence too; see :func:`cross_layer_equalize` for the
stopping rule).

ReLU6 is not homogeneous: ``min(s x, 6) != s min(x, 6)``. The paper and AIMET replace it
by ReLU first (``relu6="replace"``: the float function changes where activations exceeded
6, usually a little); ``relu6="keep"`` leaves the function exact and the pairs across
ReLU6 unequalized.

Bias correction (section 4.2): quantizing a weight adds ``eps = W_q - W`` and shifts every
output's mean by ``E[eps x] = eps E[x]``, one number per output channel, the same for
every input, so it is removed by subtracting it from the bias:

    b' = b - (W_q - W) E[x]

Here ``E[x]`` is measured on calibration data (the paper's "empirical" variant; its
data-free variant derives it from the previous batch norm's statistics instead). For a
convolution, ``(W_q - W) E[x]`` is the per-channel mean of ``conv(x, W_q - W)`` over the
batch and every output position, which counts zero padding at the borders exactly.

Taught in chapters/05_quantization.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_bool, check_float, check_int, check_module, check_str, check_tensor
from .fusion import fuse_conv_bn
from .quantization import UNIFORM_BITS, MinMaxObserver, fake_quantize

__all__ = ["HOMOGENEOUS", "RELU6_POLICIES", "channel_ranges", "equalization_scales",
           "equalize_pair", "find_pairs", "replace_relu6", "cross_layer_equalize",
           "quantize_weight", "output_error", "correct_bias"]

# modules with f(s x) = s f(x) for every s > 0, channel by channel: scaling a channel before
# them scales it after them
HOMOGENEOUS = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.Identity, nn.Dropout, nn.MaxPool2d,
               nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d)
_HOMOGENEOUS_FUNCTIONS = {F.relu, torch.relu, F.leaky_relu, F.max_pool2d, F.avg_pool2d,
                          F.adaptive_max_pool2d, F.adaptive_avg_pool2d, F.dropout}
RELU6_POLICIES = ("replace", "keep")
_LAYERS = (nn.Conv2d, nn.Linear)
_SIDES = ("output", "input")


# ---------------------------------------------------------------- one pair

def _check_layer(name: str, layer: nn.Module) -> None:
    # any padding mode is fine: zeros, reflection and replication all pad each channel
    # from itself, so scaling a channel scales its padding too
    check_module(name, layer, _LAYERS)


def _input_view(layer: nn.Conv2d | nn.Linear, channels: int) -> torch.Tensor:
    """``layer.weight`` as ``(groups, out_per_group, in_per_group, rest)``: input channel
    ``j`` is ``[j // in_per_group, :, j % in_per_group, :]``.

    A Linear layer after ``flatten`` of a ``(N, C, H, W)`` tensor reads channel ``c`` in its
    columns ``c*H*W .. (c+1)*H*W - 1`` (flatten is channel-major), so with
    ``channels = C`` it is one group of ``C`` input channels of ``H*W`` columns each.
    """
    w = layer.weight.detach()
    if isinstance(layer, nn.Linear):
        # (out, C*m) -> (1, out, C, m)
        return w.reshape(1, w.shape[0], channels, w.shape[1] // channels)
    g = layer.groups
    # (out, in/g, kh, kw) -> (g, out/g, in/g, kh*kw)
    return w.reshape(g, w.shape[0] // g, w.shape[1], -1)


def _input_channels(layer: nn.Conv2d | nn.Linear) -> int:
    return layer.in_channels if isinstance(layer, nn.Conv2d) else layer.in_features


def _output_channels(layer: nn.Conv2d | nn.Linear) -> int:
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features


def _check_channels(layer: nn.Conv2d | nn.Linear, channels: int | None) -> int:
    """The input channel count ``channels`` (default: the layer's own) after checks."""
    width = _input_channels(layer)
    check_int("channels", channels, 1, none=True)
    if channels is None:
        return width
    if isinstance(layer, nn.Conv2d) and channels != width:
        raise ValueError(f"channels must be the Conv2d's in_channels={width}, got {channels}")
    if width % channels:
        raise ValueError(f"channels must divide the Linear's in_features={width} (flattened "
                         f"channels of equal size), got {channels}")
    return channels


def channel_ranges(layer: nn.Conv2d | nn.Linear, side: str = "output",
                   channels: int | None = None) -> torch.Tensor:
    """``max |w|`` over the weights of each output channel (``side="output"``: ``r1`` of the
    module docstring) or each input channel (``side="input"``: ``r2``).

    Input channel ``j`` of a grouped convolution is read by the filters of its group only;
    of a depthwise convolution, by its own filter(s).

    Args:
        layer: an ``nn.Conv2d`` or ``nn.Linear``.
        side: ``"output"`` or ``"input"``.
        channels: input side only: how many channels a Linear layer's input was flattened
            from (its columns split into that many equal blocks); default one per column.

    Returns:
        A float tensor ``(C,)``, one range per channel.
    """
    _check_layer("layer", layer)
    check_str("side", side, _SIDES)
    channels = _check_channels(layer, channels)
    if side == "output":
        # (out, ...) -> (out,)
        return layer.weight.detach().reshape(_output_channels(layer), -1).abs().amax(1)
    # (g, out/g, in/g, rest) -> (g, in/g) -> (C_in,)
    return _input_view(layer, channels).abs().amax(dim=(1, 3)).reshape(-1)


def equalization_scales(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """``s_i = (1 / r2_i) sqrt(r1_i r2_i) = sqrt(r1_i / r2_i)`` (Nagel et al., eq. 10).

    After ``W1' = S^-1 W1`` and ``W2' = W2 S`` both ranges of channel ``i`` are
    ``sqrt(r1_i r2_i)``. A channel with a zero range on either side (a dead filter, or an
    input nothing reads) gets ``s_i = 1``: there is nothing to balance.

    Args:
        r1: output-channel ranges of the first layer, ``>= 0``.
        r2: input-channel ranges of the second layer, ``>= 0``, shaped like ``r1``.

    Returns:
        ``s``, a float64 tensor shaped like ``r1``, every entry positive.
    """
    check_tensor("r1", r1, 1, floating=True, nonempty=True)
    check_tensor("r2", r2, 1, floating=True, nonempty=True)
    if r1.shape != r2.shape:
        raise ValueError(f"r1 and r2 must have one range per channel each, got shapes "
                         f"{tuple(r1.shape)} and {tuple(r2.shape)}")
    for name, r in (("r1", r1), ("r2", r2)):
        if not (torch.isfinite(r).all() and (r >= 0).all()):
            raise ValueError(f"{name} must hold finite ranges >= 0, got values in "
                             f"[{r.min().item()}, {r.max().item()}]")
    # float64: the ratio of a large and a tiny range keeps its digits
    r1, r2 = r1.detach().double(), r2.detach().double()
    live = (r1 > 0) & (r2 > 0)
    return torch.where(live, torch.sqrt(r1 / torch.where(live, r2, 1.0)), 1.0)


@torch.no_grad()
def equalize_pair(first: nn.Conv2d | nn.Linear, second: nn.Conv2d | nn.Linear) -> torch.Tensor:
    """Equalize one pair in place: ``W1 <- S^-1 W1``, ``b1 <- S^-1 b1``, ``W2 <- W2 S`` with
    ``s = equalization_scales(r1, r2)``; return ``s``.

    The network computes the same function afterwards only if everything between the two
    layers is positively homogeneous channel by channel (:data:`HOMOGENEOUS`);
    :func:`find_pairs` finds such pairs. A Linear ``second`` after a flatten of
    ``first``'s ``(N, C, H, W)`` output is supported (``in_features`` a multiple of ``C``).

    Raises:
        ValueError: ``first``'s output channels do not match ``second``'s input channels.
    """
    _check_layer("first", first)
    _check_layer("second", second)
    channels = _output_channels(first)
    if (isinstance(second, nn.Conv2d) and second.in_channels != channels) \
            or (isinstance(second, nn.Linear) and second.in_features % channels):
        raise ValueError(f"second must read the {channels} output channels of first, got "
                         f"{type(second).__name__} with {_input_channels(second)} inputs")
    if isinstance(first, nn.Linear) and isinstance(second, nn.Conv2d):
        raise ValueError("second must be a Linear layer when first is one (a Conv2d cannot "
                         "follow a Linear layer's features)")
    s = equalization_scales(channel_ranges(first, "output"),
                            channel_ranges(second, "input", channels))
    # (C,) -> (C, 1, ..): divide output channel i of the first layer (and its bias) by s_i
    w1 = first.weight
    w1.copy_(w1 / s.to(w1.dtype).reshape(-1, *[1] * (w1.dim() - 1)))
    if first.bias is not None:
        first.bias.copy_(first.bias / s.to(first.bias.dtype))
    # multiply input channel i of the second layer by s_i: (g, out/g, in/g, rest) view
    view = _input_view(second, channels)
    g, _, per_group, _ = view.shape
    scaled = view * s.to(view.dtype).reshape(g, 1, per_group, 1)
    second.weight.copy_(scaled.reshape(second.weight.shape))
    return s


# ---------------------------------------------------------------- pairs in a network

def _is_flatten(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    """A flatten from dimension 1 to the end: ``(N, C, H, W) -> (N, C*H*W)``."""
    if node.op == "call_module":
        m = modules.get(node.target)
        return isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1
    if node.op == "call_function" and node.target is torch.flatten:
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return start == 1 and end == -1
    if node.op == "call_method" and node.target == "flatten":
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return start == 1 and end == -1
    return False


def _is_homogeneous(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        m = modules.get(node.target)
        # PReLU with one slope per channel is homogeneous too: each channel keeps its slope
        return isinstance(m, HOMOGENEOUS)
    if node.op == "call_function":
        return node.target in _HOMOGENEOUS_FUNCTIONS
    return node.op == "call_method" and node.target in ("relu", "relu_")


def find_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Names ``(first, second)`` of the layer pairs that cross-layer equalization may rescale.

    ``first``'s output must reach ``second``'s input through positively homogeneous
    operations only (:data:`HOMOGENEOUS` modules, ``F.relu``, pooling, dropout; a flatten
    when ``second`` is Linear), with no other use on the way (a residual branch or a
    concatenation would see the rescaled channels), each layer called once. Batch norm is
    not homogeneous (its shift): fold it first (:func:`lightcnn.fusion.fuse_conv_bn`), as
    :func:`cross_layer_equalize` does. Found by tracing ``model`` with ``torch.fx``.

    Raises:
        ValueError: ``torch.fx`` cannot trace ``model``.
    """
    check_module("model", model)
    try:
        graph = torch.fx.Tracer().trace(model)
    except Exception as err:  # data-dependent control flow
        raise ValueError(f"model must be traceable by torch.fx to find its layer pairs: {err}") \
            from err
    modules = dict(model.named_modules())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")

    def layer(node: torch.fx.Node) -> nn.Module | None:
        if node.op == "call_module" and calls[node.target] == 1 \
                and isinstance(modules.get(node.target), _LAYERS):
            return modules[node.target]
        return None

    pairs = []
    for node in graph.nodes:
        first = layer(node)
        if first is None:
            continue
        current, flattened = node, False
        # walk forward while the path is a single chain of homogeneous ops
        while len(current.users) == 1:
            nxt = next(iter(current.users))
            if not nxt.args or nxt.args[0] is not current:
                break
            second = layer(nxt)
            if second is not None:
                conv_to_conv = isinstance(first, nn.Conv2d) and isinstance(second, nn.Conv2d)
                conv_to_linear = (isinstance(first, nn.Conv2d) and isinstance(second, nn.Linear)
                                  and flattened)
                linear_to_linear = isinstance(first, nn.Linear) and isinstance(second, nn.Linear)
                channels = _output_channels(first)
                if (conv_to_conv and second.in_channels == channels) \
                        or (conv_to_linear and second.in_features % channels == 0) \
                        or (linear_to_linear and second.in_features == channels):
                    pairs.append((node.target, nxt.target))
                break
            if _is_flatten(nxt, modules) and isinstance(first, nn.Conv2d) and not flattened:
                flattened = True
            elif not _is_homogeneous(nxt, modules):
                break
            current = nxt
    return pairs


def replace_relu6(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``nn.ReLU6`` module replaced by ``nn.ReLU``.

    ReLU6 is not positively homogeneous, so pairs across it cannot be equalized; ReLU is.
    The function changes wherever an activation exceeded 6 (the paper and AIMET accept
    this). ``F.relu6`` called inside a ``forward`` is not a module and stays.
    """
    check_module("model", model)
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.ReLU6):
            if not name:  # the model itself is a ReLU6
                return nn.ReLU(inplace=module.inplace)
            model.set_submodule(name, nn.ReLU(inplace=module.inplace))
    return model


def cross_layer_equalize(model: nn.Module, relu6: str = "replace", max_iters: int = 100,
                         tol: float = 1e-4) -> nn.Module:
    """A copy of ``model`` with batch norm folded and every pair of :func:`find_pairs`
    equalized with ``s_i = sqrt(r1_i / r2_i)`` (see the module docstring), sweep after
    sweep, until every pair's scales of a sweep agree with each other within ``tol``
    (``max(s) / min(s) - 1 <= tol``), or after ``max_iters`` sweeps.

    Why the scales' spread and not ``|s_i - 1|``: once a pair's scales are all equal to
    some ``c``, its ranges are proportional, ``r1_i = c r2_i``, which already maximizes its
    total precision (the bound of the module docstring is reached) and gives every channel
    its best precision product. Driving ``c`` itself to 1 only moves a common factor
    between whole layers, which changes no per-tensor quantizer's relative precision, and
    it spreads along a chain of ``L`` layers like heat, in about ``L^2`` sweeps.

    The copy is in eval mode and computes the same function as ``model`` in eval mode
    (float rounding aside), after ReLU6 is replaced by ReLU when ``relu6="replace"``. A
    model without pairs comes back folded only.

    Args:
        model: the float network (not modified).
        relu6: ``"replace"`` (ReLU6 -> ReLU first, as the paper and AIMET do) or ``"keep"``
            (the function stays exact; pairs across a ReLU6 are not equalized).
        max_iters: the most sweeps over the pairs.
        tol: convergence: ``max(s) / min(s) - 1 <= tol`` for every pair in the last sweep.

    Raises:
        ValueError: bad arguments, or a model that ``torch.fx`` cannot trace.
    """
    check_module("model", model)
    check_str("relu6", relu6, RELU6_POLICIES)
    check_int("max_iters", max_iters, 1)
    check_float("tol", tol, 0, low_open=True)
    model = fuse_conv_bn(model)  # a copy, in eval mode
    if relu6 == "replace":
        model = replace_relu6(model)
    modules = dict(model.named_modules())
    pairs = [(modules[a], modules[b]) for a, b in find_pairs(model)]
    for _ in range(max_iters):
        worst = 0.0
        for first, second in pairs:
            s = equalize_pair(first, second)
            worst = max(worst, (s.max() / s.min()).item() - 1)
        if worst <= tol:
            break
    return model


# ---------------------------------------------------------------- bias correction

def quantize_weight(weight: torch.Tensor, bits: int = 8, per_channel: bool = False) -> torch.Tensor:
    """``W_q``: ``weight`` fake-quantized as :func:`lightcnn.quantization.ptq_simulate`
    quantizes a weight (symmetric, signed, min-max range, per output channel if
    ``per_channel``), ``W_q = clamp(round(W / s), -qmax, qmax) * s``, ``s = max|W| / qmax``,
    ``qmax = 2^(bits-1) - 1``."""
    check_tensor("weight", weight, floating=True, nonempty=True)
    check_int("bits", bits, *UNIFORM_BITS)
    check_bool("per_channel", per_channel)
    if weight.dim() < 2:
        raise ValueError(f"weight must be a layer's weight (out, ...), got shape "
                         f"{tuple(weight.shape)}")
    axis = 0 if per_channel else None
    observer = MinMaxObserver(bits, symmetric=True, per_channel_axis=axis)
    observer.update(weight)
    scale, zero_point = observer.scale_zero_point()
    return fake_quantize(weight.detach(), scale, zero_point, bits, signed=True, axis=axis)


def _layer_op(layer: nn.Conv2d | nn.Linear, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``layer``'s linear map with ``weight`` and no bias."""
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight)
    return layer._conv_forward(x, weight, None)


def output_error(layer: nn.Conv2d | nn.Linear, x: torch.Tensor,
                 quantized_weight: torch.Tensor) -> torch.Tensor:
    """``E[(W_q - W) x]`` per output channel: the mean shift that quantizing ``layer``'s
    weight to ``quantized_weight`` adds to its outputs on the inputs ``x``.

    For a Linear layer this is ``(W_q - W) mean(x)``; for a convolution the per-channel
    mean, over the batch and every output position, of ``conv(x, W_q - W)`` (positions at
    the border read zero padding, so a plain ``(W_q - W) E[x]`` would be off there).

    Args:
        layer: an ``nn.Conv2d`` or ``nn.Linear`` (its float weight is ``W``).
        x: a batch of inputs, ``(N, C_in, H, W)``, or ``(..., in_features)`` for a Linear
            layer (the mean is over every leading position).
        quantized_weight: ``W_q``, shaped like ``layer.weight``.

    Returns:
        A tensor ``(C_out,)``.
    """
    _check_layer("layer", layer)
    conv = isinstance(layer, nn.Conv2d)
    check_tensor("x", x, 4 if conv else None, floating=True, nonempty=True)
    if not conv and x.dim() < 2:
        raise ValueError(f"x must be a batch (N, ..., in_features), got shape {tuple(x.shape)}")
    check_tensor("quantized_weight", quantized_weight, floating=True)
    if quantized_weight.shape != layer.weight.shape:
        raise ValueError(f"quantized_weight must be shaped like layer.weight "
                         f"{tuple(layer.weight.shape)}, got {tuple(quantized_weight.shape)}")
    with torch.no_grad():
        error = _layer_op(layer, x, quantized_weight - layer.weight)
    if conv:  # (N, C, H, W) -> (C, N*H*W) -> (C,): the mean of each output channel
        return error.transpose(0, 1).reshape(error.shape[1], -1).mean(1)
    return error.reshape(-1, error.shape[-1]).mean(0)  # (..., C) -> (C,)


def correct_bias(model: nn.Module, calibration: Iterable, bits: int = 8,
                 per_channel: bool = False) -> nn.Module:
    """A copy of ``model`` in which every Conv2d and Linear bias is corrected for the error
    its weight will get from :func:`quantize_weight` at ``bits`` / ``per_channel``:

        b' = b - E[(W_q - W) x]        (:func:`output_error`)

    with ``E`` over the calibration batches and ``x`` each layer's input in the float
    ``model``. The weights stay float: quantize the copy with the same settings
    (``lc.quantization.ptq_simulate(copy, .., weight_bits=bits, per_channel=per_channel)``)
    and the mean of every layer's output, over the calibration data, is the float layer's.
    A layer without a bias gets one. Apply after :func:`cross_layer_equalize`: equalization
    changes the weights, and with them their quantization error.

    Args:
        model: the float network (not modified).
        calibration: input batches, or ``(x, y)`` batches such as a DataLoader.
        bits: the weight bits the copy will be quantized to, in ``UNIFORM_BITS``.
        per_channel: one weight scale per output channel (else one per tensor).

    Raises:
        ValueError: ``calibration`` holds no batch.
    """
    check_module("model", model)
    check_int("bits", bits, *UNIFORM_BITS)
    if isinstance(calibration, (str, bytes, torch.Tensor)) or not isinstance(calibration, Iterable):
        raise TypeError("calibration must be an iterable of input batches or (x, y) batches "
                        f"(a list, a DataLoader), got {type(calibration).__name__}")
    check_bool("per_channel", per_channel)
    model = copy.deepcopy(model).eval()
    layers = {name: m for name, m in model.named_modules() if isinstance(m, _LAYERS)}
    quantized = {name: quantize_weight(m.weight, bits, per_channel) for name, m in layers.items()}
    sums = {name: torch.zeros(_output_channels(m), dtype=torch.float64)
            for name, m in layers.items()}
    counts = Counter()

    def hook(name):
        def record(module, args):
            # the batch's mean weighted by its output positions: the mean over all batches
            # is then the mean over every output seen, as output_error defines it
            error = output_error(module, args[0], quantized[name])
            n = args[0].shape[0]
            sums[name] += error.double() * n
            counts[name] += n
        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in layers.items()]
    try:
        with torch.no_grad():
            for batch in calibration:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                if not isinstance(x, torch.Tensor):
                    raise TypeError("calibration must yield tensors or (x, y) batches, got "
                                    f"{type(x).__name__}")
                model(x)
    finally:
        for handle in handles:
            handle.remove()
    if not counts:
        raise ValueError("calibration yielded no batch: bias correction needs real inputs")
    with torch.no_grad():
        for name, m in layers.items():
            if not counts[name]:
                continue  # a layer the calibration never reached keeps its bias
            shift = (sums[name] / counts[name]).to(m.weight.dtype)
            if m.bias is None:
                m.bias = nn.Parameter(-shift)
            else:
                m.bias.sub_(shift)
    return model
