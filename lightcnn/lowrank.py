"""Low-rank approximation: replace a layer by a product of thinner layers.

Denton et al., "Exploiting Linear Structure Within Convolutional Networks for Efficient
Evaluation", arXiv 1404.0736 (SVD of weight matrices). Jaderberg, Vedaldi & Zisserman,
"Speeding up Convolutional Neural Networks with Low Rank Expansions", arXiv 1405.3866
(scheme 2: a k x 1 conv to ``rank`` channels, then a 1 x k conv). Lebedev et al.,
"Speeding-up Convolutional Neural Networks Using Fine-tuned CP-Decomposition",
arXiv 1412.6553. Kim et al., "Compression of Deep Convolutional Neural Networks for Fast
and Low Power Mobile Applications", arXiv 1511.06530 (Tucker-2 with ranks from VBMF).
Nakajima et al., "Global Analytic Solution of Fully-observed Variational Bayesian Matrix
Factorization", JMLR 14 (2013) (the empirical VBMF rank).

A weight matrix ``W`` (m x n) of rank ``r`` is a product ``A @ B`` with ``A`` m x r and
``B`` r x n, so the layer ``x -> W x`` becomes two layers costing ``r (m + n)``
multiply-accumulates instead of ``m n``: cheaper below the break-even rank
``m n / (m + n)``. The truncated SVD gives the best such product in Frobenius norm
(Eckart-Young: the error is the root of the sum of the discarded squared singular
values). A conv kernel ``W`` (N x C x k x k) is a 4-way tensor: it can be cut along the
spatial axes (Jaderberg), along the two channel axes (Tucker-2), or into rank-one terms
(CP). Each decomposition here returns an ``nn.Sequential`` that replaces the layer with
the same input and output shapes; the network is then fine-tuned with ``lc.fit``.

Taught in chapters/08_lowrank.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ._checks import (check_int, check_ints, check_mapping, check_module, check_sequence,
                      check_str, check_tensor, is_real)
from .profile import INPUT_SHAPE, count_macs, count_macs_by_module

__all__ = ["METHODS", "break_even_rank", "build_decomposed", "cp_conv", "decompose_layer",
           "decompose_model", "decomposed_macs", "energy_rank", "error_curve", "evbmf_rank",
           "hosvd", "max_rank", "rank_for_macs", "round_rank", "spatial_separable_conv",
           "svd_linear", "truncated_svd", "tucker2_conv", "tucker2_ranks_vbmf"]

# the decompositions decompose_model knows, by the layer type each takes
METHODS = ("svd", "spatial", "tucker2", "cp")


# ----------------------------------------------------------------------------- checks

def _check_conv(conv: nn.Module, method: str, name: str = "conv") -> nn.Conv2d:
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"{name}: {method} decomposes an nn.Conv2d, got "
                         f"{type(conv).__name__}")
    if conv.groups != 1:
        raise ValueError(f"{name}: {method} cannot take a grouped conv "
                         f"(groups={conv.groups}); it acts on the full C_out x C_in kernel")
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError(f"{name}: {method} needs numeric zero padding, got "
                         f"padding={conv.padding!r}, padding_mode={conv.padding_mode!r}")
    return conv


def _check_layer(layer: nn.Module, method: str, kind: bool = False) -> None:
    # the method first: it says which layer fits; with kind, the layer's class too
    check_str("method", method, METHODS)
    check_module("layer", layer, (nn.Linear if method == "svd" else nn.Conv2d) if kind
                 else nn.Module)


def _check_ranks(ranks: tuple[int, int]) -> None:
    check_ints("ranks", ranks, 1, length=2)


def _check_rank(rank: int, high: int, what: str) -> int:
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise TypeError(f"rank must be an int, got {type(rank).__name__}")
    if not 1 <= rank <= high:
        raise ValueError(f"rank must be in [1, {high}] for {what}, got {rank}")
    return rank


def max_rank(layer: nn.Module, method: str) -> int | tuple[int, int]:
    """The largest meaningful rank of ``method`` on ``layer``: ``min(m, n)`` of the matrix
    it factors (``(C_in, C_out)`` for Tucker-2's two ranks; CP has no such bound, and
    returns the rank at which it stops saving MACs)."""
    _check_layer(layer, method)
    if method == "svd":
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"svd decomposes an nn.Linear, got {type(layer).__name__}")
        return min(layer.in_features, layer.out_features)
    conv = _check_conv(layer, method)
    n, c, kh, kw = conv.weight.shape
    if method == "spatial":
        return min(c * kh, kw * n)
    if method == "tucker2":
        return (min(n, c * kh * kw), min(c, n * kh * kw))
    if method == "cp":
        return max(1, (n * c * kh * kw) // (c + kh + kw + n))
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def round_rank(rank: int, high: int, round_to: int) -> int:
    """``rank`` rounded to the nearest multiple of ``round_to`` (a tie goes to the
    larger), at least ``round_to``; ``high`` (the largest rank, see :func:`max_rank`) if
    that would exceed it.

    The rule of ``channel_pruning.plan_channel_pruning``'s ``round_to``, for ranks: the
    factored layers are convolutions with ``rank`` channels, and CPU kernels work on
    channels in blocks of 8 (AVX2) or 16 (AVX-512) float32, so rank 19 costs about what
    24 does. ``round_rank(19, 64, 8) == 16``, ``round_rank(20, 64, 8) == 24``,
    ``round_rank(3, 64, 8) == 8``, ``round_rank(60, 62, 8) == 62``.
    """
    check_int("high", high, 1)
    check_int("rank", rank, 1, high)
    check_int("round_to", round_to, 1)
    return _rounded(rank, high, round_to)


def _rounded(rank: int, high: int, round_to: int) -> int:
    rounded = max(round_to, (2 * rank + round_to) // (2 * round_to) * round_to)
    return high if rounded > high else rounded


def _round_ranks(layer: nn.Module, method: str, rank: int | Sequence[int],
                 round_to: int | None) -> int | tuple[int, int]:
    """:func:`round_rank` of ``rank`` (each of Tucker-2's two, against its own bound)."""
    if round_to is None:
        return tuple(rank) if method == "tucker2" else rank
    high = max_rank(layer, method)
    if method == "tucker2":
        return tuple(_rounded(r, h, round_to) for r, h in zip(rank, high))
    return _rounded(rank, high, round_to)


def _factored(layer: nn.Module, method: str, rank: int | Sequence[int]) -> list[nn.Module]:
    """The layers that replace ``layer`` under ``method`` at ``rank``, default-initialized
    (after checking the layer and the rank): the shapes each decomposition then fills,
    and the shapes :func:`build_decomposed` rebuilds to load a decomposed model into."""
    if method == "svd":
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"svd decomposes an nn.Linear, got {type(layer).__name__}")
        m, n = layer.weight.shape
        _check_rank(rank, min(m, n), f"Linear({n}, {m})")
        return [nn.Linear(n, rank, bias=False), nn.Linear(rank, m, bias=layer.bias is not None)]
    conv = _check_conv(layer, method)
    n, c, kh, kw = conv.weight.shape
    bias = conv.bias is not None
    (sh, sw), (ph, pw), (dh, dw) = conv.stride, conv.padding, conv.dilation
    if method == "spatial":
        _check_rank(rank, min(c * kh, kw * n), f"a {n}x{c}x{kh}x{kw} kernel (min(C kh, kw N))")
        # kh x 1 then 1 x kw: stride, padding and dilation split between the two
        return [nn.Conv2d(c, rank, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1),
                          bias=False),
                nn.Conv2d(rank, n, (1, kw), stride=(1, sw), padding=(0, pw), dilation=(1, dw),
                          bias=bias)]
    if method == "tucker2":
        _check_ranks(rank)
        r_out, r_in = rank
        # a rank is bounded by both sides of its unfolding
        _check_rank(r_out, min(n, c * kh * kw), f"the output channels of a {n}x{c}x{kh}x{kw} kernel")
        _check_rank(r_in, min(c, n * kh * kw), f"the input channels of a {n}x{c}x{kh}x{kw} kernel")
        return [nn.Conv2d(c, r_in, 1, bias=False),
                nn.Conv2d(r_in, r_out, (kh, kw), stride=conv.stride, padding=conv.padding,
                          dilation=conv.dilation, bias=False),
                nn.Conv2d(r_out, n, 1, bias=bias)]
    if method == "cp":
        _check_rank(rank, n * c * kh * kw, f"a {n}x{c}x{kh}x{kw} kernel")
        return [nn.Conv2d(c, rank, 1, bias=False),
                nn.Conv2d(rank, rank, (kh, 1), stride=(sh, 1), padding=(ph, 0),
                          dilation=(dh, 1), groups=rank, bias=False),
                nn.Conv2d(rank, rank, (1, kw), stride=(1, sw), padding=(0, pw),
                          dilation=(1, dw), groups=rank, bias=False),
                nn.Conv2d(rank, n, 1, bias=bias)]
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


