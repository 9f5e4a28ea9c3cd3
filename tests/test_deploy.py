"""lightcnn.deploy: ONNX export (dynamo), ONNX Runtime and OpenVINO, checked against PyTorch."""

import importlib.util
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lightcnn as lc
from lightcnn import channel_pruning as cp
from lightcnn import deploy

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")
# OpenVINO is optional: its tests skip without it, except the one that simulates its absence
needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                    reason="openvino is not installed")


@pytest.fixture(scope="module")
def baseline():
    torch.manual_seed(0)
    model = lc.create_model("baseline_cnn").eval()
    # give batch norm non-trivial statistics, so folding them is actually tested
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.randn(16, 1, 28, 28)


@pytest.fixture(scope="module")
def exported(baseline, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "baseline.onnx"
    return deploy.export_onnx(baseline, path, torch.randn(2, 1, 28, 28))


def test_onnx_runtime_matches_pytorch_at_every_batch_size(baseline, exported, images):
    runtime = deploy.OnnxModel(exported, threads=2)
    for batch in (1, 5, 16):           # the batch dimension is dynamic
        x = images[:batch]
        with torch.no_grad():
            expected = baseline(x)
        got = runtime(x)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert deploy.max_abs_difference(baseline, runtime, images) < 1e-4
    # the file holds the weights: at least 4 bytes per parameter
    assert runtime.size_bytes >= 4 * lc.count_params(baseline)


@pytest.mark.parametrize("make", ["channels removed", "tucker2", "spatial"])
def test_compressed_models_export_and_match(baseline, images, tmp_path, make):
    if make == "channels removed":
        model = cp.remove_channels(baseline, cp.plan_channel_pruning(baseline, 0.3))
    else:
        model, _ = lc.lowrank.decompose_model(baseline, make, macs_ratio=1.5)
    model.eval()
    runtime = deploy.OnnxModel(deploy.export_onnx(model, tmp_path / "m.onnx", images[:2]))
    assert deploy.max_abs_difference(model, runtime, images) < 1e-4


def test_int8_qdq_file_is_smaller_and_agrees_with_float(baseline, exported, images, tmp_path):
    path = deploy.quantize_onnx_int8(exported, tmp_path / "int8.onnx", images)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops        # QDQ format
    int8 = deploy.OnnxModel(path)
    fp32 = deploy.OnnxModel(exported)
    assert int8.size_bytes < fp32.size_bytes / 3                 # int8 weights: ~4x fewer bytes
    with torch.no_grad():
        reference = baseline(images)
    error = (int8(images) - reference).abs().max()
    # int8 rounding, not a different function: the error is a small share of the logits' range
    assert error < 0.1 * (reference.max() - reference.min())
    assert (int8(images).argmax(1) == reference.argmax(1)).float().mean() >= 0.8


def test_onnx_models_time_side_by_side_with_pytorch(baseline, exported):
    latency = lc.compare_latency({"torch": baseline, "ort": deploy.OnnxModel(exported)},
                                 batch_size=4, warmup=1, repeats=3)
    assert set(latency) == {"torch", "ort"} and all(v.median_ms > 0 for v in latency.values())


def test_bad_inputs_are_rejected(baseline, exported, tmp_path):
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        deploy.export_onnx("model", tmp_path / "m.onnx", torch.randn(1, 1, 28, 28))
    with pytest.raises(ValueError, match="path must end in .onnx"):
        deploy.export_onnx(baseline, tmp_path / "m.pt", torch.randn(1, 1, 28, 28))
    with pytest.raises(ValueError, match="example must be a float tensor"):
        deploy.export_onnx(baseline, tmp_path / "m.onnx", torch.randn(28, 28))
    with pytest.raises(FileNotFoundError, match="no ONNX file"):
        deploy.OnnxModel(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="threads must be"):
        deploy.OnnxModel(exported, threads=0)
    with pytest.raises(ValueError, match="path must be a new .onnx file"):
        deploy.quantize_onnx_int8(exported, exported, torch.randn(4, 1, 28, 28))
    with pytest.raises(ValueError, match="batch_size"):
        deploy.quantize_onnx_int8(exported, tmp_path / "q.onnx", torch.randn(4, 1, 28, 28), batch_size=0)
    with pytest.raises(ValueError, match="example must be a float tensor"):
        deploy.OnnxModel(exported)(torch.zeros(1, 1, 28, 28, dtype=torch.long))


@needs_openvino
def test_openvino_matches_pytorch_at_the_books_batch_sizes(baseline, exported, images):
    runtime = deploy.OpenVinoModel(exported, threads=2, precision="f32")
    assert runtime.precision == "f32" and "FP32" in runtime.capabilities
    torch.manual_seed(2)
    inputs = (images[:1], images, torch.randn(256, 1, 28, 28))   # one dynamic batch dim
    # all calls first: each output must survive the next call (OpenVINO reuses its buffers)
    outputs = [runtime(x) for x in inputs]
    for x, got in zip(inputs, outputs):
        with torch.no_grad():
            expected = baseline(x)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert runtime.size_bytes == exported.stat().st_size


@needs_openvino
def test_openvino_reports_the_precision_that_ran(baseline, exported, images):
    default = deploy.OpenVinoModel(exported, precision=None)
    # the plugin's default: bfloat16 where the CPU has it, float32 elsewhere
    assert default.precision in ("f32", "bf16")
    convolutions = [row for row in deploy.list_executed_layers(default) if row["type"] == "Convolution"]
    assert convolutions and {row["precision"] for row in convolutions} == {default.precision}
    with torch.no_grad():
        expected = baseline(images)
    # bfloat16 keeps 8 bits of mantissa: within a few percent of the logits' range
    assert (default(images) - expected).abs().max() < 0.05 * (expected.max() - expected.min())


@needs_openvino
def test_executed_layers_show_float_and_int8_convolutions(exported, images, tmp_path):
    layers = deploy.list_executed_layers(deploy.OpenVinoModel(exported))
    assert {"name", "type", "precision", "primitive", "fused"} == set(layers[0])
    convolutions = [row for row in layers if row["type"] == "Convolution"]
    assert len(convolutions) == 5 and all(row["precision"] == "f32" for row in convolutions)
    assert not {row["type"] for row in layers} & {"Const", "Input", "Output"}

    int8 = deploy.OpenVinoModel(deploy.quantize_onnx_int8(exported, tmp_path / "int8.onnx", images))
    convolutions = [row for row in deploy.list_executed_layers(int8) if row["type"] == "Convolution"]
    # the QDQ pairs became int8 kernels on uint8 activations, not float convolutions
    assert len(convolutions) == 5 and all(row["precision"] in ("u8", "i8") for row in convolutions)


# x86 int8 kernels agree with exact integer arithmetic only where the CPU has an 8-bit dot
# product (VNNI): with AVX2 alone, oneDNN and ONNX Runtime add pairs of u8 x s8 products in
# int16 and saturate (lightcnn.runtime.INT8_DOT_FLAGS; oneDNN, "Nuances of int8 computations")
needs_int8_dot = pytest.mark.skipif(
    lc.runtime.int8_dot_product() is None,
    reason="no 8-bit dot-product instructions (AVX2 alone): int8 kernels saturate int16 pair sums")


@needs_int8_dot
@needs_openvino
@pytest.mark.parametrize("precision", ["f32", None])
def test_openvino_int8_agrees_with_onnx_runtime_int8(shipped_zoo, data_dir, tmp_path, precision):
    # a trained model: a random one predicts one class for every image, so agreeing
    # with it would say nothing
    model = lc.zoo.load("baseline_cnn").model
    train, test = lc.get_dataloaders(256, lc.get_budget("ci"), augment=False)
    calibration, _ = next(iter(train))
    x, _ = next(iter(test))                        # the ci budget's 1,000 test images
    path = deploy.export_onnx(model, tmp_path / "fp32.onnx", x[:2])
    path = deploy.quantize_onnx_int8(path, tmp_path / "int8.onnx", calibration)
    ort = deploy.OnnxModel(path)(x).argmax(1)
    assert len(ort.unique()) == 10
    assert (deploy.OpenVinoModel(path, precision=precision)(x).argmax(1) == ort).float().mean() >= 0.99


def test_engine_outputs_are_the_models_outputs_batch_by_batch_padding_dropped():
    torch.manual_seed(0)
    model = lc.create_model("lenet5").eval()
    x = torch.randn(300, 1, 28, 28)            # 256 + 44: the last batch padded to 256
    with torch.no_grad():
        expected = model(x)
    out = deploy.engine_outputs(model, x, batch_size=256, threads=1)
    assert out.shape == (300, 10) and torch.allclose(out, expected, atol=1e-5)
    labels = expected.argmax(1)
    assert deploy.engine_accuracy(model, x, labels, threads=1) == 1.0
    with pytest.raises(ValueError, match="batch_size"):
        deploy.engine_outputs(model, x, batch_size=0)


def test_engine_accuracy_scores_the_compiled_int8_graph_that_was_timed(shipped_zoo, data_dir):
    # compile_cpu(examples) compiles for the timing state; called under lc.setup's
    # deterministic mode the int8 graph compiled again, and that second graph scored
    # 0.6 points lower (torch 2.14.1): engine_accuracy runs in the timing state
    from lightcnn import int8
    model = lc.zoo.load("baseline_cnn").model
    train, test = lc.get_dataloaders(256, lc.get_budget("ci"), augment=False)
    calibration, _ = next(iter(train))
    x, y = (torch.cat(t) for t in zip(*test))       # the ci budget's 1,000 test images
    q8 = int8.quantize_int8(model, [calibration])
    reference = deploy.engine_accuracy(q8, x, y)     # the converted graph, not compiled
    torch.use_deterministic_algorithms(True)         # as lc.setup leaves it
    compiled = int8.compile_cpu(q8, [x[:256]], threads=torch.get_num_threads())
    assert abs(deploy.engine_accuracy(compiled, x, y) - reference) <= 0.002
    assert torch.are_deterministic_algorithms_enabled()   # the caller's state restored


@needs_openvino
def test_openvino_times_side_by_side_with_pytorch_and_onnx_runtime(baseline, exported):
    models = {"torch": baseline, "ort": deploy.OnnxModel(exported),
              "openvino": deploy.OpenVinoModel(exported)}
    latency = lc.compare_latency(models, batch_size=4, warmup=1, repeats=3)
    assert set(latency) == set(models) and all(v.median_ms > 0 for v in latency.values())


@needs_openvino
def test_openvino_bad_inputs_are_rejected(baseline, exported, tmp_path):
    with pytest.raises(TypeError, match="path must be a str or Path"):
        deploy.OpenVinoModel(3)
    with pytest.raises(ValueError, match="path must be an .onnx file"):
        deploy.OpenVinoModel(tmp_path / "model.xml")
    with pytest.raises(FileNotFoundError, match="no ONNX file"):
        deploy.OpenVinoModel(tmp_path / "missing.onnx")
    with pytest.raises(TypeError, match="threads must be an int"):
        deploy.OpenVinoModel(exported, threads=2.0)
    with pytest.raises(ValueError, match="threads must be an int >= 1, got 0"):
        deploy.OpenVinoModel(exported, threads=0)
    for precision in ("bf16", "fp32", torch.float32):
        with pytest.raises(ValueError, match="precision must be 'f32' or None"):
            deploy.OpenVinoModel(exported, precision=precision)
    with pytest.raises(TypeError, match="model must be an OpenVinoModel, got OnnxModel"):
        deploy.list_executed_layers(deploy.OnnxModel(exported))
    runtime = deploy.OpenVinoModel(exported)
    with pytest.raises(ValueError, match="example must be a float tensor"):
        runtime(torch.zeros(1, 1, 28, 28, dtype=torch.long))
    fixed = deploy.export_onnx(baseline, tmp_path / "fixed.onnx", torch.randn(2, 1, 28, 28),
                               dynamic_batch=False)
    with pytest.raises(ValueError, match="exported for batch size 2, got 3"):
        deploy.OpenVinoModel(fixed)(torch.randn(3, 1, 28, 28))


# A script that makes two OpenVinoModels, frees them in the order it made them, then
# handles a signal in Python: with a Core per model, OpenVINO's CPU plugin (one instance per
# Core, each putting back the alternate signal stack it found, unmapped or not) left the
# main thread's signal stack unmapped, and the signal killed the process (SIGSEGV, no
# traceback). That killed the API sweep at its next SIGALRM timeout; Ctrl-C would too.
_SIGNAL_AFTER_TWO_MODELS = """
import gc, os, signal, sys
from lightcnn import deploy
first = deploy.OpenVinoModel(sys.argv[1])
second = deploy.OpenVinoModel(sys.argv[1])
del first
gc.collect()
del second
gc.collect()
signal.signal(signal.SIGUSR1, lambda *_: print("handled", flush=True))
os.kill(os.getpid(), signal.SIGUSR1)
print("alive", flush=True)
"""


@needs_openvino
@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="the plugin sets up its signal stack on Linux only")
def test_openvino_models_leave_python_signal_handlers_working(exported):
    # in a subprocess: the failure kills the process
    result = subprocess.run([sys.executable, "-c", _SIGNAL_AFTER_TWO_MODELS, str(exported)],
                            capture_output=True, text=True, timeout=600,
                            cwd=Path(__file__).resolve().parents[1])
    assert (result.returncode, result.stdout.split()) == (0, ["handled", "alive"]), \
        result.stderr[-2000:]


