"""Tests for lightcnn.weight_sharing: k-means shared layers, centroid gradients, PQ, bytes."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
import torch.nn.functional as F
from torch import nn

import lightcnn as lc
from lightcnn import quantization as Q
from lightcnn import weight_sharing as W


def _lenet() -> nn.Module:
    torch.manual_seed(0)
    return lc.create_model("lenet5").eval()


def _conv_weights(model):
    return {n: m.weight for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


@pytest.mark.parametrize("bits", [1, 2, 4, 5])
def test_shared_weights_take_at_most_2_to_the_bits_values(bits):
    model = _lenet()
    shared = W.share_weights(model, bits)
    books = W.shared_layers(shared)
    assert set(books) == set(_conv_weights(model))
    for name, w in _conv_weights(shared).items():
        assert w.unique().numel() <= 2**bits
        assert books[name].codebook.numel() == 2**bits
        assert int(books[name].indices.max()) < 2**bits
        assert torch.equal(w, books[name].codebook[books[name].indices])
        # the same as the clustering applied layer by layer
        codebook, indices = W.cluster_weights(_conv_weights(model)[name], bits)
        assert torch.equal(w, codebook[indices])
    # the input model is untouched
    assert not W.shared_layers(model)


def test_centroid_gradient_is_the_sum_over_its_cluster():
    shared = W.share_weights(_lenet(), 3)
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8)
    F.cross_entropy(shared(x), y).backward()
    # reference: the same network with the shared weights as plain leaf tensors
    plain = W.unshare(shared)
    F.cross_entropy(plain(x), y).backward()
    for name, book in W.shared_layers(shared).items():
        expected = Q.finetune_centroids_grad(plain.get_submodule(name).weight.grad, book.indices, 8)
        assert torch.allclose(book.codebook.grad, expected, atol=1e-6, rtol=1e-5)
        assert shared.get_submodule(name).parametrizations.weight.original.grad is None


def test_training_moves_centroids_and_keeps_the_sharing():
    shared = W.share_weights(_lenet(), 2)
    before = {n: b.codebook.detach().clone() for n, b in W.shared_layers(shared).items()}
    loader = [(torch.randn(16, 1, 28, 28), torch.arange(16) % 10) for _ in range(3)]
    lc.fit(shared, loader, epochs=1, lr=0.01, progress=False)
    for name, book in W.shared_layers(shared).items():
        assert not torch.equal(book.codebook, before[name])
        assert shared.get_submodule(name).weight.unique().numel() <= 4


def test_unshare_gives_plain_equal_weights():
    shared = W.share_weights(_lenet(), 4)
    plain = W.unshare(shared)
    assert not W.shared_layers(plain)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(shared(x), plain(x))


def test_mixed_precision_and_bytes_follow_the_formulas():
    model = _lenet()
    weights = _conv_weights(model)
    first, *rest = weights
    shared = W.share_weights(model, {first: 8, rest[0]: 2})
    size = W.weight_sharing_bytes(shared)
    expected = (Q.kmeans_bytes(weights[first].numel(), 8) + Q.kmeans_bytes(weights[rest[0]].numel(), 2)
                + sum(4 * weights[n].numel() for n in rest[1:]))
    assert size["weights"] == expected
    others = sum(p.numel() for n, p in model.named_parameters() if not n.endswith("weight")) + sum(
        b.numel() for b in model.buffers() if b.is_floating_point())
    assert size["other"] == 4 * others
    assert W.weight_sharing_bytes(model)["weights"] == 4 * sum(w.numel() for w in weights.values())


def test_product_quantized_model_reconstructs_pq_and_counts_bytes():
    model = _lenet()
    pq, sizes = W.product_quantize_model(model, subvector_dim=4, bits=3)
    for name, w in _conv_weights(model).items():
        rows, cols = w.shape[0], w[0].numel()
        got = pq.get_submodule(name).weight
        if cols % 4 == 0 and rows > 8:
            ref = Q.product_dequantize(*Q.product_quantize(w, 4, 3), w.shape)
            assert torch.equal(got, ref)
            assert sizes[name] == Q.product_bytes(rows, cols, 4, 3)
        else:
            assert torch.equal(got, w) and sizes[name] == 4 * w.numel()
    assert sum(sizes.values()) < 4 * sum(w.numel() for w in _conv_weights(model).values()) / 4


def test_bad_arguments_are_reported():
    model = _lenet()
    with pytest.raises(ValueError, match="bits"):
        W.share_weights(model, 9)
    with pytest.raises(ValueError, match="bits"):
        W.share_weights(model, 0)
    with pytest.raises(ValueError, match="not Conv2d/Linear"):
        W.share_weights(model, {"nope": 4})
    with pytest.raises(ValueError, match="already shared"):
        W.share_weights(W.share_weights(model, 4), 4)
    broken = _lenet()
    with torch.no_grad():
        next(broken.parameters())[0] = float("nan")
    with pytest.raises(ValueError):
        W.share_weights(broken, 4)
    with pytest.raises(ValueError, match="subvector_dim"):
        W.product_quantize_model(model, 0, 4)
    with pytest.raises(TypeError):
        W.share_weights("model", 4)


def _pruned_lenet(sparsity=0.8):
    from lightcnn import pruning
    torch.manual_seed(0)
    model = lc.create_model("lenet5")
    pruning.apply_masks(model, pruning.global_masks(model, sparsity))
    return pruning.remove_masks(model)


def test_share_weights_keep_zeros_keeps_the_pruned_zeros_and_shares_the_rest():
    from lightcnn import pruning
    model = _pruned_lenet()
    shared = W.share_weights(model, 3, keep_zeros=True)
    for name, layer in pruning.prunable_layers(model).items():
        w, s = layer.weight.detach(), shared.get_submodule(name).weight.detach()
        assert torch.equal(s == 0, w == 0)                 # the same zeros, no new ones
        assert s[w != 0].unique().numel() <= 8
        # each survivor sits on the centroid nearest to it (the k-means of the nonzeros)
        p = W.shared_layers(shared)[name]
        nearest = (w[w != 0][:, None] - p.codebook.detach()[None, :]).abs().argmin(1)
        assert torch.equal(p.codebook.detach()[nearest], s[w != 0])
    # without keep_zeros every layer either loses zeros or spends a centroid on them
    plain = W.share_weights(model, 3)
    for name, layer in pruning.prunable_layers(model).items():
        w, s = layer.weight.detach(), plain.get_submodule(name).weight.detach()
        assert (s[w == 0] != 0).any() or s[w != 0].unique().numel() <= 7


def test_masked_centroids_get_gradients_from_the_survivors_only():
    model = _pruned_lenet()
    shared = W.share_weights(model, 2, keep_zeros=True)
    name = "features.0"
    p = W.shared_layers(shared)[name]
    layer = shared.get_submodule(name)
    g = torch.randn_like(layer.weight)
    (layer.weight * g).sum().backward()
    mask = p.mask.bool()
    expected = torch.zeros(4).scatter_add_(0, p.indices[mask], g[mask])   # Han's eq. 3, survivors only
    assert torch.allclose(p.codebook.grad, expected, atol=1e-5)


def test_masked_bytes_count_a_bitmask_and_the_survivors_indices():
    model = _pruned_lenet()
    shared = W.share_weights(model, 4, keep_zeros=True)
    expected = 0
    for layer in shared_layers_of(shared):
        n, z = layer.mask.numel(), int(layer.mask.count_nonzero())
        expected += -(-n // 8) + -(-z * 4 // 8) + 4 * 16
    assert W.weight_sharing_bytes(shared)["weights"] == expected


def shared_layers_of(model):
    return list(W.shared_layers(model).values())


def test_keep_zeros_rejects_an_empty_layer_and_a_non_bool():
    model = _pruned_lenet()
    with torch.no_grad():
        model.features[0].weight.zero_()
    with pytest.raises(ValueError, match="'features.0' has no nonzero weight"):
        W.share_weights(model, 2, keep_zeros=True)
    with pytest.raises(TypeError, match="keep_zeros must be a bool"):
        W.share_weights(model, 2, keep_zeros=1)


# ---------------------------------------------------------------------------------------
# The k-means start: every codeword used, error no worse than Han's linear start
# ---------------------------------------------------------------------------------------

def _gaussian_conv(seed=0):
    """A conv layer with Gaussian weights (64 x 32 x 3 x 3, std 0.05)."""
    torch.manual_seed(seed)
    conv = nn.Conv2d(32, 64, 3)
    with torch.no_grad():
        conv.weight.normal_(0.0, 0.05)
    return conv


# (tensor, bits): 25 values at 4 bits, where the linear start used 11 to 13 of 16
# codewords, and a Gaussian conv at 8 bits (207 of 256)
CASES = {f"25_values_seed{s}":
         (lambda s=s: torch.randn(25, generator=torch.Generator().manual_seed(s)), 4)
         for s in range(5)}
CASES["gaussian_conv_8_bits"] = (lambda: _gaussian_conv().weight.detach(), 8)


def _used(indices, bits):
    return torch.bincount(indices.reshape(-1), minlength=2**bits).gt(0).sum().item()


@pytest.mark.parametrize("init", ["kmeans++", "density", "linear"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_codeword_is_used_when_there_are_enough_distinct_values(case, init):
    make, bits = CASES[case]
    w = make()
    assert w.unique().numel() >= 2**bits
    codebook, indices = W.cluster_weights(w, bits, init=init)
    assert _used(indices, bits) == 2**bits
    assert codebook.unique().numel() == 2**bits
    # each weight sits on its nearest codeword, and the codebook is sorted
    nearest = (w.reshape(-1, 1) - codebook[None, :]).abs().argmin(1)
    assert torch.equal(codebook[nearest], codebook[indices].reshape(-1))
    assert torch.equal(codebook, codebook.sort().values)


@pytest.mark.parametrize("case", sorted(CASES))
def test_share_weights_uses_every_codeword_and_errs_less_than_the_linear_start(case):
    make, bits = CASES[case]
    w = make()
    model = nn.Sequential(nn.Linear(w.numel(), 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(w.reshape(1, -1))
    shared = W.share_weights(model, bits)
    book = W.shared_layers(shared)["0"]
    assert _used(book.indices, bits) == 2**bits
    error = (shared[0].weight - model[0].weight).pow(2).mean().item()
    # the old start: evenly spaced centroids, empty clusters left empty
    linear = (Q.kmeans_quantize(w, bits, init="linear") - w).pow(2).mean().item()
    assert _used(Q.kmeans_codebook(w, bits, init="linear")[1], bits) < 2**bits
    assert error <= linear


def test_the_linear_start_without_empty_clusters_is_han_et_al_s():
    # where evenly spaced centroids leave no cluster empty, nothing is reseeded: the
    # result is the plain k-means from the linear start
    w = torch.linspace(-1, 1, 101) ** 3
    codebook, indices = W.cluster_weights(w, 2, init="linear")
    reference, ref_indices = Q.kmeans_codebook(w, 2, init="linear")
    assert _used(ref_indices, 2) == 4
    assert torch.equal(codebook, reference) and torch.equal(indices, ref_indices)


def test_kmeans_plus_plus_is_deterministic_under_a_seed():
    w = _gaussian_conv().weight.detach()
    a = W.cluster_weights(w, 5, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a, W.cluster_weights(w, 5, seed=1)))
    assert not torch.equal(a[0], W.cluster_weights(w, 5, seed=2)[0])
    model = nn.Sequential(_gaussian_conv())
    one, two = W.share_weights(model, 3, seed=4), W.share_weights(model, 3, seed=4)
    assert torch.equal(one[0].weight, two[0].weight)


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(1, 5), extra=st.integers(0, 40), seed=st.integers(0, 10**6),
       init=st.sampled_from(["kmeans++", "density", "linear"]))
def test_enough_distinct_values_always_use_every_codeword(bits, extra, seed, init):
    g = torch.Generator().manual_seed(seed)
    # heavy-tailed values, some repeated: clusters empty easily from a fixed start
    w = torch.randn(2**bits + extra, generator=g, dtype=torch.float64) ** 3
    w = torch.cat([w, w[: extra // 2]])
    codebook, indices = W.cluster_weights(w, bits, init=init, seed=seed)
    assert _used(indices, bits) == 2**bits
    assert torch.equal(indices, Q._nearest_1d(w, codebook))


def test_fewer_distinct_values_than_codewords_are_kept_exactly():
    w = torch.tensor([0.5, -1.0, 0.5, 2.0, 2.0, -1.0])
    for init in ("kmeans++", "density", "linear"):
        codebook, indices = W.cluster_weights(w, 3, init=init)
        assert torch.equal(codebook[indices], w)
        assert codebook.numel() == 8


def test_keep_zeros_uses_every_codeword_for_the_survivors():
    model = _pruned_lenet()
    shared = W.share_weights(model, 4, keep_zeros=True)
    for name, p in W.shared_layers(shared).items():
        survivors = p.indices[p.mask.bool()]
        assert _used(survivors, 4) == 16
        assert (shared.get_submodule(name).weight[p.mask == 0] == 0).all()


def test_cluster_weights_rejects_bad_arguments():
    w = torch.randn(10)
    with pytest.raises(ValueError, match="init must be one of"):
        W.cluster_weights(w, 2, init="random")
    with pytest.raises(ValueError, match="init must be one of"):
        W.share_weights(_lenet(), 2, init="forgy")
    with pytest.raises(ValueError, match="seed must be an int"):
        W.cluster_weights(w, 2, seed=1.5)
    with pytest.raises(ValueError, match="bits"):
        W.cluster_weights(w, 0)
    with pytest.raises(ValueError, match="iters"):
        W.cluster_weights(w, 2, iters=-1)
    with pytest.raises(ValueError, match="weight must be finite"):
        W.cluster_weights(w * float("inf"), 2)
    with pytest.raises(TypeError, match="weight must be a torch.Tensor"):
        W.cluster_weights([1.0, 2.0], 1)
