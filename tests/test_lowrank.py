"""lightcnn.lowrank against explicit formulas, PyTorch's convolutions and TensorLy."""

import math

import numpy as np
import pytest
import tensorly as tl
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from tensorly.decomposition import partial_tucker
from torch import nn

import lightcnn as lc
from lightcnn import lowrank


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# ------------------------------------------------------------------------ matrices

@settings(max_examples=25, deadline=None)
@given(m=st.integers(2, 40), n=st.integers(2, 40), data=st.data())
def test_truncated_svd_error_is_the_discarded_singular_values(m, n, data):
    rank = data.draw(st.integers(1, min(m, n)))
    torch.manual_seed(m * 100 + n)
    w = torch.randn(m, n, dtype=torch.float64)
    a, b = lc.lowrank.truncated_svd(w, rank)
    assert a.shape == (m, rank) and b.shape == (rank, n)
    s = torch.linalg.svdvals(w)
    # Eckart-Young: ||W - A B||_F^2 = sum of the discarded s_i^2
    assert math.isclose((w - a @ b).norm().item(), s[rank:].square().sum().sqrt().item(),
                        rel_tol=1e-9, abs_tol=1e-9)
    # and the factors share the singular values evenly
    assert torch.allclose(a.norm(dim=0), b.norm(dim=1))


def test_energy_rank_keeps_the_asked_fraction_of_the_squared_norm():
    s = torch.tensor([4.0, 2.0, 1.0, 1.0])          # squares 16, 4, 1, 1 (total 22)
    assert lowrank.energy_rank(s, 16 / 22) == 1
    assert lowrank.energy_rank(s, 16 / 22 + 1e-6) == 2
    assert lowrank.energy_rank(s, 21 / 22) == 3
    assert lowrank.energy_rank(s, 1.0) == 4
    with pytest.raises(ValueError, match="energy must be in"):
        lowrank.energy_rank(s, 0.0)


@pytest.mark.parametrize("shape", [(20, 30), (30, 20), (16, 8, 3, 3), (5, 1, 3, 3)])
def test_error_curve_is_the_truncated_svds_relative_error(shape):
    torch.manual_seed(sum(shape))
    weight = torch.randn(*shape)
    matrix = weight.flatten(1).double()                 # (N, C k k) for a kernel
    fractions = [0.05, 0.1, 0.25, 0.5, 0.75, 1.0]
    curve = lowrank.error_curve(weight, fractions)
    s = torch.linalg.svdvals(matrix)
    for f, error in zip(fractions, curve):
        rank = math.ceil(f * min(matrix.shape))
        # the reconstruction itself (Eckart-Young: the truncated SVD is the best rank-r
        # matrix) and the formula on the singular values
        a, b = lowrank.truncated_svd(matrix, rank)
        assert math.isclose(error, ((matrix - a @ b).norm() / matrix.norm()).item(),
                            rel_tol=1e-9, abs_tol=1e-12)
        assert math.isclose(error, (s[rank:].square().sum().sqrt() / matrix.norm()).item(),
                            rel_tol=1e-9, abs_tol=1e-12)
    assert curve[-1] == 0.0 and curve == sorted(curve, reverse=True)


def test_error_curve_rejects_bad_input():
    with pytest.raises(ValueError, match=r"fractions must hold numbers in \(0, 1\]"):
        lowrank.error_curve(torch.randn(4, 4), [0.0])
    with pytest.raises(ValueError, match="fractions must be a non-empty"):
        lowrank.error_curve(torch.randn(4, 4), [])
    with pytest.raises(ValueError, match="weight must have 2 or more dimensions"):
        lowrank.error_curve(torch.randn(4), [0.5])
    with pytest.raises(ValueError, match="all zeros"):
        lowrank.error_curve(torch.zeros(4, 4), [0.5])


@pytest.mark.parametrize("m,n", [(10, 128), (64, 576), (128, 1152), (7, 7)])
def test_break_even_rank_is_where_the_factorization_stops_saving(m, n):
    layer = nn.Linear(n, m)
    for rank in range(1, min(m, n) + 1):
        cheaper = lowrank.decomposed_macs(layer, "svd", rank) < m * n
        assert cheaper == (rank < lowrank.break_even_rank(m, n))


