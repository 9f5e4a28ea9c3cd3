"""Real int8 inference on the CPU: PyTorch 2 export quantization (pt2e) through torchao.

``lightcnn.quantization`` *simulates* integers in float32 (fake quantization): right for
studying accuracy, useless for speed. Here the integers are real. The flow, static
post-training quantization (PTQ):

1. **capture**: ``torch.export`` turns the model into an ATen graph (batch size left dynamic);
2. **prepare**: ``X86InductorQuantizer`` annotates the ops oneDNN has int8 kernels for
   (conv, linear, and the pooling/add/cat around them) and ``prepare_pt2e`` inserts an
   observer at each annotated tensor;
3. **calibrate**: a few batches of real images go through; the observers record ranges;
4. **convert**: ``convert_pt2e`` replaces observers by quantize/dequantize pairs with the
   recorded ``scale`` and ``zero_point``, ``q = clamp(round(x / scale) + zero_point)``
   (weights stored as int8, folded once);
5. **lower**: ``torch.compile`` (Inductor) pattern-matches ``dequantize -> conv ->
   quantize`` into one oneDNN int8 convolution. With Inductor *freezing* the weights become
   constants, so their int8 prepacking is done once at compile time instead of per call:
   without it the int8 model is barely faster than float (chapter 05 measures both).

The default X86 configuration quantizes activations to uint8, asymmetric, per tensor
(histogram observer) and weights to int8, symmetric, per output channel. QAT uses the same
capture with ``prepare_qat_pt2e`` (fake quantization in the graph, batch norm folded into
the conv weights it follows), a few epochs of training, then the same convert and lower.

PyTorch documentation: "PyTorch 2 Export Quantization with X86 Backend through Inductor";
torchao's ``torchao.quantization.pt2e``. ``torch.ao.quantization`` is deprecated.

Taught in chapters/05_quantization.
"""

from __future__ import annotations

import copy
import io
import logging
import warnings
from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from ._checks import check_bool, check_int
from .profile import _check_model

__all__ = ["export_model", "quantize_int8", "prepare_int8_qat", "convert_int8_qat",
           "compile_cpu", "saved_size_bytes"]


def _pt2e():
    """torchao's pt2e API, imported on first use (torchao is only needed for chapter 05)."""
    # torchao registers an Enum with torch's pytree at import and torch logs a deprecation
    # warning about it; it says nothing about this code, so keep it out of the notebooks
    pytree_log = logging.getLogger("torch.utils._pytree")
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        from torchao.quantization.pt2e import (allow_exported_model_train_eval,
                                               move_exported_model_to_eval)
        from torchao.quantization.pt2e.quantize_pt2e import (convert_pt2e, prepare_pt2e,
                                                             prepare_qat_pt2e)
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer, get_default_x86_inductor_quantization_config)
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("real int8 needs torchao (pip install 'torchao>=0.18')") from err
    finally:
        pytree_log.setLevel(level)
    return dict(allow=allow_exported_model_train_eval, to_eval=move_exported_model_to_eval,
                convert=convert_pt2e, prepare=prepare_pt2e, prepare_qat=prepare_qat_pt2e,
                quantizer=X86InductorQuantizer, config=get_default_x86_inductor_quantization_config)


def _check_example(example: Tensor) -> None:
    if not isinstance(example, Tensor):
        raise TypeError(f"example must be a torch.Tensor, got {type(example).__name__}")
    if example.dim() != 4 or example.shape[0] < 2:
        # a batch of one would be specialized by torch.export: the graph would only ever
        # accept batch 1
        raise ValueError("example must be an image batch (N, C, H, W) with N >= 2, got shape "
                         f"{tuple(example.shape)}")


def _unshare_stateless(model: nn.Module) -> nn.Module:
    """``model``, or a traced copy in which every call of a module gets a module of its own.

    torchvision's ResNet blocks call one ``nn.ReLU`` twice. The X86 quantizer groups the
    captured ops by the module they came from, and a group with two outputs (two calls)
    stops it ("Input partition has more than one output node"). Giving the second call a
    copy of the (stateless) module changes nothing it computes. Models without repeated
    calls, or that ``torch.fx`` cannot trace, are returned as they are.
    """
    try:
        traced = torch.fx.symbolic_trace(model)
    except Exception:  # data-dependent control flow: nothing to untangle here
        return model
    seen: set[str] = set()
    repeated = False
    for node in traced.graph.nodes:
        if node.op != "call_module":
            continue
        if node.target in seen:
            module = traced.get_submodule(node.target)
            if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
                return model  # a layer with weights used twice: keep its single copy
            name = f"{node.target.replace('.', '_')}_call{len(seen)}"
            traced.add_submodule(name, copy.deepcopy(module))
            node.target = name
            # export keeps the traced nodes' metadata: name the new module there too
            node.meta.pop("nn_module_stack", None)
            node.meta.pop("source_fn_stack", None)
            repeated = True
        seen.add(node.target)
    if not repeated:
        return model
    traced.recompile()
    return traced