def test_openvino_missing_says_how_to_install_it(exported, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)      # `import openvino` now fails
    with pytest.raises(ImportError, match=r"OpenVinoModel needs 'openvino': pip install openvino"):
        deploy.OpenVinoModel(exported)


@needs_openvino
def test_deployments_run_one_model_in_every_engine(baseline, images, tmp_path):
    rows = deploy.deployments(baseline, "cnn", tmp_path, images, calibration=images,
                              engines=("openvino", "eager", "ort"), compile_batches=())
    # ENGINES' order whatever the order asked, float before int8
    names = list(rows)
    assert names[:3] == ["cnn (eager fp32)", "cnn (ORT fp32)", "cnn (ORT int8)"]
    assert names[3] == "cnn (OpenVINO fp32)" and names[-1] == "cnn (OpenVINO int8)"
    default = names[4:-1]        # bf16 where the CPU has it, else nothing (it would be f32)
    assert default in ([], ["cnn (OpenVINO bf16)"])
    with torch.no_grad():
        expected = baseline(images)
    for name, row in rows.items():
        assert row.engine in deploy.ENGINES and name.endswith(f" {row.precision})")
        got = row.model(images)
        if row.precision == "fp32":
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
        else:
            # int8 and bf16: the same network, at most a few percent of the logits' range off
            assert (got - expected).abs().max() < 0.1 * expected.abs().max()
    assert rows["cnn (eager fp32)"].model is baseline
    assert rows["cnn (eager fp32)"].size_bytes == lc.model_size_bytes(baseline)
    assert rows["cnn (ORT int8)"].size_bytes < rows["cnn (ORT fp32)"].size_bytes / 3
    # ORT and OpenVINO run the same QDQ file: the same quantized network
    assert rows["cnn (ORT int8)"].model.path == rows["cnn (OpenVINO int8)"].model.path
    assert (rows["cnn (ORT int8)"].model(images).argmax(1)
            == rows["cnn (OpenVINO int8)"].model(images).argmax(1)).float().mean() >= 0.9