def test_svd_linear_equals_the_truncated_product_and_full_rank_the_layer():
    torch.manual_seed(0)
    layer = nn.Linear(30, 20)
    x = torch.randn(5, 30)
    full = lowrank.svd_linear(layer, 20)
    assert torch.allclose(full(x), layer(x), atol=1e-5)
    low = lowrank.svd_linear(layer, 4)
    a, b = lowrank.truncated_svd(layer.weight, 4)
    assert torch.allclose(low(x), x @ (a @ b).T + layer.bias, atol=1e-5)
    assert lc.count_params(low) == 4 * (30 + 20) + 20


# ------------------------------------------------------------ the conv decompositions

CONVS = [dict(c=6, n=8, k=3, stride=1, padding=1, dilation=1, bias=False),
         dict(c=5, n=7, k=3, stride=2, padding=1, dilation=1, bias=True),
         dict(c=4, n=6, k=5, stride=1, padding=2, dilation=1, bias=True),
         dict(c=4, n=4, k=3, stride=1, padding=2, dilation=2, bias=False)]


def _conv(spec) -> nn.Conv2d:
    torch.manual_seed(spec["c"] * 10 + spec["k"])
    return nn.Conv2d(spec["c"], spec["n"], spec["k"], stride=spec["stride"],
                     padding=spec["padding"], dilation=spec["dilation"], bias=spec["bias"])


def _apply(conv: nn.Conv2d, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, weight, conv.bias, conv.stride, conv.padding, conv.dilation)


@pytest.mark.parametrize("spec", CONVS)
def test_spatial_separable_is_the_svd_of_the_kernel_unfolded_to_c_k_by_k_n(spec):
    conv = _conv(spec)
    n, c, k, _ = conv.weight.shape
    x = torch.randn(2, c, 11, 11)
    full = lowrank.spatial_separable_conv(conv, min(c * k, k * n))
    assert torch.allclose(full(x), conv(x), atol=1e-5)
    rank = 2
    sep = lowrank.spatial_separable_conv(conv, rank)
    v, h = sep[0].weight, sep[1].weight                 # (r, C, k, 1), (N, r, 1, k)
    kernel = torch.einsum("rci,nrj->ncij", v[..., 0], h[:, :, 0, :])
    assert torch.allclose(sep(x), _apply(conv, kernel, x), atol=1e-5)
    matrix = conv.weight.detach().permute(1, 2, 3, 0).reshape(c * k, k * n)
    s = torch.linalg.svdvals(matrix.double())
    assert math.isclose((kernel - conv.weight).norm().item(), s[rank:].square().sum().sqrt().item(),
                        rel_tol=1e-4)


