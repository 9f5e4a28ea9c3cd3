"""OpenVINO's BinaryConvolution against the book's packed binary convolution.

Rastegari et al., "XNOR-Net", arXiv 1603.05279, section 3.2, as an industrial runtime ships
it: OpenVINO's CPU plugin runs a convolution whose input comes from a 2-level FakeQuantize
and whose weights are +-1 as a BinaryConvolution, a JIT kernel that packs 32 channels per
word and counts with ``vpopcntd`` where AVX-512 VPOPCNTDQ exists. This module builds such
layers and whole binary networks with OpenVINO's opset API (no ONNX file needed), checks in
the compiled model's runtime graph (``compiled.get_runtime_model()``, each node's
``layerType``) that BinaryConvolution ran, and times it against
:class:`lightcnn.binary_kernels.PackedBinaryConv2d` (:func:`benchmark_binary_conv`) and a
whole packed network against float32 in three engines and the same network in OpenVINO
(:func:`benchmark_bnn`).

Conventions, checked by the tests against openvino 2026.4:

* FakeQuantize with ``levels=2``, ``input_low = input_high = t`` and outputs 0/1 is the
  CPU plugin's binarization: bit 1 where ``x > t``. The book's sign is ``x >= 0``, so
  ``t = -2**-149``, the largest float32 below 0 (exact for every input unless denormals
  are flushed to zero, which OpenVINO does not do by default).
* ``pad_value`` of BinaryConvolution: ``+1`` pads with the bit of +1, ``-1`` with the bit of
  -1, ``0`` leaves padded taps out of the count (a float conv's zero padding). The book's
  binary layers pad with +1 (``lightcnn.binary.BinaryConv2d``), so every layer here uses
  ``pad_value=+1`` and equals the book's layer exactly.
* u1 weights: the CPU plugin reads bit ``j`` of byte ``i`` as element ``8 i + j`` (least
  significant bit first, as OpenVINO's own ConvToBinaryConv writes them), while
  ``openvino.op.Constant`` built from a list of 0/1 packs the most significant bit first;
  the bytes are therefore passed packed (``numpy.packbits(..., bitorder="little")``).
* The CPU plugin's BinaryConvolution gives wrong results when the input channels are not a
  multiple of 8 (its own Convolution -> BinaryConvolution conversion too): such layers are
  refused.

Taught in chapters/06_binary_networks.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import binary_kernels as BK
from ._checks import (check_bool, check_instance, check_int, check_ints, check_module,
                      check_path, check_tensor)
from .binary import BinaryConv2d, BinaryLinear, binary_layers

__all__ = ["require_openvino", "binary_conv_model", "compile_model", "runtime_layer_types",
           "run_binary_conv", "export_bnn", "compile_bnn", "openvino_bnn",
           "benchmark_binary_conv", "benchmark_bnn"]

# FakeQuantize sets the bit where x > t: with t the largest float32 below 0, -2**-149,
# that is x >= 0, the book's sign
_SIGN_THRESHOLD = -float(np.finfo(np.float32).smallest_subnormal)


def require_openvino():
    """Import and return ``openvino``, or raise ImportError saying how to install it."""
    try:
        import openvino
        import openvino.opset8  # noqa: F401  (the opset this module builds with)
    except ImportError as e:
        raise ImportError("lightcnn.binary_openvino needs OpenVINO: pip install openvino "
                          "(CPU wheels for Linux, macOS and Windows; it does not install "
                          "torch)") from e
    return openvino


def _check_shape(name: str, value) -> tuple[int, ...]:
    """``value`` is ``(B, C, H, W)`` of positive ints (a list, tuple or torch.Size)."""
    check_ints(name, value, 1, length=4)
    return tuple(value)


def _check_positive_ints(name: str, value) -> None:
    """``value`` is a non-empty sequence (not a str) of ints >= 1."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        check_ints(name, value, 1)           # raises TypeError naming the argument
    check_ints(name, tuple(value), 1)