def test_deployments_compile_with_inductor_in_fp32_and_int8(baseline, images, tmp_path):
    rows = deploy.deployments(baseline, "cnn", tmp_path, images, calibration=images,
                              engines=("inductor",), compile_batches=(4,))
    assert list(rows) == ["cnn (Inductor fp32)", "cnn (Inductor int8)"]
    fp32, q8 = rows.values()
    x = images[:4]
    with torch.no_grad():
        expected = baseline(x)
        torch.testing.assert_close(fp32.model(x), expected, atol=1e-4, rtol=1e-4)
        assert q8.model(x).shape == expected.shape     # int8 error: test_int8's subject
    assert fp32.model is not baseline and fp32.size_bytes == lc.model_size_bytes(baseline)
    assert q8.size_bytes < fp32.size_bytes / 3
    # without calibration: float32 only
    assert list(deploy.deployments(baseline, "cnn", tmp_path, images, engines=("eager",))) \
        == ["cnn (eager fp32)"]


def test_engine_accuracy_runs_the_compiled_graph_without_compiling_again(baseline, images,
                                                                         tmp_path):
    rows = deploy.deployments(baseline, "cnn", tmp_path, images, engines=("inductor",),
                              compile_batches=(4,))
    labels = torch.arange(10) % 10
    with torch.no_grad():
        expected = int((baseline(images[:10]).argmax(1) == labels).sum()) / 10
    # batches of 4, 4 and 2 padded to 4, in the state and thread count it was compiled
    # for (deployments' threads=2): the very graph timed; a recompile would raise
    with torch._dynamo.config.patch(error_on_recompile=True):
        got = deploy.engine_accuracy(rows["cnn (Inductor fp32)"].model, images[:10], labels,
                                     batch_size=4, threads=2)
    assert got == expected


