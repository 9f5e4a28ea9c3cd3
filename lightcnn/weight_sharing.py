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

The arithmetic (``kmeans_codebook``, ``product_quantize``, byte formulas) lives in
``lightcnn.quantization``; this module applies it to models. Taught in chapters/05_quantization.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import parametrize

from .profile import _check_model
from .pruning import prunable_layers
from .quantization import (CODE_BITS, _check_bits, _check_int, kmeans_bytes, kmeans_codebook,
                           product_bytes, product_dequantize, product_quantize)

__all__ = ["Codebook", "share_weights", "shared_layers", "unshare", "weight_sharing_bytes",
           "product_quantize_model"]

class Codebook(nn.Module):
    """Parametrization ``weight = codebook[indices]`` (the float weight it replaces is ignored),
    or ``codebook[indices] * mask`` for a pruned layer, whose zeros stay zero: fine-tuning
    then moves each centroid by the gradients of the unpruned weights that share it only.
    """

    def __init__(self, codebook: torch.Tensor, indices: torch.Tensor,
                 mask: torch.Tensor | None = None):
        super().__init__()
        self.codebook = nn.Parameter(codebook.detach().clone())
        self.register_buffer("indices", indices.detach().clone())
        self.register_buffer("mask", None if mask is None else mask.detach().clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        shared = self.codebook[self.indices]
        return shared if self.mask is None else shared * self.mask


def share_weights(model: nn.Module, bits: int | dict[str, int], iters: int = 20,
                  init: str = "linear", keep_zeros: bool = False) -> nn.Module:
    """A copy of ``model`` whose Conv2d/Linear weights are k-means shared, per layer.

    Args:
        bits: index width for every layer, or ``{layer name: bits}`` (layers not named keep
            their float weights; mixed precision).
        iters, init: as :func:`lightcnn.quantization.kmeans_codebook`.
        keep_zeros: cluster only the nonzero weights and keep the zeros exactly zero (a
            mask), as Deep Compression shares the weights that pruning left: ``2^bits``
            centroids for the survivors, none spent on the pruned.

    Raises:
        ValueError: bits outside ``CODE_BITS``, a named layer that is not a Conv2d/Linear,
            NaN/infinite weights (from ``kmeans_codebook``), or with ``keep_zeros`` a layer
            whose weights are all zero.
    """
    if not isinstance(keep_zeros, bool):
        raise TypeError(f"keep_zeros must be a bool, got {keep_zeros!r}")
    _check_model(model)
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
            codebook, survivors = kmeans_codebook(weight[nonzero], b, iters, init)
            indices = torch.zeros(weight.shape, dtype=torch.int64)
            indices[nonzero] = survivors      # pruned entries point at centroid 0, masked
            p = Codebook(codebook, indices, nonzero.to(weight.dtype))
        else:
            p = Codebook(*kmeans_codebook(layer.weight, b, iters, init))
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
