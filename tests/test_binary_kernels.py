"""lightcnn.binary_kernels: packing round trips, XNOR GEMM against float products, the
packed model against its float simulation, and bad input."""

import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

import lightcnn as lc
from lightcnn import binary as B
from lightcnn import binary_kernels as K
from helpers import randomize_bn

BACKENDS = K.available_backends()


def _random_signs(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.where(torch.rand(*shape, generator=g) < 0.5, -1.0, 1.0)


def test_numba_is_installed_here():
    # the requirements install numba: the fast kernel must be what the book measures
    assert "numba" in BACKENDS


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 5), n=st.integers(1, 200), seed=st.integers(0, 10_000))
def test_pack_unpack_round_trip_and_bit_layout(rows, n, seed):
    x = _random_signs(rows, n, seed=seed)
    words = K.pack_signs(x)
    assert words.shape == (rows, -(-n // 64)) and words.dtype == torch.int64
    assert torch.equal(K.unpack_signs(words, n), x)
    # element j at bit j % 64 of word j // 64, little-endian bytes: numpy's packbits agrees
    bits = np.zeros((rows, words.shape[1] * 64), dtype=np.uint8)
    bits[:, :n] = (x > 0).numpy()
    expected = np.packbits(bits, axis=1, bitorder="little").view(np.int64)
    assert np.array_equal(words.numpy(), expected)


def test_popcount_matches_python():
    words = torch.randint(-2**63, 2**63 - 1, (500,), dtype=torch.int64)
    words[:3] = torch.tensor([0, -1, -2**63])
    expected = [bin(w & (2**64 - 1)).count("1") for w in words.tolist()]
    assert K.popcount(words).tolist() == expected


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 13), n=st.integers(1, 40), k=st.integers(1, 300),
       seed=st.integers(0, 10_000))
def test_xnor_gemm_equals_the_float_product(backend, m, n, k, seed):
    a, b = _random_signs(m, k, seed=seed), _random_signs(n, k, seed=seed + 1)
    out = K.xnor_gemm(K.pack_signs(a), K.pack_signs(b), k, backend)
    assert out.dtype == torch.int32
    assert torch.equal(out, (a @ b.T).to(torch.int32))  # padding bits never count


@pytest.mark.parametrize("backend", BACKENDS)
def test_xnor_gemm_at_benchmark_shape_and_transposed_layout(backend):
    a, b = _random_signs(64, 576, seed=3), _random_signs(64, 576, seed=4)
    pb = K.pack_signs(b)
    ref = (a @ b.T).to(torch.int32)
    assert torch.equal(K.xnor_gemm(K.pack_signs(a), pb, 576, backend), ref)
    assert torch.equal(K.xnor_gemm(K.pack_signs(a), pb.t().contiguous(), 576, backend,
                                   b_transposed=True), ref)


def test_packing_rejects_non_binary_values_and_wrong_dtypes():
    with pytest.raises(ValueError, match="only \\+1 and -1.*0"):
        K.pack_signs(torch.tensor([1.0, 0.0, -1.0]))
    with pytest.raises(ValueError, match="only \\+1 and -1"):
        K.pack_signs(torch.tensor([1.0, 0.5]))
    for bad in (torch.tensor([True, False]), torch.tensor([1, 1], dtype=torch.uint8)):
        with pytest.raises(TypeError, match="float or signed-integer"):
            K.pack_signs(bad)
    with pytest.raises(TypeError, match="must be a tensor"):
        K.pack_signs([1, -1])
    assert torch.equal(K.pack_signs(torch.tensor([1, -1, 1], dtype=torch.int8)),
                       torch.tensor([5]))
    with pytest.raises(ValueError, match="n must be in"):
        K.unpack_signs(torch.zeros(2, dtype=torch.int64), 200)


def test_kernel_checks_shapes_dtypes_and_contiguity():
    a = K.pack_signs(_random_signs(4, 100))
    b = K.pack_signs(_random_signs(6, 100))
    with pytest.raises(ValueError, match="contiguous"):
        K.xnor_gemm(torch.zeros(2, 8, dtype=torch.int64)[:, ::4], b, 100)
    with pytest.raises(ValueError, match="same number of words"):
        K.xnor_gemm(a, K.pack_signs(_random_signs(6, 200)), 100)
    with pytest.raises(ValueError, match="n_bits must be an int in \\[1, 128\\]"):
        K.xnor_gemm(a, b, 129)
    with pytest.raises(ValueError, match="2-D int64"):
        K.xnor_gemm(a.float(), b, 100)
    with pytest.raises(ValueError, match="backend must be"):
        K.xnor_gemm(a, b, 100, backend="cuda")


