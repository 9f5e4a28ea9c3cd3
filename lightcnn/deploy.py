"""Deployment check: export to ONNX, run with ONNX Runtime or OpenVINO on the CPU.

A compressed model is only useful if it still runs, and runs as fast, outside the
framework that made it. ONNX is the common exchange format; ONNX Runtime (ORT) is the
CPU engine most deployments use, OpenVINO the one most x86 deployments would pick. The
flow:

    torch.onnx.export(model, (x,), path, dynamo=True)        # torch.export -> ONNX graph
    session = onnxruntime.InferenceSession(path)              # ORT fuses Conv+BN+ReLU itself
    quantize_static(path, path_int8, QuantFormat.QDQ)         # int8: QuantizeLinear /
                                                              # DequantizeLinear pairs, which
                                                              # ORT runs as integer kernels

The exported graph must compute what the PyTorch model computes: :func:`max_abs_difference`
compares the two on the same images (float32: within about 1e-4 on logits; int8 QDQ:
the same quantization error as PyTorch's int8, so compare predictions, not logits).

Int8 through ORT uses ORT's own static quantizer (per-channel int8 weights, uint8
activations, min-max calibration on the images given; 7-bit weights on x86 CPUs without
VNNI, :func:`reduce_range_for_cpu`), the path ORT documents and maintains; chapter 05's
torchao int8 model is lowered by ``torch.compile`` instead and is not an exportable graph.

OpenVINO reads the same ONNX files (:class:`OpenVinoModel`): the float32 export, and the
QDQ int8 file, whose QuantizeLinear/DequantizeLinear pairs its CPU plugin turns into int8
convolutions, so both runtimes run one quantized network and differ only as runtimes.
:func:`list_executed_layers` shows which kernels ran at which precision. Its CPU plugin
computes in bfloat16 by default on CPUs with AVX512-BF16 or AMX; the ``"f32"`` hint keeps
float32.

onnx, onnxscript, onnxruntime and openvino are imported when a function here is called, so
the rest of lightcnn works without them.

Taught in chapters/09_putting_it_together.
"""

from __future__ import annotations

import copy
import functools
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ._checks import (check_bool, check_int, check_ints, check_module, check_path, check_str,
                      check_tensor)

__all__ = ["export_onnx", "OnnxModel", "OpenVinoModel", "list_executed_layers",
           "quantize_onnx_int8", "max_abs_difference", "Deployment", "deployments", "ENGINES",
           "engine_accuracy", "engine_outputs", "reduce_range_for_cpu"]


def _require(module: str, user: str = "lightcnn.deploy",
             install: str = "onnx onnxscript onnxruntime"):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as error:
        raise ImportError(f"{user} needs {module!r}: pip install {install}") from error


@functools.cache
def _openvino_core():
    """The process's one ``openvino.Core``, made on first use (openvino must import).

    One Core for every model, not one each: each Core loads its own instance of the CPU
    plugin, and on Linux each instance gives the thread that made it an alternate signal
    stack of its own (room for AMX state) and, when freed, puts back the stack that was
    current before it, even if that one has been unmapped since. Two models with Cores of
    their own, freed in the order they were made, so left the main thread's signal stack
    pointing at unmapped memory, and the next signal handled there (CPython runs every
    Python signal handler there: Ctrl-C, a SIGALRM timeout; faulthandler too) killed the
    process with SIGSEGV, with no traceback. One Core, kept until exit, frees its stack
    last. (OpenVINO's ``SigAltStackSetup`` in the intel_cpu plugin, 2026.4.)
    """
    import openvino
    return openvino.Core()


def _check_example(example: torch.Tensor, name: str = "example") -> None:
    if not isinstance(example, torch.Tensor) or example.dim() != 4 or not example.is_floating_point():
        raise ValueError(f"{name} must be a float tensor of shape (B, C, H, W), got "
                         f"{getattr(example, 'shape', type(example).__name__)}")