def _layer_signs(layer: BinaryConv2d | BinaryLinear | BK.PackedBinaryConv2d,
                 name: str = "layer") -> np.ndarray:
    """The layer's weight signs as a float32 ``(O, C, kh, kw)`` array of +-1 (a linear
    layer's as ``(O, F, 1, 1)``)."""
    if isinstance(layer, BK.PackedBinaryConv2d):
        (kh, kw), c, o = layer.kernel_size, layer.in_channels, layer.out_channels
        taps = BK.unpack_signs(layer.weight_bits, kh * kw * c)          # (O, kh kw C)
        return taps.view(o, kh, kw, c).permute(0, 3, 1, 2).numpy().astype(np.float32)
    if isinstance(layer, (BinaryConv2d, BinaryLinear)):
        signs = torch.where(layer.weight.detach() >= 0, 1.0, -1.0)
        return (signs if signs.ndim == 4 else signs[:, :, None, None]).numpy()
    raise ValueError(f"layer {name!r} must be a BinaryConv2d, BinaryLinear or "
                     f"PackedBinaryConv2d, got {type(layer).__name__}")


def _check_binary(layer: nn.Module, name: str) -> None:
    if not layer.scheme.binary_activations:
        raise ValueError(f"layer {name!r} (scheme {layer.scheme.name!r}) has real-valued "
                         "activations: BinaryConvolution needs 'bnn' or 'xnor'")
    channels = layer.in_channels if hasattr(layer, "in_channels") else layer.in_features
    if channels % 8:
        raise ValueError(f"layer {name!r} has {channels} input channels: OpenVINO's CPU "
                         "BinaryConvolution computes wrong results unless they are a multiple "
                         "of 8")
    if isinstance(layer, (BinaryConv2d, BK.PackedBinaryConv2d)):
        dilation = getattr(layer, "dilation", (1, 1))
        if getattr(layer, "groups", 1) != 1 or tuple(dilation) != (1, 1):
            raise ValueError(f"layer {name!r}: only groups=1 and dilation=1 are exported")


def _constant(array: np.ndarray):
    ov = require_openvino()
    return ov.op.Constant(np.ascontiguousarray(array, dtype=np.float32))


def _binary_conv(x, layer: nn.Module, name: str):
    """FakeQuantize (the signs, as bits) -> BinaryConvolution (pad +1) -> alpha, K, bias."""
    ov = require_openvino()
    ops = ov.opset8
    _check_binary(layer, name)
    signs = _layer_signs(layer, name)
    conv = signs.ndim == 4 and not isinstance(layer, BinaryLinear)
    stride = list(layer.stride) if conv else [1, 1]
    padding = list(layer.padding) if conv else [0, 0]
    t = np.array(_SIGN_THRESHOLD, np.float32)
    bits = ops.fake_quantize(x, t, t, np.array(0, np.float32), np.array(1, np.float32), 2,
                             name=f"{name}/sign")
    packed = np.packbits((signs > 0).reshape(-1).astype(np.uint8), bitorder="little")
    weights = ov.op.Constant(ov.Tensor(packed, ov.Shape(list(signs.shape)), ov.Type.u1),
                             shared_memory=False)
    y = ops.binary_convolution(bits, weights, stride, padding, padding, [1, 1], "xnor-popcount",
                               1.0, name=name)
    channel = (1, -1, 1, 1)
    if isinstance(layer, BK.PackedBinaryConv2d):
        alpha = layer.alpha
    else:
        alpha = layer.weight_alpha() if layer.scheme.weight_scale else None
    if alpha is not None:
        y = ops.multiply(y, _constant(alpha.detach().numpy().reshape(channel)))
    if layer.scheme.activation_scale:
        # XNOR-Net's K: mean_c |x| box-filtered with the kernel's size and stride (zero pad)
        mean = ops.reduce_mean(ops.abs(x), np.array([1], np.int64), keep_dims=True)
        kh, kw = layer.kernel_size if conv else (1, 1)
        box = np.full((1, 1, kh, kw), 1.0 / (kh * kw), np.float32)
        y = ops.multiply(y, ops.convolution(mean, _constant(box), stride, padding, padding,
                                            [1, 1]))
    bias = layer.bias
    if bias is not None:
        y = ops.add(y, _constant(bias.detach().numpy().reshape(channel)))
    return y


