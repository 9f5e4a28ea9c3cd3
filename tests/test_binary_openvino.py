"""lightcnn.binary_openvino: OpenVINO's BinaryConvolution against the book's packed binary
conv (exact equality), the exported whole network (BinaryConvolution for every binary
layer), the benchmarks' rows (one layer; a whole network in every engine, one interleaved run),
and the errors: no openvino, channels OpenVINO computes wrong, bad benchmark arguments."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import lightcnn as lc
from lightcnn import binary as B
from lightcnn import binary_kernels as K
from lightcnn import binary_openvino as BO
from helpers import randomize_bn


def test_a_clear_error_without_openvino(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)   # import openvino now fails
    with pytest.raises(ImportError, match="pip install openvino"):
        BO.require_openvino()
    with pytest.raises(ImportError, match="pip install openvino"):
        BO.run_binary_conv(B.BinaryConv2d(8, 8, 3), torch.randn(1, 8, 4, 4))


openvino = pytest.importorskip("openvino")


@pytest.mark.parametrize("c, o, size, k, s, p, bias", [
    (64, 33, 9, 3, 1, 1, True), (72, 64, 14, 3, 2, 2, False), (16, 20, 5, 2, 1, 0, True),
    (8, 16, 6, 1, 1, 0, False), (256, 32, 7, 3, 1, 1, False)])
def test_binary_convolution_equals_the_packed_layer(c, o, size, k, s, p, bias):
    torch.manual_seed(c)
    layer = B.BinaryConv2d(c, o, k, stride=s, padding=p, bias=bias, scheme="bnn").eval()
    x = torch.randn(2, c, size, size)
    x[0, 0, 0, :3] = torch.tensor([0.0, -0.0, -1e-30])   # the sign at 0 and just below it
    with torch.no_grad():
        ours = K.PackedBinaryConv2d(layer)(x)
    assert torch.equal(BO.run_binary_conv(layer, x), ours)                  # +1 padding
    assert torch.equal(BO.run_binary_conv(K.PackedBinaryConv2d(layer), x), ours)


def test_binary_convolution_ran_and_xnor_scales_agree():
    torch.manual_seed(0)
    layer = B.BinaryConv2d(32, 16, 3, padding=1, bias=True, scheme="xnor").eval()
    x = torch.randn(1, 32, 8, 8)
    compiled = BO.compile_model(BO.binary_conv_model(layer, (1, 32, 8, 8)))
    assert BO.runtime_layer_types(compiled)["binary_conv"] == "BinaryConvolution"
    with torch.no_grad():
        ours = K.PackedBinaryConv2d(layer)(x)
    # the integer part is exact; XNOR-Net's float K is rounded in another order
    assert torch.allclose(BO.run_binary_conv(layer, x), ours, rtol=1e-5, atol=1e-5)
    nhwc = BO.compile_model(BO.binary_conv_model(layer, (1, 32, 8, 8), nhwc_output=True))
    assert torch.allclose(torch.from_numpy(np.array(nhwc(x.numpy())[0])).permute(0, 3, 1, 2),
                          ours, rtol=1e-5, atol=1e-5)


# compile_model shares deploy's one openvino.Core: a Core per model left the main thread's
# alternate signal stack unmapped once two were freed in order, and the next Python signal
# killed the process (see lightcnn.deploy._openvino_core); in a subprocess, as that kills it
_SIGNAL_AFTER_TWO_COMPILES = """
import gc, os, signal
from lightcnn import binary as B, binary_openvino as BO
layer = B.BinaryConv2d(8, 8, 3, scheme="bnn").eval()
first = BO.compile_model(BO.binary_conv_model(layer, (1, 8, 6, 6)))
second = BO.compile_model(BO.binary_conv_model(layer, (1, 8, 6, 6)))
del first
gc.collect()
del second
gc.collect()
signal.signal(signal.SIGUSR1, lambda *_: print("handled", flush=True))
os.kill(os.getpid(), signal.SIGUSR1)
print("alive", flush=True)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="the plugin sets up its signal stack on Linux only")
def test_compiled_models_leave_python_signal_handlers_working():
    result = subprocess.run([sys.executable, "-c", _SIGNAL_AFTER_TWO_COMPILES],
                            capture_output=True, text=True, timeout=600,
                            cwd=Path(__file__).resolve().parents[1])
    assert (result.returncode, result.stdout.split()) == (0, ["handled", "alive"]), \
        result.stderr[-2000:]