def test_engine_accuracy_counts_every_image_once(baseline, images):
    labels = baseline(images).argmax(1)
    labels[:3] = (labels[:3] + 1) % 10           # three wrong on purpose
    for batch_size in (1, 5, 16, 64):
        assert deploy.engine_accuracy(baseline, images, labels, batch_size) == 13 / 16
    with pytest.raises(ValueError, match="labels"):
        deploy.engine_accuracy(baseline, images, labels[:-1])
    with pytest.raises(ValueError, match="batch_size"):
        deploy.engine_accuracy(baseline, images, labels, 0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(engines="ort"), "engines"), (dict(engines=("tensorrt",)), "engines"),
    (dict(engines=("ort", "ort")), "engines"), (dict(engines=()), "engines"),
    (dict(name=""), "name"), (dict(threads=0), "threads"),
    (dict(compile_batches=(0,)), "compile_batches"), (dict(openvino_default=1), "openvino_default"),
    (dict(calibration=[1, 2]), "calibration"),
])
def test_deployments_bad_arguments_name_themselves(baseline, images, tmp_path, kwargs, match):
    args = dict(model=baseline, name="cnn", folder=tmp_path, example=images)
    with pytest.raises((TypeError, ValueError), match=match):
        deploy.deployments(**{**args, **kwargs})