def binary_conv_model(layer: BinaryConv2d | BK.PackedBinaryConv2d,
                      input_shape: Sequence[int], nhwc_output: bool = False):
    """An OpenVINO model of one binary conv: ``x`` (float32 NCHW) -> FakeQuantize (levels 2,
    bits of ``x >= 0``) -> BinaryConvolution (``pad_value=+1``) -> alpha, K, bias as the
    layer has them. Its output equals ``PackedBinaryConv2d(layer)(x)``.

    Args:
        input_shape: ``(B, C, H, W)``.
        nhwc_output: return the output in NHWC memory (``(B, OH, OW, O)``), the layout the
            plugin computes in, so no reorder runs after the conv (the book's layer returns
            an NCHW view of NHWC memory too).
    """
    ov = require_openvino()
    if not isinstance(layer, (BinaryConv2d, BK.PackedBinaryConv2d)):
        raise ValueError(f"layer must be a BinaryConv2d or PackedBinaryConv2d, got "
                         f"{type(layer).__name__}")
    shape = _check_shape("input_shape", input_shape)
    if shape[1] != layer.in_channels:
        raise ValueError(f"input_shape must be (B, {layer.in_channels}, H, W) of positive "
                         f"ints, got {input_shape!r}")
    check_bool("nhwc_output", nhwc_output)
    x = ov.opset8.parameter(list(shape), np.float32, name="x")
    model = ov.Model([_binary_conv(x, layer, "binary_conv")], [x], "binary_conv")
    if nhwc_output:
        from openvino.preprocess import PrePostProcessor
        ppp = PrePostProcessor(model)
        ppp.output().tensor().set_layout(ov.Layout("NHWC"))
        ppp.output().model().set_layout(ov.Layout("NCHW"))
        model = ppp.build()
    return model


def compile_model(model, threads: int = 1):
    """Compile for OpenVINO's CPU plugin as deployed for latency: float32 inference (no
    bf16, which the plugin may pick on its own), ``threads`` threads, one stream, threads
    not pinned to cores (as :class:`lightcnn.deploy.OpenVinoModel`: a pinned thread cannot
    move off a core another process holds, and PyTorch's threads are not pinned either)."""
    from .deploy import _openvino_core   # one Core per process: see _openvino_core
    ov = require_openvino()
    check_instance("model", model, ov.Model, "an openvino.Model")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    return _openvino_core().compile_model(model, "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False})


def runtime_layer_types(compiled) -> dict[str, str]:
    """``{node name: layerType}`` of the graph the plugin actually runs
    (``compiled.get_runtime_model()``): "BinaryConvolution" where the binary kernel ran,
    "Convolution" where it fell back to a float one."""
    ov = require_openvino()
    check_instance("compiled", compiled, ov.CompiledModel, "an openvino.CompiledModel")
    return {node.get_friendly_name(): node.get_rt_info()["layerType"].astype(str)
            for node in compiled.get_runtime_model().get_ordered_ops()}


def _expect_binary(types: dict[str, str], names: Sequence[str]) -> None:
    missing = {n: types.get(n, "absent") for n in names if types.get(n) != "BinaryConvolution"}
    if missing:
        raise RuntimeError(f"OpenVINO did not run BinaryConvolution for {missing} "
                           f"(runtime layers: {sorted(set(types.values()))})")


def run_binary_conv(layer: BinaryConv2d | BK.PackedBinaryConv2d, x: Tensor,
                    threads: int = 1) -> Tensor:
    """``layer(x)`` run by OpenVINO's BinaryConvolution (after checking in the runtime graph
    that it ran): equal to :class:`lightcnn.binary_kernels.PackedBinaryConv2d` on the same
    weights and input (``bnn``; ``xnor``'s float scales round differently).

    Raises:
        RuntimeError: the plugin ran something other than BinaryConvolution.
    """
    if not isinstance(x, Tensor) or x.ndim != 4:
        raise ValueError(f"x must be a (B, C, H, W) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    compiled = compile_model(binary_conv_model(layer, tuple(x.shape)), threads)
    _expect_binary(runtime_layer_types(compiled), ["binary_conv"])
    y = compiled(x.detach().float().contiguous().numpy())[0]
    return torch.from_numpy(np.array(y))


class _Exporter:
    """Walks a torch.fx graph and builds the OpenVINO graph node by node."""

    def __init__(self, model: nn.Module):
        self.ov = require_openvino()
        self.ops = self.ov.opset8
        self.modules = dict(model.named_modules())

    def module(self, name: str, x):
        ops, m = self.ops, self.modules[name]
        if isinstance(m, (BinaryConv2d, BinaryLinear)) and m.scheme.binary_activations:
            if isinstance(m, BinaryLinear):    # a 1x1 binary conv on (B, F, 1, 1)
                y = _binary_conv(ops.unsqueeze(x, np.array([2, 3], np.int64)), m, name)
                return ops.squeeze(y, np.array([2, 3], np.int64))
            return _binary_conv(x, m, name)
        if isinstance(m, nn.Conv2d):
            if m.groups != 1 or not isinstance(m.padding, tuple):
                raise ValueError(f"layer {name!r}: only groups=1 convs with int padding export")
            w = m.weight.detach()
            if isinstance(m, BinaryConv2d):       # binary weights, real activations
                w = torch.where(w >= 0, 1.0, -1.0) * (m.weight_alpha().view(-1, 1, 1, 1)
                                                      if m.scheme.weight_scale else 1.0)
            y = ops.convolution(x, _constant(w.numpy()), list(m.stride), list(m.padding),
                                list(m.padding), list(m.dilation))
            return y if m.bias is None else ops.add(
                y, _constant(m.bias.detach().numpy().reshape(1, -1, 1, 1)))
        if isinstance(m, nn.Linear):
            w = m.weight.detach()
            if isinstance(m, BinaryLinear):
                w = torch.where(w >= 0, 1.0, -1.0) * (m.weight_alpha().view(-1, 1)
                                                      if m.scheme.weight_scale else 1.0)
            y = ops.matmul(x, _constant(w.numpy()), False, True)
            return y if m.bias is None else ops.add(y, _constant(m.bias.detach().numpy()))
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            gamma = m.weight if m.affine else torch.ones(m.num_features)
            beta = m.bias if m.affine else torch.zeros(m.num_features)
            return ops.batch_norm_inference(x, *(_constant(t.detach().numpy()) for t in (
                gamma, beta, m.running_mean, m.running_var)), m.eps)
        if isinstance(m, nn.ReLU):
            return ops.relu(x)
        if isinstance(m, (nn.Hardtanh, nn.ReLU6)):
            return ops.clamp(x, float(m.min_val), float(m.max_val))
        if isinstance(m, nn.MaxPool2d):
            pool = BK.PackedMaxPool2d(m)        # validates dilation and ceil_mode
            return ops.max_pool(x, list(pool.stride), [1, 1], list(pool.padding),
                                list(pool.padding), list(pool.kernel_size)).output(0)
        if isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1)):
            return ops.reduce_mean(x, np.array([2, 3], np.int64), keep_dims=True)
        if isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
            return self.flatten(x)
        if isinstance(m, (nn.Identity, nn.Dropout)):
            return x
        raise ValueError(f"layer {name!r} ({type(m).__name__}) has no OpenVINO export here")

    def flatten(self, x):
        return self.ops.reshape(x, np.array([0, -1], np.int64), special_zero=True)

    def function(self, node, args):
        target = node.target
        if target in (torch.flatten, "flatten") and node.args[1:] in ((1,), ()) \
                and not node.kwargs:
            return self.flatten(args[0])
        if target in (F.relu, torch.relu, "relu"):
            return self.ops.relu(args[0])
        if target in (operator.add, torch.add, "add") and len(args) == 2:
            return self.ops.add(*args)
        raise ValueError(f"{node.op} {getattr(target, '__name__', target)!r} has no OpenVINO "
                         "export here")