def test_binary_conv_model_refuses_what_openvino_gets_wrong():
    with pytest.raises(ValueError, match="20 input channels.*multiple of 8"):
        BO.binary_conv_model(B.BinaryConv2d(20, 8, 3), (1, 20, 5, 5))
    with pytest.raises(ValueError, match="real-valued activations"):
        BO.binary_conv_model(B.BinaryConv2d(8, 8, 3, scheme="bwn"), (1, 8, 5, 5))
    with pytest.raises(ValueError, match="input_shape must be \\(B, 8, H, W\\)"):
        BO.binary_conv_model(B.BinaryConv2d(8, 8, 3), (1, 3, 5, 5))
    with pytest.raises(ValueError, match="threads"):
        BO.compile_model(BO.binary_conv_model(B.BinaryConv2d(8, 8, 3), (1, 8, 5, 5)), 0)


class _MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.BatchNorm1d(64),
                                 nn.ReLU(), nn.Linear(64, 48), nn.BatchNorm1d(48), nn.ReLU(),
                                 nn.Linear(48, 40), nn.BatchNorm1d(40), nn.ReLU(),
                                 nn.Linear(40, 10))

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("scheme", ["bnn", "xnor"])
@pytest.mark.parametrize("make, shape", [(lambda: lc.create_model("baseline_cnn"), (4, 1, 28, 28)),
                                         (_MLP, (4, 1, 8, 8))])
def test_exported_network_runs_binary_convolution_for_every_binary_layer(scheme, make, shape):
    torch.manual_seed(0)
    sim = randomize_bn(B.binarize(make(), scheme))
    compiled, types = BO.compile_bnn(sim, shape)
    binary = [n for n, m in B.binary_layers(sim).items() if m.scheme.binary_activations]
    assert sorted(types) == sorted(binary) and set(types.values()) == {"BinaryConvolution"}
    x = torch.randn(*shape)
    with torch.no_grad():
        expected = sim(x)
    got = torch.from_numpy(np.array(compiled(x.numpy())[0]))
    # the float layers round in another order, so a sign at a tie could differ: none does here
    assert torch.allclose(got, expected, atol=1e-4)
    assert torch.equal(got.argmax(1), expected.argmax(1))


def test_openvino_bnn_is_callable_at_its_batch_sizes_only():
    torch.manual_seed(0)
    sim = randomize_bn(B.binarize(lc.create_model("baseline_cnn"), "bnn")).eval()
    net = BO.openvino_bnn(sim, batch_sizes=(1, 3), threads=1)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        for batch in (1, 3):
            expected = sim(x[:batch])
            got = net(x[:batch])
            assert torch.allclose(got, expected, atol=1e-4)
            assert torch.equal(got.argmax(1), expected.argmax(1))
    with pytest.raises(ValueError, match="batch sizes"):
        net(x[:2])
    with pytest.raises(ValueError, match="batch_sizes"):
        BO.openvino_bnn(sim, batch_sizes=(0,))
    with pytest.raises(ValueError, match="input_shape"):
        BO.openvino_bnn(sim, input_shape=(28, 28))