def export_model(model: nn.Module, example: Tensor, train: bool = False) -> nn.Module:
    """``model`` captured by ``torch.export`` as an ATen graph module, batch size dynamic.

    Args:
        example: a batch (N >= 2) with the input shape; only its shape and dtype matter.
        train: capture the training-mode graph (batch norm with batch statistics), for QAT.
    """
    _check_model(model)
    _check_example(example)
    check_bool("train", train)
    model.train(train)
    model = _unshare_stateless(model)
    batch = torch.export.Dim.AUTO  # lets torch.export find the batch dimension dynamic
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    return program.module()


def _batches(calibration: Iterable) -> Iterable[Tensor]:
    """The inputs of ``calibration``: tensors, or the first element of (x, y) batches."""
    for batch in calibration:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(x, Tensor):
            raise TypeError(f"calibration must yield tensors or (x, y) batches, got {type(x).__name__}")
        yield x


def _quantizer(qat: bool):
    api = _pt2e()
    return api["quantizer"]().set_global(api["config"](is_qat=qat))


def quantize_int8(model: nn.Module, calibration: Iterable, example: Tensor | None = None) -> nn.Module:
    """Static int8 post-training quantization of ``model`` (steps 1-4 of the module docstring).

    Args:
        model: a float model; it is put in eval mode and not modified otherwise.
        calibration: batches of inputs, or ``(x, y)`` batches such as a ``DataLoader``; a
            few hundred to a thousand images suffice.
        example: the capture example; defaults to the first calibration batch.

    Returns:
        The converted graph module (quantize/dequantize ops around float ops): run it as is
        to check accuracy, pass it through :func:`compile_cpu` for int8 kernels.

    Raises:
        ValueError: ``calibration`` yields no batch (observers without data have no range).
    """
    _check_model(model)
    if isinstance(calibration, (str, bytes)) or not (hasattr(calibration, "__iter__")
                                                     or hasattr(calibration, "__getitem__")):
        raise TypeError("calibration must be an iterable of input batches or (x, y) batches "
                        f"(a list, a DataLoader), got {type(calibration).__name__}")
    batches = iter(_batches(calibration))
    first = next(batches, None)
    if first is None:
        raise ValueError("calibration yielded no batch: int8 scales need real inputs")
    api = _pt2e()
    prepared = api["prepare"](export_model(model.eval(), first if example is None else example),
                              _quantizer(qat=False))
    with torch.no_grad():
        prepared(first)
        for x in batches:
            prepared(x)
    return _converted(prepared)


def prepare_int8_qat(model: nn.Module, example: Tensor) -> nn.Module:
    """``model`` captured in training mode with int8 fake quantization inserted (QAT).

    Train the returned module as any model (``lc.fit`` works); then :func:`convert_int8_qat`.
    Batch norm stays trainable; pt2e folds it into the fake-quantized conv weights so that
    training sees the weights that inference will use. The captured module shares its
    weight tensors with ``model``, so training it trains ``model``'s too: pass a copy to
    keep the float model. In a loop of one's own::

        qat = prepare_int8_qat(copy.deepcopy(model), example)
        optimizer = torch.optim.SGD(qat.parameters(), lr=1e-4, momentum=0.9)
        qat.train()                          # batch statistics, observers on
        for x, y in loader:
            loss = F.cross_entropy(qat(x), y)
            optimizer.zero_grad(); loss.backward(); optimizer.step()
        quantized = convert_int8_qat(qat)    # int8, eval mode

    Under ``torchrun`` wrap ``qat`` in DDP like any model: the observers' ranges are
    buffers, which DDP copies from rank 0 before every forward pass.
    """
    api = _pt2e()
    prepared = api["prepare_qat"](export_model(model, example, train=True), _quantizer(qat=True))
    # .train()/.eval() (which lc.fit and lc.evaluate call) now switch batch norm between
    # batch and running statistics, as pt2e's move_exported_model_to_train/eval do
    api["allow"](prepared)
    return prepared


def convert_int8_qat(prepared: nn.Module) -> nn.Module:
    """The QAT-trained module of :func:`prepare_int8_qat` converted to int8 (eval mode);
    a DDP wrapper of it is unwrapped first."""
    if isinstance(prepared, torch.nn.parallel.DistributedDataParallel):
        prepared = prepared.module
    if not isinstance(prepared, torch.fx.GraphModule):
        raise TypeError("prepared must be the module returned by prepare_int8_qat, got "
                        f"{type(prepared).__name__}")
    _pt2e()["to_eval"](prepared)  # batch norm to running statistics, before the fold
    return _converted(prepared)


