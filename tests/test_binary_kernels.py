"""lightcnn.binary_kernels: packing round trips, XNOR GEMM against float products, the
packed model against its float simulation, and bad input."""

import copy
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


# --- the register-tiled kernel: tile edges, threads, the fused im2col ---------------------

@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("m, n, k", [(1, 1, 1), (3, 31, 64), (4, 32, 65), (9, 33, 200),
                                     (17, 65, 576), (64, 96, 1000)])
def test_tiled_gemm_at_tile_edges_and_thread_counts(threads, m, n, k):
    # fewer rows than a tile (1-row tiles), a last row tile that overlaps the one before,
    # widths that end inside a 32-column panel, one chunk of tiles per thread
    torch.set_num_threads(threads)
    a, b = _random_signs(m, k, seed=m), _random_signs(n, k, seed=n)
    ref = (a @ b.T).to(torch.int32)
    pa, pb = K.pack_signs(a), K.pack_signs(b)
    assert torch.equal(K.xnor_gemm(pa, pb, k, "numba"), ref)
    assert torch.equal(K.xnor_gemm(pa, pb.t().contiguous(), k, "numba", b_transposed=True), ref)
    assert torch.equal(K.xnor_gemm(pa, pb, k, "torch"), ref)


def test_gemm_instructions_show_vpopcntq_where_the_cpu_has_it():
    counts = K.gemm_instructions()
    if K.popcount_peak(1)["vpopcntdq"]:
        assert counts["vpopcntq"] >= 16   # one step of the 4 x 32 tile: 16 vectors
    else:
        assert counts["vpopcntq"] == 0