def test_export_saves_ir_and_refuses_unknown_layers(tmp_path):
    sim = randomize_bn(B.binarize(lc.create_model("baseline_cnn"), "bnn"))
    BO.export_bnn(sim, (1, 1, 28, 28), path=str(tmp_path / "bnn.xml"))
    assert (tmp_path / "bnn.xml").exists() and (tmp_path / "bnn.bin").exists()
    odd = B.binarize(nn.Sequential(nn.Conv2d(1, 8, 3), nn.Conv2d(8, 8, 3), nn.GELU(),
                                   nn.Flatten(), nn.Linear(8 * 24 * 24, 2)), "bnn")
    with pytest.raises(ValueError, match="'2' \\(GELU\\) has no OpenVINO export"):
        BO.export_bnn(odd, (1, 1, 28, 28))
    with pytest.raises(ValueError, match="no binary layers"):
        BO.export_bnn(nn.Sequential(nn.Conv2d(1, 8, 3)), (1, 1, 28, 28))


def test_benchmark_rows_on_a_tiny_case():
    rows = BO.benchmark_binary_conv(channels=(8, 16), sizes=(3,), threads=(1,), warmup=1,
                                    repeats=2)
    assert [(r["channels"], r["size"], r["threads"]) for r in rows] == [(8, 3, 1), (16, 3, 1)]
    for r in rows:
        assert r["binary_macs"] == 9 * r["channels"] ** 2 * 9
        assert r["speedup"] == pytest.approx(r["openvino_ms"] / r["book_ms"])
        assert r["book_ms"] > 0 and r["openvino_ms"] > 0
        ratio = r["speedup_ratio"]          # the same ratio, paired round by round
        assert ratio.value == pytest.approx(r["speedup"]) and ratio.paired
        assert r["book_outcome"] == r["openvino_outcome"] == "once"
    # retaken until stable: samples of at least 1 ms, each latency says how it ended
    rows = BO.benchmark_binary_conv(channels=(8,), sizes=(3,), threads=(1,), warmup=2,
                                    repeats=3, number=None, until_stable=True, max_number=4)
    assert rows[0]["book_outcome"] in ("stable", "cap")
    assert rows[0]["openvino_outcome"] in ("stable", "cap")
    # Each latency stabilized on its own does not make their ratio stable: rounds that land
    # on a busy moment move one side only (CI under make -j3 saw 0.60-0.78x). Whether this
    # ratio is a result is timing; that it says so by the rule is not.
    ratio = rows[0]["speedup_ratio"]
    assert ratio.stable == (ratio.relative_iqr <= lc.profile.STABLE_RELATIVE_IQR)
    assert str(ratio).endswith("?") == (not ratio.stable)
    with pytest.raises(ValueError, match="max_number"):
        BO.benchmark_binary_conv(channels=(8,), sizes=(3,), threads=(1,), max_number=0)
    with pytest.raises(ValueError, match="multiples of 8"):
        BO.benchmark_binary_conv(channels=(12,), sizes=(3,), threads=(1,))
    with pytest.raises(ValueError, match="sizes"):
        BO.benchmark_binary_conv(channels=(8,), sizes=(), threads=(1,))