def _converted(prepared: nn.Module) -> nn.Module:
    api = _pt2e()
    converted = api["convert"](prepared)
    # exported graphs refuse .train()/.eval() by default; allow them so the module can be
    # measured like any other (lc.measure_latency calls .eval())
    api["allow"](converted)
    converted.eval()  # the allowed .eval() returns None, not the module
    return converted


# graphs Dynamo may keep per forward function (compile_cpu raises its limit to this)
COMPILED_GRAPHS = 64


def compile_cpu(model: nn.Module, examples: Sequence[Tensor] = (), threads: int | None = None,
                freezing: bool = True) -> nn.Module:
    """``model`` compiled by Inductor with freezing on, for CPU inference.

    Works for float models (the fair "compiled fp32" baseline) and converted int8 modules.
    Compilation happens at the first call of each new input shape (seconds to a minute),
    so measure after a warm-up. Freezing is a process-wide Inductor setting; it only
    affects graphs compiled for inference. Inductor's C++ kernels are generated for the
    thread count set when they compile: change ``torch.set_num_threads`` before compiling.

    Args:
        examples: inputs to compile for now, one graph per shape (e.g. a batch of 1 and
            one of 256), each run once the way ``lc.measure_latency`` and
            ``lc.compare_latency`` run a model: inference mode, ``lc.setup``'s
            deterministic mode off, ``threads`` threads. Dynamo's graphs are specialized
            to that global state, so a model compiled by a plain call under ``lc.setup``'s
            deterministic mode, or at another thread count, compiles again in the
            timing's warm-up.
        threads: the thread count the examples compile for (that of the timings;
            ``None``: the current one, which ``lc.setup`` fixes).
        freezing: Inductor's ``freezing`` (a process-wide setting, read when a graph
            compiles; this call sets it): weights become constants, so oneDNN packs int8
            weights once and folds what depends on them. ``False`` compiles them as
            inputs, to measure what freezing buys; pass ``examples`` then, so that the
            graphs compile before a later call sets it back.

    Evaluate such a model in the timing state too (:func:`lightcnn.deploy.engine_accuracy`
    does): with torch 2.14.1, an int8 graph compiled here for the timing state and then
    called under ``lc.setup``'s deterministic mode compiled a second graph whose logits
    differ, 92.79% against 93.38% on the baseline's test set; the other order (compiled
    first under deterministic mode, then timed) gave the same accuracy twice.
    """
    _check_model(model)
    # a tuple or list: a single tensor would iterate over its rows, a dict over its keys
    if not isinstance(examples, (tuple, list)):
        raise TypeError(f"examples must be a tuple or list of input batches, got "
                        f"{type(examples).__name__}")
    for x in examples:
        if not isinstance(x, Tensor) or x.dim() == 0 or len(x) == 0:
            raise TypeError(f"examples must be batches of inputs (tensors with a batch "
                            f"dimension), got {type(x).__name__}"
                            f"{'' if not isinstance(x, Tensor) else f' of shape {tuple(x.shape)}'}")
    check_int("threads", threads, 1, none=True)
    check_bool("freezing", freezing)
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    inductor_config.freezing = freezing  # weights as constants: int8 prepacking once, not per call
    # Every model of one class shares its forward's code object, and Dynamo keeps at most
    # recompile_limit graphs per code object (8 by default; each model and input shape
    # takes one): past it, it warns once and runs the rest in eager mode, so a chapter
    # comparing many compiled variants would time eager ones under a "compiled" label.
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, COMPILED_GRAPHS)
    # two messages every int8 compile prints that say nothing about the user's code: a
    # torch-internal tensor-copy warning in Inductor's oneDNN lowering, and "no CUDA runtime"
    warnings.filterwarnings("ignore", message="To copy construct from a tensor",
                            category=UserWarning, module=r"torch\._inductor\.mkldnn_lowerings")
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    model.eval()  # exported modules' allowed .eval() does not return the module
    compiled = torch.compile(model, dynamic=False)
    if examples:
        from .profile import _inference     # the state every timing of the book runs in

        with _inference(compiled, threads or torch.get_num_threads()):
            for x in examples:
                compiled(x)
    return compiled


def saved_size_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save`` of the tensors ``model`` computes with.

    For a converted int8 graph these are the int8 weights (1 byte each), their per-channel
    scales and zero points, and the float biases; convert_pt2e leaves the original float
    weights attached but unused, so only tensors the graph reads (``get_attr``) count.
    Per-tensor activation scales are constants in the graph's code (a few bytes per layer,
    not counted).
    """
    _check_model(model)
    model = getattr(model, "_orig_mod", model)  # a torch.compile wrapper: the module it wraps
    state = model.state_dict()
    if isinstance(model, torch.fx.GraphModule):
        used = {node.target for node in model.graph.nodes if node.op == "get_attr"}
        state = {name: tensor for name, tensor in state.items() if name in used}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getbuffer().nbytes
