"""Compression pipelines: the book's techniques as named steps, one results row per step.

Han, Mao & Dally's Deep Compression (arXiv 1510.00149) chains pruning, weight sharing and
Huffman coding; Polino, Pascanu & Alistarh (arXiv 1802.05668) recover a quantized
network's accuracy by distillation. Every such recipe is a list of steps, each taking the
model the previous one left. Here a step is a function ``step(model, context) -> model``
(``context`` holds the loaders, a calibration set, a teacher), and a pipeline is a list of
``(name, step)`` pairs::

    steps = [("prune", pipeline.prune_channels(macs_share=0.5, epochs=2)),
             ("distill", pipeline.distill(epochs=2)),
             ("int8", pipeline.quantize_int8())]
    records = pipeline.run_pipeline(model, steps, context)

:func:`run_pipeline` runs them in order, scores each result on the test set, and returns
one :class:`StepRecord` per step; :func:`pipeline_rows` turns the records into results
rows with every model timed side by side. A step that fails is reported with its position
and name and the type of model it was given (a quantized graph cannot be pruned, a
binarized one cannot be quantized to int8).

Taught in chapters/09_putting_it_together.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from . import binary as _binary
from ._checks import (check_bool, check_callable, check_float, check_instance, check_int,
                      check_mapping, check_module, check_sequence, check_str)
from . import channel_pruning as cp
from . import int8 as _int8
from . import lowrank as _lowrank
from . import pruning as _pruning
from .distillation import distill as _distill
from .profile import count_macs, model_size_bytes, profile_models
from .train import evaluate, fit
from .weight_sharing import share_weights as _share_weights
from .weight_sharing import shared_layers
from .weight_sharing import weight_sharing_bytes
from .quantization import CODE_BITS, _check_bits

__all__ = ["Context", "StepRecord", "PipelineError", "run_pipeline", "pipeline_rows",
           "prune_weights", "prune_channels", "slim", "share_weights", "distill", "decompose",
           "quantize_int8", "binarize"]


@dataclass
class Context:
    """What steps may need besides the model.

    Attributes:
        train_loader, test_loader: training batches (fine-tuning) and the test set.
        calibration: input batches for int8 calibration (``quantize_int8``).
        teacher: a trained model to distill from (``distill``).
        lr: the fine-tuning steps' initial rate (cosine schedule).
    """

    train_loader: DataLoader
    test_loader: DataLoader
    calibration: Sequence[torch.Tensor] = ()
    teacher: nn.Module | None = None
    lr: float = 0.01

    def __post_init__(self):
        check_instance("train_loader", self.train_loader, DataLoader, "a DataLoader")
        check_instance("test_loader", self.test_loader, DataLoader, "a DataLoader")
        check_sequence("calibration", self.calibration, torch.Tensor)
        check_module("teacher", self.teacher, none=True)
        check_float("lr", self.lr, 0, low_open=True)


@dataclass
class StepRecord:
    """One step's result: its model, test accuracy, seconds, and what the row reports.

    ``macs`` and ``size_bytes`` are set when the model's own counts would be wrong (an
    int8 graph runs the float model's MACs and stores int8 tensors; a shared model stores
    indices and codebooks); ``None`` means count the model.
    """

    name: str
    model: nn.Module
    accuracy: float
    seconds: float
    macs: int | None = None
    size_bytes: int | None = None
    notes: dict = field(default_factory=dict)

    def __post_init__(self):
        check_str("name", self.name)
        check_module("model", self.model)
        check_float("accuracy", self.accuracy, 0, 1)
        check_float("seconds", self.seconds, 0)
        check_int("macs", self.macs, 0, none=True)
        check_int("size_bytes", self.size_bytes, 0, none=True)
        check_mapping("notes", self.notes)


class PipelineError(RuntimeError):
    """A step failed; the message names the step and the model it was given."""


Step = Callable[[nn.Module, Context], nn.Module]


def run_pipeline(model: nn.Module, steps: Sequence[tuple[str, Step]], context: Context,
                 start_name: str = "start") -> list[StepRecord]:
    """Run ``steps`` in order from a copy of ``model``; one record for the start and each step.

    A step may return the model, or ``(model, {"macs": ..., "size_bytes": ...})`` to
    report counts the model itself cannot give (see :class:`StepRecord`).

    Raises:
        ValueError: ``steps`` is not a list of ``(name, callable)`` pairs with unique names.
        PipelineError: a step raised; chained to its error.
    """
    check_module("model", model)
    check_sequence("steps", steps)
    if not isinstance(context, Context):
        raise TypeError(f"context must be a pipeline.Context, got {type(context).__name__}")
    check_str("start_name", start_name)
    names = [start_name]
    for pair in steps:
        if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str)
                and callable(pair[1])):
            raise ValueError(f"steps must be (name, step) pairs, got {pair!r}")
        names.append(pair[0])
    if len(set(names)) != len(names):
        raise ValueError(f"step names must be unique and differ from {start_name!r}: {names}")
    current = copy.deepcopy(model).eval()
    records = [StepRecord(start_name, current, evaluate(current, context.test_loader)["accuracy"],
                          0.0)]
    for i, (name, step) in enumerate(steps, 1):
        start = time.perf_counter()
        try:
            out = step(current, context)
        except Exception as err:
            raise PipelineError(f"step {i} ({name!r}) failed on a {type(current).__name__}: "
                                f"{type(err).__name__}: {err}") from err
        counts: dict = {}
        if isinstance(out, tuple):      # (model, counts the model cannot give itself)
            out, counts = out
        if not isinstance(out, nn.Module):
            raise PipelineError(f"step {i} ({name!r}) returned {type(out).__name__}, "
                                "not a model")
        current = out.eval()
        records.append(StepRecord(name, current, evaluate(current, context.test_loader)["accuracy"],
                                  time.perf_counter() - start, counts.get("macs"),
                                  counts.get("size_bytes")))
    return records


def pipeline_rows(records: Sequence[StepRecord], prefix: str = "", **measure) -> list[dict]:
    """Results rows of ``records``, every model timed side by side (``profile_models``);
    the first record is the baseline. ``measure`` goes to ``profile_models``."""
    check_sequence("records", records, StepRecord, nonempty=True)
    check_str("prefix", prefix, empty=True)
    names = [f"{prefix}{r.name}" for r in records]
    return profile_models(
        {n: r.model for n, r in zip(names, records)},
        {n: r.accuracy for n, r in zip(names, records)}, baseline=names[0],
        macs={n: r.macs for n, r in zip(names, records) if r.macs is not None},
        size_bytes={n: r.size_bytes for n, r in zip(names, records) if r.size_bytes is not None},
        **measure)


# ---------------------------------------------------------------------------- steps

def _finetune(model: nn.Module, context: Context, epochs: int, **kwargs) -> None:
    if epochs:
        fit(model, context.train_loader, epochs, lr=context.lr, schedule="cosine",
            progress=False, **kwargs)


def _check_float_model(model: nn.Module, verb: str) -> None:
    # an int8 graph (captured by torch.export, then compiled) cannot be transformed again
    if isinstance(model, torch.fx.GraphModule) or hasattr(model, "_orig_mod"):
        raise ValueError(f"the model is already a captured or compiled graph; {verb} "
                         "the float model")


def _check_share(macs_share: float) -> None:
    check_float("macs_share", macs_share, 0, 1, low_open=True)


def _check_epochs(epochs: int, name: str = "epochs") -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"{name} must be an int >= 0, got {epochs!r}")


def prune_weights(sparsity: float, epochs: int) -> Step:
    """Gradual magnitude pruning (AGP, chapter 4) to ``sparsity`` during ``epochs`` of
    fine-tuning (the ramp over the first three quarters), zeros made permanent."""
    _pruning._check_sparsity(sparsity)
    _check_epochs(epochs)
    if epochs < 1:
        raise ValueError("prune_weights needs epochs >= 1: the sparsity rises during them")

    def step(model: nn.Module, context: Context) -> nn.Module:
        if shared_layers(model):
            raise ValueError("the model's weights are shared (k-means codebooks): prune "
                             "before sharing, as Deep Compression does")
        model = copy.deepcopy(model)
        steps = epochs * len(context.train_loader)
        pruner = _pruning.AGPPruner(sparsity, total_steps=int(0.75 * steps),
                                    frequency=max(1, steps // 100))
        _finetune(model, context, epochs, after_step=pruner)
        return _pruning.remove_masks(model)
    return step


def prune_channels(macs_share: float = 0.5, epochs: int = 1,
                   importance: cp.Importance = cp.l1_importance, scope: str = "layer",
                   round_to: int | None = None) -> Step:
    """Remove channels (chapter 4) until at most ``macs_share`` of the MACs remain, then
    fine-tune ``epochs`` epochs. ``round_to`` keeps every pruned width a multiple of it
    (:func:`lightcnn.channel_pruning.prune_to_macs`): kernels fill whole vector lanes."""
    _check_share(macs_share)
    _check_epochs(epochs)
    check_callable("importance", importance)
    check_str("scope", scope, ("layer", "global"))
    check_int("round_to", round_to, 1, none=True)

    def step(model: nn.Module, context: Context) -> nn.Module:
        smaller, _ = cp.prune_to_macs(model, importance, share=macs_share, scope=scope,
                                      round_to=round_to)
        _finetune(smaller, context, epochs)
        return smaller
    return step


def slim(macs_share: float = 0.5, penalty: float = 1e-2, penalty_epochs: int = 1,
         epochs: int = 1) -> Step:
    """Network slimming (chapter 4): ``penalty_epochs`` of fine-tuning with
    ``penalty * sum |gamma|`` on the batch-norm scales, then channels removed by one
    global threshold on ``|gamma|`` until at most ``macs_share`` of the MACs remain, then
    ``epochs`` of fine-tuning."""
    _check_share(macs_share)
    check_float("penalty", penalty, 0)
    _check_epochs(epochs)
    _check_epochs(penalty_epochs, "penalty_epochs")
    if penalty_epochs < 1:
        raise ValueError("slim needs penalty_epochs >= 1: the penalty chooses the channels")
    loss_fn = cp.slimming_loss(penalty)      # validates penalty

    def step(model: nn.Module, context: Context) -> nn.Module:
        if not any(isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)) for m in model.modules()):
            raise ValueError("slim ranks channels by their batch-norm scales, and the model "
                             "has no batch norm (folded already?): use prune_channels")
        model = copy.deepcopy(model)
        _finetune(model, context, penalty_epochs, loss_fn=loss_fn)
        smaller, _ = cp.prune_to_macs(model, cp.bn_scale_importance, share=macs_share,
                                      scope="global")
        _finetune(smaller, context, epochs)
        return smaller
    return step


def share_weights(bits: int | dict[str, int], epochs: int = 0, lr: float = 1e-4) -> Step:
    """k-means weight sharing of the nonzero weights (chapter 5; zeros stay zero), the
    centroids fine-tuned ``epochs`` epochs with AdamW at ``lr``. Reports the shared bytes.

    ``bits``: the index width of every layer, or ``{layer name: bits}`` as Deep Compression
    gives convolutions and fully connected layers their own widths (layers not named stay
    unshared; the names are checked when the step runs)."""
    if isinstance(bits, dict):
        check_mapping("bits", bits, nonempty=True, what="a dict of layer name -> bits")
        for name, b in bits.items():
            if isinstance(b, bool) or not isinstance(b, int):
                raise TypeError(f"bits[{name!r}] must be an int in [{CODE_BITS[0]}, "
                                f"{CODE_BITS[1]}], got {b!r}")
            _check_bits(b, CODE_BITS, f"bits[{name!r}]")
    else:
        _check_bits(bits, CODE_BITS)
    _check_epochs(epochs)
    check_float("lr", lr, 0, low_open=True)

    def step(model: nn.Module, context: Context):
        shared = _share_weights(model, bits, keep_zeros=True)
        if epochs:
            fit(shared, context.train_loader, epochs, lr=lr, optimizer="adamw",
                schedule="cosine", progress=False)
        return shared, {"size_bytes": weight_sharing_bytes(shared)["total"]}
    return step


def distill(epochs: int, temperature: float = 4.0, alpha: float = 0.1) -> Step:
    """Train the model on the context's teacher (chapter 7) for ``epochs`` epochs."""
    _check_epochs(epochs)
    check_float("temperature", temperature, 0, low_open=True)
    check_float("alpha", alpha, 0, 1)

    def step(model: nn.Module, context: Context) -> nn.Module:
        if context.teacher is None:
            raise ValueError("distill needs a teacher: Context(teacher=...)")
        student = copy.deepcopy(model)
        _distill(student, context.teacher, context.train_loader, epochs,
                 temperature=temperature, alpha=alpha, lr=context.lr, schedule="cosine",
                 progress=False)
        return student
    return step


