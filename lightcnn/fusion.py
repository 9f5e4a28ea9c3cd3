"""Fold batch norm into the convolution before it, for inference.

Ioffe & Szegedy, "Batch Normalization", arXiv 1502.03167. Jacob et al., "Quantization and
Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference",
arXiv 1712.05877 (section 3.2, folding batch norm into the weights).

In eval mode batch norm is a fixed per-channel affine map,
``y = gamma * (z - mean) / sqrt(var + eps) + beta``, and ``z = w * x + b`` is linear, so
the two compose into one convolution with

    w' = w * gamma / sqrt(var + eps)
    b' = beta + (b - mean) * gamma / sqrt(var + eps)

The fused model computes the same function (up to rounding) with one layer fewer per
block: no batch-norm pass over the activations, and nothing left for a quantizer to
treat separately. Parameters drop by ``C_out`` per fold (2 per channel for gamma and
beta, 1 for the new bias); MACs are unchanged.

Taught in chapters/03_light_architectures.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

from ._checks import check_float, check_int, check_ints, check_mapping, check_module, check_tensor
from .profile import compare_latency

__all__ = ["FusionReport", "fuse_conv_bn", "measure_fusion"]


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold ``bn`` into ``conv`` in place with the formulas of the module docstring."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm2d without running statistics "
                         "(track_running_stats=False): its eval output depends on the batch")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"BatchNorm2d has num_features={bn.num_features} but the conv before "
                         f"it has out_channels={conv.out_channels}")
    gamma = bn.weight if bn.affine else torch.ones_like(bn.running_var)
    beta = bn.bias if bn.affine else torch.zeros_like(bn.running_var)
    # one scale per output channel: gamma / sqrt(var + eps)
    scale = gamma / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    # (C_out,) -> (C_out, 1, 1, 1) broadcasts over each filter, grouped convs included
    conv.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    new_bias = beta + (bias - bn.running_mean) * scale
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias)
    else:
        conv.bias.copy_(new_bias)


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every BatchNorm2d that directly follows a Conv2d (in the
    same ``nn.Sequential``) folded into that conv and replaced by ``nn.Identity``.

    ``w' = w * gamma / sqrt(var + eps)``, ``b' = beta + (b - mean) * gamma / sqrt(var + eps)``.
    The copy is in eval mode: folding uses the running statistics, so it equals the
    original model in eval mode, not in training mode. The input model is not changed.
    A batch norm not preceded by a conv in its ``nn.Sequential`` is left in place.

    Args:
        model: any module; conv/batch-norm pairs are found in ``nn.Sequential``
            containers at any depth (as :class:`lightcnn.blocks.ConvBNAct` and
            :class:`lightcnn.models.BaselineCNN` build them).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: a batch norm to fold has no running statistics or a width that does
            not match its conv.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    fused = copy.deepcopy(model).eval()
    # list first: the loop replaces children of the modules it walks
    for module in list(fused.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (_, first), (name, second) in zip(children, children[1:]):
            if isinstance(first, nn.Conv2d) and isinstance(second, nn.BatchNorm2d):
                _fold(first, second)
                setattr(module, name, nn.Identity())
    if any(isinstance(m, nn.BatchNorm2d) for m in fused.modules()):
        _fuse_traced(fused)
    return fused


def _fuse_traced(model: nn.Module) -> None:
    """Fold the pairs that are not neighbours in an ``nn.Sequential`` (torchvision's ResNet
    blocks call ``self.conv1`` then ``self.bn1`` in ``forward``), found by tracing the
    forward pass with ``torch.fx``: a batch norm whose input is a conv's output used by
    nothing else, each module called once (folding a shared batch norm into one of its
    convs would change the other call). A model ``torch.fx`` cannot trace keeps those
    batch norms."""
    try:
        graph = torch.fx.Tracer().trace(model)
    except Exception:  # data-dependent control flow: keep what the Sequential pass did
        return
    modules = dict(model.named_modules())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        source = node.args[0]
        if (isinstance(source, torch.fx.Node) and source.op == "call_module"
                and isinstance(modules.get(source.target), nn.Conv2d)
                and len(source.users) == 1
                and calls[node.target] == calls[source.target] == 1):
            _fold(modules[source.target], modules[node.target])
            model.set_submodule(node.target, nn.Identity())


@dataclass(frozen=True)
class FusionReport:
    """What folding batch norm changed: the function (``max_diff``), the operator count
    and the measured median latency per batch size, before and after."""

    max_diff: float
    batch_norms_before: int
    batch_norms_after: int
    ms_before: dict[int, float]
    ms_after: dict[int, float]

    def __post_init__(self):
        check_float("max_diff", self.max_diff, 0)
        check_int("batch_norms_before", self.batch_norms_before, 0)
        check_int("batch_norms_after", self.batch_norms_after, 0)
        check_mapping("ms_before", self.ms_before)
        check_mapping("ms_after", self.ms_after)

    def speedup(self, batch_size: int) -> float:
        return self.ms_before[batch_size] / self.ms_after[batch_size]

    def __str__(self) -> str:
        times = "  ".join(f"b={b}: {self.ms_before[b]:.3f} -> {self.ms_after[b]:.3f} ms "
                          f"({self.speedup(b):.2f}x)" for b in self.ms_before)
        return (f"max |diff| {self.max_diff:.1e}  BN {self.batch_norms_before} -> "
                f"{self.batch_norms_after}  {times}")


def measure_fusion(model: nn.Module, x: torch.Tensor, batch_sizes: tuple[int, ...] = (1, 256),
                   threads: int = 2, warmup: int = 10, repeats: int = 50,
                   atol: float = 1e-4) -> FusionReport:
    """Fold ``model``'s batch norms, check the eval-mode outputs on ``x`` agree within
    ``atol``, and measure both models' latency at each batch size, side by side (``lc.compare_latency``).

    Raises:
        ValueError: the fused model's outputs differ from the original's by more than
            ``atol`` (a fold that changed the function must not be timed as a speed-up).
    """
    check_module("model", model)
    check_tensor("x", x, nonempty=True)
    if x.dim() < 2:
        raise ValueError(f"x must be a batch (B, ...) of inputs, got shape {tuple(x.shape)}")
    check_ints("batch_sizes", batch_sizes, 1)
    check_int("threads", threads, 1)
    check_int("warmup", warmup, 0)
    check_int("repeats", repeats, 1)
    check_float("atol", atol, 0)
    model.eval()
    fused = fuse_conv_bn(model)
    with torch.no_grad():
        diff = (model(x) - fused(x)).abs().max().item()
    if not diff <= atol:
        raise ValueError(f"fused model differs from the original by {diff:.2e} > atol={atol}")

    def bns(m: nn.Module) -> int:
        return sum(isinstance(layer, nn.BatchNorm2d) for layer in m.modules())

    # both models timed side by side (round-robin), so the speed-up is a ratio of medians
    # taken under the same conditions
    times: dict[str, dict[int, float]] = {"model": {}, "fused": {}}
    for b in batch_sizes:
        lat = compare_latency({"model": model, "fused": fused}, b, tuple(x.shape[1:]),
                              threads=threads, warmup=warmup, repeats=repeats)
        for name in times:
            times[name][b] = lat[name].median_ms
    return FusionReport(diff, bns(model), bns(fused), times["model"], times["fused"])