# ------------------------------------------------------------------------- matrices

def truncated_svd(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-``rank`` factors ``A`` (m x r), ``B`` (r x n) with ``A @ B ~ matrix``.

    ``matrix = U S V^T``; ``A = U_r S_r^(1/2)``, ``B = S_r^(1/2) V_r^T`` (the singular
    values split evenly, so both factors have the same scale: better for fine-tuning than
    putting ``S`` on one side). By Eckart-Young,
    ``||matrix - A B||_F = sqrt(sum_{i > r} s_i^2)``.
    """
    check_tensor("matrix", matrix)
    if matrix.ndim != 2:
        raise ValueError(f"matrix must be 2-D, got shape {tuple(matrix.shape)}")
    _check_rank(rank, min(matrix.shape), f"a {tuple(matrix.shape)} matrix")
    # float64: the small singular values of a trained layer are lost in float32 rounding
    u, s, vh = torch.linalg.svd(matrix.detach().double(), full_matrices=False)
    root = s[:rank].sqrt()
    a = u[:, :rank] * root                       # (m, r)
    b = root[:, None] * vh[:rank]                # (r, n)
    return a.to(matrix.dtype), b.to(matrix.dtype)


def energy_rank(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest ``r`` with ``sum_{i<r} s_i^2 >= energy * sum_i s_i^2`` (singular values
    in decreasing order): the rank that keeps that fraction of the squared Frobenius
    norm, so the relative error is at most ``sqrt(1 - energy)``."""
    check_tensor("singular_values", singular_values)
    if not is_real(energy) or not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy!r}")
    s2 = singular_values.detach().double().flatten() ** 2
    if s2.numel() == 0 or s2.sum() == 0:
        raise ValueError("singular_values must hold at least one non-zero value")
    kept = torch.cumsum(s2, 0) / s2.sum()
    # a tolerance, so energy=1.0 does not demand more than rounding leaves
    return int((kept < energy - 1e-12).sum().item()) + 1


