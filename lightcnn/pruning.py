"""Unstructured magnitude pruning: one-shot, iterative, gradual, and lottery tickets.

Han et al., "Learning both Weights and Connections for Efficient Neural Networks",
arXiv 1506.02626 (prune the smallest weights, fine-tune, repeat). Zhu & Gupta, "To prune,
or not to prune: exploring the efficacy of pruning for model compression",
arXiv 1710.01878 (the gradual, cubic AGP sparsity schedule). Frankle & Carbin, "The
Lottery Ticket Hypothesis: Finding Sparse, Trainable Neural Networks", arXiv 1803.03635
(rewind the surviving weights to their initial values and retrain).

A weight's magnitude ``|w|`` is taken as its importance: at sparsity ``s`` the
``round(s * n)`` smallest of ``n`` weights are set to zero, either in every layer
separately (layer-wise) or under one threshold shared by all layers (global, which lets
over-parameterised layers give up more). A mask is a bool tensor of the weight's shape,
True where the weight is kept. Masks are attached with ``torch.nn.utils.prune``: the
layer keeps ``weight_orig`` (trained) and ``weight_mask`` (a buffer), and a forward
pre-hook recomputes ``weight = weight_orig * weight_mask`` before every forward pass, so
pruned weights stay zero through any number of optimizer steps. ``remove_masks`` makes the
zeros permanent. Zeros alone make a model neither faster nor smaller on disk; they pay off
with sparse storage and sparse kernels (:mod:`lightcnn.sparse`), measured in the same chapter.

Taught in chapters/04_pruning.
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.nn.utils import prune

from . import distributed
from .profile import _check_model, count_params

__all__ = [
    "prunable_layers", "magnitude_prune", "layerwise_masks", "global_masks", "apply_masks",
    "remove_masks", "masks_of", "load_masked_state_dict", "sparsity", "layer_sparsity",
    "sparsity_for_ratio", "sensitivity_scan",
    "agp_sparsity", "AGPPruner", "iterative_prune", "rewind", "random_reinit",
]

_SCOPES = ("global", "layerwise")


# ---------------------------------------------------------------- argument checks

def _check_sparsity(value: float, arg: str = "sparsity") -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{arg} must be a float in [0, 1), got {type(value).__name__}")
    if not 0.0 <= value < 1.0:  # also rejects NaN: every comparison with NaN is False
        raise ValueError(f"{arg} must be in [0, 1), got {value!r}")
    return float(value)


def _check_sparsities(values: Sequence[float], arg: str = "sparsities") -> list[float]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"{arg} must be a non-empty sequence of floats in [0, 1), got {values!r}")
    return [_check_sparsity(s, f"{arg}[{i}]") for i, s in enumerate(values)]


def _check_int(value: int, arg: str, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{arg} must be an int >= {low}, got {value!r}")


def _check_names_type(names: Sequence[str], arg: str) -> None:
    # a bare string is a Sequence too: iterating it would test single characters
    if isinstance(names, str):
        raise TypeError(f"{arg} must be a sequence of layer names, not the string {names!r}")
    # a dict or a set is not a Sequence: its order (or its values) would be ignored
    if not isinstance(names, Sequence):
        raise TypeError(f"{arg} must be a sequence of layer names (a list or tuple of str), "
                        f"got {type(names).__name__}: {names!r}")


def _check_names(names: Sequence[str], model: nn.Module, arg: str) -> list[str]:
    _check_names_type(names, arg)
    known = prunable_layers(model)
    for name in names:
        if name not in known:
            raise ValueError(f"{arg} names layer {name!r}, which is not a Conv2d or Linear "
                             f"layer of the model; prunable layers: {sorted(known)}")
    return list(names)


# ---------------------------------------------------------------- weights and masks

def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The ``nn.Conv2d`` and ``nn.Linear`` layers of ``model`` by qualified name, in order.

    Their ``weight`` is what pruning applies to; biases and batch-norm scales (about 1% of
    the parameters of a CNN) are left dense, as in Han et al.
    """
    _check_model(model)
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def _is_masked(layer: nn.Module) -> bool:
    return hasattr(layer, "weight_orig") and hasattr(layer, "weight_mask")