def export_bnn(model: nn.Module, input_shape: Sequence[int] = (1, 1, 28, 28),
               path: str | None = None):
    """The whole binarized network as an OpenVINO model, every binary layer with binary
    activations as FakeQuantize -> BinaryConvolution (named after the layer; a binary
    linear layer as a 1x1 one on ``(B, F, 1, 1)``), everything else as the float ops it is.

    Supports what the book's binary networks hold: Conv2d, Linear, their binary versions,
    batch norm, ReLU, Hardtanh, max pooling, global average pooling, flatten, dropout and
    identity, traced with torch.fx. Verify the compiled result with :func:`compile_bnn`.

    Args:
        input_shape: ``(B, C, H, W)`` of the input.
        path: also save it as OpenVINO IR (``.xml`` and ``.bin``) there.

    Raises:
        ValueError: a module or function without an export here, a binary layer whose input
            channels are not a multiple of 8, or a model torch.fx cannot trace (named).
    """
    require_openvino()
    check_module("model", model)
    shape = _check_shape("input_shape", input_shape)
    check_path("path", path, none=True)
    if not binary_layers(model):
        raise ValueError("model has no binary layers (binarize it first)")
    return _export(model, shape, path)


def _export(model: nn.Module, shape: tuple[int, ...], path: str | None = None):
    """The fx graph of ``model`` as an OpenVINO model (a float network too: every module
    :class:`_Exporter` knows), for a fixed input ``shape``."""
    ov = require_openvino()
    try:
        graph = BK._LeafTracer().trace(model)
    except Exception as e:   # fx raises many types for untraceable control flow
        raise ValueError(f"the OpenVINO export needs a model torch.fx can trace: {e}") from e
    exporter = _Exporter(model)
    values, parameters, results = {}, [], []
    for node in graph.nodes:
        args = [values[a] if isinstance(a, torch.fx.Node) else a for a in node.args]
        if node.op == "placeholder":
            values[node] = exporter.ops.parameter(list(shape), np.float32, name=node.name)
            parameters.append(values[node])
        elif node.op == "call_module":
            values[node] = exporter.module(node.target, args[0])
        elif node.op in ("call_function", "call_method"):
            values[node] = exporter.function(node, args)
        elif node.op == "output":
            results = [values[node.args[0]]]
        else:
            raise ValueError(f"{node.op} {node.target!r} has no OpenVINO export here")
    exported = ov.Model(results, parameters, type(model).__name__)
    if path is not None:
        ov.save_model(exported, path, compress_to_fp16=False)
    return exported


