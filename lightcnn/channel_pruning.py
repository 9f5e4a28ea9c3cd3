"""Structured pruning: remove whole channels, so the network really gets smaller and faster.

Pruning Filters for Efficient ConvNets (Li et al. 2017, arXiv:1608.08710); Learning
Efficient Convolutional Networks through Network Slimming (Liu et al. 2017,
arXiv:1708.06519); DepGraph: Towards Any Structural Pruning (Fang et al. 2023,
arXiv:2301.12900).

Zeroing weights leaves every tensor its original shape, so dense kernels do the same work.
Removing an output channel of a convolution instead shrinks that convolution, its batch
norm, and the input of every layer that reads the channel. Those layers form a
*dependency group*: a depthwise convolution filters channel ``j`` with filter ``j`` (remove
both), a residual addition ``x + f(x)`` forces the same channels out of ``x`` and ``f(x)``
(and of every block chained by additions), a concatenation shifts indices, and a
``flatten -> Linear`` (or ``x.view(x.shape[0], -1)``) reads ``H*W`` features per channel.
A split whose part is merged with another layer's output (``conv_b(y1) + y2``) ties that
layer's channels to part of the split layer's. This module traces the model
with ``torch.fx``, assigns every channel of every tensor a slot, and joins slots that must
go together (union-find); channels that pass through a channel split or shuffle, the
input and the output stay, since removing them would change a fixed permutation.

Every importance rule is a callable ``module -> Tensor | None``: one score per output
channel of the modules it scores, ``None`` for the others; a group's score is the sum
over its modules. ``RandomImportance`` is the control.

Taught in chapters/04_pruning.
"""

from __future__ import annotations

import copy
import functools
import operator
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ._checks import (check_callable, check_int, check_ints, check_module, check_sequence,
                      check_str, is_int)
from .blocks import channel_shuffle
from .profile import _check_model, _count_flops, count_macs
from .pruning import _is_masked

__all__ = ["Importance", "l1_importance", "l2_importance", "bn_scale_importance",
           "RandomImportance", "ChannelGroup", "channel_groups", "plan_channel_pruning",
           "ratio_for_macs", "prune_to_macs", "remove_channels", "zero_channels", "resize_to_state_dict",
           "bn_l1_penalty", "slimming_loss"]

Importance = Callable[[nn.Module], "torch.Tensor | None"]

# ---------------------------------------------------------------------------------------
# Importance rules: module -> one score per output channel (None: not scored by this rule)
# ---------------------------------------------------------------------------------------


def l1_importance(module: nn.Module) -> torch.Tensor | None:
    """L1 norm of each output filter, ``sum |W[j]|`` (Li et al. 2017): small filters make
    small activations."""
    check_module("module", module)
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        return module.weight.detach().abs().flatten(1).sum(1)
    return None


def l2_importance(module: nn.Module) -> torch.Tensor | None:
    """L2 norm of each output filter, ``sqrt(sum W[j]^2)``."""
    check_module("module", module)
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        return module.weight.detach().flatten(1).norm(dim=1)
    return None


def bn_scale_importance(module: nn.Module) -> torch.Tensor | None:
    """``|gamma_j|`` of each batch-norm channel (Liu et al. 2017): the BN output of a
    channel with ``gamma = 0`` is the constant ``beta``, whatever its input."""
    check_module("module", module)
    if isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
        return module.weight.detach().abs()
    return None


class RandomImportance:
    """The control: uniform random scores (seeded), for convs, linears and batch norms."""

    def __init__(self, seed: int = 0):
        check_int("seed", seed, 0)
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, module: nn.Module) -> torch.Tensor | None:
        check_module("module", module)
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            return torch.rand(module.weight.shape[0], generator=self.generator)
        return None


# ---------------------------------------------------------------------------------------
# Dependency analysis
# ---------------------------------------------------------------------------------------

_SAME_CHANNELS_MODULES = (nn.BatchNorm2d, nn.BatchNorm1d, nn.ReLU, nn.ReLU6, nn.LeakyReLU,
                          nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.GELU,
                          nn.Identity, nn.Dropout, nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d,
                          nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_SAME_CHANNELS_FUNCTIONS = {F.relu, F.relu6, F.leaky_relu, F.silu, F.hardswish, F.hardsigmoid,
                            F.sigmoid, F.gelu, F.dropout, F.max_pool2d, F.avg_pool2d,
                            F.adaptive_avg_pool2d, F.adaptive_max_pool2d, torch.relu,
                            torch.sigmoid, torch.tanh}
_SAME_CHANNELS_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone", "relu_",
                          "sigmoid_"}
_ELEMENTWISE = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add,
                torch.sub, torch.mul, torch.div, operator.iadd, operator.imul}
_ELEMENTWISE_METHODS = {"add", "sub", "mul", "div", "add_", "mul_"}
# attributes read from a tensor that describe it but carry no channels (x.shape[0] in
# x.view(x.shape[0], -1)); any other attribute (x.T, x.mT) is refused
_METADATA_ATTRIBUTES = {"shape", "ndim", "dtype", "device"}