def error_curve(weight: torch.Tensor, fractions: Sequence[float]) -> list[float]:
    """Relative error of the best rank-``r`` approximation of ``weight``'s matrix, for
    ``r = ceil(f min(m, n))`` at each fraction ``f`` in ``fractions``.

    The matrix is ``weight`` flattened to ``(N, C kh kw)`` (a conv kernel; a Linear
    weight is already ``m x n``). By Eckart-Young the truncated SVD is the best rank-``r``
    matrix, and its relative Frobenius error needs only the singular values ``s_i``:
    ``e(r) = sqrt(sum_{i > r} s_i^2) / sqrt(sum_i s_i^2)``. A trained layer's curve falls
    faster than an untrained one's: training concentrates the norm in few directions.
    """
    check_tensor("weight", weight)
    if weight.ndim < 2:
        raise ValueError(f"weight must have 2 or more dimensions, got shape {tuple(weight.shape)}")
    check_sequence("fractions", fractions, nonempty=True)
    for f in fractions:
        if not is_real(f) or not 0.0 < f <= 1.0:
            raise ValueError(f"fractions must hold numbers in (0, 1], got {f!r}")
    # (N, C, kh, kw) -> (N, C kh kw); float64 so the small singular values survive
    s2 = torch.linalg.svdvals(weight.detach().flatten(1).double()).square()
    total = s2.sum()
    if total == 0:
        raise ValueError("weight must not be all zeros (its relative error is undefined)")
    # the rank f min(m, n) rounded up, so every fraction keeps at least one direction
    return [(s2[math.ceil(f * len(s2)):].sum() / total).sqrt().item() for f in fractions]


def break_even_rank(m: int, n: int) -> float:
    """``m n / (m + n)``: a rank-``r`` factorization ``r (m + n)`` of an ``m x n`` layer
    costs fewer MACs (and parameters) than the layer exactly when ``r`` is below it."""
    check_int("m", m)
    check_int("n", n)
    if m < 1 or n < 1:
        raise ValueError(f"m and n must be >= 1, got m={m}, n={n}")
    return m * n / (m + n)


def svd_linear(layer: nn.Linear, rank: int) -> nn.Sequential:
    """``Linear(n, m)`` -> ``Linear(n, rank, bias=False)``, ``Linear(rank, m)``, from the
    truncated SVD of its weight (``W ~ A B``: the first layer applies ``B``, the second
    ``A`` and the bias). Costs ``rank (m + n)`` MACs per input instead of ``m n``."""
    check_module("layer", layer)
    first, second = _factored(layer, "svd", rank)      # checks the layer and the rank
    a, b = truncated_svd(layer.weight, rank)
    with torch.no_grad():
        first.weight.copy_(b)
        second.weight.copy_(a)
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    return nn.Sequential(first, second)


# -------------------------------------------------------------- spatial (Jaderberg)

def spatial_separable_conv(conv: nn.Conv2d, rank: int) -> nn.Sequential:
    """Jaderberg's scheme 2: ``conv`` (N x C x kh x kw) -> a ``kh x 1`` conv from ``C`` to
    ``rank`` channels, then a ``1 x kw`` conv from ``rank`` to ``N``.

    ``W[n, c, i, j] ~ sum_r V[r, c, i] H[n, r, j]``: the truncated SVD of ``W`` unfolded
    to a ``(C kh) x (kw N)`` matrix (rows ``(c, i)``, columns ``(j, n)``), which is the
    optimal scheme-2 filter pair in the Frobenius norm of the kernel (Tai et al.,
    arXiv 1511.06067). MACs per output pixel: ``rank (C kh + N kw)`` instead of
    ``N C kh kw``. Stride, padding and dilation are split between the two convs.
    """
    vertical, horizontal = _factored(conv, "spatial", rank)   # checks the conv and the rank
    n, c, kh, kw = conv.weight.shape
    # (N, C, kh, kw) -> (C, kh, kw, N) -> (C kh, kw N)
    matrix = conv.weight.detach().permute(1, 2, 3, 0).reshape(c * kh, kw * n)
    a, b = truncated_svd(matrix, rank)           # (C kh, r), (r, kw N)
    with torch.no_grad():
        # (C kh, r) -> (r, C, kh, 1)
        vertical.weight.copy_(a.T.reshape(rank, c, kh, 1))
        # (r, kw N) -> (r, kw, N) -> (N, r, 1, kw)
        horizontal.weight.copy_(b.reshape(rank, kw, n).permute(2, 0, 1).unsqueeze(2))
        if conv.bias is not None:
            horizontal.bias.copy_(conv.bias)
    return nn.Sequential(vertical, horizontal)