def decompose(method: str, macs_ratio: float, epochs: int = 0) -> Step:
    """Low-rank decomposition (chapter 8) to ``macs_ratio`` times fewer MACs, then
    ``epochs`` epochs of fine-tuning."""
    check_str("method", method, _lowrank.METHODS)
    check_float("macs_ratio", macs_ratio, 1)
    _check_epochs(epochs)

    def step(model: nn.Module, context: Context) -> nn.Module:
        smaller, _ = _lowrank.decompose_model(model, method, macs_ratio=macs_ratio)
        _finetune(smaller, context, epochs)
        return smaller
    return step


def quantize_int8() -> Step:
    """Real int8 (chapter 5): pt2e post-training quantization on the context's calibration
    batches, compiled for oneDNN's int8 kernels. Reports the float model's MACs and the
    int8 tensors' bytes."""

    def step(model: nn.Module, context: Context):
        if not context.calibration:
            raise ValueError("quantize_int8 needs calibration batches: Context(calibration=...)")
        _check_float_model(model, "quantize")
        macs = count_macs(model)
        q8 = _int8.quantize_int8(model, context.calibration)
        # compiles at its first call of each batch size (the timing's warm-up)
        return _int8.compile_cpu(q8), {"macs": macs, "size_bytes": _int8.saved_size_bytes(q8)}
    return step


def binarize(scheme: str, epochs: int, keep_first_last: bool = True) -> Step:
    """Binary weights (and activations, by ``scheme``; chapter 6) from the model's own
    weights, trained ``epochs`` epochs through the straight-through estimator. Reports the
    deployed bytes: every binarized layer's packed signs, scales and biases instead of its
    float32 weights."""
    check_str("scheme", scheme, _binary.SCHEMES)
    _check_epochs(epochs)
    check_bool("keep_first_last", keep_first_last)

    def step(model: nn.Module, context: Context):
        _check_float_model(model, "binarize")
        if shared_layers(model):
            raise ValueError("the model's weights are shared (k-means codebooks): binarize "
                             "the float model")
        binary = _binary.binarize(model, scheme, keep_first_last=keep_first_last)
        _finetune(binary, context, epochs)
        counts = _binary.binary_weight_bytes(binary)
        size = model_size_bytes(binary) - counts["fp32_bytes"] - counts["bias_bytes"] \
            + counts["binary_bytes"]
        return binary, {"size_bytes": size}
    return step