@torch.no_grad()
def _effective_weight(layer: nn.Module) -> torch.Tensor:
    """The weight the next forward pass will use: ``weight_orig * weight_mask`` when masked.

    Computed afresh rather than read from ``layer.weight``, which the pre-hook only
    refreshes at the next forward pass (an optimizer step changes ``weight_orig`` first).
    """
    if _is_masked(layer):
        return layer.weight_orig * layer.weight_mask
    return layer.weight.detach()


@torch.no_grad()
def _refresh(layer: nn.Module) -> None:
    """Recompute ``layer.weight`` without autograd history, so ``copy.deepcopy`` works.

    ``torch.nn.utils.prune`` stores the masked weight as a non-leaf tensor, which
    ``deepcopy`` refuses; the pre-hook recomputes it (with gradients) at the next forward.
    """
    layer.weight = layer.weight_orig * layer.weight_mask


def _copy(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also works on a model carrying pruning masks."""
    for layer in model.modules():
        if _is_masked(layer):
            _refresh(layer)
    return copy.deepcopy(model)


def magnitude_prune(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Mask that zeroes the ``k = round(sparsity * n)`` smallest-magnitude of ``n`` weights.

    ``mask[i] = False`` for the ``k`` entries with the smallest ``|w_i|``, True elsewhere,
    so exactly ``k`` entries are pruned (Python's ``round``: halves go to the even
    integer). Ties are broken by a stable sort of ``|w|`` over the flattened weight: among
    equal magnitudes the entry with the lower flat index is pruned first.

    Args:
        weight: the weights to rank (any shape; not modified).
        sparsity: fraction of entries to prune, in ``[0, 1)``.

    Returns:
        A bool tensor shaped like ``weight``, True = keep.

    Raises:
        TypeError: ``weight`` is not a tensor.
        ValueError: ``sparsity`` is outside ``[0, 1)``, or ``weight`` is empty or holds
            NaN or infinity (no magnitude order).
    """
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    sparsity = _check_sparsity(sparsity)
    if weight.numel() == 0:
        raise ValueError(f"weight must have at least one entry, got shape {tuple(weight.shape)}")
    if not torch.isfinite(weight).all():
        raise ValueError("weight must be finite: NaN or infinity has no magnitude order")
    k = round(sparsity * weight.numel())
    magnitude = weight.detach().abs().flatten()
    # stable sort: equal magnitudes keep their index order, so ties break the same way always
    order = torch.sort(magnitude, stable=True).indices
    mask = torch.ones(weight.numel(), dtype=torch.bool, device=weight.device)
    mask[order[:k]] = False
    return mask.reshape(weight.shape)


def layerwise_masks(model: nn.Module, sparsity: float | Mapping[str, float],
                    exclude: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """One :func:`magnitude_prune` mask per prunable layer, each at its own sparsity.

    Every layer loses ``round(s * n_layer)`` weights. Ranking uses the effective weights,
    so a weight already masked (magnitude 0) is among the first pruned again.

    Args:
        model: the network (not modified).
        sparsity: one fraction for every layer, or a ``{layer name: fraction}`` mapping
            (e.g. read off a :func:`sensitivity_scan`); with a mapping only the named
            layers get masks.
        exclude: layers to leave dense (no mask), e.g. the first conv and the classifier.

    Raises:
        ValueError: a sparsity outside ``[0, 1)`` or a name that is not a prunable layer.
    """
    layers = prunable_layers(model)
    skip = set(_check_names(exclude, model, "exclude"))
    if isinstance(sparsity, Mapping):
        _check_names(list(sparsity), model, "sparsity")
        targets = {name: _check_sparsity(s, f"sparsity[{name!r}]") for name, s in sparsity.items()}
    else:
        targets = dict.fromkeys(layers, _check_sparsity(sparsity))
    return {name: magnitude_prune(_effective_weight(layers[name]), s)
            for name, s in targets.items() if name not in skip}


def global_masks(model: nn.Module, sparsity: float,
                 exclude: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """Masks under one magnitude threshold shared by all prunable layers.

    The weights of all layers are ranked together and the ``round(sparsity * N)`` smallest
    of all ``N`` are pruned, so the total count is exact while each layer's sparsity
    follows its share of small weights (ties: layer order, then flat index).

    Args:
        model: the network (not modified).
        sparsity: overall fraction to prune, in ``[0, 1)``.
        exclude: layers to leave out of the ranking and dense (no mask).

    Raises:
        ValueError: ``sparsity`` outside ``[0, 1)``, an unknown name in ``exclude``, or no
            layer left to prune.
    """
    sparsity = _check_sparsity(sparsity)
    skip = set(_check_names(exclude, model, "exclude"))
    layers = {n: m for n, m in prunable_layers(model).items() if n not in skip}
    if not layers:
        raise ValueError("no Conv2d or Linear layer left to prune after exclude")
    weights = [_effective_weight(m) for m in layers.values()]
    # (sum n_layer,): one ranking over every weight, then cut back into per-layer masks
    flat = magnitude_prune(torch.cat([w.flatten() for w in weights]), sparsity)
    chunks = flat.split([w.numel() for w in weights])
    return {name: c.reshape(w.shape) for name, c, w in zip(layers, chunks, weights)}


def _as_bool_mask(name: str, mask: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask for layer {name!r} must be a torch.Tensor, got {type(mask).__name__}")
    weight = _effective_weight(layer)
    shape = tuple(weight.shape)
    if tuple(mask.shape) != shape:
        raise ValueError(f"mask for layer {name!r} has shape {tuple(mask.shape)}, "
                         f"but its weight has shape {shape}")
    if mask.dtype != torch.bool and not ((mask == 0) | (mask == 1)).all():
        raise ValueError(f"mask for layer {name!r} must be bool or hold only 0 and 1")
    return mask.to(dtype=torch.bool, device=weight.device)


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Attach ``masks`` to ``model`` in place with ``torch.nn.utils.prune.custom_from_mask``.

    Each named layer gets ``weight_orig`` (the parameter the optimizer updates),
    ``weight_mask`` and a pre-hook computing ``weight = weight_orig * weight_mask``. A
    layer that already has a mask keeps it and gets the product of old and new masks (as
    torch's ``PruningContainer`` would), so a weight once pruned stays pruned; the buffer is
    updated in place so that repeated calls (AGP every few steps) do not stack hooks.

    Args:
        model: the network, changed in place.
        masks: ``{layer name: mask}``, bool (True = keep) or 0/1, shaped like the weight.

    Returns:
        ``model``.

    Raises:
        ValueError: a name that is not a prunable layer, or a mask of the wrong shape or
            with values other than 0 and 1 (all masks are checked before any is applied).
    """
    if not isinstance(masks, Mapping):
        raise TypeError(f"masks must be a mapping of layer name to mask, got {type(masks).__name__}")
    layers = prunable_layers(model)
    _check_names(list(masks), model, "masks")
    checked = {name: _as_bool_mask(name, mask, layers[name]) for name, mask in masks.items()}
    for name, mask in checked.items():
        layer = layers[name]
        if _is_masked(layer):
            # AND with the current mask: weight_mask is what the pre-hook multiplies by
            with torch.no_grad():
                layer.weight_mask.mul_(mask.to(layer.weight_mask.dtype))
        else:
            prune.custom_from_mask(layer, "weight", mask)
        _refresh(layer)
    return model


def remove_masks(model: nn.Module) -> nn.Module:
    """Make the pruning permanent in place: ``weight = weight_orig * weight_mask`` becomes
    a plain parameter again (``torch.nn.utils.prune.remove``) and the hook is dropped.

    The parameter object is kept, so an optimizer built before keeps working; from now
    on its pruned entries may grow back if trained. Returns ``model``.
    """
    for layer in prunable_layers(model).values():
        if _is_masked(layer):
            prune.remove(layer, "weight")
    return model


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The masks attached to ``model``, ``{layer name: bool mask}`` (copies; True = keep).

    Layers without a mask (never pruned, excluded, or after :func:`remove_masks`) are absent.
    """
    return {name: layer.weight_mask.detach().bool()
            for name, layer in prunable_layers(model).items() if _is_masked(layer)}


def load_masked_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]
                           ) -> nn.Module:
    """Load the state of a masked model (``weight_orig`` and ``weight_mask`` keys) into
    ``model``, attaching the masks it holds first; returns ``model``.

    A fresh model has plain ``weight`` parameters, so ``model.load_state_dict`` of a
    pruned model's state fails; this attaches ``{layer: state[layer + ".weight_mask"]}``
    with :func:`apply_masks` and then loads everything (the state's masks replace any the
    model had), so a checkpoint taken in the middle of pruning resumes exactly. Build the
    optimizer *before* (as in the first run): attaching a mask moves ``weight`` after
    ``bias`` in ``parameters()``, which would shift an optimizer state built after it.

    Raises:
        ValueError: a mask for a layer that is not a Conv2d or Linear of ``model``, or a
            state that does not fit it.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
    suffix = ".weight_mask"
    masks = {k[:-len(suffix)]: v for k, v in state_dict.items() if k.endswith(suffix)}
    apply_masks(model, masks)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise ValueError(f"state_dict does not fit the model: {error}") from None
    for layer in prunable_layers(model).values():
        if _is_masked(layer):
            _refresh(layer)   # weight = the loaded weight_orig * weight_mask
    return model


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of zero entries in each prunable layer's effective weight, by layer name."""
    out = {}
    for name, layer in prunable_layers(model).items():
        weight = _effective_weight(layer)
        out[name] = (weight.numel() - int(torch.count_nonzero(weight))) / weight.numel()
    return out


def sparsity(model: nn.Module) -> float:
    """Fraction of zeros over all prunable layers' effective weights together.

    ``sparsity = (# zero entries) / (# entries)`` of ``weight_orig * weight_mask`` where a
    mask is attached and of ``weight`` elsewhere, so it reads the same before and after
    :func:`remove_masks`; biases and norm layers are not counted (unlike
    :func:`lightcnn.profile.count_nonzero_params`, which counts every parameter).

    Raises:
        ValueError: the model has no Conv2d or Linear layer.
    """
    weights = [_effective_weight(m) for m in prunable_layers(model).values()]
    total = sum(w.numel() for w in weights)
    if total == 0:
        raise ValueError("model has no Conv2d or Linear weights to measure sparsity over")
    # count zeros in integers and divide once: exactly k / n for k pruned of n
    return (total - sum(int(torch.count_nonzero(w)) for w in weights)) / total


def sparsity_for_ratio(model: nn.Module, ratio: float) -> float:
    """The weight sparsity that leaves ``ratio`` times fewer nonzero parameters.

    Only Conv2d/Linear weights are pruned, and every other parameter (biases, batch
    norm) stays, so with ``W`` prunable weights and ``O`` other parameters:
    ``(1 - s) * W + O = (W + O) / ratio``, i.e. ``s = 1 - ((W + O) / ratio - O) / W``.

    Raises:
        ValueError: ``ratio`` is not a number > 1, or is so large that even removing every
            weight cannot reach it (``(W + O) / ratio < O``).
    """
    _check_model(model)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio > 1:
        raise ValueError(f"ratio must be a number > 1, got {ratio!r}")
    weights = sum(layer.weight.numel() for layer in prunable_layers(model).values())
    if weights == 0:
        raise ValueError("model has no Conv2d or Linear weights to prune")
    total = count_params(model)
    other = total - weights
    target = 1 - (total / ratio - other) / weights
    if target >= 1:
        raise ValueError(f"ratio {ratio} cannot be reached: the {other:,d} parameters that "
                         "are not prunable weights alone exceed params / ratio")
    return target


# ---------------------------------------------------------------- choosing sparsities

def sensitivity_scan(model: nn.Module, evaluate: Callable[[nn.Module], float],
                     sparsities: Sequence[float], layers: Sequence[str] | None = None
                     ) -> dict[str, list[float]]:
    """Prune one layer at a time at each sparsity and record ``evaluate`` of the result.

    For every layer ``l`` and sparsity ``s`` a deep copy of ``model`` gets
    ``magnitude_prune(w_l, s)`` on layer ``l`` only, with no fine-tuning; a layer whose
    accuracy falls early is sensitive and should be pruned less (Han et al., section 4).
    ``model`` itself is not changed.

    Args:
        evaluate: ``model -> score``, e.g. test accuracy.
        sparsities: the fractions to try, each in ``[0, 1)``.
        layers: the layers to scan; all prunable layers by default.

    Returns:
        ``{layer name: [score at each sparsity]}``.
    """
    if not callable(evaluate):
        raise TypeError(f"evaluate must be callable, got {type(evaluate).__name__}")
    sparsities = _check_sparsities(sparsities)
    names = list(prunable_layers(model)) if layers is None else _check_names(layers, model, "layers")
    scores: dict[str, list[float]] = {}
    for name in names:
        scores[name] = []
        for s in sparsities:
            # a fresh copy per point: the scan measures one layer alone, never a mix
            candidate = _copy(model)
            layer = prunable_layers(candidate)[name]
            apply_masks(candidate, {name: magnitude_prune(_effective_weight(layer), s)})
            scores[name].append(float(evaluate(candidate)))
    return scores


def agp_sparsity(step: int, final_sparsity: float, total_steps: int,
                 initial_sparsity: float = 0.0, start_step: int = 0) -> float:
    """Zhu & Gupta's automated gradual pruning (AGP) schedule at optimizer step ``step``.

    ``s_t = s_f + (s_i - s_f) * (1 - (t - t_0) / n)^3`` for ``t_0 <= t <= t_0 + n``,
    ``s_i`` before ``t_0`` and ``s_f`` after ``t_0 + n``. The cubic prunes fast while
    many redundant weights remain and slowly as the last ones get scarce.

    Args:
        step: the optimizer step ``t``.
        final_sparsity: ``s_f`` in ``[0, 1)``.
        total_steps: ``n``, length of the ramp in optimizer steps (>= 1).
        initial_sparsity: ``s_i`` in ``[0, s_f]``.
        start_step: ``t_0`` (>= 0).
    """
    if isinstance(step, bool) or not isinstance(step, int):
        raise TypeError(f"step must be an int, got {type(step).__name__}")
    _check_int(step, "step", 0)
    _check_int(total_steps, "total_steps", 1)
    _check_int(start_step, "start_step", 0)
    final_sparsity = _check_sparsity(final_sparsity, "final_sparsity")
    initial_sparsity = _check_sparsity(initial_sparsity, "initial_sparsity")
    if initial_sparsity > final_sparsity:
        raise ValueError(f"initial_sparsity must be <= final_sparsity={final_sparsity}, "
                         f"got {initial_sparsity}")
    # progress through the ramp, clamped to [0, 1] before t_0 and after t_0 + n
    progress = min(max((step - start_step) / total_steps, 0.0), 1.0)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - progress) ** 3


class AGPPruner:
    """Gradual pruning (AGP) for any training loop: call :meth:`step` after every
    optimizer step (or pass the pruner as :func:`lightcnn.train.fit`'s ``after_step``).

    It counts optimizer steps; at ``t_0``, every ``frequency`` steps after it and at
    ``t_0 + total_steps`` it recomputes magnitude masks at :func:`agp_sparsity` of that
    step (global or layer-wise) and attaches them with :func:`apply_masks`. Masks only
    grow (a weight once pruned stays pruned, its magnitude is 0 at the next ranking), so
    sparsity never decreases; from ``t_0 + total_steps`` on it stays at
    ``final_sparsity`` and training fine-tunes the survivors. Use one pruner per run::

        steps = epochs * len(train_loader)
        pruner = AGPPruner(0.9, total_steps=int(0.75 * steps), frequency=50, model=model)
        for x, y in ...:                 # a loop of one's own
            ...; optimizer.step(); pruner.step()
        lc.fit(model, train_loader, epochs, after_step=pruner)   # or lc.fit's

    :meth:`state_dict` / :meth:`load_state_dict` carry the schedule's position across a
    checkpoint (the masks travel in the model's state: see :func:`load_masked_state_dict`).
    Under ``torchrun`` the model may be DDP-wrapped: the pruner prunes the wrapped module
    and copies rank 0's masks to every process, so all ranks keep identical masks.

    Args:
        final_sparsity: sparsity reached at step ``start_step + total_steps``.
        total_steps: ramp length in optimizer steps (``epochs * len(train_loader)`` to
            end exactly with training; less leaves steps to recover).
        frequency: optimizer steps between mask updates (Zhu & Gupta's ``Delta t``).
        initial_sparsity: sparsity applied at ``start_step``.
        start_step: optimizer steps to train dense first.
        scope: ``"global"`` (one threshold) or ``"layerwise"`` (same sparsity per layer).
        exclude: layers left dense.
        model: the network :meth:`step` prunes when called without one.

    Attributes:
        step_count: optimizer steps seen so far.
        history: ``(step, target sparsity)`` at each mask update.
    """

    def __init__(self, final_sparsity: float, total_steps: int, frequency: int = 10,
                 initial_sparsity: float = 0.0, start_step: int = 0, scope: str = "global",
                 exclude: Sequence[str] = (), model: nn.Module | None = None):
        # start_step first: agp_sparsity would report a bad one as its own "step"
        _check_int(start_step, "start_step", 0)
        agp_sparsity(start_step, final_sparsity, total_steps, initial_sparsity, start_step)
        _check_int(frequency, "frequency", 1)
        if scope not in _SCOPES:
            raise ValueError(f"scope must be one of {_SCOPES}, got {scope!r}")
        _check_names_type(exclude, "exclude")
        if model is not None:
            _check_names(exclude, distributed.unwrap(model), "exclude")
        self.final_sparsity, self.total_steps, self.frequency = final_sparsity, total_steps, frequency
        self.initial_sparsity, self.start_step = initial_sparsity, start_step
        self.scope, self.exclude = scope, tuple(exclude)
        self.model = model
        self.step_count = 0
        self.history: list[tuple[int, float]] = []

    def __call__(self, model: nn.Module) -> None:
        self.step(model)

    def step(self, model: nn.Module | None = None) -> None:
        """Count one optimizer step and update the masks of ``model`` (default: the
        constructor's) when the schedule says so.

        Raises:
            ValueError: no model given here or to the constructor.
        """
        if model is None:
            model = self.model
        if model is None:
            raise ValueError("model: pass the model to step() or to AGPPruner(..., model=)")
        model = distributed.unwrap(model)   # DDP's layer names carry a "module." prefix
        self.step_count += 1
        t, end = self.step_count, self.start_step + self.total_steps
        if t < self.start_step:
            return
        # the last scheduled update point at or before t; once past the ramp, its end
        due = min(self.start_step + (t - self.start_step) // self.frequency * self.frequency, end)
        if self.history and self.history[-1][0] == due:
            return
        target = agp_sparsity(due, self.final_sparsity, self.total_steps,
                              self.initial_sparsity, self.start_step)
        masks = (global_masks(model, target, self.exclude) if self.scope == "global"
                 else layerwise_masks(model, target, self.exclude))
        if distributed.is_distributed():
            # identical weights give identical masks; rank 0's make it certain
            masks = distributed.broadcast_tensors(masks)
        apply_masks(model, masks)
        self.history.append((due, target))

    def _settings(self) -> dict:
        return {"final_sparsity": self.final_sparsity, "total_steps": self.total_steps,
                "frequency": self.frequency, "initial_sparsity": self.initial_sparsity,
                "start_step": self.start_step, "scope": self.scope,
                "exclude": list(self.exclude)}

    def state_dict(self) -> dict:
        """The schedule's position and settings (plain Python values: ``torch.save`` it
        beside the model's and the optimizer's state, ``weights_only`` loads it)."""
        return {**self._settings(), "step_count": self.step_count,
                "history": [list(entry) for entry in self.history]}

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Continue the schedule saved by :meth:`state_dict`: the next :meth:`step` is the
        one after the saved run's last.

        Raises:
            ValueError: ``state_dict`` is not a pruner's, or was saved by a pruner with
                other settings (a resumed run on another schedule would prune to other
                sparsities than the first part did).
        """
        if not isinstance(state_dict, Mapping) or not {"step_count", "history"} <= set(state_dict):
            raise ValueError("state_dict must be an AGPPruner.state_dict(), with keys "
                             "'step_count' and 'history'")
        differ = {k: (state_dict[k], v) for k, v in self._settings().items()
                  if k in state_dict and state_dict[k] != v}
        if differ:
            described = ", ".join(f"{k}={saved!r} (this pruner: {mine!r})"
                                  for k, (saved, mine) in differ.items())
            raise ValueError(f"state_dict comes from a pruner with other settings: {described}")
        self.step_count = int(state_dict["step_count"])
        self.history = [(int(t), float(s)) for t, s in state_dict["history"]]


# ---------------------------------------------------------------- prune and retrain

def iterative_prune(model: nn.Module, sparsities: Sequence[float],
                    finetune: Callable[[nn.Module], None], scope: str = "global",
                    exclude: Sequence[str] = ()) -> list[float]:
    """Han et al.'s loop: prune to ``sparsities[0]``, fine-tune, prune to the next, ...

    Each round ranks the current effective weights, so weights pruned earlier stay pruned
    and the masks stay attached while ``finetune`` trains (the pre-hook multiplies by them
    at every forward pass). ``model`` is changed in place and keeps its masks; call
    :func:`remove_masks` to make them permanent. Han et al. set each layer's threshold to a
    multiple of its weights' standard deviation; a sparsity target makes rounds comparable.

    Args:
        sparsities: non-decreasing targets, each in ``[0, 1)``.
        finetune: ``model -> None``, trains the masked model (e.g. wraps ``lc.fit``).
        scope: ``"global"`` or ``"layerwise"``.
        exclude: layers left dense.

    Returns:
        :func:`sparsity` of the model after each round (after its fine-tuning).
    """
    sparsities = _check_sparsities(sparsities)
    if any(b < a for a, b in zip(sparsities, sparsities[1:])):
        raise ValueError(f"sparsities must be non-decreasing (pruned weights stay pruned), "
                         f"got {sparsities}")
    if not callable(finetune):
        raise TypeError(f"finetune must be callable, got {type(finetune).__name__}")
    if scope not in _SCOPES:
        raise ValueError(f"scope must be one of {_SCOPES}, got {scope!r}")
    _check_names(exclude, model, "exclude")
    achieved = []
    for s in sparsities:
        masks = global_masks(model, s, exclude) if scope == "global" else layerwise_masks(model, s, exclude)
        apply_masks(model, masks)
        finetune(model)
        achieved.append(sparsity(model))
    return achieved


# ---------------------------------------------------------------- lottery tickets

def _dense_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every mask removed (plain ``weight`` parameters)."""
    return remove_masks(_copy(model))


def rewind(model: nn.Module, initial_state: Mapping[str, torch.Tensor],
           masks: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """The winning ticket: a copy of ``model`` with its initial weights and the masks.

    ``w_ticket = w_0 * mask`` (Frankle & Carbin): the surviving weights go back to the
    values they had before training, the pruned ones are zero and stay masked, and every
    other parameter and buffer (biases, batch-norm statistics) is reset too. Passing a
    state saved after ``k`` training steps instead of at initialisation gives late
    rewinding (Frankle et al., arXiv 1903.01611). ``model`` is not changed.

    Args:
        model: the trained (and pruned) network; only its structure and masks are used.
        initial_state: ``model.state_dict()`` saved before training (a state of a
            masked model, with ``weight_orig``/``weight_mask`` keys, is accepted too).
        masks: ``{layer name: mask}``; the masks attached to ``model`` by default.

    Raises:
        ValueError: ``initial_state`` does not fit the model, or a bad mask.
    """
    _check_model(model)
    if not isinstance(initial_state, Mapping):
        raise TypeError(f"initial_state must be a state dict, got {type(initial_state).__name__}")
    masks = masks_of(model) if masks is None else masks
    # a masked model's state stores weight as weight_orig (+ weight_mask): map it back
    state = {(k[:-len("_orig")] if k.endswith("weight_orig") else k): v
             for k, v in initial_state.items() if not k.endswith("weight_mask")}
    ticket = _dense_copy(model)
    try:
        ticket.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"initial_state does not fit the model: {error}") from None
    return apply_masks(ticket, masks)


def random_reinit(model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None,
                  seed: int = 0) -> nn.Module:
    """The lottery-ticket control: the same masks on freshly initialised weights.

    Every submodule with a ``reset_parameters`` method re-runs it under ``torch.manual_seed
    (seed)`` (PyTorch's default initialisation; a model built with a custom init gets the
    default one here), then the masks are applied. The global random state is restored
    afterwards and ``model`` is not changed.

    Args:
        masks: ``{layer name: mask}``; the masks attached to ``model`` by default.
        seed: seed of the new weights.
    """
    _check_model(model)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    _check_int(seed, "seed", 0)
    masks = masks_of(model) if masks is None else masks
    control = _dense_copy(model)
    # fork_rng: a seeded re-init must not shift the caller's random stream
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in control.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return apply_masks(control, masks)