class _Compiled(nn.Module):
    """Stands in for Inductor (compiling takes minutes on a busy 2-core machine; test_int8
    tests compile_cpu): records the batch sizes and thread counts of its calls."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, x):
        self.calls.append((len(x), torch.get_num_threads(), torch.is_inference_mode_enabled()))
        return self.model(x)


def test_benchmark_bnn_times_every_engine_and_checks_openvino_against_the_simulation(monkeypatch):
    compiled = []

    def compile_cpu(model):
        compiled.append(_Compiled(model))
        return compiled[-1]
    monkeypatch.setattr(lc.int8, "compile_cpu", compile_cpu)
    torch.manual_seed(0)
    fp32 = lc.create_model("baseline_cnn")           # in training mode
    bnn = randomize_bn(lc.binary.binary_cnn(scheme="bnn"))
    example = torch.randn(4, 1, 28, 28)
    result = BO.benchmark_bnn(fp32, bnn, example, batch_sizes=(1, 4), threads=1, warmup=1,
                              repeats=2)
    # compiled for each batch size at the benchmark's thread count, before the timing
    assert compiled[0].calls[:2] == [(1, 1, True), (4, 1, True)]
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == ["fp32 eager", "fp32 compiled", "fp32 OpenVINO", "BNN simulated",
                          "BNN packed", "BNN OpenVINO"]
    assert [r["engine"] for r in rows.values()] == ["eager", "inductor", "openvino", "eager",
                                                   "eager", "openvino"]
    for b in (1, 4):
        for r in rows.values():
            assert r[f"latency_b{b}"].batch_size == b and r[f"latency_b{b}"].repeats == 2
            assert isinstance(r[f"vs_compiled_fp32_b{b}"], lc.profile.Ratio)
        # one interleaved run per batch size: every ratio pairs the samples round by round
        assert len({r[f"latency_b{b}"].run for r in rows.values()}) == 1
        ratios = {k: v[b] for k, v in result["ratios"].items()}
        assert all(r.paired for r in ratios.values())
        packed, ov = rows["BNN packed"], rows["BNN OpenVINO"]
        assert ratios["packed vs eager fp32"].value == pytest.approx(
            rows["fp32 eager"][f"latency_b{b}"].median_ms / packed[f"latency_b{b}"].median_ms)
        assert ratios["packed vs compiled fp32"].value == packed[f"vs_compiled_fp32_b{b}"].value
        # each binary engine against float32 in the same engine
        assert ov[f"vs_engine_fp32_b{b}"].value == ratios["OpenVINO BNN vs OpenVINO fp32"].value
        assert packed[f"vs_engine_fp32_b{b}"].value == packed[f"vs_eager_fp32_b{b}"].value
    assert sorted(result["ratios"]) == sorted(["packed vs eager fp32", "packed vs compiled fp32",
                                               "OpenVINO BNN vs OpenVINO fp32",
                                               "packed vs OpenVINO BNN"])
    # BinaryConvolution ran for every binary layer, and the predictions were compared
    binary = [n for n, m in B.binary_layers(bnn).items() if m.scheme.binary_activations]
    assert sorted(result["runtime_layers"]) == sorted(binary)
    assert set(result["runtime_layers"].values()) == {"BinaryConvolution"}
    agreement = result["agreement"]
    assert agreement["images"] == 4
    assert agreement["BNN packed"]["agreement"] == 1.0          # bit-exact kernel
    assert agreement["BNN OpenVINO"]["agreement"] == 1.0
    assert agreement["fp32 OpenVINO"]["agreement"] == 1.0
    assert agreement["fp32 OpenVINO"]["max_abs_logit_difference"] < 1e-3
    table = str(lc.report.engine_table(result["rows"]))
    assert "BNN OpenVINO" in table and "ms b=4" in table
    assert fp32.training and not bnn.training     # it ran copies: the callers' modes stay


def test_benchmark_bnn_refuses_bad_arguments_before_compiling_anything():
    fp32, bnn = lc.create_model("baseline_cnn"), lc.binary.binary_cnn(scheme="bnn")
    x = torch.randn(2, 1, 28, 28)
    with pytest.raises(ValueError, match="example must hold at least max\\(batch_sizes\\) = 4"):
        BO.benchmark_bnn(fp32, bnn, x, batch_sizes=(1, 4))
    with pytest.raises(ValueError, match="bnn has no binary layer with binary activations"):
        BO.benchmark_bnn(fp32, lc.binary.binary_cnn(scheme="bwn"), x, batch_sizes=(1,))
    with pytest.raises(TypeError, match="fp32 must be an nn.Module"):
        BO.benchmark_bnn(None, bnn, x, batch_sizes=(1,))
    with pytest.raises(ValueError, match="example must be a 4-D tensor"):
        BO.benchmark_bnn(fp32, bnn, x[0], batch_sizes=(1,))
    with pytest.raises(ValueError, match="batch_sizes"):
        BO.benchmark_bnn(fp32, bnn, x, batch_sizes=(0,))
    with pytest.raises(ValueError, match="threads"):
        BO.benchmark_bnn(fp32, bnn, x, batch_sizes=(1,), threads=0)