@pytest.mark.parametrize("spec", CONVS)
def test_tucker2_conv_computes_the_conv_with_the_reconstructed_kernel(spec):
    conv = _conv(spec)
    n, c = conv.weight.shape[:2]
    x = torch.randn(2, c, 11, 11)
    assert torch.allclose(lowrank.tucker2_conv(conv, (n, c))(x), conv(x), atol=1e-5)
    ranks = (max(1, n // 2), max(1, c // 2))
    core, u_out, u_in = lowrank.hosvd(conv.weight, ranks)
    kernel = torch.einsum("orij,no,cr->ncij", core, u_out, u_in)
    assert torch.allclose(lowrank.tucker2_conv(conv, ranks)(x), _apply(conv, kernel, x), atol=1e-5)


@pytest.mark.parametrize("iterations", [0, 5])
def test_own_hosvd_and_hooi_equal_tensorlys_reconstruction(iterations):
    torch.manual_seed(1)
    weight = torch.randn(32, 24, 3, 3, dtype=torch.float64)
    ranks = (12, 9)
    core, u_out, u_in = lowrank.hosvd(weight, ranks, iterations=iterations)
    mine = torch.einsum("orij,no,cr->ncij", core, u_out, u_in)
    (tl_core, tl_factors), _ = partial_tucker(weight.numpy(), rank=list(ranks), modes=[0, 1],
                                              n_iter_max=iterations, init="svd", tol=0)
    theirs = torch.from_numpy(np.asarray(tl.tenalg.multi_mode_dot(tl_core, tl_factors, modes=[0, 1])))
    assert _rel(mine, theirs) < 1e-5
    # orthonormal factors, and HOOI never worse than HOSVD
    assert torch.allclose(u_out.T @ u_out, torch.eye(12, dtype=torch.float64), atol=1e-10)
    hosvd_err = _rel(torch.einsum("orij,no,cr->ncij", *lowrank.hosvd(weight, ranks)), weight)
    assert _rel(mine, weight) <= hosvd_err + 1e-12


def test_hosvd_recovers_a_kernel_of_exact_multilinear_rank():
    torch.manual_seed(2)
    core = torch.randn(5, 4, 3, 3, dtype=torch.float64)
    u_out = torch.linalg.qr(torch.randn(16, 5, dtype=torch.float64))[0]
    u_in = torch.linalg.qr(torch.randn(12, 4, dtype=torch.float64))[0]
    weight = torch.einsum("orij,no,cr->ncij", core, u_out, u_in)
    rec = torch.einsum("orij,no,cr->ncij", *lowrank.hosvd(weight, (5, 4)))
    assert _rel(rec, weight) < 1e-10


@pytest.mark.parametrize("spec", CONVS)
def test_cp_conv_computes_the_conv_with_the_cp_kernel(spec):
    conv = _conv(spec)
    c = conv.weight.shape[1]
    x = torch.randn(2, c, 11, 11)
    cp = lowrank.cp_conv(conv, 6)
    a_c = cp[0].weight[:, :, 0, 0]           # (R, C)
    a_h = cp[1].weight[:, 0, :, 0]           # (R, kh)
    a_w = cp[2].weight[:, 0, 0, :]           # (R, kw)
    a_n = cp[3].weight[:, :, 0, 0]           # (N, R)
    kernel = torch.einsum("nr,rc,ri,rj->ncij", a_n, a_c, a_h, a_w)
    assert torch.allclose(cp(x), _apply(conv, kernel, x), atol=1e-4)


@pytest.mark.filterwarnings("ignore:Trying to compute SVD")   # rank 5 > k: TensorLy pads
def test_cp_conv_is_tensorlys_cp_with_each_terms_norm_split_evenly():
    conv = _conv(CONVS[0])
    layer = lowrank.cp_conv(conv, 5, n_iter_max=30)
    a_c = layer[0].weight[:, :, 0, 0].T.double()       # (C, R)
    a_h = layer[1].weight[:, 0, :, 0].T.double()       # (kh, R)
    a_w = layer[2].weight[:, 0, 0, :].T.double()       # (kw, R)
    a_n = layer[3].weight[:, :, 0, 0].double()         # (N, R)
    norms = torch.stack([a.norm(dim=0) for a in (a_n, a_c, a_h, a_w)])
    assert torch.allclose(norms, norms[0].expand_as(norms), rtol=1e-5)   # balanced
    # the kernel is TensorLy's reconstruction of the same CP-ALS run
    from tensorly.decomposition import parafac
    with tl.backend_context("numpy"):
        cp = parafac(conv.weight.detach().double().numpy(), 5, n_iter_max=30, init="svd",
                     tol=1e-10, random_state=0, normalize_factors=False)
        theirs = torch.from_numpy(np.asarray(tl.cp_to_tensor(cp)))
    mine = torch.einsum("nr,cr,ir,jr->ncij", a_n, a_c, a_h, a_w)
    assert _rel(mine, theirs) < 1e-5


def test_balance_keeps_every_term_and_a_zero_term_alone():
    torch.manual_seed(4)
    factors = [torch.randn(d, 3, dtype=torch.float64) * s for d, s in ((5, 10.0), (4, 1.0),
                                                                        (3, 0.1), (3, 1.0))]
    factors[2][:, 1] = 0.0                        # a zero term
    balanced = lowrank._balance(factors)
    before = torch.einsum("nr,cr,ir,jr->ncijr", *factors)
    after = torch.einsum("nr,cr,ir,jr->ncijr", *balanced)
    assert torch.allclose(after, before, atol=1e-12)           # each term, not only the sum
    norms = torch.stack([f.norm(dim=0) for f in balanced])
    assert torch.allclose(norms[:, [0, 2]], norms[0, [0, 2]].expand(4, 2))
    assert all(torch.equal(b[:, 1], f[:, 1]) for b, f in zip(balanced, factors))


def test_cp_conv_recovers_a_kernel_of_exact_cp_rank():
    torch.manual_seed(3)
    factors = [torch.randn(d, 4, dtype=torch.float64) for d in (8, 6, 3, 3)]
    weight = torch.einsum("nr,cr,ir,jr->ncij", *factors).float()
    conv = nn.Conv2d(6, 8, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(weight)
    x = torch.randn(2, 6, 9, 9)
    assert _rel(lowrank.cp_conv(conv, 4)(x), conv(x)) < 1e-3


# -------------------------------------------------------------------------- VBMF

@pytest.mark.parametrize("rank,shape", [(5, (60, 200)), (3, (144, 64)), (8, (128, 576))])
def test_evbmf_finds_the_rank_of_a_low_rank_signal_in_noise(rank, shape):
    g = torch.Generator().manual_seed(rank)
    signal = torch.randn(shape[0], rank, generator=g) @ torch.randn(rank, shape[1], generator=g)
    noisy = signal + 0.1 * torch.randn(*shape, generator=g)
    assert lowrank.evbmf_rank(noisy) == rank


def test_evbmf_keeps_nothing_of_pure_noise():
    g = torch.Generator().manual_seed(0)
    assert lowrank.evbmf_rank(torch.randn(80, 300, generator=g)) == 0


def _evbmf_by_dense_scan(matrix: torch.Tensor, points: int = 20001) -> tuple[int, int]:
    """Reference: the EVBMF free energy (Nakajima et al. 2013) written out again and scanned
    on ``points`` evenly spaced noise variances between the paper's bounds. Returns the rank
    at the scan's lowest value and how many local minima the scan saw (ends included)."""
    y = matrix.double()
    y = y.T if y.shape[0] > y.shape[1] else y
    l, m = y.shape
    alpha = l / m
    tau_bar = 2.5129 * math.sqrt(alpha)
    x_bar = (1 + tau_bar) * (1 + alpha / tau_bar)
    s = torch.linalg.svdvals(y).numpy()
    residual = max(float((y ** 2).sum()) - float((s ** 2).sum()), 0.0)
    h = math.ceil(l / (1 + alpha)) - 2
    upper = float((y ** 2).sum()) / (l * m)
    lower = max(s[h + 1] ** 2 / (m * x_bar), float(np.mean(s[h + 1:] ** 2)) / m)
    sigma2 = np.linspace(lower, upper, points)
    x = s[None, :] ** 2 / (m * sigma2[:, None])                  # (points, L)
    kept = x > x_bar
    xk = np.where(kept, x, x_bar + 1)                             # any valid value off the mask
    t = 0.5 * (xk - (1 + alpha) + np.sqrt((xk - (1 + alpha)) ** 2 - 4 * alpha))
    energy = np.where(kept, xk - t + np.log((t + 1) / xk) + alpha * np.log(t / alpha + 1),
                      x - np.log(x)).sum(1) + residual / (m * sigma2)
    interior = (energy[1:-1] < energy[:-2]) & (energy[1:-1] < energy[2:])
    minima = int(interior.sum()) + int(energy[0] < energy[1]) + int(energy[-1] < energy[-2])
    best = sigma2[int(np.argmin(energy))]
    threshold = math.sqrt(m * best * (1 + tau_bar) * (1 + alpha / tau_bar))
    return int((s > threshold).sum()), minima


def _tiers(l: int, m: int, singular_values: list[float]) -> torch.Tensor:
    """A matrix with the given singular values and random orthonormal singular vectors."""
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(l, l, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(m, l, generator=g, dtype=torch.float64))
    return (u @ torch.diag(torch.tensor(singular_values, dtype=torch.float64)) @ v.T).float()


def _random_mixture(seed: int, l: int, m: int) -> torch.Tensor:
    """Random components of random strengths plus noise of a random level."""
    g = torch.Generator().manual_seed(seed)
    r = int(torch.randint(1, 8, (1,), generator=g))
    scales = torch.rand(r, generator=g) * 3
    signal = (torch.randn(l, r, generator=g) * scales) @ torch.randn(r, m, generator=g)
    return signal + torch.randn(l, m, generator=g) * float(torch.rand(1, generator=g))


# free energies with two or more local minima, where a golden-section search from the
# paper's bounds stops at the wrong one
SEVERAL_MINIMA = {
    # three strong and three medium components: "3 + noise" is a local minimum, 6 the global
    "two_tiers_10x40": lambda: _tiers(10, 40, [30.0] * 3 + [10.0] * 3 + [3.0, 2.33, 1.67, 1.0]),
    "two_tiers_8x12": lambda: _tiers(8, 12, [20.0] + [10.0] * 2 + list(np.linspace(3, 1, 5))),
    "random_8x12": lambda: _random_mixture(59, 8, 12),
    "random_10x40": lambda: _random_mixture(171, 10, 40),
    "random_8x12_edge": lambda: _random_mixture(244, 8, 12),     # global minimum at a bound
}


@pytest.mark.parametrize("case", sorted(SEVERAL_MINIMA))
def test_evbmf_finds_the_global_minimum_of_the_free_energy(case):
    matrix = SEVERAL_MINIMA[case]()
    rank, minima = _evbmf_by_dense_scan(matrix)
    assert minima >= 2                                    # the case really has several
    assert lowrank.evbmf_rank(matrix) == rank
    assert lowrank.evbmf_rank(matrix.T) == rank


def test_evbmf_of_two_tiers_keeps_both():
    matrix = SEVERAL_MINIMA["two_tiers_10x40"]()
    assert lowrank.evbmf_rank(matrix) == 6


@pytest.mark.parametrize("seed", range(12))
def test_evbmf_agrees_with_a_dense_scan_on_random_matrices(seed):
    l, m = [(8, 12), (10, 40), (20, 30), (16, 64)][seed % 4]
    matrix = _random_mixture(seed, l, m)
    assert lowrank.evbmf_rank(matrix) == _evbmf_by_dense_scan(matrix)[0]


def test_global_minimum_refines_the_best_grid_point():
    # two wells, the left one deeper; golden-section on the whole range finds the right one
    def f(x):
        return min((x - 1.0) ** 2 - 0.5, (x - 8.0) ** 2)
    assert abs(lowrank._golden_section(f, 0.1, 10.0) - 8.0) < 1e-6
    assert abs(lowrank._global_minimum(f, 0.1, 10.0) - 1.0) < 1e-6
    assert abs(lowrank._global_minimum(f, 0.0, 10.0, breakpoints=[4.5]) - 1.0) < 1e-6
    assert lowrank._global_minimum(lambda x: -x, 0.1, 10.0) == 10.0     # at a bound


def test_tucker2_ranks_vbmf_are_within_the_channels():
    conv = nn.Conv2d(32, 64, 3)
    r_out, r_in = lowrank.tucker2_ranks_vbmf(conv)
    assert 1 <= r_out <= 64 and 1 <= r_in <= 32


# -------------------------------------------------------------------- MACs formulas

@pytest.mark.parametrize("method,rank", [("spatial", 3), ("tucker2", (4, 3)), ("cp", 5)])
@pytest.mark.parametrize("spec", CONVS)
def test_decomposed_macs_equal_the_counted_macs(method, rank, spec):
    conv = _conv(spec)
    c = conv.weight.shape[1]
    shape = (c, 12, 12)
    out = conv(torch.zeros(1, *shape)).shape[-2:]
    layer = lowrank.decompose_layer(conv, method, rank)
    assert lowrank.decomposed_macs(conv, method, rank, tuple(out)) == lc.count_macs(layer, shape)


@pytest.mark.parametrize("method,options", [("spatial", {}), ("tucker2", {"iterations": 2}),
                                            ("cp", {"n_iter_max": 20})])
def test_decompose_model_reaches_the_macs_ratio(method, options):
    torch.manual_seed(0)
    # narrow, so CP-ALS at the ranks that halve the MACs takes a second, not minutes
    model = lc.create_model("baseline_cnn", widths=(16, 32, 48)).eval()
    total = lc.count_macs(model)
    small, plan = lowrank.decompose_model(model, method, macs_ratio=2.0, **options)
    assert lc.count_macs(small) <= total / 2
    assert lc.count_macs(small) > total / 3          # the largest ranks that meet it
    assert plan and set(plan) <= {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert small(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert isinstance(model.features[0][0], nn.Conv2d)       # the original is untouched


def test_decompose_model_at_full_rank_keeps_the_function():
    torch.manual_seed(0)
    model = lc.create_model("baseline_cnn").eval()
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    ranks = {n: lowrank.max_rank(m, "tucker2") for n, m in convs.items()}
    same, _ = lowrank.decompose_model(model, "tucker2", ranks=ranks)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(same(x), model(x), atol=1e-4)


def test_decompose_model_on_a_torchvision_resnet():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(num_classes=10).eval()
    shape = (3, 64, 64)
    small, plan = lowrank.decompose_model(model, "tucker2", macs_ratio=2.0, input_shape=shape,
                                          skip=("conv1",))
    assert "conv1" not in plan and "layer1.0.conv1" in plan
    assert lc.count_macs(small, shape) <= lc.count_macs(model, shape) / 2
    assert small(torch.randn(2, *shape)).shape == (2, 10)


# -------------------------------------------------------------- rounded ranks

@settings(max_examples=200, deadline=None)
@given(high=st.integers(1, 300), round_to=st.integers(1, 32), data=st.data())
def test_round_rank_is_channel_prunings_rounding(high, round_to, data):
    """The same rule as channel_pruning's round_to (a kept width there, a rank here):
    nearest multiple, a tie up, at least round_to, the maximum if that would exceed it."""
    from lightcnn.channel_pruning import _rounded_width
    rank = data.draw(st.integers(1, high))
    rounded = lowrank.round_rank(rank, high, round_to)
    assert rounded == _rounded_width(rank, high, round_to)
    assert rounded == high or (rounded % round_to == 0 and rounded >= round_to)
    assert rounded <= high
    if rounded != high and rank >= round_to:
        assert abs(rounded - rank) <= round_to / 2          # the nearest multiple


def test_round_rank_examples_and_bad_input():
    assert [lowrank.round_rank(r, 64, 8) for r in (19, 20, 3, 37, 13)] == [16, 24, 8, 40, 16]
    assert lowrank.round_rank(60, 62, 8) == 62          # 64 would exceed the maximum
    assert lowrank.round_rank(5, 6, 8) == 6             # a layer narrower than round_to
    with pytest.raises(ValueError, match=r"rank must be an int in \[1, 64\]"):
        lowrank.round_rank(65, 64, 8)
    with pytest.raises(ValueError, match="round_to must be an int"):
        lowrank.round_rank(5, 64, 0)


@pytest.mark.parametrize("method", ["svd", "spatial", "tucker2", "cp"])
@pytest.mark.parametrize("round_to", [4, 8, 16])
def test_rank_for_macs_rounds_the_largest_fitting_rank(method, round_to):
    layer = nn.Linear(96, 40) if method == "svd" else nn.Conv2d(40, 72, 3, padding=1)
    high = lowrank.max_rank(layer, method)
    for fraction in (0.1, 0.3, 0.5, 0.8):
        exact = lowrank.rank_for_macs(layer, method, fraction, (7, 7))
        rounded = lowrank.rank_for_macs(layer, method, fraction, (7, 7), round_to=round_to)
        if method == "tucker2":
            assert rounded == tuple(lowrank.round_rank(r, h, round_to) for r, h in zip(exact, high))
        else:
            assert rounded == lowrank.round_rank(exact, high, round_to)
    assert lowrank.rank_for_macs(layer, method, 0.5, (7, 7), round_to=1) == \
        lowrank.rank_for_macs(layer, method, 0.5, (7, 7))     # multiples of 1: unchanged
    with pytest.raises(ValueError, match="round_to must be an int"):
        lowrank.rank_for_macs(layer, method, 0.5, (7, 7), round_to=0)


@pytest.mark.parametrize("method", ["spatial", "tucker2", "cp"])
@pytest.mark.parametrize("round_to", [8, 16])
def test_decompose_model_with_round_to_keeps_the_macs_bound(method, round_to):
    model = lc.create_model("baseline_cnn").eval()
    skip = ("features.0.0",)
    total = lc.count_macs(model)
    options = {"n_iter_max": 1} if method == "cp" else {}     # the plan, not the fit
    exact = lowrank.decompose_model(model, method, macs_ratio=2.0, skip=skip, **options)[1]
    small, plan = lowrank.decompose_model(model, method, macs_ratio=2.0, skip=skip,
                                          round_to=round_to, **options)
    assert set(plan) == set(exact)
    modules = dict(model.named_modules())
    for name, rank in plan.items():
        high = lowrank.max_rank(modules[name], method)
        for r, h in (zip(rank, high) if method == "tucker2" else [(rank, high)]):
            assert r == h or r % round_to == 0, (name, rank)
    # the bound macs_ratio promises, and the rounded plan's MACs are what it counts
    assert lc.count_macs(small) <= total / 2
    assert lc.count_macs(small) > total / 3
    layer_macs = lc.count_macs_by_module(model)
    rebuilt = total - sum(layer_macs[n] - lowrank.decomposed_macs(
        modules[n], method, r, (layer_macs[n] // modules[n].weight.numel(), 1))
        for n, r in plan.items())
    assert rebuilt == lc.count_macs(small)


def test_decompose_model_rounds_given_ranks():
    model = lc.create_model("baseline_cnn", widths=(16, 32, 48)).eval()
    vbmf_like = {"features.2.0": (22, 9), "features.6.0": [45, 44]}
    _, plan = lowrank.decompose_model(model, "tucker2", ranks=vbmf_like, round_to=8)
    assert plan == {"features.2.0": (24, 8), "features.6.0": (48, 48)}
    _, plan = lowrank.decompose_model(model, "spatial", ranks={"features.3.0": 13}, round_to=8)
    assert plan == {"features.3.0": 16}
    with pytest.raises(ValueError, match="features.3.0: rank must be in"):
        lowrank.decompose_model(model, "spatial", ranks={"features.3.0": 10_000}, round_to=8)


# ------------------------------------------------------ rebuilding a decomposed model

@pytest.mark.parametrize("method,options", [("spatial", {}), ("tucker2", {"iterations": 1}),
                                            ("cp", {"n_iter_max": 5}), ("svd", {})])
def test_build_decomposed_takes_the_state_dict_of_decompose_model(method, options):
    import json
    torch.manual_seed(0)
    model = lc.create_model("baseline_cnn", widths=(8, 16, 24)).eval()
    if method == "svd":
        small, plan = lowrank.decompose_model(model, method, ranks={"classifier.2": 4})
    else:
        small, plan = lowrank.decompose_model(model, method, macs_ratio=2.0,
                                              skip=("features.0.0",), **options)
    stored = json.loads(json.dumps(plan))        # as the zoo's manifest gives it back
    shell = lowrank.build_decomposed(model, method, stored)
    shapes = {k: v.shape for k, v in small.state_dict().items()}
    assert {k: v.shape for k, v in shell.state_dict().items()} == shapes
    shell.load_state_dict(small.state_dict())
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(shell.eval()(x), small(x))
    assert lc.count_macs(shell) == lc.count_macs(small)
    assert isinstance(model.features[2][0], nn.Conv2d)      # the original is untouched


def test_build_decomposed_rejects_bad_plans():
    model = lc.create_model("baseline_cnn", widths=(8, 16, 24))
    with pytest.raises(ValueError, match="features.3.0: rank must be in"):
        lowrank.build_decomposed(model, "cp", {"features.3.0": 0})
    with pytest.raises(ValueError, match="'nope' is not a module"):
        lowrank.build_decomposed(model, "tucker2", {"nope": (2, 2)})
    with pytest.raises(ValueError, match="classifier.2 .Linear. cannot be decomposed"):
        lowrank.build_decomposed(model, "spatial", {"classifier.2": 2})
    with pytest.raises(ValueError, match="method must be one of"):
        lowrank.build_decomposed(model, "tt", {})


# ----------------------------------------------------------------------- bad input

def test_bad_ranks_and_layers_are_refused_with_the_layer_named():
    conv = nn.Conv2d(8, 16, 3)
    with pytest.raises(ValueError, match=r"rank must be in \[1, 8\]"):
        lowrank.svd_linear(nn.Linear(8, 20), 9)
    with pytest.raises(ValueError, match="rank must be in"):
        lowrank.svd_linear(nn.Linear(8, 20), 0)
    with pytest.raises(TypeError, match="rank must be an int"):
        lowrank.spatial_separable_conv(conv, 2.5)
    with pytest.raises(ValueError, match="rank must be in"):
        lowrank.tucker2_conv(conv, (17, 4))
    with pytest.raises(ValueError, match="decomposes an nn.Conv2d, got Linear"):
        lowrank.tucker2_conv(nn.Linear(3, 3), (1, 1))
    with pytest.raises(ValueError, match="decomposes an nn.Linear, got Conv2d"):
        lowrank.svd_linear(conv, 1)
    for fn, rank in ((lowrank.tucker2_conv, (2, 2)), (lowrank.spatial_separable_conv, 2),
                     (lowrank.cp_conv, 2)):
        with pytest.raises(ValueError, match="grouped conv"):
            fn(nn.Conv2d(8, 8, 3, groups=2), rank)
    with pytest.raises(ValueError, match="zero padding"):
        lowrank.tucker2_conv(nn.Conv2d(4, 4, 3, padding="same"), (2, 2))


def test_decompose_model_bad_arguments():
    model = lc.create_model("baseline_cnn")
    with pytest.raises(ValueError, match="method must be one of"):
        lowrank.decompose_model(model, "qr", macs_ratio=2.0)
    with pytest.raises(ValueError, match="exactly one of"):
        lowrank.decompose_model(model, "tucker2")
    with pytest.raises(ValueError, match="macs_ratio must be >= 1"):
        lowrank.decompose_model(model, "tucker2", macs_ratio=0.5)
    with pytest.raises(ValueError, match="classifier.2 .Linear. cannot be decomposed by 'tucker2'"):
        lowrank.decompose_model(model, "tucker2", ranks={"classifier.2": (2, 2)})
    with pytest.raises(ValueError, match="'nope' is not a module"):
        lowrank.decompose_model(model, "cp", ranks={"nope": 2})
    with pytest.raises(ValueError, match="features.2.0: rank must be in"):
        lowrank.decompose_model(model, "spatial", ranks={"features.2.0": 10_000})
    with pytest.raises(ValueError, match="out of reach"):
        lowrank.decompose_model(model, "svd", macs_ratio=2.0)
    with pytest.raises(ValueError, match="method must be one of"):
        lowrank.decompose_layer(nn.Conv2d(4, 4, 3), "tt", 2)
    with pytest.raises(ValueError, match="macs_fraction must be in"):
        lowrank.rank_for_macs(nn.Linear(4, 4), "svd", 0.0)
    with pytest.raises(ValueError, match="matrix must be 2-D"):
        lowrank.evbmf_rank(torch.randn(3))
