"""lightcnn.deploy: ONNX export (dynamo) and ONNX Runtime, checked against PyTorch."""

import pytest
import torch

import lightcnn as lc
from lightcnn import channel_pruning as cp
from lightcnn import deploy

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")


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
