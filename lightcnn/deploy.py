"""Deployment check: export to ONNX, run with ONNX Runtime on the CPU.

A compressed model is only useful if it still runs, and runs as fast, outside the
framework that made it. ONNX is the common exchange format; ONNX Runtime (ORT) is the
CPU engine most deployments use. The flow:

    torch.onnx.export(model, (x,), path, dynamo=True)        # torch.export -> ONNX graph
    session = onnxruntime.InferenceSession(path)              # ORT fuses Conv+BN+ReLU itself
    quantize_static(path, path_int8, QuantFormat.QDQ)         # int8: QuantizeLinear /
                                                              # DequantizeLinear pairs, which
                                                              # ORT runs as integer kernels

The exported graph must compute what the PyTorch model computes: :func:`max_abs_difference`
compares the two on the same images (float32: within about 1e-4 on logits; int8 QDQ:
the same quantization error as PyTorch's int8, so compare predictions, not logits).

Int8 through ORT uses ORT's own static quantizer (per-channel int8 weights, uint8
activations, min-max calibration on the images given), the path ORT documents and
maintains; chapter 05's torchao int8 model is lowered by ``torch.compile`` instead and is
not an exportable graph.

onnx, onnxscript and onnxruntime are imported when a function here is called, so the rest
of lightcnn works without them.

Taught in chapters/09_putting_it_together.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

__all__ = ["export_onnx", "OnnxModel", "quantize_onnx_int8", "max_abs_difference"]


def _require(module: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as error:     # pragma: no cover - depends on the environment
        raise ImportError(f"lightcnn.deploy needs {module!r}: pip install onnx onnxscript "
                          "onnxruntime") from error


def _check_example(example: torch.Tensor) -> None:
    if not isinstance(example, torch.Tensor) or example.dim() != 4 or not example.is_floating_point():
        raise ValueError("example must be a float tensor of shape (B, C, H, W), got "
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


class _Calibration:
    """ORT's CalibrationDataReader protocol: ``get_next()`` returns one feed dict, then None."""

    def __init__(self, input_name: str, images: torch.Tensor, batch_size: int):
        self._batches = iter([{input_name: images[i:i + batch_size].contiguous().numpy()}
                              for i in range(0, len(images), batch_size)])

    def get_next(self):
        return next(self._batches, None)

    def rewind(self) -> None:     # pragma: no cover - not used by MinMax calibration
        raise NotImplementedError


def quantize_onnx_int8(fp32_path: str | Path, path: str | Path, calibration: torch.Tensor,
                       per_channel: bool = True, batch_size: int = 64) -> Path:
    """Static int8 quantization of an exported float32 ONNX file with ONNX Runtime's
    quantizer, in QDQ format; return ``path``.

    Weights: int8, symmetric, one scale per output channel (``per_channel``); activations:
    uint8 with scales from the min and max observed on ``calibration`` (normalized images
    of shape (N, C, H, W)), as in chapter 05's post-training quantization.
    """
    fp32_path, path = Path(fp32_path), Path(path)
    if not fp32_path.is_file():
        raise FileNotFoundError(f"no ONNX file at {fp32_path}")
    if path.suffix != ".onnx" or path == fp32_path:
        raise ValueError(f"path must be a new .onnx file, got {str(path)!r}")
    _check_example(calibration)
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
            activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8,
            calibrate_method=quantization.CalibrationMethod.MinMax)
    return path


def max_abs_difference(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    """``max |a(x) - b(x)|`` over every logit, both models in eval mode without gradients."""
    _check_example(x)
    with torch.no_grad():
        return float((a.eval()(x) - b.eval()(x)).abs().max())