def _int8_weight_range(path) -> tuple[int, int]:
    from onnx import numpy_helper
    weights = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer
               if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    return min(int(w.min()) for w in weights), max(int(w.max()) for w in weights)


def test_reduce_range_keeps_int8_weights_in_7_bits_and_follows_the_cpu(exported, images, tmp_path,
                                                                      monkeypatch):
    # ORT's guidance: x86 without VNNI adds u8 x s8 pairs in int16 (VPMADDUBSW), which
    # saturates; 7-bit weights (reduce_range) keep every pair sum in range
    low, high = _int8_weight_range(deploy.quantize_onnx_int8(exported, tmp_path / "full.onnx", images,
                                                             reduce_range=False))
    assert high == 127 or low <= -127                          # symmetric per channel: the max is used
    low, high = _int8_weight_range(deploy.quantize_onnx_int8(exported, tmp_path / "seven.onnx", images,
                                                             reduce_range=True))
    assert -64 <= low and high <= 64 and max(-low, high) >= 63
    assert deploy.reduce_range_for_cpu() == (lc.runtime.int8_dot_product() is None
                                             and platform.machine().lower() in ("x86_64", "amd64"))
    monkeypatch.setattr(lc.runtime, "int8_dot_product", lambda *a, **k: "avx512_vnni")
    assert deploy.reduce_range_for_cpu() is False
    with pytest.raises(TypeError, match="reduce_range"):
        deploy.quantize_onnx_int8(exported, tmp_path / "q.onnx", images, reduce_range="yes")