def compile_bnn(model: nn.Module, input_shape: Sequence[int] = (1, 1, 28, 28),
                threads: int = 1):
    """:func:`export_bnn`, compiled (:func:`compile_model`), after checking in the runtime
    graph that every binary layer with binary activations ran as BinaryConvolution.

    Returns:
        ``(compiled, {layer name: layerType})``.

    Raises:
        RuntimeError: some binary layer did not run as BinaryConvolution (named).
    """
    check_module("model", model)
    _check_shape("input_shape", input_shape)
    check_int("threads", threads, 1)
    compiled = compile_model(export_bnn(model, input_shape), threads)
    types = runtime_layer_types(compiled)
    names = [n for n, m in binary_layers(model).items() if m.scheme.binary_activations]
    _expect_binary(types, names)
    return compiled, {n: types[n] for n in names}


def benchmark_binary_conv(channels: Sequence[int] = (64, 128, 256, 512),
                          sizes: Sequence[int] = (7, 14, 28), threads: Sequence[int] = (1, 2),
                          warmup: int = 10, repeats: int = 50, seed: int = 0,
                          number: int | None = 1, until_stable: bool = False,
                          max_number: int = 64) -> list[dict]:
    """The book's packed binary conv against OpenVINO's BinaryConvolution, all in ONE
    interleaved run (:func:`lightcnn.profile.time_interleaved`).

    For each ``c`` in ``channels`` and ``s`` in ``sizes``: a 3x3 ``bnn`` conv, ``c`` -> ``c``
    channels, stride 1, padding 1 (+1 padding on both sides), on a ``(1, c, s, s)`` float32
    input, at each thread count. Both take the float NCHW input and return the float dot
    products in NHWC memory (the book's layer as an NCHW view of it; OpenVINO asked for
    NHWC output, so it runs no reorder after the conv); both outputs are checked equal
    first. The book's calls set torch's thread count (which the numba kernel follows) before
    each call; each OpenVINO model is compiled for its thread count, one stream, float32.
    Every call of every configuration is in the same round-robin, so drift (another process,
    the clock) spreads over all of them alike; the largest configurations come first in a
    round, so no small one follows a long call whose threads are still spinning.

    Returns:
        One row per (channels, size, threads): ``channels``, ``size``, ``threads``,
        ``binary_macs`` (``9 c^2 s^2``), ``book_ms``, ``openvino_ms`` (medians),
        ``book_iqr_ms``, ``openvino_iqr_ms``, ``speedup`` (OpenVINO's median over the
        book's: above 1, the book's layer is faster), ``speedup_ratio`` (the same as a
        :class:`lightcnn.profile.Ratio`, paired round by round; ``.stable`` False when its
        sample ratios spread by more than 20% of their median: not a result),
        ``book_outcome`` / ``openvino_outcome`` (each latency's ``outcome``),
        ``book_latency`` / ``openvino_latency`` (the :class:`lightcnn.profile.Latency`
        objects: all from one run, so any two pair round by round) and
        ``book_fraction_of_peak`` (binary MACs per second over
        :func:`lightcnn.binary_kernels.popcount_peak` at that many cores; None where the
        clock is unknown).

    Args:
        number, until_stable, max_number: passes per timed sample, and whether to retake
            the samples until they are stable (see :func:`lightcnn.time_interleaved`);
            a 7x7 layer takes well under a millisecond, so ``number=None`` (samples of at
            least 1 ms) keeps the clock's granularity out of its spread.
    """
    from .profile import time_interleaved  # local: only the benchmark needs it

    ov = require_openvino()
    for arg, values in (("channels", channels), ("sizes", sizes), ("threads", threads)):
        _check_positive_ints(arg, values)
    check_int("warmup", warmup, 0)
    check_int("repeats", repeats, 1)
    check_int("seed", seed, 0)
    check_int("number", number, 1, none=True)
    check_bool("until_stable", until_stable)
    check_int("max_number", max_number, 1)
    bad = [c for c in channels if c % 8]
    if bad:
        raise ValueError(f"channels must be multiples of 8 (OpenVINO's BinaryConvolution), "
                         f"got {bad}")
    fns, configs = {}, []
    previous = torch.get_num_threads()
    g = torch.Generator().manual_seed(seed)
    try:
        for c in channels:
            layer = BinaryConv2d(c, c, 3, padding=1, bias=False, scheme="bnn")
            with torch.no_grad():
                layer.weight.copy_(torch.rand(layer.weight.shape, generator=g) * 2 - 1)
            book = BK.PackedBinaryConv2d(layer.eval())
            for s in sizes:
                x = torch.randn(1, c, s, s, generator=g)
                model = binary_conv_model(layer, tuple(x.shape), nhwc_output=True)
                for t in threads:
                    compiled = compile_model(model, t)
                    _expect_binary(runtime_layer_types(compiled), ["binary_conv"])
                    request = compiled.create_infer_request()
                    request.set_input_tensor(ov.Tensor(x.numpy(), shared_memory=True))
                    request.infer()
                    torch.set_num_threads(t)
                    with torch.inference_mode():
                        ours = book(x)
                    theirs = torch.from_numpy(np.array(request.get_output_tensor(0).data))
                    if not torch.equal(ours, theirs.permute(0, 3, 1, 2)):
                        raise RuntimeError(f"OpenVINO and the book's layer disagree at {c} "
                                           f"channels, {s}x{s}, {t} threads")
                    configs.append((c, s, t))

                    def run_book(book=book, x=x, t=t):
                        torch.set_num_threads(t)
                        with torch.inference_mode():
                            return book(x)
                    fns[f"book {c} {s} {t}"] = run_book
                    fns[f"openvino {c} {s} {t}"] = request.infer
        # largest first: each call then follows a smaller one (a round is a cycle, so every
        # call always follows the same one; after a long OpenVINO call on 2 threads, its
        # workers still spin for a while and slow whatever comes next)
        order = sorted(fns, key=lambda k: -9 * int(k.split()[1]) ** 2 * int(k.split()[2]) ** 2)
        times = time_interleaved({k: fns[k] for k in order}, max(threads), warmup, repeats,
                                 1, number, until_stable, max_number)
    finally:
        torch.set_num_threads(previous)
    from .profile import speedup
    rows = []
    for c, s, t in configs:
        ours, theirs = times[f"book {c} {s} {t}"], times[f"openvino {c} {s} {t}"]
        macs = 9 * c * c * s * s
        peak = BK.popcount_peak(t)["peak_binary_macs_per_s"]
        rows.append({"channels": c, "size": s, "threads": t, "binary_macs": macs,
                     "book_ms": ours.median_ms, "openvino_ms": theirs.median_ms,
                     "book_iqr_ms": ours.iqr_ms, "openvino_iqr_ms": theirs.iqr_ms,
                     "speedup": theirs.median_ms / ours.median_ms,
                     "speedup_ratio": speedup(theirs, ours),
                     "book_outcome": ours.outcome, "openvino_outcome": theirs.outcome,
                     "book_latency": ours, "openvino_latency": theirs,
                     "book_fraction_of_peak": None if peak is None
                     else macs / (ours.median_ms / 1e3) / peak})
    return rows