# ------------------------------------------------------------------ Tucker-2 (Kim)

def _unfold(tensor: torch.Tensor, mode: int) -> torch.Tensor:
    """Mode-``mode`` unfolding: ``tensor.shape[mode]`` rows, the other axes flattened."""
    return tensor.movedim(mode, 0).reshape(tensor.shape[mode], -1)


def _leading_left_vectors(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    u, _, _ = torch.linalg.svd(matrix, full_matrices=False)
    return u[:, :rank]


def hosvd(weight: torch.Tensor, ranks: tuple[int, int], iterations: int = 0
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tucker-2 of a kernel along its two channel axes: ``W ~ G x_0 U_out x_1 U_in``.

    ``U_out`` (N x R_out) and ``U_in`` (C x R_in) are the leading left singular vectors of
    the mode-0 and mode-1 unfoldings (the HOSVD, De Lathauwer et al. 2000); the core is
    ``G = W x_0 U_out^T x_1 U_in^T`` (R_out x R_in x kh x kw). ``iterations`` > 0 refines
    the factors by HOOI (each factor recomputed from ``W`` projected on the other), which
    never increases the error. Computed in float64.

    Returns:
        ``(core, u_out, u_in)`` in ``weight``'s dtype.
    """
    check_tensor("weight", weight)
    _check_ranks(ranks)
    if weight.ndim != 4:
        raise ValueError(f"weight must be a 4-D conv kernel, got shape {tuple(weight.shape)}")
    n, c, kh, kw = weight.shape
    r_out, r_in = ranks
    # a rank is bounded by both sides of its unfolding
    _check_rank(r_out, min(n, c * kh * kw), f"the output channels of a {n}x{c}x{kh}x{kw} kernel")
    _check_rank(r_in, min(c, n * kh * kw), f"the input channels of a {n}x{c}x{kh}x{kw} kernel")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be an int >= 0, got {iterations!r}")
    w = weight.detach().double()
    u_out = _leading_left_vectors(_unfold(w, 0), r_out)
    u_in = _leading_left_vectors(_unfold(w, 1), r_in)
    for _ in range(iterations):
        # W x_1 U_in^T: (N, R_in, kh, kw); its mode-0 unfolding gives the new U_out
        u_out = _leading_left_vectors(_unfold(torch.einsum("ncij,cr->nrij", w, u_in), 0), r_out)
        u_in = _leading_left_vectors(_unfold(torch.einsum("ncij,nr->rcij", w, u_out), 1), r_in)
    core = torch.einsum("ncij,no,cr->orij", w, u_out, u_in)
    return core.to(weight.dtype), u_out.to(weight.dtype), u_in.to(weight.dtype)


def tucker2_conv(conv: nn.Conv2d, ranks: tuple[int, int], iterations: int = 0
                 ) -> nn.Sequential:
    """Kim et al.'s Tucker-2: ``conv`` -> 1x1 conv ``C -> R_in`` (``U_in^T``), the core
    ``R_in -> R_out`` conv with ``conv``'s kernel size, stride, padding and dilation
    (``G``), 1x1 conv ``R_out -> N`` (``U_out``, and the bias).

    MACs per output pixel: ``C R_in s^2 + R_in R_out kh kw + R_out N`` (``s`` the stride,
    since the first 1x1 runs at the input resolution) instead of ``N C kh kw``.
    """
    first, middle, last = _factored(conv, "tucker2", ranks)   # checks the conv and the ranks
    core, u_out, u_in = hosvd(conv.weight, tuple(ranks), iterations)
    with torch.no_grad():
        first.weight.copy_(u_in.T[:, :, None, None])
        middle.weight.copy_(core)
        last.weight.copy_(u_out[:, :, None, None])
        if conv.bias is not None:
            last.bias.copy_(conv.bias)
    return nn.Sequential(first, middle, last)


# ------------------------------------------------------------------------ CP (Lebedev)

def cp_conv(conv: nn.Conv2d, rank: int, n_iter_max: int = 500, seed: int = 0
            ) -> nn.Sequential:
    """Lebedev et al.'s CP: ``W[n, c, i, j] ~ sum_r A_n[n, r] A_c[c, r] A_h[i, r] A_w[j, r]``
    -> 1x1 conv ``C -> R`` (``A_c``), ``kh x 1`` depthwise conv (``A_h``), ``1 x kw``
    depthwise conv (``A_w``), 1x1 conv ``R -> N`` (``A_n``, and the bias).

    The factors come from TensorLy's CP-ALS (``tensorly.decomposition.parafac``, SVD
    initialization, the field's reference implementation); ALS is not guaranteed to find
    the best rank-R fit (CP has no Eckart-Young), so the result is checked by its
    reconstruction error and then fine-tuned, as Lebedev et al. do. MACs per output pixel:
    ``C R s^2 + R kh s + R kw + R N`` (about) instead of ``N C kh kw``.

    Each rank-one term's scale is split evenly over its four factors (every factor's
    column gets the norm ``(|A_n[:, r]| |A_c[:, r]| |A_h[:, r]| |A_w[:, r]|)^(1/4)``), as
    :func:`truncated_svd` splits ``S``: the kernel is the same, but ALS leaves the scale
    wherever it converged (on the book's baseline up to 17 in ``A_n`` against 1.7 in
    ``A_h``), and SGD then moves the terms' factors at very different relative rates.
    After 120 steps at lr 1e-3 the CP baseline of chapter 08 scored 24% as ALS left it
    and 87% balanced (its batch-norm statistics could not follow the unbalanced one).
    """
    first, vertical, horizontal, last = _factored(conv, "cp", rank)   # checks conv and rank
    check_int("n_iter_max", n_iter_max, 1)
    check_int("seed", seed, 0)
    try:
        import tensorly as tl
        from tensorly.decomposition import parafac
    except ImportError as err:  # TensorLy is in requirements.txt; a copied file may lack it
        raise ImportError("cp_conv needs TensorLy: pip install tensorly") from err
    weight = conv.weight.detach().double().numpy()
    with tl.backend_context("numpy"):
        with warnings.catch_warnings():
            # a rank above a mode's size: TensorLy completes the SVD start with random
            # columns (seeded), and says so
            warnings.filterwarnings("ignore", message="Trying to compute SVD")
            cp = parafac(weight, rank, n_iter_max=n_iter_max, init="svd", tol=1e-10,
                         random_state=seed, normalize_factors=False)
    a_n, a_c, a_h, a_w = (torch.from_numpy(np.asarray(f)).to(conv.weight.dtype)
                          for f in cp.factors)
    a_n = a_n * torch.from_numpy(np.asarray(cp.weights)).to(a_n.dtype)  # fold the weights
    a_n, a_c, a_h, a_w = _balance([a_n, a_c, a_h, a_w])
    with torch.no_grad():
        first.weight.copy_(a_c.T[:, :, None, None])          # (R, C, 1, 1)
        vertical.weight.copy_(a_h.T[:, None, :, None])       # (R, 1, kh, 1)
        horizontal.weight.copy_(a_w.T[:, None, None, :])     # (R, 1, 1, kw)
        last.weight.copy_(a_n[:, :, None, None])             # (N, R, 1, 1)
        if conv.bias is not None:
            last.bias.copy_(conv.bias)
    return nn.Sequential(first, vertical, horizontal, last)


def _balance(factors: list[torch.Tensor]) -> list[torch.Tensor]:
    """CP factors (each ``(dim, R)``) with every term's norm split evenly: column ``r`` of
    each factor scaled to the geometric mean of the columns' norms, which keeps their
    product (the term) unchanged. A term with a zero column stays as it is."""
    norms = torch.stack([f.double().norm(dim=0) for f in factors])      # (4, R)
    mean = norms.prod(0) ** (1 / len(factors))
    scale = torch.where(norms > 0, mean / norms.clamp_min(1e-300), torch.ones_like(norms))
    scale[:, (norms == 0).any(0)] = 1.0
    return [(f.double() * s).to(f.dtype) for f, s in zip(factors, scale)]


# ------------------------------------------------------------------- VBMF (Nakajima)

def _golden_section(f: Callable[[float], float], low: float, high: float,
                    iterations: int = 100) -> float:
    """Minimizer of a unimodal ``f`` on ``[low, high]`` (golden-section search: numpy
    and torch have no bounded scalar minimizer, and this keeps the module scipy-free).
    With several minima it finds one of them, not necessarily the lowest."""
    ratio = (math.sqrt(5) - 1) / 2
    a, b = low, high
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iterations):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = f(d)
    return (a + b) / 2


def _global_minimum(f: Callable[[float], float], low: float, high: float, points: int = 256,
                    breakpoints: Sequence[float] = ()) -> float:
    """Minimizer of ``f`` on ``[low, high]`` when ``f`` may have several local minima.

    ``f`` is evaluated on ``points`` geometrically spaced values (linearly spaced when
    ``low <= 0``) and at the ``breakpoints`` inside the range (where ``f`` changes form);
    golden-section search then refines between the two grid neighbours of the best value.
    A minimum narrower than the grid spacing (about ``(high / low) ** (1 / points)``) can
    still be missed.
    """
    if low > 0:
        grid = np.geomspace(low, high, points)
    else:
        grid = np.linspace(low, high, points + 1)[1:]      # f is often undefined at 0
    inside = [b for b in breakpoints if low < b < high]
    grid = np.unique(np.concatenate([grid, np.asarray(inside, dtype=float)]))
    values = np.array([f(float(v)) for v in grid])
    i = int(np.argmin(values))
    a, b = float(grid[max(i - 1, 0)]), float(grid[min(i + 1, len(grid) - 1)])
    refined = _golden_section(f, a, b) if a < b else float(grid[i])
    return refined if f(refined) < values[i] else float(grid[i])


def evbmf_rank(matrix: torch.Tensor) -> int:
    """The rank the empirical variational Bayesian matrix factorization keeps (Nakajima et
    al. 2013, the global analytic solution), with the noise variance estimated too.

    With ``L <= M`` the matrix's sides, ``alpha = L / M`` and singular values ``s_h``,
    EVBMF keeps the components with ``s_h > sqrt(M sigma^2 (1 + tau) (1 + alpha / tau))``,
    ``tau = 2.5129 sqrt(alpha)``, where ``sigma^2`` minimizes the EVBMF free energy
    between the paper's bounds. The free energy can have several local minima (two tiers
    of singular values read as signal + noise or as more signal), so the minimum is found
    globally: a grid over the bounds, including the values
    ``sigma^2 = s_h^2 / (M x_bar)``, ``x_bar = (1 + tau) (1 + alpha / tau)``, where a
    component crosses the threshold, then golden-section search around the best grid
    point. (Nakajima's reference code and a plain golden-section search assume one
    minimum and can stop at a local one: a smaller or larger rank.) Kim et al. apply it to
    the mode-0 and mode-1 unfoldings of each kernel to pick Tucker-2's ranks.
    """
    check_tensor("matrix", matrix)
    if matrix.ndim != 2 or min(matrix.shape) < 2:
        raise ValueError(f"matrix must be 2-D with both sides >= 2, got shape "
                         f"{tuple(matrix.shape)}")
    y = matrix.detach().double()
    if y.shape[0] > y.shape[1]:
        y = y.T
    l, m = y.shape
    alpha = l / m
    tau_bar = 2.5129 * math.sqrt(alpha)
    x_bar = (1 + tau_bar) * (1 + alpha / tau_bar)
    s = torch.linalg.svdvals(y).numpy()
    total = float((y ** 2).sum())
    residual = max(total - float((s ** 2).sum()), 0.0)   # 0: all L components are kept
    # the largest rank EVBMF can return, and the bounds on sigma^2 it implies
    h_upper = int(min(math.ceil(l / (1 + alpha)) - 1, l)) - 1
    upper = total / (l * m)
    lower = max(s[h_upper + 1] ** 2 / (m * x_bar), float(np.mean(s[h_upper + 1:] ** 2)) / m)

    def tau(x: np.ndarray) -> np.ndarray:
        return 0.5 * (x - (1 + alpha) + np.sqrt((x - (1 + alpha)) ** 2 - 4 * alpha))

    def free_energy(sigma2: float) -> float:
        x = s ** 2 / (m * sigma2)
        big, small = x[x > x_bar], x[x <= x_bar]
        t = tau(big)
        return float(np.sum(small - np.log(small)) + np.sum(big - t)
                     + np.sum(np.log((t + 1) / big)) + alpha * np.sum(np.log(t / alpha + 1))
                     + residual / (m * sigma2))

    # where component h crosses the threshold: the free energy has a kink there
    crossings = s ** 2 / (m * x_bar)
    sigma2 = _global_minimum(free_energy, lower, upper, breakpoints=crossings) \
        if lower < upper else upper
    threshold = math.sqrt(m * sigma2 * (1 + tau_bar) * (1 + alpha / tau_bar))
    return int((s > threshold).sum())


def tucker2_ranks_vbmf(conv: nn.Conv2d) -> tuple[int, int]:
    """Kim et al.'s ranks ``(R_out, R_in)``: EVBMF on the mode-0 and mode-1 unfoldings of
    the kernel, at least 1 each."""
    _check_conv(conv, "tucker2")
    w = conv.weight.detach()
    return max(1, evbmf_rank(_unfold(w, 0))), max(1, evbmf_rank(_unfold(w, 1)))


# -------------------------------------------------------------- MACs and rank choice

def decomposed_macs(layer: nn.Module, method: str, rank: int | tuple[int, int],
                    out_hw: tuple[int, int] = (1, 1)) -> int:
    """MACs of ``layer`` decomposed by ``method`` at ``rank``, for an output of
    ``out_hw`` pixels (the formulas in each decomposition's docstring; a Linear has one
    "pixel"). The original layer costs ``N C kh kw H W`` (conv) or ``m n`` (Linear)."""
    _check_layer(layer, method, kind=True)
    if method == "tucker2":
        _check_ranks(rank)
    else:
        check_int("rank", rank, 1)
    check_ints("out_hw", out_hw, 1, length=2)
    h, w = out_hw
    if method == "svd":
        return rank * (layer.in_features + layer.out_features)
    n, c, kh, kw = layer.weight.shape
    sh, sw = layer.stride
    if method == "spatial":
        # the k x 1 conv runs on H x (W sw) pixels, before the horizontal stride
        return rank * c * kh * h * w * sw + rank * n * kw * h * w
    if method == "tucker2":
        r_out, r_in = rank
        return (c * r_in * h * w * sh * sw) + (r_in * r_out * kh * kw * h * w) + (r_out * n * h * w)
    if method == "cp":
        return rank * (c * sh * sw + kh * sw + kw + n) * h * w
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def _tucker_ranks(conv: nn.Conv2d, fraction: float) -> tuple[int, int]:
    """Tucker-2 ranks proportional to the channels, ``(ceil(f N), ceil(f C))``, within
    ``max_rank``."""
    n, c = conv.weight.shape[:2]
    high_out, high_in = max_rank(conv, "tucker2")
    return (min(high_out, max(1, math.ceil(fraction * n))),
            min(high_in, max(1, math.ceil(fraction * c))))


def rank_for_macs(layer: nn.Module, method: str, macs_fraction: float,
                  out_hw: tuple[int, int] = (1, 1), round_to: int | None = None
                  ) -> int | tuple[int, int] | None:
    """The largest rank whose decomposed MACs are at most ``macs_fraction`` of the
    layer's own (Tucker-2: both ranks the same fraction of their channels), or ``None``
    if even rank 1 costs more.

    With ``round_to``, that rank is then rounded by :func:`round_rank` (each of
    Tucker-2's two against its own bound): to the nearest multiple of ``round_to``, a tie
    to the larger, at least ``round_to``, never above :func:`max_rank`. The MACs then
    move by up to half a step either way, so they may exceed ``macs_fraction``;
    ``decompose_model`` keeps its whole-model bound by choosing the fraction with the
    rounding applied.
    """
    _check_layer(layer, method, kind=True)
    if not is_real(macs_fraction) or not 0.0 < macs_fraction <= 1.0:
        raise ValueError(f"macs_fraction must be in (0, 1], got {macs_fraction!r}")
    check_ints("out_hw", out_hw, 1, length=2)
    check_int("round_to", round_to, 1, none=True)
    rank = _largest_rank(layer, method, macs_fraction, out_hw)
    return None if rank is None else _round_ranks(layer, method, rank, round_to)


def _largest_rank(layer: nn.Module, method: str, macs_fraction: float,
                  out_hw: tuple[int, int]) -> int | tuple[int, int] | None:
    if method == "svd":
        original = layer.in_features * layer.out_features
    else:
        n, c, kh, kw = layer.weight.shape
        original = n * c * kh * kw * out_hw[0] * out_hw[1]
    budget = macs_fraction * original
    if method == "tucker2":
        n, c = layer.weight.shape[:2]
        steps = sorted({_tucker_ranks(layer, k / max(n, c)) for k in range(1, max(n, c) + 1)})
        fitting = [r for r in steps if decomposed_macs(layer, method, r, out_hw) <= budget]
        return max(fitting, key=lambda r: r[0] * r[1]) if fitting else None
    high = max_rank(layer, method)
    fitting = [r for r in range(1, high + 1) if decomposed_macs(layer, method, r, out_hw) <= budget]
    return fitting[-1] if fitting else None


# --------------------------------------------------------------------- whole models

def decompose_layer(layer: nn.Module, method: str, rank: int | tuple[int, int],
                    **options) -> nn.Sequential:
    """``layer`` replaced by ``method`` at ``rank`` (Tucker-2: ``(R_out, R_in)``):
    :func:`svd_linear`, :func:`spatial_separable_conv`, :func:`tucker2_conv` or
    :func:`cp_conv`, with ``options`` passed on."""
    _check_layer(layer, method)
    if method == "svd":
        return svd_linear(layer, rank, **options)
    if method == "spatial":
        return spatial_separable_conv(layer, rank, **options)
    if method == "tucker2":
        return tucker2_conv(layer, tuple(rank), **options)
    return cp_conv(layer, rank, **options)


def _eligible(model: nn.Module, method: str, skip: Sequence[str]) -> dict[str, nn.Module]:
    kind = nn.Linear if method == "svd" else nn.Conv2d
    layers = {}
    for name, module in model.named_modules():
        if name in skip or not isinstance(module, kind):
            continue
        if kind is nn.Conv2d:
            # a 1x1 conv has no spatial axes to split, a grouped one no full kernel
            if module.groups != 1 or module.kernel_size == (1, 1):
                continue
            if method == "spatial" and 1 in module.kernel_size:
                continue
        layers[name] = module
    return layers


def decompose_model(model: nn.Module, method: str, macs_ratio: float | None = None,
                    ranks: Mapping[str, int | tuple[int, int]] | None = None,
                    skip: Sequence[str] = (), input_shape: tuple[int, ...] = INPUT_SHAPE,
                    round_to: int | None = None,
                    **options) -> tuple[nn.Module, dict[str, int | tuple[int, int]]]:
    """A copy of ``model`` with its eligible layers decomposed by ``method``.

    Eligible: ``nn.Linear`` for ``"svd"``; ungrouped ``nn.Conv2d`` with a kernel larger
    than 1x1 for ``"spatial"``, ``"tucker2"`` and ``"cp"``; minus the names in ``skip``.
    Give either ``ranks`` (layer name -> rank; Tucker-2 takes ``(R_out, R_in)``), or
    ``macs_ratio``: the whole model's MACs divided by at least this (e.g. 2.0 for half),
    reached by giving every eligible layer the largest rank under one shared fraction of
    its own MACs (found by bisection). Layers that cannot save MACs keep their form.
    ``options`` go to the decomposition (``iterations`` for Tucker-2's HOOI,
    ``n_iter_max`` and ``seed`` for CP-ALS).

    ``round_to`` rounds every rank of the plan by :func:`round_rank` (nearest multiple of
    ``round_to``, a tie to the larger, at least ``round_to``, never above
    :func:`max_rank`; Tucker-2's two ranks each), so the factored convolutions have
    channel counts that fill the CPU's vector registers. With ``macs_ratio`` the
    bisection runs on the rounded ranks, so the MACs are still divided by at least
    ``macs_ratio`` (with fewer fractions to choose from, possibly by more); given
    ``ranks`` are rounded as they are.

    Returns:
        ``(decomposed model, {layer name: rank})``.

    Raises:
        ValueError: an unknown method, a ``ranks`` name that is not an eligible layer, a
            rank out of range, or a ``macs_ratio`` the eligible layers cannot reach.
    """
    check_module("model", model)
    check_str("method", method, METHODS)
    if macs_ratio is not None and not is_real(macs_ratio):
        raise TypeError(f"macs_ratio must be a number or None, got {macs_ratio!r}")
    check_mapping("ranks", ranks, none=True)
    check_sequence("skip", skip, str)
    check_ints("input_shape", input_shape, 1)
    check_int("round_to", round_to, 1, none=True)
    if (macs_ratio is None) == (ranks is None):
        raise ValueError("give exactly one of macs_ratio and ranks")
    names = dict(model.named_modules())
    for name in skip:
        if name not in names:
            raise ValueError(f"skip: {name!r} is not a module of the model")
    eligible = _eligible(model, method, skip)
    if ranks is not None:
        _check_plan(names, eligible, method, ranks)
        plan = {name: _round_ranks(names[name], method, rank, round_to)
                for name, rank in ranks.items()}
    else:
        if not macs_ratio >= 1.0:
            raise ValueError(f"macs_ratio must be >= 1 (how many times fewer MACs), "
                             f"got {macs_ratio}")
        plan = _plan_for_ratio(model, method, macs_ratio, eligible, input_shape, round_to)
    decomposed = copy.deepcopy(model)
    for name, rank in plan.items():
        try:
            decomposed.set_submodule(name, decompose_layer(names[name], method, rank, **options))
        except (ValueError, TypeError) as err:
            raise type(err)(f"{name}: {err}") from err
    return decomposed, plan


def _check_plan(names: dict[str, nn.Module], eligible: dict[str, nn.Module], method: str,
                ranks: Mapping[str, int | Sequence[int]]) -> None:
    """Every layer ``ranks`` names exists, ``method`` can take it, and its rank is in
    range (the error names the layer)."""
    for name, rank in ranks.items():
        if name not in names:
            raise ValueError(f"ranks: {name!r} is not a module of the model")
        if name not in eligible:
            raise ValueError(f"ranks: {name} ({type(names[name]).__name__}) cannot be "
                             f"decomposed by {method!r}")
        try:
            _factored(names[name], method, rank)
        except (ValueError, TypeError) as err:
            raise type(err)(f"{name}: {err}") from err


def build_decomposed(model: nn.Module, method: str,
                     ranks: Mapping[str, int | Sequence[int]]) -> nn.Module:
    """A copy of ``model`` with each layer that ``ranks`` names replaced by ``method``'s
    factored layers at that rank, *untrained* (default initialization): the shapes of
    ``decompose_model(model, method, ranks=ranks)`` without computing any factor, for a
    decomposed model's saved state dict to load into (the zoo stores the plan beside the
    weights). Tucker-2's ranks may come as lists (as JSON gives them back).

    Raises:
        ValueError: an unknown method, a name that is not an eligible layer, or a rank
            out of range (the error names the layer).
    """
    check_module("model", model)
    check_str("method", method, METHODS)
    check_mapping("ranks", ranks)
    names = dict(model.named_modules())
    _check_plan(names, _eligible(model, method, ()), method, ranks)
    built = copy.deepcopy(model)
    for name, rank in ranks.items():
        rank = tuple(rank) if method == "tucker2" else rank
        built.set_submodule(name, nn.Sequential(*_factored(names[name], method, rank)))
    return built


def _plan_for_ratio(model: nn.Module, method: str, macs_ratio: float,
                    eligible: dict[str, nn.Module], input_shape: tuple[int, ...],
                    round_to: int | None = None) -> dict[str, int | tuple[int, int]]:
    total = count_macs(model, input_shape)
    per_layer = count_macs_by_module(model, input_shape)
    target = total / macs_ratio
    # output pixels per layer from its counted MACs; the formulas use only H * W
    out_hw = {name: (per_layer[name] // layer.weight.numel(), 1) if isinstance(layer, nn.Conv2d)
              else (1, 1) for name, layer in eligible.items()}

    lowest = (1, 1) if method == "tucker2" else 1

    def plan_at(fraction: float) -> tuple[dict, int]:
        # below a layer's rank-1 cost it keeps rank 1, so MACs grow with the fraction
        # (rounding to the nearest multiple keeps them growing: it never decreases a rank)
        plan, macs = {}, total
        for name, layer in eligible.items():
            rank = (rank_for_macs(layer, method, fraction, out_hw[name], round_to)
                    or _round_ranks(layer, method, lowest, round_to))
            saved = per_layer[name] - decomposed_macs(layer, method, rank, out_hw[name])
            if saved > 0:
                plan[name] = rank
                macs -= saved
        return plan, macs

    low, high = 0.0, 1.0
    best, best_macs = plan_at(1e-9)
    if best_macs > target:
        raise ValueError(f"macs_ratio={macs_ratio} is out of reach: decomposing every "
                         f"eligible layer at the lowest rank leaves {best_macs:,} of "
                         f"{total:,} MACs")
    for _ in range(30):                    # the largest shared fraction that meets target
        mid = (low + high) / 2
        plan, macs = plan_at(mid)
        if macs <= target:
            low, best = mid, plan
        else:
            high = mid
    return best
