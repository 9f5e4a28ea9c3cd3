"""Weight sharing over a whole network: k-means codebooks (Deep Compression) and product
quantization, with the codebooks trainable and the stored size counted.

Han, Mao & Dally, "Deep Compression", arXiv 1510.00149, section 3: every weight of a
layer is replaced by the nearest of ``k = 2^b`` shared values (the layer's codebook), so
the layer stores b-bit indices plus ``k`` float32 centroids. Fine-tuning then trains the
centroids: with ``W = C[I]`` the gradient of a centroid is the sum of the gradients of
the weights that share it,

    dL/dC_k = sum over {i : I_i = k} of dL/dW_i      (their eq. 3),

which is exactly what autograd computes for the gather ``C[I]``. So each layer's weight
becomes a ``torch.nn.utils.parametrize`` parametrization, ``weight = codebook[indices]``,
with ``codebook`` an ``nn.Parameter`` and ``indices`` a fixed buffer: any optimizer and
``lc.fit`` train it, and the weights keep at most ``k`` distinct values at every step.

Product quantization (Jegou et al., TPAMI 2011; Wu et al., arXiv 1512.06473) shares
whole sub-vectors of a weight's rows instead of scalars (``lc.quantization.product_quantize``).

The clustering of one layer is :func:`cluster_weights` (k-means with a k-means++ start and
empty clusters reseeded, so all ``2^b`` codewords are used); the rest of the arithmetic
(``product_quantize``, byte formulas) lives in ``lightcnn.quantization``, and this module
applies it to models. Taught in chapters/05_quantization.
"""

from __future__ import annotations

import copy
import numbers

import torch
from torch import nn
from torch.nn.utils import parametrize

from ._checks import check_tensor
from .profile import _check_model
from .pruning import prunable_layers
from .quantization import (CODE_BITS, _check_bits, _check_int, _check_tensor, _nearest_1d,
                           kmeans_bytes, product_bytes, product_dequantize,
                           product_quantize)

__all__ = ["INITS", "cluster_weights", "Codebook", "share_weights", "shared_layers", "unshare",
           "weight_sharing_bytes", "product_quantize_model"]

# how cluster_weights places its first centroids
INITS = ("kmeans++", "density", "linear")


def _check_init(init: str) -> str:
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    return init


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    return int(seed)