class _OpenVinoNet(nn.Module):
    """OpenVINO models compiled for fixed batch sizes (``{batch: CompiledModel}``), called
    like a PyTorch model, so :func:`lightcnn.compare_latency` times them beside PyTorch's:
    the input is read in place (``share_inputs``), the logits copied out, as
    :class:`lightcnn.deploy.OpenVinoModel` does."""

    def __init__(self, compiled: dict):
        super().__init__()
        self.requests = {b: c.create_infer_request() for b, c in compiled.items()}

    def forward(self, x: Tensor) -> Tensor:
        request = self.requests.get(len(x))
        if request is None:
            raise ValueError(f"compiled for batch sizes {sorted(self.requests)}, got {len(x)}")
        out = request.infer({0: x.detach().float().contiguous().numpy()}, share_inputs=True)
        return torch.from_numpy(out[0])


def openvino_bnn(model: nn.Module, batch_sizes: Sequence[int] = (1, 256),
                 input_shape: Sequence[int] = (1, 28, 28), threads: int = 2) -> nn.Module:
    """The binarized network in OpenVINO with BinaryConvolution kernels, called like a
    PyTorch model (``logits = m(x)``) at each of ``batch_sizes``, so it can be timed beside
    other engines (:func:`lightcnn.report.compare_engines`).

    One compiled model per batch size (:func:`compile_bnn`: the runtime graph checked for
    BinaryConvolution in every binary layer, float32, ``threads`` threads, one stream); a
    call at another batch size is refused.

    Args:
        input_shape: ``(C, H, W)`` of one input.
    """
    check_module("model", model)
    _check_positive_ints("batch_sizes", batch_sizes)
    check_ints("input_shape", input_shape, 1, length=3)
    check_int("threads", threads, 1)
    return _OpenVinoNet({b: compile_bnn(model, (b, *input_shape), threads)[0]
                         for b in dict.fromkeys(batch_sizes)})