@functools.cache
def _torchvision_functions() -> tuple[Callable, Callable]:
    """torchvision's ``channel_shuffle`` (ShuffleNetV2's, the same as the book's) and
    ``stochastic_depth`` (EfficientNet's: it drops whole samples, not channels).

    Imported at the first trace, not with the package: ``torchvision.ops`` imports
    ``torch._dynamo``, about 2 CPU seconds that every process importing lightcnn paid
    (``make data``, a fresh-process latency probe, each chapter's kernel).
    """
    from torchvision.models.shufflenetv2 import channel_shuffle as tv_channel_shuffle
    from torchvision.ops import stochastic_depth

    return tv_channel_shuffle, stochastic_depth


class _Tracer(fx.Tracer):
    # channel_shuffle is one opaque node: its view/transpose/view would hide the permutation
    # (the book's own, and torchvision's ShuffleNetV2 one, which computes the same)
    def __init__(self):
        super().__init__(autowrap_functions=(channel_shuffle, _torchvision_functions()[0]))


@dataclass
class _Analysis:
    parent: list[int] = field(default_factory=list)       # union-find over channel slots
    fixed: set[int] = field(default_factory=set)           # slots that must stay
    producer: dict[int, tuple[str, int]] = field(default_factory=dict)  # slot -> (conv, j)
    slots_in: dict[str, list[int]] = field(default_factory=dict)
    slots_out: dict[str, list[int]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)         # modules in call order

    def new(self, n: int, fixed: bool = False, owner: str | None = None) -> list[int]:
        slots = list(range(len(self.parent), len(self.parent) + n))
        self.parent.extend(slots)
        for j, s in enumerate(slots):
            if fixed:
                self.fixed.add(s)
            if owner is not None:
                self.producer[s] = (owner, j)
        return slots

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def fix(self, slots: Sequence[int]) -> None:
        self.fixed.update(slots)