def _kmeans_plus_plus(w: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """``k`` starting centroids drawn from ``w`` by D^2 sampling (Arthur & Vassilvitskii 2007):
    the first uniformly, each next one with probability ``D(x)^2 / sum D^2``, ``D(x)`` the
    distance from ``x`` to its nearest centroid so far.

    Each draw costs a pass over the weights, ``k`` passes in all; above ``256 k`` weights
    they are drawn from a seeded sample of ``256 k`` (faiss trains its k-means on at most
    256 points per centroid the same way), and Lloyd's steps then use every weight.
    """
    g = torch.Generator().manual_seed(seed)
    if w.numel() > 256 * k:
        w = w[torch.randperm(w.numel(), generator=g)[:256 * k]]
    chosen = [w[torch.randint(w.numel(), (1,), generator=g)].item()]
    d2 = (w - chosen[0]) ** 2
    for _ in range(k - 1):
        total = d2.sum()
        if total == 0:                    # every value is a centroid already: repeat one
            chosen.append(chosen[-1])
            continue
        # inverse-CDF draw: no category limit, unlike torch.multinomial
        u = torch.rand(1, generator=g, dtype=torch.float64) * total
        i = int(torch.searchsorted(torch.cumsum(d2, 0), u).clamp(max=w.numel() - 1))
        chosen.append(w[i].item())
        d2 = torch.minimum(d2, (w - chosen[-1]) ** 2)
    return torch.tensor(chosen, dtype=torch.float64)


def _reseed_empty(w: torch.Tensor, codebook: torch.Tensor, indices: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Move the centroids of empty clusters onto the distinct weights farthest from their
    own centroids (as scikit-learn relocates them), and reassign. Those weights' squared
    errors drop to 0, so the total error falls; with fewer distinct values than centroids
    the surplus stays empty."""
    k = codebook.numel()
    for _ in range(k):                    # a reassignment may empty another: rarely loops
        empty = torch.nonzero(torch.bincount(indices, minlength=k) == 0).flatten()
        if empty.numel() == 0:
            break
        # the largest error of each distinct value, so two centroids never land on one value
        values, inverse = torch.unique(w, return_inverse=True)
        error = torch.zeros_like(values).scatter_reduce_(
            0, inverse, (w - codebook[indices]) ** 2, "amax")
        worst = torch.topk(error, min(empty.numel(), values.numel()))
        targets = values[worst.indices[worst.values > 0]]
        if targets.numel() == 0:
            break                         # every weight sits on a centroid already
        codebook = codebook.clone()
        codebook[empty[:targets.numel()]] = targets
        indices = _nearest_1d(w, codebook)
    return codebook, indices


def cluster_weights(weight: torch.Tensor, bits: int, iters: int = 20, init: str = "kmeans++",
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D k-means (Lloyd) with ``k = 2^bits`` centroids over all entries of ``weight``,
    minimising ``sum_i (w_i - c_{I_i})^2``, every centroid used where it can be.

    Each step assigns every weight to its nearest centroid and moves each centroid to the
    mean of its weights, until no assignment changes or after ``iters`` steps. Clusters
    left empty (by the start or by a step) get their centroids moved onto the distinct
    weights with the largest errors, so when ``weight`` has at least ``k`` distinct values
    all ``k`` codewords are used; a fixed start alone leaves many unused (evenly spaced
    centroids: 11 of 16 on 25 Gaussian values, 207 of 256 on a Gaussian conv layer at 8
    bits).

    Starts (``init``):
        ``"kmeans++"``: centroids drawn from the weights by D^2 sampling, seeded by
            ``seed``. A weight far from every centroid chosen so far is the likeliest next
            pick, so the rare large weights still get centroids of their own.
        ``"density"``: centroids at evenly spaced quantiles of the weights: most of them
            where the weights are dense, few on the large ones (on a Gaussian conv layer
            at 8 bits and 20 steps its error is 3x that of the linear start without
            reseeding, 8x k-means++'s).
        ``"linear"``: evenly spaced over ``[min, max]`` (Han et al.'s choice; without
            empty clusters the result equals :func:`lightcnn.quantization.kmeans_codebook`).

    Han et al. (Deep Compression, arXiv 1510.00149, section 3.2 and figure 5) compared
    Forgy (random), density-based and linear starts and found linear best for accuracy:
    large weights matter more but are few, so random and density starts give them hardly
    any centroid. k-means++ keeps that property (it favours far-away weights) while
    spending every codeword; fine-tuning the centroids then recovers accuracy either way.

    Returns:
        ``codebook`` ``(2^bits,)`` sorted ascending, in ``weight``'s dtype, and int64
        ``indices`` in ``[0, 2^bits)`` shaped like ``weight``, nearest to the codebook.

    Raises:
        TypeError: ``weight`` is not a tensor.
        ValueError: an empty or non-finite ``weight``, ``bits`` outside ``CODE_BITS``,
            ``iters < 0``, an unknown ``init``, or a non-integer ``seed``.
    """
    _check_tensor(weight, "weight")
    bits, iters = _check_bits(bits, CODE_BITS), _check_int(iters, "iters", 0)
    init, seed = _check_init(init), _check_seed(seed)
    w, k = weight.detach().reshape(-1).double(), 2**bits
    if init == "kmeans++":
        codebook = _kmeans_plus_plus(w, k, seed)
    elif init == "density":
        codebook = torch.quantile(w, torch.linspace(0.0, 1.0, k, dtype=torch.float64))
    else:
        codebook = torch.linspace(w.min().item(), w.max().item(), k, dtype=torch.float64)
    indices = _nearest_1d(w, codebook)
    codebook, indices = _reseed_empty(w, codebook, indices)
    for _ in range(iters):
        # Lloyd step: the mean of a cluster is the value that minimises its squared error
        counts = torch.bincount(indices, minlength=k)
        sums = torch.zeros(k, dtype=torch.float64).scatter_add_(0, indices, w)
        codebook = torch.where(counts > 0, sums / counts.clamp(min=1), codebook)
        new = _nearest_1d(w, codebook)
        codebook, new = _reseed_empty(w, codebook, new)
        if torch.equal(new, indices):
            break
        indices = new
    # ascending codewords: index order is value order (k-means++ and reseeding shuffle it)
    order = torch.argsort(codebook, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(k)
    return codebook[order].to(weight.dtype), rank[indices].reshape(weight.shape)


class Codebook(nn.Module):
    """Parametrization ``weight = codebook[indices]`` (the float weight it replaces is ignored),
    or ``codebook[indices] * mask`` for a pruned layer, whose zeros stay zero: fine-tuning
    then moves each centroid by the gradients of the unpruned weights that share it only.
    """

    def __init__(self, codebook: torch.Tensor, indices: torch.Tensor,
                 mask: torch.Tensor | None = None):
        super().__init__()
        check_tensor("codebook", codebook, 1, floating=True, nonempty=True)
        check_tensor("indices", indices, integer=True)
        check_tensor("mask", mask, none=True)
        if mask is not None and mask.shape != indices.shape:
            raise ValueError(f"mask must be shaped like indices {tuple(indices.shape)}, got "
                             f"{tuple(mask.shape)}")
        self.codebook = nn.Parameter(codebook.detach().clone())
        self.register_buffer("indices", indices.detach().clone())
        self.register_buffer("mask", None if mask is None else mask.detach().clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        shared = self.codebook[self.indices]
        return shared if self.mask is None else shared * self.mask


# The default start is k-means++, not Han et al.'s linear one: evenly spaced centroids
# leave clusters empty wherever the weights are sparse (a fifth of an 8-bit codebook on a
# Gaussian layer), and those codewords are stored and never used; k-means++ with empty
# clusters reseeded uses them all, errs less, and still favours the rare large weights.
# init="linear" reproduces the paper's start.
def share_weights(model: nn.Module, bits: int | dict[str, int], iters: int = 20,
                  init: str = "kmeans++", keep_zeros: bool = False, seed: int = 0) -> nn.Module:
    """A copy of ``model`` whose Conv2d/Linear weights are k-means shared, per layer.

    Args:
        bits: index width for every layer, or ``{layer name: bits}`` (layers not named keep
            their float weights; mixed precision).
        iters, init, seed: as :func:`cluster_weights` (``"kmeans++"``, ``"density"`` or
            Han et al.'s ``"linear"``; every layer uses the same ``seed``).
        keep_zeros: cluster only the nonzero weights and keep the zeros exactly zero (a
            mask), as Deep Compression shares the weights that pruning left: ``2^bits``
            centroids for the survivors, none spent on the pruned.

    Raises:
        ValueError: bits outside ``CODE_BITS``, a named layer that is not a Conv2d/Linear,
            an unknown ``init``, NaN/infinite weights (from :func:`cluster_weights`), or
            with ``keep_zeros`` a layer whose weights are all zero.
    """
    if not isinstance(keep_zeros, bool):
        raise TypeError(f"keep_zeros must be a bool, got {keep_zeros!r}")
    _check_model(model)
    init, seed = _check_init(init), _check_seed(seed)
    layers = prunable_layers(model)
    if isinstance(bits, dict):
        unknown = sorted(set(bits) - set(layers))
        if unknown:
            raise ValueError(f"bits names layers that are not Conv2d/Linear: {unknown}; "
                             f"layers: {sorted(layers)}")
        plan = {name: _check_bits(b, CODE_BITS) for name, b in bits.items()}
    else:
        plan = {name: _check_bits(bits, CODE_BITS) for name in layers}
    shared = copy.deepcopy(model)
    for name, b in plan.items():
        layer = shared.get_submodule(name)
        if parametrize.is_parametrized(layer, "weight"):
            raise ValueError(f"layer {name!r} is already shared or masked; remove that first")
        if keep_zeros:
            weight = layer.weight.detach()
            nonzero = weight != 0
            if not nonzero.any():
                raise ValueError(f"layer {name!r} has no nonzero weight to share")
            codebook, survivors = cluster_weights(weight[nonzero], b, iters, init, seed)
            indices = torch.zeros(weight.shape, dtype=torch.int64)
            indices[nonzero] = survivors      # pruned entries point at centroid 0, masked
            p = Codebook(codebook, indices, nonzero.to(weight.dtype))
        else:
            p = Codebook(*cluster_weights(layer.weight, b, iters, init, seed))
        parametrize.register_parametrization(layer, "weight", p, unsafe=True)
        # the original float weight stays attached but is never read: no gradient, no update
        layer.parametrizations.weight.original.requires_grad_(False)
    return shared


def shared_layers(model: nn.Module) -> dict[str, Codebook]:
    """The :class:`Codebook` of every shared layer, by layer name."""
    _check_model(model)
    out = {}
    for name, layer in prunable_layers(model).items():
        if parametrize.is_parametrized(layer, "weight"):
            p = layer.parametrizations.weight[0]
            if isinstance(p, Codebook):
                out[name] = p
    return out


def unshare(model: nn.Module) -> nn.Module:
    """A copy with plain float weights equal to the shared ones (for export or pruning)."""
    plain = copy.deepcopy(model)
    for name in shared_layers(plain):
        layer = plain.get_submodule(name)
        value = layer.weight.detach().clone()
        # not parametrize.remove_parametrizations: a deep copy shares the generated
        # "ParametrizedConv2d" class with the original, and removal edits that class
        # (breaking the original); restoring the plain class of this one module is local
        layer.__class__ = type(layer).__bases__[0]
        del layer._modules["parametrizations"]
        layer.weight = nn.Parameter(value)
    return plain


def weight_sharing_bytes(model: nn.Module) -> dict[str, int]:
    """Stored bytes of a shared model: ``{"weights": ..., "other": ..., "total": ...}``.

    ``weights``: Conv2d/Linear weights, each shared one as ``kmeans_bytes`` (bit-packed
    indices + float32 codebook; with a mask, indices of the nonzero entries only plus one
    bit per entry for where they are), each unshared one as 4 bytes per entry. ``other``: every
    other parameter and buffer (biases, batch norm) as 4 bytes per entry.
    """
    _check_model(model)
    shared = shared_layers(model)
    weights = other = 0
    for name, layer in prunable_layers(model).items():
        if name in shared:
            p = shared[name]
            bits = (p.codebook.numel() - 1).bit_length()
            if p.mask is None:
                weights += kmeans_bytes(p.indices.numel(), bits)
            else:   # a bitmask of the positions, then the survivors' indices
                weights += -(-p.mask.numel() // 8) + kmeans_bytes(int(p.mask.count_nonzero()), bits)
        else:
            weights += 4 * layer.weight.numel()
    counted = {id(layer.weight) for layer in prunable_layers(model).values()
               if not parametrize.is_parametrized(layer, "weight")}
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if "parametrizations" in name or id(t) in counted or not t.is_floating_point():
            continue  # shared weights (counted above), their indices, BN's batch counter
        other += 4 * t.numel()
    return {"weights": weights, "other": other, "total": weights + other}


def product_quantize_model(model: nn.Module, subvector_dim: int, bits: int,
                           iters: int = 20) -> tuple[nn.Module, dict[str, int]]:
    """A copy whose Conv2d/Linear weights are product-quantized (rows split into
    ``subvector_dim``-long sub-vectors, ``2^bits`` codewords per block of columns).

    A layer whose row length is not a multiple of ``subvector_dim``, or with fewer rows
    than codewords (nothing to share), keeps its float weight.

    Returns:
        The copy (plain float weights equal to the reconstruction) and the stored bytes of
        every Conv2d/Linear weight, by layer name (``product_bytes`` or 4 per float entry).
    """
    _check_model(model)
    bits = _check_bits(bits, CODE_BITS)
    subvector_dim = _check_int(subvector_dim, "subvector_dim", 1)
    quantized, sizes = copy.deepcopy(model), {}
    for name, layer in prunable_layers(quantized).items():
        w = layer.weight
        rows, cols = w.shape[0], w[0].numel()
        if cols % subvector_dim or rows <= 2**bits:
            sizes[name] = 4 * w.numel()
            continue
        codebooks, codes = product_quantize(w, subvector_dim, bits, iters)
        with torch.no_grad():
            w.copy_(product_dequantize(codebooks, codes, w.shape))
        sizes[name] = product_bytes(rows, cols, subvector_dim, bits)
    return quantized, sizes