def export_onnx(model: nn.Module, path: str | Path, example: torch.Tensor,
                dynamic_batch: bool = True) -> Path:
    """Export ``model`` (in eval mode) to one self-contained ONNX file at ``path`` with the
    dynamo-based exporter; return the path.

    Args:
        example: an input of the right shape (its batch size does not matter when
            ``dynamic_batch``, which lets the file run at any batch size).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _check_example(example)
    check_path("path", path)
    check_bool("dynamic_batch", dynamic_batch)
    _require("onnxscript")
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"path must end in .onnx, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    dynamic = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    try:
        # external_data=False: the weights go into the one file, so its size is the bytes
        # a deployment ships
        torch.onnx.export(model, (example,), str(path), dynamo=True, dynamic_shapes=dynamic,
                          input_names=["x"], output_names=["logits"], external_data=False,
                          verbose=False)
    finally:
        model.train(was_training)
    return path


class OnnxModel(nn.Module):
    """An ONNX file run by ONNX Runtime on the CPU, callable like a PyTorch model
    (``logits = m(x)``), so :func:`lightcnn.compare_latency` can time it side by side
    with PyTorch models.

    Args:
        path: the ``.onnx`` file.
        threads: ORT's intra-op threads (the book uses 2, as for PyTorch).
    """

    def __init__(self, path: str | Path, threads: int = 2):
        super().__init__()
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an int >= 1, got {threads!r}")
        check_path("path", path)
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no ONNX file at {path}")
        ort = _require("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3          # errors only
        # ORT's threads busy-wait for the next run by default; on a 2-core machine that
        # spinning takes the cores from PyTorch models timed in the same loop (they ran
        # 1.5x to 5x slower beside ORT sessions until this was off)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.path, self.threads = path, threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    @property
    def size_bytes(self) -> int:
        """Bytes of the ONNX file on disk."""
        return self.path.stat().st_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_example(x)
        # numpy views share memory with the tensors: no copy either way
        (logits,) = self.session.run(None, {self.input_name: x.detach().contiguous().numpy()})
        return torch.from_numpy(logits)


# The precisions OpenVinoModel accepts: float32, or None for the plugin's default
# (on x86: bfloat16 on CPUs with AVX512-BF16 or AMX, float32 elsewhere)
_PRECISIONS = ("f32", None)


class OpenVinoModel(nn.Module):
    """An ONNX file compiled by OpenVINO for the CPU, callable like a PyTorch model
    (``logits = m(x)``), so :func:`lightcnn.compare_latency` can time it side by side
    with PyTorch models and :class:`OnnxModel` (the same file, float32 or QDQ int8).

    The compiled model's settings, one per reason:

    - ``PERFORMANCE_HINT=LATENCY`` and ``NUM_STREAMS=1``: every call gets all ``threads``
      (the ``THROUGHPUT`` hint splits the cores into streams for many requests in flight,
      so one call at a time, as the book times them, would get a fraction of the cores).
    - ``INFERENCE_NUM_THREADS=threads``: the same thread count as PyTorch and ORT.
    - ``ENABLE_CPU_PINNING=False``: pinned threads (Linux's default) cannot move off a core
      that another thread holds; beside a training run, batch-1 latency was 29 ms pinned
      and 1.0 ms unpinned. PyTorch's and ORT's threads are not pinned either.

    Between calls, OpenVINO's worker thread (oneTBB) busy-waits for about a millisecond
    before it sleeps (1.0 to 1.5 ms of CPU time burned after each call, 2 threads, batch
    256); no property turns that off (ORT's ``allow_spinning`` does, see
    :class:`OnnxModel`). In an interleaved loop the model timed right after this one can
    lose up to about 1 ms of one core: at batch 1, compare its latency with and without
    this model beside it.

    Args:
        path: the ``.onnx`` file (its batch dimension dynamic, as :func:`export_onnx`
            writes it, or fixed, then only that batch size runs).
        threads: OpenVINO's inference threads (the book uses 2, as for PyTorch).
        precision: ``INFERENCE_PRECISION_HINT``: ``"f32"`` computes in float32; ``None``
            leaves the plugin's default, bfloat16 on CPUs with AVX512-BF16 or AMX.
            :attr:`precision` says which one ran; int8 layers of a QDQ file run in int8
            either way.

    Attributes:
        precision: the precision the compiled model computes in (``"f32"``, ``"bf16"``),
            read back from the compiled model.
        capabilities: what OpenVINO reports the CPU can do (``OPTIMIZATION_CAPABILITIES``,
            e.g. ``("BF16", "FP32", "INT8", ...)``).
    """

    def __init__(self, path: str | Path, threads: int = 2, precision: str | None = "f32"):
        super().__init__()
        if not isinstance(path, (str, Path)):
            raise TypeError(f"path must be a str or Path, got {type(path).__name__}")
        if isinstance(threads, bool) or not isinstance(threads, int):
            raise TypeError(f"threads must be an int, got {type(threads).__name__}")
        if threads < 1:
            raise ValueError(f"threads must be an int >= 1, got {threads!r}")
        if precision not in _PRECISIONS:
            raise ValueError(f"precision must be 'f32' or None (the plugin's default), "
                             f"got {precision!r}")
        path = Path(path)
        if path.suffix != ".onnx":
            raise ValueError(f"path must be an .onnx file, got {str(path)!r}")
        if not path.is_file():
            raise FileNotFoundError(f"no ONNX file at {path}")
        _require("openvino", "lightcnn.deploy.OpenVinoModel", "openvino")
        core = _openvino_core()   # shared: see _openvino_core
        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                  "INFERENCE_NUM_THREADS": threads, "ENABLE_CPU_PINNING": False}
        if precision is not None:
            config["INFERENCE_PRECISION_HINT"] = precision
        self.path, self.threads = path, threads
        self.compiled = core.compile_model(str(path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.capabilities = tuple(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        batch = self.compiled.input(0).get_partial_shape()[0]
        self._batch = batch.get_length() if batch.is_static else None

    @property
    def size_bytes(self) -> int:
        """Bytes of the ONNX file on disk."""
        return self.path.stat().st_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_example(x)
        if self._batch is not None and len(x) != self._batch:
            raise ValueError(f"{self.path.name} was exported for batch size {self._batch}, "
                             f"got {len(x)}; export with dynamic_batch=True")
        # share_inputs: OpenVINO reads the tensor's memory in place; the outputs are
        # copied out of the request's buffers, which the next call overwrites
        outputs = self.request.infer({0: x.detach().float().contiguous().numpy()},
                                     share_inputs=True)
        return torch.from_numpy(outputs[0])


def list_executed_layers(model: OpenVinoModel) -> list[dict[str, str]]:
    """The layers OpenVINO's CPU plugin ran for ``model``, in execution order, read from
    the compiled model's runtime graph (constants, inputs and outputs left out).

    Each row: ``name``; ``type`` (``"Convolution"``, ``"Pooling"``, ``"Reorder"``: a
    layout change, ...); ``precision``, the precision it computed in (``"f32"``,
    ``"bf16"``, ``"u8"`` for int8 kernels on uint8 activations); ``primitive``, the kernel
    (``"brgconv_avx512_I8"``); ``fused``, the ONNX nodes it runs (a convolution, its ReLU
    and the next QuantizeLinear can be one layer).
    """
    if not isinstance(model, OpenVinoModel):
        raise TypeError(f"model must be an OpenVinoModel, got {type(model).__name__}")
    rows = []
    for op in model.compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].value
        if kind in ("Const", "Input", "Output"):
            continue
        rows.append({"name": op.get_friendly_name(), "type": kind,
                     "precision": info["runtimePrecision"].value,
                     "primitive": info["primitiveType"].value,
                     "fused": info["originalLayersNames"].value})
    return rows


class _Calibration:
    """ORT's CalibrationDataReader protocol: ``get_next()`` returns one feed dict, then None."""

    def __init__(self, input_name: str, images: torch.Tensor, batch_size: int):
        self._batches = iter([{input_name: images[i:i + batch_size].contiguous().numpy()}
                              for i in range(0, len(images), batch_size)])

    def get_next(self):
        return next(self._batches, None)

    def rewind(self) -> None:     # pragma: no cover - not used by MinMax calibration
        raise NotImplementedError


def reduce_range_for_cpu() -> bool:
    """Whether ONNX Runtime's guidance recommends 7-bit weights (``reduce_range``) on this CPU:
    x86 without an 8-bit dot-product instruction (:func:`lightcnn.runtime.int8_dot_product`).

    There, u8 x s8 kernels add pairs of products in int16 (AVX2's ``VPMADDUBSW``), and a
    pair of products of up to ``255 * 127`` each can exceed 32,767 and saturate; with
    weights in ``[-64, 64]`` no pair can. VNNI (and ARM's dot product) accumulate in int32.
    """
    from . import runtime

    return (runtime.int8_dot_product() is None
            and platform.machine().lower() in ("x86_64", "amd64"))


def quantize_onnx_int8(fp32_path: str | Path, path: str | Path, calibration: torch.Tensor,
                       per_channel: bool = True, batch_size: int = 64,
                       reduce_range: bool | None = None) -> Path:
    """Static int8 quantization of an exported float32 ONNX file with ONNX Runtime's
    quantizer, in QDQ format; return ``path``.

    Weights: int8, symmetric, one scale per output channel (``per_channel``); activations:
    uint8 with scales from the min and max observed on ``calibration`` (normalized images
    of shape (N, C, H, W)), as in chapter 05's post-training quantization.

    ``reduce_range``: weights in 7 bits (``[-64, 64]``), which ORT's documentation recommends
    on x86 CPUs without VNNI to avoid int16 saturation; ``None`` decides for this CPU
    (:func:`reduce_range_for_cpu`). The file is then made for CPUs like this one; OpenVINO
    runs it too, with the same 7-bit weights.
    """
    check_path("fp32_path", fp32_path)
    check_path("path", path)
    check_bool("per_channel", per_channel)
    check_bool("reduce_range", reduce_range, none=True)
    fp32_path, path = Path(fp32_path), Path(path)
    if not fp32_path.is_file():
        raise FileNotFoundError(f"no ONNX file at {fp32_path}")
    if path.suffix != ".onnx" or path == fp32_path:
        raise ValueError(f"path must be a new .onnx file, got {str(path)!r}")
    _check_example(calibration, "calibration")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    onnx = _require("onnx")
    quantization = _require("onnxruntime.quantization")
    with tempfile.TemporaryDirectory() as tmp:
        # shape inference and graph clean-up first, as ORT recommends before quantizing
        prepared = Path(tmp) / "prepared.onnx"
        quantization.quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        input_name = onnx.load(str(prepared)).graph.input[0].name
        quantization.quantize_static(
            str(prepared), str(path), _Calibration(input_name, calibration, batch_size),
            quant_format=quantization.QuantFormat.QDQ, per_channel=per_channel,
            reduce_range=reduce_range_for_cpu() if reduce_range is None else reduce_range,
            activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8,
            calibrate_method=quantization.CalibrationMethod.MinMax)
    return path


def max_abs_difference(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    """``max |a(x) - b(x)|`` over every logit, both models in eval mode without gradients."""
    check_module("a", a)
    check_module("b", b)
    _check_example(x, "x")
    with torch.no_grad():
        return float((a.eval()(x) - b.eval()(x)).abs().max())



# the engines :func:`deployments` runs a model in, in the order its rows come out
ENGINES = ("eager", "inductor", "ort", "openvino")
_DEPLOYED_PRECISIONS = ("fp32", "int8", "bf16", "f16", "binary")
_ENGINE_LABELS = {"eager": "eager", "inductor": "Inductor", "ort": "ORT", "openvino": "OpenVINO"}


@dataclass
class Deployment:
    """One way to run a model on the CPU: what to call, in which engine, at which precision.

    Attributes:
        model: the callable (``logits = model(x)``): the PyTorch model, its compiled
            graph, an :class:`OnnxModel` or an :class:`OpenVinoModel`.
        engine: ``"eager"``, ``"inductor"``, ``"ort"`` or ``"openvino"``.
        precision: what it computes in: ``"fp32"``, ``"int8"``, ``"bf16"`` (OpenVINO's
            default on CPUs with AVX512-BF16 or AMX; read back from the compiled model),
            ``"f16"``, or ``"binary"`` (a binary network's packed signs).
        size_bytes: bytes of what the engine loads: ``torch.save`` of the float weights
            (eager, Inductor fp32), of the int8 tensors (Inductor int8), the ONNX file.

    Take its accuracy with :func:`engine_accuracy`, which runs exactly this callable.
    """

    model: nn.Module
    engine: str
    precision: str
    size_bytes: int

    def __post_init__(self):
        check_module("model", self.model)
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if self.precision not in _DEPLOYED_PRECISIONS:
            raise ValueError(f"precision must be one of {_DEPLOYED_PRECISIONS}, "
                             f"got {self.precision!r}")
        check_int("size_bytes", self.size_bytes, 1)


def _check_engines(engines) -> tuple[str, ...]:
    if isinstance(engines, str) or not isinstance(engines, (tuple, list)) or not engines:
        raise TypeError(f"engines must be a non-empty tuple of names from {ENGINES}, "
                        f"got {engines!r}")
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or len(set(engines)) != len(engines):
        raise ValueError(f"engines must be distinct names from {ENGINES}, got {tuple(engines)!r}")
    return tuple(e for e in ENGINES if e in engines)


def deployments(model: nn.Module, name: str, folder: str | Path, example: torch.Tensor,
                calibration: torch.Tensor | None = None, engines: tuple[str, ...] = ENGINES,
                threads: int = 2, compile_batches: tuple[int, ...] = (1, 256),
                openvino_default: bool = True) -> dict[str, Deployment]:
    """Every way this book runs ``model`` on a CPU, ready to time side by side.

    Per engine, float32 and (with ``calibration``) int8:

    - ``eager``: the model itself (float32 only: PyTorch's eager int8 is a simulation).
    - ``inductor``: ``torch.compile`` with freezing (:func:`lightcnn.int8.compile_cpu`),
      compiled now for each of ``compile_batches``; int8 by torchao's pt2e flow
      (:func:`lightcnn.int8.quantize_int8`, ``X86InductorQuantizer``).
    - ``ort``: the ONNX export (:func:`export_onnx`) in ONNX Runtime; int8 by ORT's static
      quantizer (:func:`quantize_onnx_int8`, QDQ; 7-bit weights on x86 without VNNI, as
      ORT's documentation advises).
    - ``openvino``: the same ONNX files in OpenVINO, float32 forced
      (``INFERENCE_PRECISION_HINT=f32``), the plugin's default precision when it is not
      float32 (``openvino_default``: bf16 on CPUs with AVX512-BF16 or AMX), and the QDQ
      int8 file, which OpenVINO runs with int8 kernels.

    The int8 variants are calibrated on the same images with int8 weights per output
    channel; their quantizers differ in how they set activation ranges (pt2e's x86
    quantizer: a histogram observer; ORT's here: min-max), so their int8 networks can
    differ slightly, while ORT and OpenVINO run the very same QDQ file.

    Args:
        model: a float PyTorch model (put in eval mode; copied where compiled).
        name: the prefix of every row name: ``f"{name} ({engine} {precision})"``.
        folder: where the ONNX files go (created).
        example: an input batch, for export and tracing.
        calibration: normalized images for int8 calibration, or ``None`` for float only.
        engines: which of :data:`ENGINES` to build.
        threads: threads for every engine (PyTorch's is set by ``lc.setup``).
        compile_batches: the batch sizes to compile the Inductor graphs for now.
        openvino_default: also build OpenVINO at its default precision when that is not
            float32.

    Returns:
        Row name -> :class:`Deployment`, engine by engine in :data:`ENGINES`' order,
        float32 before int8.
    """
    check_module("model", model)
    check_str("name", name)
    check_path("folder", folder)
    _check_example(example)
    if calibration is not None:
        _check_example(calibration, "calibration")
    engines = _check_engines(engines)
    check_int("threads", threads, 1)
    check_ints("compile_batches", compile_batches, 1, nonempty=False)
    check_bool("openvino_default", openvino_default)
    from . import int8 as _int8
    from .profile import model_size_bytes

    model.eval()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    label = lambda engine, precision: f"{name} ({_ENGINE_LABELS[engine]} {precision})"
    shape = tuple(example.shape[1:])
    compile_examples = [torch.randn(b, *shape) for b in compile_batches]
    fp32_bytes = model_size_bytes(model)
    rows: dict[str, Deployment] = {}
    onnx_fp32 = onnx_int8 = None
    if "ort" in engines or "openvino" in engines:
        stem = "".join(c if c.isalnum() else "_" for c in name)
        onnx_fp32 = export_onnx(model, folder / f"{stem}.onnx", example[:1])
        if calibration is not None:
            onnx_int8 = quantize_onnx_int8(onnx_fp32, folder / f"{stem}_int8.onnx", calibration)
    for engine in engines:
        if engine == "eager":
            rows[label("eager", "fp32")] = Deployment(model, "eager", "fp32", fp32_bytes)
        elif engine == "inductor":
            compiled = _int8.compile_cpu(copy.deepcopy(model), compile_examples, threads)
            rows[label("inductor", "fp32")] = Deployment(compiled, "inductor", "fp32",
                                                         fp32_bytes)
            if calibration is not None:
                q8 = _int8.quantize_int8(model, list(calibration.split(128)))
                rows[label("inductor", "int8")] = Deployment(
                    _int8.compile_cpu(q8, compile_examples, threads), "inductor", "int8",
                    _int8.saved_size_bytes(q8))
        elif engine == "ort":
            session = OnnxModel(onnx_fp32, threads)
            rows[label("ort", "fp32")] = Deployment(session, "ort", "fp32",
                                                    session.size_bytes)
            if onnx_int8 is not None:
                session = OnnxModel(onnx_int8, threads)
                rows[label("ort", "int8")] = Deployment(session, "ort", "int8",
                                                        session.size_bytes)
        else:
            runtime = OpenVinoModel(onnx_fp32, threads, precision="f32")
            rows[label("openvino", "fp32")] = Deployment(runtime, "openvino", "fp32",
                                                         runtime.size_bytes)
            if openvino_default:
                default = OpenVinoModel(onnx_fp32, threads, precision=None)
                if default.precision != "f32":
                    rows[label("openvino", default.precision)] = Deployment(
                        default, "openvino", default.precision, default.size_bytes)
            if onnx_int8 is not None:
                runtime = OpenVinoModel(onnx_int8, threads, precision="f32")
                rows[label("openvino", "int8")] = Deployment(runtime, "openvino", "int8",
                                                             runtime.size_bytes)
    return rows


def engine_outputs(model: nn.Module, images: torch.Tensor, batch_size: int = 256,
                   threads: int | None = None) -> torch.Tensor:
    """The outputs (logits) of a deployed callable on ``images``, computed as the book
    times it (``lc.compare_latency``): inference mode, ``lc.setup``'s deterministic mode
    off, ``threads`` threads (default: the current count), every batch at ``batch_size``
    with the last one padded by zero images whose outputs are dropped. So a compiled graph
    meets the very global state and shape it was compiled and timed with, and the outputs
    are those of the graph that was timed. It matters: a pt2e int8 graph compiled by
    :func:`lightcnn.int8.compile_cpu` for the timing state and then called under
    deterministic mode compiles a second graph, which scored 92.79% where the first scored
    93.38% (the baseline, torch 2.14.1).

    Args:
        images: normalized images ``(N, C, H, W)``, as the model takes them.

    Returns:
        ``(N, ...)`` outputs, one row per image.
    """
    from .profile import _inference

    check_module("model", model)
    _check_example(images, "images")
    check_int("batch_size", batch_size, 1)
    check_int("threads", threads, 1, none=True)
    # padded here, outside inference mode: a tensor made inside it has other dispatch keys
    # than the inputs a graph was compiled with, so Dynamo would compile again for it
    n = len(images)
    padded = torch.cat([images, images.new_zeros(-n % batch_size, *images.shape[1:])])
    outputs = []
    with _inference(model, threads or torch.get_num_threads()):
        for start in range(0, n, batch_size):
            outputs.append(model(padded[start:start + batch_size])[:n - start].clone())
    return torch.cat(outputs)


def engine_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                    batch_size: int = 256, threads: int | None = None) -> float:
    """The fraction of ``images`` a deployed callable classifies as ``labels``, its
    outputs computed as :func:`engine_outputs` computes them (the graph that was timed).

    Args:
        images: normalized images ``(N, C, H, W)``, as the model takes them.
        labels: ``(N,)`` classes.
    """
    check_module("model", model)
    _check_example(images, "images")
    check_tensor("labels", labels, 1, integer=True)
    if len(labels) != len(images):
        raise ValueError(f"labels must hold one class per image ({len(images)}), "
                         f"got {len(labels)}")
    predicted = engine_outputs(model, images, batch_size, threads).argmax(1)
    return int((predicted == labels).sum()) / len(labels)