class _Small(nn.Module):
    """Odd shapes on purpose: 70 channels (two words, one partial), stride 2, padding 0 and 2."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 70, 3, padding=1), nn.BatchNorm2d(70), nn.ReLU(),
            nn.Conv2d(70, 20, 3, stride=2, padding=2), nn.BatchNorm2d(20), nn.ReLU(),
            nn.Conv2d(20, 33, 2, padding=0), nn.BatchNorm2d(33), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(33, 17), nn.BatchNorm1d(17),
            nn.ReLU(), nn.Linear(17, 5))

    def forward(self, x):
        return self.features(x)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scheme", ["bnn", "xnor"])
def test_packed_model_equals_its_float_simulation(backend, scheme):
    torch.manual_seed(0)
    sim = randomize_bn(B.binarize(_Small(), scheme))
    packed = K.pack_model(sim, backend)
    assert not B.binary_layers(packed)   # every binary layer now runs on packed bits
    x = torch.randn(8, 3, 11, 11)
    with torch.no_grad():
        a, b = sim(x), packed(x)
    assert torch.allclose(a, b, atol=1e-4)
    assert torch.equal(a.argmax(1), b.argmax(1))


@pytest.mark.parametrize("scheme", ["bnn", "xnor"])
def test_packed_baseline_predicts_like_the_simulation(scheme):
    torch.manual_seed(0)
    sim = randomize_bn(B.binarize(lc.create_model("baseline_cnn"), scheme))
    packed = K.pack_model(sim)
    x = torch.randn(64, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(sim(x).argmax(1), packed(x).argmax(1))
    # the stored layer holds what binary_weight_bytes counts, as int64 words
    layer = packed.features[5][0]
    assert layer.weight_bits.shape == (128, -(-64 * 9 // 64)) and layer.weight_bits.dtype == torch.int64
    stored = sum(m.weight_bits.nbytes + (0 if m.alpha is None else m.alpha.nbytes)
                 + (0 if m.bias is None else m.bias.nbytes)
                 for m in packed.modules() if isinstance(m, K.PackedBinaryConv2d))
    assert stored == B.binary_weight_bytes(sim)["binary_bytes"]


def test_packed_model_survives_a_state_dict_round_trip():
    sim = randomize_bn(B.binarize(lc.create_model("baseline_cnn"), "xnor"))
    packed = K.pack_model(sim)
    buffer = io.BytesIO()
    torch.save(packed.state_dict(), buffer)
    fresh = K.pack_model(randomize_bn(
        B.binarize(lc.create_model("baseline_cnn"), "xnor"), seed=1))
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        fresh(x)   # builds its kernel layout from its own weights first
        fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
        assert torch.equal(fresh(x), packed(x))


def test_pack_model_needs_binary_activations():
    with pytest.raises(ValueError, match="binary activations"):
        K.pack_model(B.binarize(lc.create_model("baseline_cnn"), "bwn"))
    with pytest.raises(ValueError, match="binary activations"):
        K.PackedBinaryConv2d(B.BinaryConv2d(3, 4, 3, scheme="binaryconnect"))


def test_popcount_peak_from_the_cpu_description(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("model name\t: Some CPU\ncpu MHz\t\t: 2500.000\n"
                    "flags\t\t: fpu sse2 popcnt avx512f avx512_vpopcntdq\n")
    peak = K.popcount_peak(cores=2, cpuinfo=str(info))
    assert peak == {"clock_ghz": 2.5, "cores": 2, "vpopcntdq": True, "bits_per_cycle": 512,
                    "peak_binary_macs_per_s": 2 * 512 * 2.5e9}
    info.write_text("cpu MHz\t\t: 3000.0\nflags\t\t: fpu sse2 popcnt avx2\n")
    assert K.popcount_peak(cores=1, cpuinfo=str(info))["peak_binary_macs_per_s"] == 64 * 3e9
    missing = K.popcount_peak(cores=1, cpuinfo=str(tmp_path / "none"))
    assert missing["clock_ghz"] is None and missing["peak_binary_macs_per_s"] is None
    with pytest.raises(ValueError, match="cores"):
        K.popcount_peak(cores=0)