def _shape(node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _channel_dim(dim: int, ndim: int) -> bool:
    return dim % ndim == 1


def _analyse(model: nn.Module, input_shape: tuple[int, ...]) -> _Analysis:
    """Trace ``model`` and build the channel slots and their unions."""
    graph = _Tracer().trace(model)
    gm = fx.GraphModule(model, graph)
    was_training = model.training
    gm.eval()
    ShapeProp(gm).propagate(torch.zeros(1, *input_shape))
    model.train(was_training)
    modules = dict(model.named_modules())
    a = _Analysis()
    env: dict[fx.Node, object] = {}
    called: set[str] = set()

    def slots_of(arg) -> list[int] | None:
        return env.get(arg) if isinstance(arg, fx.Node) else None

    def unsupported(what: str) -> ValueError:
        return ValueError(f"channel pruning does not support {what}; supported: Conv2d "
                          "(dense or depthwise), Linear, BatchNorm, activations, pooling, "
                          "Flatten/view/reshape, add/mul, cat, split/chunk/slicing, "
                          "channel_shuffle, and x.shape / x.size()")

    for node in graph.nodes:
        args = list(node.args)
        if node.op == "placeholder":
            shape = _shape(node)
            env[node] = a.new(shape[1], fixed=True) if shape and len(shape) >= 2 else None
        elif node.op == "get_attr":
            env[node] = None
        elif node.op == "call_module":
            name, module = node.target, modules[node.target]
            # A stateless module (an activation, pooling, dropout, identity) may be called
            # more than once (torchvision's ResNet blocks reuse one ReLU): each call maps
            # channel j to channel j. A module with weights or buffers has one set of
            # channels, which two call sites could not prune differently.
            stateful = any(True for _ in module.parameters(recurse=False)) or \
                any(True for _ in module.buffers(recurse=False))
            if name in called and stateful:
                raise ValueError(f"module {name!r} is called twice in forward; channel "
                                 "pruning needs one call per layer with weights")
            called.add(name)
            x = slots_of(args[0])
            if isinstance(module, nn.Conv2d):
                a.order.append(name)
                a.slots_in[name] = x
                if module.groups == 1:
                    out = a.new(module.out_channels, owner=name)
                elif module.groups == module.in_channels == module.out_channels:
                    out = x                      # depthwise: filter j reads channel j only
                else:                            # grouped: channel counts fixed per group
                    a.fix(x)
                    out = a.new(module.out_channels, fixed=True)
                a.slots_out[name] = out
                env[node] = out
            elif isinstance(module, nn.Linear):
                if len(_shape(args[0]) or ()) != 2:
                    raise unsupported(f"a Linear on a {len(_shape(args[0]) or ())}-D input "
                                      f"({name})")
                a.order.append(name)
                a.slots_in[name] = x
                out = a.new(module.out_features, owner=name)
                a.slots_out[name] = out
                env[node] = out
            elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
                a.order.append(name)
                a.slots_in[name] = a.slots_out[name] = x
                env[node] = x
            elif isinstance(module, _SAME_CHANNELS_MODULES):
                env[node] = x
            elif isinstance(module, nn.Flatten):
                env[node] = _flatten(a, x, _shape(args[0]), module.start_dim, name)
            else:
                raise unsupported(f"{type(module).__name__} ({name})")
        elif node.op in ("call_function", "call_method"):
            env[node] = _function(a, node, env, unsupported)
        elif node.op == "output":
            def fix_all(value):
                if isinstance(value, fx.Node) and isinstance(env.get(value), list):
                    a.fix(env[value])
                elif isinstance(value, (tuple, list)):
                    for v in value:
                        fix_all(v)
                elif isinstance(value, dict):
                    for v in value.values():
                        fix_all(v)
            fix_all(node.args[0])
    return a


def _flatten(a: _Analysis, x: list[int] | None, shape: tuple[int, ...] | None, start_dim: int,
             where: str) -> list[int] | None:
    if x is None or shape is None:
        return None
    if start_dim % len(shape) != 1:
        raise ValueError(f"channel pruning supports flatten from dim 1 only ({where})")
    spatial = 1
    for s in shape[2:]:
        spatial *= s
    # (B, C, H, W) -> (B, C*H*W): feature c*H*W + p belongs to channel c
    return [s for s in x for _ in range(spatial)]


def _function(a: _Analysis, node: fx.Node, env: dict, unsupported) -> object:
    target, args, kwargs = node.target, list(node.args), dict(node.kwargs)
    tensors = [x for x in args if isinstance(x, fx.Node) and isinstance(env.get(x), list)]
    first = env[tensors[0]] if tensors else None
    is_method = node.op == "call_method"
    if is_method and target in ("size", "dim", "numel", "shape"):
        return None                              # x.size(0), x.dim(): numbers, not channels
    if not is_method and target is getattr:
        # torch.fx records x.shape as getattr(x, "shape"); x.shape[0] then indexes a size
        attr = args[1] if len(args) > 1 else None
        if attr in _METADATA_ATTRIBUTES:
            return None
        raise unsupported(f"the operation 'getattr' (x.{attr}, {node.name})")
    if not tensors and not any(isinstance(env.get(x), tuple) for x in args
                               if isinstance(x, fx.Node)) and target is not torch.cat \
            and target is not operator.getitem:
        return None                              # no channel tensor involved
    if (not is_method and (target in _SAME_CHANNELS_FUNCTIONS
                           or target is _torchvision_functions()[1])) or \
            (is_method and target in _SAME_CHANNELS_METHODS):
        return first
    if (not is_method and target in _ELEMENTWISE) or (is_method and target in _ELEMENTWISE_METHODS):
        if len(tensors) == 2:
            x, y = env[tensors[0]], env[tensors[1]]
            if len(x) == len(y):
                for s, t in zip(x, y):           # x + f(x): channel j of both goes together
                    a.union(s, t)
                return x
            a.fix(x)                             # broadcasting over channels: keep all
            a.fix(y)
            return x if len(x) >= len(y) else y
        return first
    if not is_method and target in (channel_shuffle, _torchvision_functions()[0]):
        groups = args[1] if len(args) > 1 else kwargs["groups"]
        n = len(first)
        a.fix(first)                             # a shuffle of fewer channels is another permutation
        return [first[(j % groups) * (n // groups) + j // groups] for j in range(n)]
    if (not is_method and target is torch.cat) or (is_method and target == "cat"):
        parts = args[0]
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        ndim = len(_shape(node) or ())
        if not _channel_dim(dim, ndim):
            raise unsupported(f"cat along dim {dim} ({node.name})")
        out = []
        for p in parts:
            out += env[p]
        return out
    if (is_method and target in ("chunk", "split")) or \
            (not is_method and target in (torch.chunk, torch.split)):
        dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
        ndim = len(_shape(args[0]) or ())
        if not _channel_dim(dim, ndim):
            raise unsupported(f"{target} along dim {dim} ({node.name})")
        a.fix(first)                             # a split needs its sizes unchanged
        sizes = [m.shape[1] for m in node.meta["tensor_meta"]]
        out, start = [], 0
        for size in sizes:
            out.append(first[start:start + size])
            start += size
        return tuple(out)
    if target is operator.getitem:
        source, index = args
        if isinstance(env.get(source), tuple):
            return env[source][index]
        if isinstance(env.get(source), list):
            # x[:, :k]: keep the sliced channels as they are
            a.fix(env[source])
            index = index if isinstance(index, tuple) else (index,)
            if len(index) >= 2 and isinstance(index[1], slice):
                return env[source][index[1]]
            if len(index) >= 2 or not isinstance(index[0], slice) or index[0] != slice(None):
                raise unsupported(f"indexing {index} ({node.name})")
            return env[source]
        return None
    if (is_method and target in ("flatten", "view", "reshape")) or \
            (not is_method and target is torch.flatten):
        shape_in = _shape(args[0])
        if target in ("view", "reshape"):
            shape_out = _shape(node)
            if shape_in and shape_out and shape_out[:2] == shape_in[:2]:
                return first
            return _flatten(a, first, shape_in, 1, node.name) if shape_out and len(shape_out) == 2 \
                else _raise(unsupported(f"{target} to {shape_out} ({node.name})"))
        start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
        return _flatten(a, first, shape_in, start, node.name)
    if (is_method and target in ("mean", "amax", "sum")) or \
            (not is_method and target in (torch.mean, torch.amax, torch.sum)):
        dims = args[1] if len(args) > 1 else kwargs.get("dim")
        ndim = len(_shape(args[0]) or ())
        dims = dims if isinstance(dims, (tuple, list)) else (dims,)
        if dims is not None and all(d is not None and not _channel_dim(d, ndim) for d in dims):
            return first
    name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    raise unsupported(f"the operation {name!r} ({node.name})")


def _raise(err: Exception):
    raise err


# ---------------------------------------------------------------------------------------
# Groups and plans
# ---------------------------------------------------------------------------------------

@dataclass
class ChannelGroup:
    """Channels that can only be removed together, one entry per "layer".

    A channel belongs to the group of the first convolution (or linear), in call order,
    among those that produce it. Usually that is every output channel of ``layer``; when a
    layer's output is split and one part is merged with another layer's output, ``layer``
    may own only some of its channels (``channels = [4, 5, 6, 7]``), the others sitting in
    the group of a layer that runs earlier.

    Attributes:
        layer: the first convolution (or linear) in call order that produces these
            channels; plans name channels by this layer and its output index.
        producers: every conv/linear whose outputs are coupled with them (more than one
            when residual additions chain several blocks), in call order.
        size: channels in the group, ``len(channels)``.
        prunable: whether ``channels[i]`` may be removed (channels that reach the output,
            a split or a shuffle may not).
        modules: every module touching ``channels[i]``, as ``(name, index)`` pairs.
        channels: the output indices of ``layer`` in the group, ascending.
    """

    layer: str
    producers: list[str]
    size: int
    prunable: list[bool]
    modules: list[list[tuple[str, int]]]
    channels: list[int]

    def __post_init__(self) -> None:
        check_str("layer", self.layer)
        check_sequence("producers", self.producers, str)
        check_int("size", self.size, 0)
        check_sequence("prunable", self.prunable, bool)
        check_sequence("modules", self.modules, (list, tuple),
                       what="a list of lists of (module name, index) pairs")
        for members in self.modules:
            for pair in members:
                if not (isinstance(pair, (list, tuple)) and len(pair) == 2
                        and isinstance(pair[0], str) and is_int(pair[1]) and pair[1] >= 0):
                    raise TypeError(f"modules must be a list of lists of (module name, "
                                    f"index >= 0) pairs, got an item {pair!r}")
        check_ints("channels", self.channels, 0, nonempty=False)
        if any(b <= a for a, b in zip(self.channels, self.channels[1:])):
            raise ValueError(f"channels must be ascending output indices, got {self.channels!r}")
        if self.size != len(self.channels):
            raise ValueError(f"size must be len(channels) = {len(self.channels)}, "
                             f"got {self.size!r}")


def channel_groups(model: nn.Module, input_shape: tuple[int, ...] = (1, 28, 28)
                   ) -> list[ChannelGroup]:
    """The model's channel dependency groups, one :class:`ChannelGroup` per layer.

    ``input_shape`` is one sample's shape: ``(C, H, W)`` for a CNN, ``(features,)`` for an
    MLP."""
    _check_model_and_shape(model, input_shape)
    a = _analyse(model, input_shape)
    return _groups(a)


def _groups(a: _Analysis) -> list[ChannelGroup]:
    members: dict[int, list[tuple[str, int]]] = {}
    producers: dict[int, list[tuple[str, int]]] = {}
    for name in a.order:
        for j, s in enumerate(a.slots_out[name]):
            members.setdefault(a.find(s), []).append((name, j))
    for s, (name, j) in sorted(a.producer.items()):
        producers.setdefault(a.find(s), []).append((name, j))
    fixed_roots = {a.find(s) for s in a.fixed}
    position = {name: i for i, name in enumerate(a.order)}
    # each channel (a union-find root) is named by its first producer in call order and
    # that producer's lowest output index in it. A producer's named indices need not start
    # at 0 nor be contiguous: after y1, y2 = split(conv_a(x)) and conv_b(y1) + y2, conv_b
    # names nothing of its own when it runs first, conv_a names only 4..7 when it runs last.
    by_layer: dict[str, dict[int, int]] = {}
    for root, prods in producers.items():
        layer = min((n for n, _ in prods), key=position.__getitem__)
        first_j = min(j for n, j in prods if n == layer)
        by_layer.setdefault(layer, {})[first_j] = root
    groups = []
    for layer, by_index in by_layer.items():
        channels = sorted(by_index)
        roots = [by_index[j] for j in channels]
        names = {n for r in roots for n, _ in producers[r]}
        groups.append(ChannelGroup(layer=layer, producers=sorted(names, key=position.__getitem__),
                                   size=len(channels),
                                   prunable=[r not in fixed_roots for r in roots],
                                   modules=[members.get(r, []) for r in roots],
                                   channels=channels))
    groups.sort(key=lambda g: position[g.layer])
    return groups


def _check_model_and_shape(model: nn.Module, input_shape: tuple[int, ...]) -> None:
    _check_model(model)
    # (C, H, W) for a CNN, (features,) for an MLP: one sample without its batch dimension
    if not (isinstance(input_shape, (tuple, list)) and len(input_shape) >= 1
            and all(isinstance(s, int) and not isinstance(s, bool) and s > 0
                    for s in input_shape)):
        raise ValueError(f"input_shape must be (channels, height, width) or (features,) of "
                         f"positive ints, got {input_shape!r}")
    reparametrized = [n for n, m in model.named_modules() if _is_masked(m)]
    if reparametrized:
        raise ValueError(f"layers {reparametrized} carry pruning masks; call "
                         "torch.nn.utils.prune.remove (or lc.pruning.remove_masks) first")


def _rounded_width(kept: int, width: int, round_to: int) -> int:
    """``kept`` channels rounded to the nearest multiple of ``round_to`` (a tie goes to the
    larger), at least ``round_to``; the original ``width`` if that would exceed it."""
    rounded = max(round_to, (2 * kept + round_to) // (2 * round_to) * round_to)
    return width if rounded > width else rounded


def plan_channel_pruning(model: nn.Module, ratio: float, importance: Importance = l1_importance,
                         input_shape: tuple[int, ...] = (1, 28, 28), scope: str = "layer",
                         exclude: Sequence[str] = (), round_to: int | None = None
                         ) -> dict[str, list[int]]:
    """Which channels to remove: ``{layer: [output indices]}``, least important first.

    ``scope="layer"`` removes ``round(ratio * n)`` of the ``n`` prunable channels of every
    layer (Li et al.); ``scope="global"`` ranks all prunable channels by their raw score and
    removes the lowest ``round(ratio * total)`` (Network Slimming's global threshold on
    ``|gamma|``), keeping at least one channel per layer. Either scope skips a channel
    whose removal would leave some module with no output channel (possible when a group
    holds only part of a module's channels, after a split) and takes the next one. A
    channel's score is the sum of ``importance(module)[index]`` over the modules of its
    group.

    ``round_to`` (Torch-Pruning's option of that name) then rounds the width every pruned
    group keeps, ``n - removed`` of its ``n`` channels, to the nearest multiple of
    ``round_to`` (a tie to the larger), at least ``round_to``, and keeps the group whole if
    that would exceed ``n`` (possible only when ``n`` is not a multiple); the group loses
    its lowest-scored channels down to that width. CPU kernels work on channels in blocks
    (oneDNN's ``nChw8c``/``nChw16c`` layouts: 8 float32 per AVX2 register, 16 per
    AVX-512), so 22 channels cost about what 24 do, or more. Torch-Pruning (1.6) rounds
    the kept width *down* instead (``kept - kept % round_to``, zero below ``round_to``);
    nearest rounding stays closer to the requested ratio. A group the ratio leaves
    untouched stays whole whatever its width.

    Args:
        model: the network; left unchanged.
        ratio: fraction of channels to remove, in ``[0, 1)``.
        importance: a rule ``module -> scores per output channel | None``.
        input_shape: one sample's shape, for tracing: ``(C, H, W)`` for a CNN,
            ``(features,)`` for an MLP.
        scope: ``"layer"`` or ``"global"``.
        exclude: layers (as named by :func:`channel_groups`) to leave whole.
        round_to: keep a multiple of this many channels (an int >= 1) in every pruned
            group; ``None`` keeps exactly what the ratio says.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise ValueError(f"ratio must be in [0, 1), got {ratio!r}")
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    check_callable("importance", importance)
    check_sequence("exclude", exclude, str, what="a list or tuple of layer names")
    check_int("round_to", round_to, 1, none=True)
    _check_model_and_shape(model, input_shape)
    a = _analyse(model, input_shape)
    groups = _groups(a)
    known = {g.layer for g in groups}
    unknown = [e for e in exclude if e not in known]
    if unknown:
        raise ValueError(f"exclude names unknown layers {unknown}; layers: {sorted(known)}")
    modules = dict(model.named_modules())
    scores_of = {name: importance(m) for name, m in modules.items()}
    candidates: dict[str, list[tuple[float, int]]] = {}
    touches: dict[tuple[str, int], list[tuple[str, int]]] = {}
    for g in groups:
        if g.layer in exclude:
            continue
        scored = []
        for j, prunable, mods in zip(g.channels, g.prunable, g.modules):
            if not prunable:
                continue
            parts = [scores_of[n][i] for n, i in mods if scores_of.get(n) is not None]
            if parts:
                scored.append((float(sum(parts)), j))
                touches[(g.layer, j)] = mods
        if scored:
            candidates[g.layer] = scored
    # output channels each module keeps: a group may hold only part of a module's
    # channels (a split merged with another layer), so emptying a group's share of them
    # is checked module by module, not only group by group
    kept = {name: len(a.slots_out[name]) for name in a.order}
    plan: dict[str, list[int]] = {}

    def take(layer: str, j: int) -> bool:
        if any(kept[n] <= 1 for n, _ in touches[(layer, j)]):
            return False                         # never empty a layer
        for n, _ in touches[(layer, j)]:
            kept[n] -= 1
        plan.setdefault(layer, []).append(j)
        return True

    def take_lowest(counts: dict[str, int]) -> None:
        # each layer loses its counts[layer] lowest-scored channels that may go
        for layer, k in counts.items():
            for _, j in sorted(candidates[layer]):
                if len(plan.get(layer, ())) == k:
                    break
                take(layer, j)

    if scope == "layer":
        counts = {}
        for layer, scored in candidates.items():
            counts[layer] = round(ratio * len(scored))
            if counts[layer] >= len(scored) and counts[layer] > 0:
                raise ValueError(f"ratio {ratio} would remove every channel of {layer!r}")
        take_lowest(counts)
    else:
        everything = sorted((s, layer, j) for layer, scored in candidates.items()
                            for s, j in scored)
        budget = round(ratio * len(everything))
        left = {layer: len(scored) for layer, scored in candidates.items()}
        for _, layer, j in everything:
            if budget == 0:
                break
            if left[layer] > 1 and take(layer, j):   # never empty a group either
                left[layer] -= 1
                budget -= 1
    if round_to is not None and plan:
        # the ratio chose how many channels each group loses; round what it keeps, then
        # choose again, lowest scores first (the same channels a global threshold takes)
        size = {g.layer: g.size for g in groups}
        counts = {}
        for layer, removed in plan.items():
            n = size[layer]
            width = _rounded_width(n - len(removed), n, round_to)
            # channels that reach the output or a split stay: keep at least those
            fixed = n - len(candidates[layer])
            if width < fixed:
                width = min(n, -(-fixed // round_to) * round_to)
            counts[layer] = n - width
        plan.clear()
        kept.update({name: len(a.slots_out[name]) for name in a.order})
        take_lowest(counts)
    return {layer: sorted(js) for layer, js in plan.items() if js}


def ratio_for_macs(model: nn.Module, importance: Importance = l1_importance, share: float = 0.5,
                   scope: str = "layer", step: float = 0.05,
                   input_shape: tuple[int, ...] = (1, 28, 28),
                   round_to: int | None = None) -> float:
    """The smallest pruning ratio, in steps of ``step``, whose channel removal leaves at
    most ``share`` of the model's MACs; with ``round_to``, the ratio whose rounded widths
    leave the share nearest ``share`` (below).

    A convolution loses input and output channels together, so its MACs fall roughly with
    the square of the kept fraction, ``MACs ~ (1 - ratio)^2``: expect ``1 - sqrt(share)``
    (0.29 for half the MACs) on a plain CNN. Groups that cannot shrink (a shuffle, the
    output) make the real ratio larger, so it is found by trying ``step, 2 step, ...``,
    removing the channels each plan names and counting.

    ``input_shape`` is one sample's shape: ``(C, H, W)`` for a CNN, ``(features,)`` for an
    MLP (whose linear layers cost ``in * out`` MACs each).

    With ``round_to`` (see :func:`plan_channel_pruning`), widths move in whole multiples of
    ``round_to``, so the MACs left move in steps, and the first ratio ``r`` at or below
    ``share`` can land far below it. The MACs left never grow with the ratio, so the share
    nearest ``share`` on the grid is at ``r`` or at ``r - step`` (above ``share``); the
    nearer of the two is returned (a tie: ``r``). The tolerance is therefore half the step
    that rounding makes there, ``|left - share| <= (left(r - step) - left(r)) / 2``, in
    shares of the MACs; ``left`` may exceed ``share``. On the baseline CNN at
    ``share=0.5`` (layer scope): widths 22/45/45/90/90 and 0.495 of the MACs unrounded;
    24/48/48/88/88 and 0.527 with ``round_to=8`` (the next step, 24/40/40/80/80, leaves
    0.407); 16/48/48/96/96 and 0.531 with ``round_to=16`` (next: 0.459).

    Raises:
        ValueError: ``share`` or ``step`` outside ``(0, 1)``, ``round_to`` below 1, or no
            ratio below 1 leaves ``share`` of the MACs.
    """
    for name, value in (("share", share), ("step", step)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ValueError(f"{name} must be in (0, 1), got {value!r}")
    check_callable("importance", importance)
    # checked here, not left to plan_channel_pruning: the search below reads its
    # ValueError as "this ratio empties a layer"
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    check_int("round_to", round_to, 1, none=True)
    _check_model_and_shape(model, input_shape)
    target = share * _count_macs(model, input_shape)
    k, above = 1, None               # above: (ratio, MACs) of the last step over the target
    while k * step < 1:
        ratio = round(k * step, 6)
        try:
            plan = plan_channel_pruning(model, ratio, importance, input_shape, scope,
                                        round_to=round_to)
        except ValueError:           # this ratio empties a layer; so would every larger one
            break
        left = _count_macs(remove_channels(model, plan, input_shape), input_shape)
        if left <= target:
            # rounded widths: the step before may be nearer the target, from above
            if round_to is not None and above is not None and above[1] - target < target - left:
                return above[0]
            return ratio
        above = (ratio, left)
        k += 1
    raise ValueError(f"no pruning ratio below 1 leaves {share} of the MACs "
                     f"(scope={scope!r}, step={step})")


def prune_to_macs(model: nn.Module, importance: Importance = l1_importance, share: float = 0.5,
                  scope: str = "layer", input_shape: tuple[int, ...] = (1, 28, 28),
                  round_to: int | None = None) -> tuple[nn.Module, float]:
    """A copy of ``model`` with channels removed at :func:`ratio_for_macs`'s ratio: at most
    ``share`` of its MACs left (without ``round_to``). Returns ``(smaller model, ratio)``.

    With ``round_to``, every pruned group keeps a multiple of ``round_to`` channels, and
    the MACs left are the nearest to ``share`` that the rounded widths reach on the ratio
    grid, from either side, within half a rounding step (:func:`ratio_for_macs` says how
    it resolves it).

    ``input_shape`` is one sample's shape: ``(C, H, W)`` for a CNN, ``(features,)`` for an
    MLP."""
    ratio = ratio_for_macs(model, importance, share=share, scope=scope, input_shape=input_shape,
                           round_to=round_to)
    plan = plan_channel_pruning(model, ratio, importance, input_shape, scope, round_to=round_to)
    return remove_channels(model, plan, input_shape), ratio


def _count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs at batch 1, as :func:`lightcnn.count_macs` counts them, for any input shape.

    ``count_macs`` takes images ``(C, H, W)`` only; an MLP's ``(features,)`` is counted
    here with the same ``torch.utils.flop_counter`` (``MACs = in * out`` per linear).
    """
    if len(input_shape) == 3:
        return count_macs(model, tuple(input_shape))
    return _count_flops(model, tuple(input_shape)).get_total_flops() // 2


def _resolve(model: nn.Module, plan: dict[str, Sequence[int]], input_shape: tuple[int, ...]
             ) -> tuple[_Analysis, set[int]]:
    _check_model_and_shape(model, input_shape)
    if not isinstance(plan, dict):
        raise TypeError(f"plan must be a dict {{layer: [channels]}}, got {type(plan).__name__}")
    a = _analyse(model, input_shape)
    fixed_roots = {a.find(s) for s in a.fixed}
    by_producer = {(n, j): s for s, (n, j) in a.producer.items()}
    removed: set[int] = set()
    for layer, channels in plan.items():
        if layer not in a.slots_out or not any(n == layer for n, _ in by_producer):
            raise ValueError(f"plan names {layer!r}, which is not a prunable conv or linear; "
                             f"prunable: {sorted({n for n, _ in by_producer})}")
        for j in channels:
            if (layer, j) not in by_producer:
                raise ValueError(f"channel {j} of {layer!r} does not exist "
                                 f"(0..{len(a.slots_out[layer]) - 1})")
            root = a.find(by_producer[(layer, j)])
            if root in fixed_roots:
                raise ValueError(f"channel {j} of {layer!r} cannot be removed: it reaches the "
                                 "output, a channel split or a shuffle")
            removed.add(root)
    return a, removed


def _resolved_copy(model: nn.Module, plan: dict[str, Sequence[int]],
                   input_shape: tuple[int, ...]) -> tuple[_Analysis, set[int], nn.Module, dict]:
    """The analysis, the removed groups, and a deep copy of ``model`` to rewrite."""
    a, removed = _resolve(model, plan, input_shape)
    clone = copy.deepcopy(model)
    return a, removed, clone, dict(clone.named_modules())


def _keep(a: _Analysis, slots: list[int], removed: set[int]) -> list[int]:
    return [i for i, s in enumerate(slots) if a.find(s) not in removed]


def remove_channels(model: nn.Module, plan: dict[str, Sequence[int]],
                    input_shape: tuple[int, ...] = (1, 28, 28)) -> nn.Module:
    """A copy of ``model`` with the planned channels and everything coupled to them removed.

    Every conv, batch norm and linear is rebuilt with fewer channels; the forward code is
    unchanged. A conv then costs ``K*K*C_in'*C_out'*H*W / groups`` MACs with the kept
    counts ``C_in'``, ``C_out'`` (a depthwise conv keeps ``groups = C'``).

    Args:
        model: the network; left unchanged.
        plan: ``{layer: [output channel indices]}``, e.g. from :func:`plan_channel_pruning`.
        input_shape: one sample's shape, for tracing: ``(C, H, W)`` for a CNN,
            ``(features,)`` for an MLP.

    Raises:
        ValueError: an unknown or unprunable layer, a channel out of range or coupled to
            the output, a split or a shuffle, a layer left with no channel, or an
            unsupported operation (named).
    """
    a, removed, pruned, modules = _resolved_copy(model, plan, input_shape)
    with torch.no_grad():
        for name in a.order:
            module = modules[name]
            keep_out = _keep(a, a.slots_out[name], removed)
            keep_in = _keep(a, a.slots_in[name], removed) if a.slots_in[name] is not None else None
            if not keep_out:
                raise ValueError(f"the plan removes every channel of {name!r}")
            _shrink(module, keep_in, keep_out)
    return pruned


def _take(t: torch.Tensor | None, index: list[int], dim: int = 0) -> torch.Tensor | None:
    if t is None:
        return None
    return t.index_select(dim, torch.tensor(index, dtype=torch.long)).clone()


def _set_weight_and_bias(module: nn.Module, weight: torch.Tensor, keep_out: list[int]) -> None:
    module.weight = nn.Parameter(weight)
    if module.bias is not None:
        module.bias = nn.Parameter(_take(module.bias, keep_out))


def _shrink(module: nn.Module, keep_in: list[int] | None, keep_out: list[int]) -> None:
    """Rebuild one layer's tensors with the kept input and output channels."""
    if isinstance(module, nn.Conv2d):
        depthwise = module.groups == module.in_channels == module.out_channels and module.groups > 1
        weight = _take(module.weight, keep_out)
        if depthwise:
            module.groups = module.in_channels = len(keep_out)
        elif module.groups == 1 and keep_in is not None:
            weight = _take(weight, keep_in, 1)
            module.in_channels = len(keep_in)
        module.out_channels = len(keep_out)
        _set_weight_and_bias(module, weight, keep_out)
    elif isinstance(module, nn.Linear):
        weight = _take(module.weight, keep_out)
        if keep_in is not None:
            weight = _take(weight, keep_in, 1)
            module.in_features = len(keep_in)
        module.out_features = len(keep_out)
        _set_weight_and_bias(module, weight, keep_out)
    elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
        module.num_features = len(keep_out)
        if module.affine:
            module.weight = nn.Parameter(_take(module.weight, keep_out))
            module.bias = nn.Parameter(_take(module.bias, keep_out))
        if module.track_running_stats:
            module.running_mean = _take(module.running_mean, keep_out)
            module.running_var = _take(module.running_var, keep_out)


def zero_channels(model: nn.Module, plan: dict[str, Sequence[int]],
                  input_shape: tuple[int, ...] = (1, 28, 28)) -> nn.Module:
    """A copy of ``model`` with the planned channels silenced but still there.

    Every conv/linear output filter and bias, and every batch norm ``gamma`` and ``beta``
    of the channels' groups is set to zero: the channels output exactly zero (for
    activations with ``f(0) = 0``), so the model computes what :func:`remove_channels`
    would, with its original shapes and cost. That is "masking" channels.
    """
    a, removed, silenced, modules = _resolved_copy(model, plan, input_shape)
    with torch.no_grad():
        for name in a.order:
            module = modules[name]
            drop = [j for j, s in enumerate(a.slots_out[name]) if a.find(s) in removed]
            if not drop:
                continue
            index = torch.tensor(drop, dtype=torch.long)
            if module.weight is not None:
                module.weight.index_fill_(0, index, 0.0)
            if getattr(module, "bias", None) is not None:
                module.bias.index_fill_(0, index, 0.0)
    return silenced


def resize_to_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Shrink ``model``'s layers to the shapes in ``state_dict`` (a pruned model's), then
    load it: how a pruned model is loaded into a freshly created architecture.

    A depthwise conv (``groups == in == out``) stays depthwise at its new width.
    """
    check_module("model", model)
    if not isinstance(state_dict, dict):
        raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        weight = state_dict.get(prefix + "weight")
        if isinstance(module, nn.Conv2d) and weight is not None:
            if module.groups == module.in_channels == module.out_channels and module.groups > 1:
                module.groups = module.in_channels = weight.shape[0]
            else:
                module.in_channels = weight.shape[1] * module.groups
            module.out_channels = weight.shape[0]
        elif isinstance(module, nn.Linear) and weight is not None:
            module.out_features, module.in_features = weight.shape
        elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
            mean = state_dict.get(prefix + "running_mean")
            n = weight.shape[0] if weight is not None else (mean.shape[0] if mean is not None
                                                           else module.num_features)
            module.num_features = n
        else:
            continue
        # placeholders of the right shape, so load_state_dict copies into them
        for key in ("weight", "bias"):
            if getattr(module, key, None) is not None and prefix + key in state_dict:
                setattr(module, key, nn.Parameter(torch.empty_like(state_dict[prefix + key])))
        for key in ("running_mean", "running_var"):
            if getattr(module, key, None) is not None and prefix + key in state_dict:
                setattr(module, key, torch.empty_like(state_dict[prefix + key]))
    model.load_state_dict(state_dict)
    return model


# ---------------------------------------------------------------------------------------
# Network slimming
# ---------------------------------------------------------------------------------------

def bn_l1_penalty(model: nn.Module) -> torch.Tensor:
    """``sum_j |gamma_j|`` over every batch norm: the sparsity term of Network Slimming.

    A loss term for any loop, ``loss = F.cross_entropy(model(x), y) + strength *
    bn_l1_penalty(model)``, also on a DDP-wrapped model: ``modules()`` reaches the wrapped
    module's batch norms, and since every process holds the same scales, each adds the
    same penalty gradient, which DDP's averaging leaves unchanged.
    """
    check_module("model", model)
    gammas = [m.weight.abs().sum() for m in model.modules()
              if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)) and m.affine]
    if not gammas:
        raise ValueError("model has no batch norm with a scale to penalise")
    return torch.stack(gammas).sum()


def slimming_loss(strength: float) -> Callable[[nn.Module, torch.Tensor, torch.Tensor],
                                               torch.Tensor]:
    """A ``loss_fn`` for :func:`lightcnn.fit`: ``CE(model(x), y) + strength * sum |gamma|``.

    Liu et al. use ``strength`` 1e-5 to 1e-4 on CIFAR; the penalty drives the scales of
    unneeded channels towards zero, so removing them later costs little accuracy.
    """
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not strength >= 0:
        raise ValueError(f"strength must be a number >= 0, got {strength!r}")

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y) + strength * bn_l1_penalty(model)

    return loss_fn