_CONV_CASES = [  # channels in, out, size, kernel, stride, padding, batch
    (3, 5, 2, 3, 1, 1, 1), (64, 64, 14, 3, 1, 1, 1), (70, 33, 9, 3, 1, 1, 2),
    (70, 20, 11, 3, 2, 2, 2), (20, 33, 8, 2, 1, 0, 3), (130, 7, 5, 1, 1, 0, 1),
    (32, 40, 7, 3, 2, 0, 1), (64, 64, 28, 3, 1, 1, 1), (130, 70, 17, 3, 2, 1, 8)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("c, o, size, k, s, p, batch", _CONV_CASES)
def test_fused_conv_equals_the_reference_and_the_simulation(threads, c, o, size, k, s, p, batch,
                                                            monkeypatch):
    torch.set_num_threads(threads)
    if threads > 1:   # every case through the parallel kernels, however small
        monkeypatch.setattr(K, "PARALLEL_MIN_MACS", 0)
    torch.manual_seed(c + o)
    layer = B.BinaryConv2d(c, o, k, stride=s, padding=p, bias=True, scheme="bnn").eval()
    x = torch.randn(batch, c, size, size)
    x[0, 0, 0, :2] = torch.tensor([0.0, -0.0])                  # sign(0) = sign(-0) = +1
    with torch.no_grad():
        sim = layer(x)
        fast = K.PackedBinaryConv2d(layer, "numba")
        reference = K.PackedBinaryConv2d(layer, "torch")(x)
        assert torch.equal(fast(x), reference)
        assert torch.equal(fast(x.contiguous(memory_format=torch.channels_last)), reference)
        assert torch.allclose(reference, sim, atol=1e-5)
        # the conv without bias is the integer dot product itself
        layer.bias = None
        dots = K.PackedBinaryConv2d(layer, "numba")(x)
        assert torch.equal(dots, layer(x))
        # the chapter's three steps still give the same product
        padded = fast.pack_input(x)
        cols = fast.im2col(padded)
        gemm = K.xnor_gemm(cols, fast.kernel_words(), c * k * k, b_transposed=True)
        assert torch.equal(gemm.view(dots.shape[0], *dots.shape[2:], -1).permute(0, 3, 1, 2)
                           .float(), dots)


def test_measure_xnor_gemm_reports_throughput_against_the_peak():
    row = K.measure_xnor_gemm(16, 128, 32, threads=1, warmup=1, repeats=3)
    assert row["shape"] == "16x128x32" and row["binary_macs"] == 16 * 128 * 32
    assert row["binary_macs_per_s"] == pytest.approx(row["binary_macs"] / (row["median_ms"] / 1e3))
    if row["peak_binary_macs_per_s"] is not None:
        assert row["fraction_of_peak"] == pytest.approx(
            row["binary_macs_per_s"] / row["peak_binary_macs_per_s"])
    assert row["stable"] == (row["iqr_ms"] <= 0.2 * row["median_ms"])
    for bad in ({"m": 0}, {"k": -1}, {"threads": 0}, {"n": 2.5}, {"number": 0},
                {"max_number": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            K.measure_xnor_gemm(**bad)


# --- FINN's integer thresholds -------------------------------------------------------------

def _bn(channels: int, seed: int, negative: float = 0.4, dims: int = 2) -> nn.Module:
    """A batch norm with random statistics and a scale of random sign."""
    g = torch.Generator().manual_seed(seed)
    bn = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(channels).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(channels, generator=g) * 20)
        bn.running_var.copy_(torch.rand(channels, generator=g) * 50 + 0.5)
        sign = torch.where(torch.rand(channels, generator=g) < negative, -1.0, 1.0)
        bn.weight.copy_(sign * (torch.rand(channels, generator=g) + 0.1))
        bn.bias.copy_(torch.randn(channels, generator=g))
    return bn


@pytest.mark.parametrize("seed", range(4))
def test_integer_thresholds_follow_finn_formula_and_the_float_sign(seed):
    torch.manual_seed(seed)
    layer = B.BinaryConv2d(16, 24, 3, bias=True, scheme="bnn").eval()
    bn = _bn(24, seed)
    t, descending = K.integer_thresholds(layer, [bn, nn.Hardtanh()], "conv")
    n = 16 * 9
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    assert torch.equal(descending, scale < 0)          # a negative scale flips the comparison
    # every value the dot product can take: the bit is the float network's sign
    d = torch.arange(-n, n + 1, 2)
    with torch.no_grad():
        y = bn((d.float().view(1, 1, -1, 1) + layer.bias.view(1, -1, 1, 1)).contiguous())
    plus = (y >= 0)[0, :, :, 0]
    bits = torch.where(descending[:, None], d[None] <= t[:, None], d[None] >= t[:, None])
    assert torch.equal(bits, plus)
    # and t is FINN's real-valued threshold mu - b - beta / s, rounded onto the grid of d
    real = (bn.running_mean - layer.bias - bn.bias / scale).detach()
    on_grid = torch.where(descending, real.floor(), real.ceil())
    away = ((real - real.round()).abs() > 1e-3) & (real.abs() < n)   # no ties, not clipped
    parity = (on_grid - n) % 2 != 0                       # d and n have the same parity
    expected = torch.where(parity, on_grid + torch.where(descending, -1.0, 1.0), on_grid)
    assert torch.equal(t[away], expected[away].long())


def test_integer_thresholds_for_a_linear_layer_and_constant_channels():
    layer = B.BinaryLinear(40, 6, bias=False, scheme="bnn").eval()
    bn = _bn(6, 0, dims=1)
    with torch.no_grad():
        bn.bias[:2] = torch.tensor([1e4, -1e4])   # always +1, never +1
        bn.weight[:2] = 1.0
    t, descending = K.integer_thresholds(layer, [bn], "fc")
    assert t[0] == -40 and t[1] == 42 and not descending[:2].any()


class _Chain(nn.Module):
    """Binary convs in a chain: +-1 padding of 1 and 2, stride 2, a max pool with padding,
    dropout and identity between them, 70 and 20 channels (partial words), and a last binary
    conv that feeds the float head."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 70, 3, padding=1), nn.BatchNorm2d(70), nn.ReLU(),
            nn.Conv2d(70, 20, 3, stride=2, padding=2), nn.BatchNorm2d(20), nn.ReLU(),
            nn.MaxPool2d(2, padding=1), nn.Identity(),
            nn.Conv2d(20, 33, 2, padding=0), nn.BatchNorm2d(33), nn.ReLU(), nn.Dropout(0.1),
            nn.Conv2d(33, 40, 3, padding=1), nn.BatchNorm2d(40), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(40, 5))

    def forward(self, x):
        return self.features(x)


class _MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(49, 100), nn.BatchNorm1d(100),
                                 nn.ReLU(), nn.Linear(100, 70), nn.BatchNorm1d(70), nn.ReLU(),
                                 nn.Linear(70, 65), nn.BatchNorm1d(65), nn.ReLU(),
                                 nn.Linear(65, 10))

    def forward(self, x):
        return self.net(x)


def _negate_some_scales(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            with torch.no_grad():
                m.weight.mul_(torch.where(torch.rand(m.num_features, generator=g) < 0.4,
                                          -1.0, 1.0))
    return model


def _inputs_of(model: nn.Module, x: torch.Tensor, kinds) -> tuple[dict, torch.Tensor]:
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda m, args, n=n: seen.__setitem__(n, args[0]))
             for n, m in model.named_modules() if isinstance(m, kinds)]
    with torch.no_grad():
        y = model(x)
    for h in hooks:
        h.remove()
    return seen, y


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("make, shape, scheme", [
    (_Chain, (4, 3, 13, 13), "bnn"), (_MLP, (8, 1, 7, 7), "bnn"),
    (_Chain, (4, 3, 13, 13), "bireal"),
    (lambda: lc.create_model("baseline_cnn"), (8, 1, 28, 28), "bnn")])
def test_thresholded_network_is_bit_exact(threads, backend, make, shape, scheme, monkeypatch):
    torch.set_num_threads(threads)
    if threads > 1:
        monkeypatch.setattr(K, "PARALLEL_MIN_MACS", 0)
    torch.manual_seed(0)
    sim = _negate_some_scales(randomize_bn(B.binarize(make(), scheme)))
    packed = K.pack_model(sim, backend, thresholds=True)
    x = torch.randn(*shape)
    sim_in, sim_y = _inputs_of(sim, x, (B.BinaryConv2d, B.BinaryLinear))
    packed_in, packed_y = _inputs_of(packed, x, (K.PackedBinaryConv2d, K.PackedBinaryLinear))
    integer = [n for n, v in packed_in.items() if v.dtype == torch.int64]
    # every binary input but the first; that one too where a max pool precedes it (its
    # signs are packed before the pool)
    first_pooled = make is not _Chain and make is not _MLP
    assert len(integer) == len(packed_in) - (0 if first_pooled else 1)
    for name in integer:
        signs = sim_in[name]
        signs = signs.permute(0, 2, 3, 1) if signs.ndim == 4 else signs
        assert torch.equal(packed_in[name], K._pack_bits(signs >= 0)), name   # bit-exact
    assert torch.allclose(packed_y, sim_y, atol=1e-4)
    assert torch.equal(packed_y.argmax(1), sim_y.argmax(1))
    # each thresholded layer's batch norm is gone, folded into its thresholds
    def norms(model):
        return sum(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in model.modules())
    thresholded = [m for m in packed.modules() if getattr(m, "thresholds", None) is not None]
    assert norms(packed) == norms(sim) - len(thresholded) == norms(sim) - (len(packed_in) - 1)


def test_thresholds_survive_a_state_dict_round_trip():
    torch.manual_seed(0)
    sim = _negate_some_scales(randomize_bn(B.binarize(_Chain(), "bnn")))
    packed = K.pack_model(sim, thresholds=True)
    fresh = K.pack_model(_negate_some_scales(randomize_bn(B.binarize(_Chain(), "bnn"), seed=1),
                                             seed=1), thresholds=True)
    x = torch.randn(2, 3, 13, 13)
    with torch.no_grad():
        fresh(x)   # builds its cached operands from its own weights and thresholds first
        buffer = io.BytesIO()
        torch.save(packed.state_dict(), buffer)
        fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
        assert torch.equal(fresh(x), packed(x))
    assert "features.3.thresholds" in packed.state_dict()


def test_packed_max_pool_is_the_max_pool_of_the_signs():
    signs = _random_signs(2, 70, 9, 9, seed=5)
    for pool in (nn.MaxPool2d(2), nn.MaxPool2d(3, stride=2, padding=1), nn.MaxPool2d(2, 1)):
        words = K._pack_bits(signs.permute(0, 2, 3, 1) > 0)
        expected = K._pack_bits(pool(signs).permute(0, 2, 3, 1) > 0)
        assert torch.equal(K.PackedMaxPool2d(pool)(words), expected)
    with pytest.raises(ValueError, match="ceil_mode"):
        K.PackedMaxPool2d(nn.MaxPool2d(2, ceil_mode=True))
    with pytest.raises(ValueError, match="MaxPool2d"):
        K.PackedMaxPool2d(nn.AvgPool2d(2))


def test_integer_thresholds_refuse_what_no_threshold_expresses():
    layer = B.BinaryConv2d(8, 4, 3, scheme="bnn").eval()
    bn = _bn(4, 0)
    with torch.no_grad():
        bn.weight[2] = 0.0
    with pytest.raises(ValueError, match="'stage.conv'.*scale 0 in channel.*\\[2\\]"):
        K.integer_thresholds(layer, [bn], "stage.conv")
    with pytest.raises(ValueError, match="'c1' is followed by AvgPool2d"):
        K.integer_thresholds(layer, [nn.AvgPool2d(2)], "c1")
    with pytest.raises(ValueError, match="'x1'.*XNOR-Net's K"):
        K.integer_thresholds(B.BinaryConv2d(8, 4, 3, scheme="xnor"), [], "x1")
    with pytest.raises(ValueError, match="binary activations"):
        K.integer_thresholds(B.BinaryConv2d(8, 4, 3, scheme="bwn"), [], "w1")
    bireal = B.BinaryConv2d(8, 4, 3, scheme="bireal")
    with torch.no_grad():
        bireal.weight[1] = 0.0
    with pytest.raises(ValueError, match="'b1'.*alpha is 0 in channel.*\\[1\\]"):
        K.integer_thresholds(bireal, [], "b1")
    # |z| - 1 after a V-shaped PReLU: +1 at both ends, -1 in the middle
    v_shape = nn.PReLU(4, init=-1.0)
    shift = nn.BatchNorm2d(4).eval()
    with torch.no_grad():
        shift.bias.fill_(-1.0)
    with pytest.raises(ValueError, match="'v'.*not monotone"):
        K.integer_thresholds(layer, [v_shape, shift], "v")


def test_pack_model_with_thresholds_names_the_layer_it_cannot_fold():
    torch.manual_seed(0)
    # _Small's 20 -> 33 conv reaches the binary linear layer through a global average pool
    with pytest.raises(ValueError, match="'features.6' feeds binary layer 'features.11' "
                                         "through AdaptiveAvgPool2d"):
        K.pack_model(randomize_bn(B.binarize(_Small(), "bnn")), thresholds=True)
    with pytest.raises(ValueError, match="'features.2.0'.*XNOR-Net's K"):
        K.pack_model(randomize_bn(B.binarize(lc.create_model("baseline_cnn"), "xnor")),
                     thresholds=True)
    sim = randomize_bn(B.binarize(lc.create_model("baseline_cnn"), "bnn"))
    with torch.no_grad():
        sim.features[3][1].weight[7] = 0.0
    with pytest.raises(ValueError, match="'features.3.0'.*scale 0 in channel.*\\[7\\]"):
        K.pack_model(sim, thresholds=True)
    # a binary layer whose output feeds two places is not followed by a sign alone
    class Fork(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = B.BinaryConv2d(8, 8, 3, padding=1)
            self.b = B.BinaryConv2d(8, 8, 3, padding=1)

        def forward(self, x):
            y = self.a(x)
            return self.b(y) + y
    with pytest.raises(ValueError, match="'a' feeds binary layer 'b' through 2 uses"):
        K.pack_model(Fork(), thresholds=True)


def test_packed_layers_reject_bad_thresholds_and_inputs():
    layer = B.BinaryConv2d(8, 4, 3, scheme="bnn").eval()
    with pytest.raises(ValueError, match="thresholds must be two \\(4,\\) tensors"):
        K.PackedBinaryConv2d(layer, thresholds=(torch.zeros(3, dtype=torch.int64),
                                                torch.zeros(3, dtype=torch.bool)))
    with pytest.raises(ValueError, match="XNOR-Net's activation scale"):
        K.PackedBinaryConv2d(B.BinaryConv2d(8, 4, 3, scheme="xnor"), packed_input=True)
    packed = K.PackedBinaryConv2d(layer, packed_input=True)
    with pytest.raises(ValueError, match="expected packed words \\(B, H, W, 1\\)"):
        packed(torch.randn(1, 8, 5, 5))
    with pytest.raises(ValueError, match="expected a \\(B, 8, H, W\\) tensor"):
        K.PackedBinaryConv2d(layer)(torch.randn(1, 3, 5, 5))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(1, 3, 5, 5), (4, 70, 9, 7), (3, 130, 6, 6), (2, 64, 1, 1)])
def test_pack_signs_equals_the_reference_packing(threads, shape, monkeypatch):
    torch.set_num_threads(threads)
    if threads > 1:
        monkeypatch.setattr(K, "PARALLEL_MIN_MACS", 0)
    x = torch.randn(*shape)
    x.view(-1)[:2] = torch.tensor([0.0, -0.0])                 # both are +1
    expected = K._pack_bits(x.permute(0, 2, 3, 1) >= 0)
    for backend in BACKENDS:
        assert torch.equal(K.PackSigns(backend)(x), expected), backend
    assert torch.equal(K.PackSigns()(x.contiguous(memory_format=torch.channels_last)), expected)
    with pytest.raises(ValueError, match="float"):
        K.PackSigns()(torch.ones(2, 3, 4, dtype=torch.float32))
    with pytest.raises(ValueError, match="float"):
        K.PackSigns()(torch.ones(1, 2, 3, 4, dtype=torch.int64))


def test_pack_model_packs_the_signs_before_the_first_pool():
    torch.manual_seed(0)
    sim = _negate_some_scales(randomize_bn(B.binarize(lc.create_model("baseline_cnn"), "bnn")))
    packed = K.pack_model(sim, thresholds=True)
    # the Hardtanh before the pool becomes the packing, the pool runs on words
    assert isinstance(packed.features[0][2], K.PackSigns)
    assert isinstance(packed.features[1], K.PackedMaxPool2d)
    assert packed.features[2][0].packed_input
    assert isinstance(packed.features[0][1], nn.BatchNorm2d)     # the float layer's norm stays
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(packed(x), sim(x), atol=1e-4)
    # without thresholds nothing changes before the first binary layer
    plain = K.pack_model(sim)
    assert isinstance(plain.features[1], nn.MaxPool2d)
    assert not plain.features[2][0].packed_input


def test_a_pool_used_twice_is_not_moved_onto_words():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(1, 8, 3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.a = nn.Conv2d(8, 8, 3, padding=1)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            x = self.pool(self.stem(x))
            return self.head(self.pool(self.a(x)).mean((2, 3)))

    torch.manual_seed(0)
    sim = B.binarize(Twice(), "bnn").eval()
    packed = K.pack_model(sim, thresholds=True)
    assert isinstance(packed.pool, nn.MaxPool2d) and not packed.a.packed_input
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(packed(x), sim(x), atol=1e-4)


def test_packed_models_pickle_and_copy_after_running():
    torch.manual_seed(0)
    sim = randomize_bn(B.binarize(lc.create_model("baseline_cnn"), "bnn"))
    packed = K.pack_model(sim, thresholds=True)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        y = packed(x)                      # fills the layers' plans (closures)
        buffer = io.BytesIO()
        torch.save(packed, buffer)         # the whole module, pickled
        again = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
        assert torch.equal(again(x), y)
        assert torch.equal(copy.deepcopy(packed)(x), y)


def test_parallel_threshold_sets_and_restores_the_split(monkeypatch):
    torch.set_num_threads(2)
    layer = B.BinaryConv2d(16, 16, 3, padding=1, scheme="bnn").eval()
    packed = K.PackedBinaryConv2d(layer, "numba")
    x = torch.randn(1, 16, 6, 6)
    calls = []
    kernels = K._numba_kernels()
    monkeypatch.setattr(kernels, "conv_parallel",
                        lambda *a, f=kernels.conv_parallel: calls.append(1) or f(*a))
    with torch.no_grad():
        expected = packed(x)                              # small: one thread
        assert not calls
        with K.parallel_threshold(0):
            assert K.PARALLEL_MIN_MACS == 0
            assert torch.equal(packed(x), expected)       # the parallel kernel, same result
        assert calls and K.PARALLEL_MIN_MACS == 16_000_000
        calls.clear()
        packed(x)
        assert not calls                                  # its plan is the one-thread one again
    for bad in (-1, 1.5, "0"):
        with pytest.raises((ValueError, TypeError), match="macs"):
            with K.parallel_threshold(bad):
                pass