# benchmark_bnn's rows: model and engine; each engine's float32 row is its reference
_ENGINES = {"fp32 eager": "eager", "fp32 compiled": "inductor", "fp32 OpenVINO": "openvino",
            "BNN simulated": "eager", "BNN packed": "eager", "BNN OpenVINO": "openvino"}
_FP32 = {"eager": "fp32 eager", "inductor": "fp32 compiled", "openvino": "fp32 OpenVINO"}
# the ratios the chapter quotes: (faster model, slower reference)
_RATIOS = {"packed vs eager fp32": ("BNN packed", "fp32 eager"),
           "packed vs compiled fp32": ("BNN packed", "fp32 compiled"),
           "OpenVINO BNN vs OpenVINO fp32": ("BNN OpenVINO", "fp32 OpenVINO"),
           "packed vs OpenVINO BNN": ("BNN packed", "BNN OpenVINO")}


def _agreement(reference: Tensor, other: Tensor) -> dict:
    """How often ``other``'s predicted class is ``reference``'s, and the largest logit
    difference."""
    return {"agreement": (reference.argmax(1) == other.argmax(1)).float().mean().item(),
            "max_abs_logit_difference": (reference - other).abs().max().item()}


def benchmark_bnn(fp32: nn.Module, bnn: nn.Module, example: Tensor,
                  batch_sizes: Sequence[int] = (1, 256), threads: int = 2, warmup: int = 10,
                  repeats: int = 50, thresholds: bool = True, number: int | None = 1,
                  until_stable: bool = False, max_number: int = 64) -> dict:
    """A float network and its binarized twin in every engine, timed in ONE interleaved run
    per batch size (:func:`lightcnn.report.compare_engines`), each binary engine against
    float32 in the same engine (book/benchmarking.md).

    The rows (model, engine):

    * ``fp32 eager``, ``fp32 compiled`` (Inductor with frozen weights,
      :func:`lightcnn.int8.compile_cpu`), ``fp32 OpenVINO`` (the same graph exported with
      this module's exporter, :func:`compile_model`: f32, ``threads``, one stream);
    * ``BNN simulated``: ``bnn`` itself, binary arithmetic simulated in float32 (eager);
    * ``BNN packed``: :func:`lightcnn.binary_kernels.pack_model` (``thresholds``: FINN's
      integer thresholds between binary layers), eager PyTorch with the XNOR-popcount
      kernel, so its "same engine" reference is eager float32;
    * ``BNN OpenVINO``: :func:`compile_bnn`, after checking in the runtime graph that every
      binary layer ran as BinaryConvolution.

    Every model is compiled for each batch size before timing. The OpenVINO BNN's and the
    packed network's predictions are compared with the float simulation's on
    ``example[:max(batch_sizes)]``, and OpenVINO float32's with eager float32's: reported
    in ``agreement``, not assumed (OpenVINO rounds the float layers in another order, so a
    value at a sign's threshold can flip).

    Args:
        fp32: the float network; ``bnn``: its binarized twin (a layer with binary weights
            and activations, ``bnn`` or ``xnor``; with ``thresholds``, ``bnn`` only).
        example: real inputs ``(N, C, H, W)``, ``N >= max(batch_sizes)``; batch ``b`` times
            ``example[:b]``.
        number, until_stable, max_number: see :func:`lightcnn.time_interleaved`.

    Returns:
        dict with ``rows`` (:func:`lightcnn.report.compare_engines`' rows, which
        :func:`lightcnn.report.engine_table` shows, each with ``vs_compiled_fp32_b{b}``
        added), ``ratios`` (``{"packed vs eager fp32", "packed vs compiled fp32",
        "OpenVINO BNN vs OpenVINO fp32", "packed vs OpenVINO BNN"} -> {b: Ratio}``, above 1
        the first is faster), ``agreement`` (``{"BNN packed", "BNN OpenVINO", "fp32
        OpenVINO"} -> {"agreement", "max_abs_logit_difference"}``, and ``images``),
        ``runtime_layers`` (``{binary layer: "BinaryConvolution"}``) and ``threads``.

    Raises:
        RuntimeError: a binary layer did not run as BinaryConvolution in OpenVINO.
    """
    from . import int8               # local: torchao and Inductor only for this benchmark
    from .profile import _inference, speedup
    from .report import compare_engines

    check_module("fp32", fp32)
    check_module("bnn", bnn)
    if not any(m.scheme.binary_activations for m in binary_layers(bnn).values()):
        raise ValueError("bnn has no binary layer with binary activations (binarize it "
                         "with scheme 'bnn' or 'xnor')")
    check_tensor("example", example, 4, floating=True, nonempty=True)
    _check_positive_ints("batch_sizes", batch_sizes)
    if len(example) < max(batch_sizes):
        raise ValueError(f"example must hold at least max(batch_sizes) = {max(batch_sizes)} "
                         f"inputs, got {len(example)}")
    check_int("threads", threads, 1)
    check_int("warmup", warmup, 0)
    check_int("repeats", repeats, 1)
    check_bool("thresholds", thresholds)
    check_int("number", number, 1, none=True)
    check_bool("until_stable", until_stable)
    check_int("max_number", max_number, 1)
    require_openvino()
    batch_sizes = tuple(dict.fromkeys(batch_sizes))
    shape = tuple(example.shape[1:])
    x = example[:max(batch_sizes)].detach().float().contiguous()
    fp32, bnn = copy.deepcopy(fp32).eval(), copy.deepcopy(bnn).eval()
    packed = BK.pack_model(bnn, thresholds=thresholds)
    ov_fp32, ov_bnn, layers = {}, {}, {}
    for b in batch_sizes:
        ov_fp32[b] = compile_model(_export(fp32, (b, *shape)), threads)
        ov_bnn[b], layers = compile_bnn(bnn, (b, *shape), threads)
    compiled = int8.compile_cpu(copy.deepcopy(fp32))
    with _inference(compiled, threads):   # Inductor's kernels are built for this thread count
        for b in batch_sizes:
            compiled(x[:b])               # compiles for this batch size
    models = {"fp32 eager": fp32, "fp32 compiled": compiled,
              "fp32 OpenVINO": _OpenVinoNet(ov_fp32), "BNN simulated": bnn,
              "BNN packed": packed, "BNN OpenVINO": _OpenVinoNet(ov_bnn)}
    with _inference(fp32, threads):
        logits = {name: models[name](x) for name in ("fp32 eager", "fp32 OpenVINO",
                                                      "BNN simulated", "BNN packed",
                                                      "BNN OpenVINO")}
    agreement = {name: _agreement(logits[reference], logits[name])
                 for name, reference in (("BNN packed", "BNN simulated"),
                                         ("BNN OpenVINO", "BNN simulated"),
                                         ("fp32 OpenVINO", "fp32 eager"))}
    agreement["images"] = len(x)
    rows = compare_engines({name: (model, _ENGINES[name]) for name, model in models.items()},
                           _FP32, batch_sizes, shape, threads, warmup, repeats, example=x,
                           number=number, until_stable=until_stable,
                           max_number=max_number)
    by_name = {row["name"]: row for row in rows}
    for row in rows:
        for b in batch_sizes:
            row[f"vs_compiled_fp32_b{b}"] = speedup(by_name["fp32 compiled"][f"latency_b{b}"],
                                                    row[f"latency_b{b}"])
    ratios = {key: {b: speedup(by_name[slow][f"latency_b{b}"], by_name[fast][f"latency_b{b}"])
                    for b in batch_sizes}
              for key, (fast, slow) in _RATIOS.items()}
    return {"rows": rows, "ratios": ratios, "agreement": agreement, "runtime_layers": layers,
            "threads": threads}
