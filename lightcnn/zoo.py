"""Trained models: shipped with the book (the zoo), or trained once and cached.

**The zoo.** Every model a chapter's conclusions rest on is trained once, on a long
recipe, by ``make zoo`` (``python -m lightcnn.zoo build [NAMES]``), and shipped in the
repository's ``zoo/`` folder as safetensors weights with a manifest (see
:mod:`lightcnn.weights`). :data:`ENTRIES` lists them, torchvision's weight enums' way: a
name, the architecture and its arguments, the recipe and the recipe's *version*, the
epochs and the seed. ``get_trained``, ``get_pruned``, ``get_decomposed`` and
``get_quantized`` load a shipped model when the call asks for exactly what an entry
describes, after checking its SHA-256, at every budget (``ci`` shrinks test subsets, not
models). Editing code does not invalidate a shipped model; only a version bump does, and
then the model must be rebuilt: a damaged or stale shipped file is refused with the
command that rebuilds it, never trained over.

**The cache.** Anything else (a reader's own model, a ``ci``-budget run of a model the
zoo does not ship yet, a chapter's small demonstration) is trained deterministically on
first use and stored under the user cache. Its key hashes everything that changes the
result: the model name and arguments, the training recipe, the budget, the seed, the
source code of the model, the data and the training loop, and torch's version. A stale
entry is never loaded (its key differs), and an unreadable or corrupted one (its SHA-256
does not match) is trained again, with a warning.

Taught in chapters/01_cnn_basics; the zoo's recipes in book/benchmarking.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import dataclasses
import hashlib
import importlib
import inspect
import io
import json
import statistics
import os
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from . import data as _data
from . import distributed as _distributed
from . import models as _models
from . import train as _train
from . import weights as _weights
from ._io import atomic_write
from ._checks import (check_bool, check_float, check_instance, check_int, check_mapping,
                      check_module, check_path, check_sequence, check_str)
from .budget import BUDGETS, Budget, get_budget
from .data import get_dataloaders, user_cache_dir
from .train import History, fit
from .weights import ZooError

__all__ = ["RECIPES", "TRAINING_BUDGET_FIELDS", "TrainedModel", "cache_key", "cache_path",
           "partial_checkpoint", "get_trained", "PRUNING_METHODS", "get_pruned", "LOWRANK_METHODS", "VAL_SEED",
           "get_decomposed", "QUANTIZATION_METHODS", "get_quantized", "ZooEntry", "ENTRIES",
           "ZooError", "load", "shipped", "expect_entry", "fetch_entry", "estimate_pace",
           "build", "check", "table", "main"]

# The budget fields that change a trained model (data seen, epochs, test set it is scored
# on); latency and calibration settings do not, so changing them keeps the cache valid.
TRAINING_BUDGET_FIELDS = ("name", "train_size", "test_size", "epochs")

# How each model is trained from scratch; epochs come from the budget.
RECIPES: dict[str, dict] = {
    "baseline_cnn": dict(optimizer="sgd", lr=0.1, weight_decay=5e-4, schedule="onecycle",
                         batch_size=128, augment=True),
    "lenet5": dict(optimizer="sgd", lr=0.05, weight_decay=5e-4, schedule="onecycle",
                   batch_size=128, augment=False),
    # Binary networks (chapter 06): Adam, as BinaryConnect, BNN and XNOR-Net train theirs,
    # no weight decay (it would pull latent weights to 0, where their signs flip at
    # random), and the latent weights clipped to [-1, 1] after every step.
    "binary_cnn": dict(optimizer="adamw", lr=3e-3, weight_decay=0.0, schedule="onecycle",
                       batch_size=128, augment=True,
                       after_step="lightcnn.binary.clip_latent_weights"),
}
DEFAULT_RECIPE = RECIPES["baseline_cnn"]
# chapter 07's students: the baseline's optimizer and schedule without augmentation (the
# same images every epoch, so a teacher's logits are computed once per training set)
STUDENT_RECIPE = dict(optimizer="sgd", lr=0.1, weight_decay=5e-4, schedule="onecycle",
                      batch_size=128, augment=False)


# ---------------------------------------------------------------------------------------
# The shipped zoo: what each model is and how it is trained, versioned
# ---------------------------------------------------------------------------------------

def _jsonable(value):
    """``value`` as JSON would give it back (tuples become lists), for comparing specs."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


@dataclass(frozen=True)
class ZooEntry:
    """One shipped model, the way torchvision's weight enums describe theirs.

    ``version`` is the recipe's version: change anything here (or in the recipe dict it
    holds) and the version must go up, which tells ``make zoo`` to retrain it; the test
    suite compares every entry with the manifest, so a change without a bump fails.

    Attributes:
        name: the file stem in ``zoo/`` and the name ``load`` takes.
        model: the registered architecture (``lc.list_models()``) and ``kwargs`` its
            arguments.
        recipe: the training recipe (see :data:`RECIPES`); ``epochs`` and ``seed`` its
            schedule and seed. Trained on all 60,000 training images, scored on all 10,000
            test images.
        init_from / teacher / distill: another entry to start from, another entry to
            distill from and the ``Distiller`` settings (see :func:`get_trained`).
        pruned_from / prune: an entry pruned by :func:`get_pruned` with these keyword
            arguments (method, epochs, sparsity or macs_share, ...).
        decomposed_from / decompose: an entry decomposed into low-rank layers and
            fine-tuned by :func:`get_decomposed` with these keyword arguments (method,
            epochs, macs_ratio, round_to, keep_best, ...). With ``keep_best`` the model
            trains on the 55,000 training images left after holding out 5,000 for
            validation, and is the epoch best on those.
        quantized_from / quantize: an entry quantized and fine-tuned by
            :func:`get_quantized` with these keyword arguments (method, epochs, bits, lr,
            optimizer, ...).
        minutes_per_epoch: measured on the book's 2-core CPU; ``make zoo`` estimates the
            time left from it.
    """

    name: str
    model: str
    recipe: dict
    version: int
    epochs: int
    seed: int = 0
    kwargs: dict = dataclasses.field(default_factory=dict)
    channels_last: bool = False
    init_from: str | None = None
    teacher: str | None = None
    distill: dict | None = None
    pruned_from: str | None = None
    prune: dict | None = None
    decomposed_from: str | None = None
    decompose: dict | None = None
    quantized_from: str | None = None
    quantize: dict | None = None
    minutes_per_epoch: float = 1.0

    def __post_init__(self) -> None:
        check_str("name", self.name)
        check_str("model", self.model)
        check_mapping("recipe", self.recipe, nonempty=True)
        check_int("version", self.version, 1)
        check_int("epochs", self.epochs, 1)
        check_int("seed", self.seed, 0)
        check_mapping("kwargs", self.kwargs)
        check_bool("channels_last", self.channels_last)
        for field in ("init_from", "teacher", "pruned_from", "decomposed_from", "quantized_from"):
            check_str(field, getattr(self, field), none=True)
        check_mapping("distill", self.distill, none=True)
        check_mapping("prune", self.prune, none=True, nonempty=True)
        check_mapping("decompose", self.decompose, none=True, nonempty=True)
        check_mapping("quantize", self.quantize, none=True, nonempty=True)
        sources = (("pruned_from", "prune"), ("decomposed_from", "decompose"),
                   ("quantized_from", "quantize"))
        for source, settings in sources:
            if (getattr(self, source) is None) != (getattr(self, settings) is None):
                raise ValueError(f"{source} and {settings} go together, got {source}="
                                 f"{getattr(self, source)!r} and {settings}="
                                 f"{getattr(self, settings)!r}")
        made_from = {s: getattr(self, s) for s, _ in sources if getattr(self, s) is not None}
        if len(made_from) > 1:
            raise ValueError(f"an entry is pruned, decomposed or quantized, one of them, got "
                             f"{made_from}")
        check_float("minutes_per_epoch", self.minutes_per_epoch, 0, low_open=True)

    def spec(self) -> dict:
        """Everything that decides the trained weights, as the manifest stores it."""
        return _jsonable({"architecture": self.model, "arguments": self.kwargs,
                          "recipe": self.recipe, "recipe_version": self.version,
                          "epochs": self.epochs, "seed": self.seed,
                          "channels_last": self.channels_last, "init_from": self.init_from,
                          "teacher": self.teacher, "distill": self.distill,
                          "pruned_from": self.pruned_from, "prune": self.prune,
                          "decomposed_from": self.decomposed_from,
                          "decompose": self.decompose, "quantized_from": self.quantized_from,
                          "quantize": self.quantize})

    def dependencies(self) -> list[str]:
        return [d for d in (self.init_from, self.teacher, self.pruned_from,
                            self.decomposed_from, self.quantized_from) if d is not None]

    def estimated_minutes(self) -> float:
        extra = (self.prune or {}).get("penalty_epochs") or 0
        return self.minutes_per_epoch * (self.epochs + extra)


def _entries(*entries: ZooEntry) -> dict[str, ZooEntry]:
    table = {}
    for entry in entries:
        if entry.name in table:
            raise ValueError(f"zoo entry {entry.name!r} is defined twice")
        for dependency in entry.dependencies():
            if dependency not in table:
                raise ValueError(f"zoo entry {entry.name!r} needs {dependency!r}, defined later")
        table[entry.name] = entry
    return table


# the weight sparsity that leaves 12x fewer nonzero parameters in the baseline CNN
# (pruning.sparsity_for_ratio(create_model("baseline_cnn"), 12), as chapter 04 computes it)
SPARSITY_12X = 0.9194425662715311


# the weight sparsity that leaves 12x fewer nonzero parameters in LeNet-5
# (pruning.sparsity_for_ratio(create_model("lenet5"), 12), as chapter 04 computes it)
LENET5_SPARSITY_12X = 0.9201859985900982


def _pruning_settings(method: str, epochs: int, lr: float | None = None, seed: int = 0,
                      sparsity: float | None = None, macs_share: float | None = None,
                      penalty: float = 1e-2, penalty_epochs: int | None = None,
                      rounds: Sequence[float] | None = None,
                      reinit_seed: int | None = None, round_to: int | None = None) -> dict:
    """get_pruned's settings as an entry stores them: one dict shape for both, so a call
    and the entry that ships it compare equal (``lr`` None: the fine-tuning rate, 0.01)."""
    settings = {"method": method, "epochs": epochs, "seed": seed}
    if method != "lottery":     # the lottery ticket trains with its base's own recipe
        settings["lr"] = 0.01 if lr is None else lr
    if method in ("agp", "iterative", "lottery"):
        settings["sparsity"] = sparsity
    if method in ("l1", "slimming"):
        settings["macs_share"] = macs_share
        if round_to is not None:    # absent when not rounded: older entries' specs unchanged
            settings["round_to"] = round_to
    if method == "slimming":
        settings.update(penalty=penalty, penalty_epochs=penalty_epochs)
    if method == "iterative":
        settings["rounds"] = None if rounds is None else list(rounds)
    if method == "lottery":
        settings["reinit_seed"] = reinit_seed
    return settings


def _pruned(name: str, base: ZooEntry, method: str, epochs: int, seed: int = 0,
            version: int = 1, minutes_per_epoch: float | None = None, **settings) -> ZooEntry:
    """An entry made by :func:`get_pruned` from entry ``base`` (same keyword arguments);
    ``minutes_per_epoch`` defaults to the base's."""
    prune = _pruning_settings(method, epochs, seed=seed, **settings)
    return ZooEntry(name, base.model, base.recipe, version=version, epochs=epochs, seed=seed,
                    kwargs=base.kwargs, pruned_from=base.name, prune=prune,
                    minutes_per_epoch=minutes_per_epoch or base.minutes_per_epoch)


# the decompositions get_decomposed applies, and its control (fine-tuning alone)
LOWRANK_METHODS = ("spatial", "tucker2", "cp", "finetune")
# the seed that picks the validation images held out of training (data.validation_split)
VAL_SEED = 0


def _lowrank_settings(method: str, epochs: int, lr: float, seed: int, keep_best: bool,
                      macs_ratio: float | None, round_to: int | None, skip: Sequence[str],
                      n_iter_max: int | None) -> dict:
    """get_decomposed's settings as an entry stores them: one dict shape for both, so a
    call and the entry that ships it compare equal."""
    settings = {"method": method, "epochs": epochs, "lr": lr, "seed": seed,
                "keep_best": keep_best}
    if method != "finetune":
        settings.update(macs_ratio=macs_ratio, round_to=round_to, skip=list(skip))
    if method == "cp":
        settings["n_iter_max"] = n_iter_max
    return settings


def _decomposed(name: str, base: ZooEntry, method: str, epochs: int, lr: float,
                keep_best: bool = True, macs_ratio: float | None = None,
                round_to: int | None = None, skip: Sequence[str] = (),
                n_iter_max: int | None = None, seed: int = 0, version: int = 1,
                minutes_per_epoch: float = 1.0) -> ZooEntry:
    """An entry made by :func:`get_decomposed` from entry ``base`` (same keyword arguments)."""
    decompose = _lowrank_settings(method, epochs, lr, seed, keep_best, macs_ratio, round_to,
                                  skip, n_iter_max)
    return ZooEntry(name, base.model, base.recipe, version=version, epochs=epochs, seed=seed,
                    kwargs=base.kwargs, decomposed_from=base.name, decompose=decompose,
                    minutes_per_epoch=minutes_per_epoch)


# the quantizations get_quantized applies, and its control (fine-tuning alone)
QUANTIZATION_METHODS = ("qat", "int8_qat", "kmeans", "finetune")


def _quantization_settings(method: str, epochs: int, bits: int | None = None,
                           lr: float = 0.01, optimizer: str = "sgd", seed: int = 0,
                           edge_bits: int | None = None) -> dict:
    """get_quantized's settings as an entry stores them (one dict shape for both)."""
    settings = {"method": method, "epochs": epochs, "lr": lr, "optimizer": optimizer,
                "seed": seed}
    if method in ("qat", "kmeans"):
        settings["bits"] = bits
    if edge_bits is not None:   # absent otherwise: entries made before it keep their shape
        settings["edge_bits"] = edge_bits
    return settings


def _quantized(name: str, base: ZooEntry, method: str, epochs: int, bits: int | None = None,
               lr: float = 0.01, optimizer: str = "sgd", seed: int = 0, version: int = 1,
               minutes_per_epoch: float = 1.0, edge_bits: int | None = None) -> ZooEntry:
    """An entry made by :func:`get_quantized` from entry ``base`` (same keyword arguments)."""
    quantize = _quantization_settings(method, epochs, bits, lr, optimizer, seed, edge_bits)
    return ZooEntry(name, base.model, base.recipe, version=version, epochs=epochs, seed=seed,
                    kwargs=base.kwargs, quantized_from=base.name, quantize=quantize,
                    minutes_per_epoch=minutes_per_epoch)


# Chapter 08's fine-tuning rate, from probes of 120 SGD steps at a constant rate on the
# baseline at half its MACs (train loss; accuracy in eval mode on the ci test subset).
# CP (25 ALS rounds, ranks 89/136/184/279, factors balanced): 0.01 diverged (0.76; 58.0%),
# 3e-3 trained but its batch-norm statistics could not follow (0.27; 51.6%), 1e-3 held
# (0.18; 86.9%).
# Tucker-2 (ranks rounded to 8): 0.18 and 91.5% at 0.01, 0.16 and 92.3% at 1e-3; spatial:
# 92.4% at both. So 1e-3, cosine-annealed, for every decomposition and the control alike.
LOWRANK_LR = 1e-3
# half the baseline's MACs, every rank a multiple of 8 (the AVX2 float32 block; Tucker-2's
# unrounded ranks 19/37/77 ran slower than the baseline in ONNX Runtime), the one-channel
# first convolution kept whole
_HALF_MACS = dict(macs_ratio=2.0, round_to=8, skip=["features.0.0"])

# The book's converged models. Minutes per epoch: AMD EPYC, 2 threads.
# chapter 01: the baseline every chapter compares with, and LeNet-5
_LENET5 = ZooEntry("lenet5", "lenet5", RECIPES["lenet5"], version=1, epochs=20,
                   minutes_per_epoch=0.09)
_BASELINE = ZooEntry("baseline_cnn", "baseline_cnn", RECIPES["baseline_cnn"], version=1,
                     epochs=20, minutes_per_epoch=1.0)

# make zoo -j 2 trains two models at once, on one thread each. The estimates of chapters 02
# and 03 scale the seconds per epoch those chapters measured on 2 threads (AMD EPYC) by
# 1.5: chapter 07's students took 13 and 29 s an epoch on 2 threads in their chapter, and
# 18 to 20 and 40 to 48 s in the zoo's build (zoo/manifest.json, the builds not slowed by
# other work).
_ONE_THREAD = 1.5


def _minutes(seconds_on_2_threads: float) -> float:
    """Estimated minutes per epoch in ``make zoo -j 2`` from a chapter's 2-thread seconds."""
    return round(seconds_on_2_threads * _ONE_THREAD / 60, 2)


def _design(name: str, seconds: float, channels_last: bool = False, **kwargs) -> ZooEntry:
    """Chapter 02's kind of entry: ``design_cnn(**kwargs)`` from scratch, the baseline's
    recipe and schedule."""
    return ZooEntry(name, "design_cnn", RECIPES["baseline_cnn"], version=1, epochs=20,
                    kwargs=kwargs, channels_last=channels_last,
                    minutes_per_epoch=_minutes(seconds))


# chapter 03's survey at width 0.25: family, channels-last (the chapter's CHANNELS_LAST:
# the families whose training it made faster on the book's CPU), seconds per epoch in the
# chapter's one-epoch survey (SqueezeNet 1.1's: the mean of its 20-epoch run)
_SURVEY_WIDTH = 0.25
_SURVEY = (
    ("mobilenet_v1", True, 88.0),
    ("mobilenet_v2", True, 151.7),
    ("mobilenet_v3_small", True, 69.0),
    ("mobilenet_v3_large", True, 117.3),
    ("shufflenet_v1", True, 122.3),
    ("shufflenet_v2", False, 97.8),
    ("squeezenet1_0", True, 45.1),
    ("squeezenet1_1", True, 27.8),
    ("efficientnet_b0", True, 222.8),
    ("ghostnet", False, 157.5),
)

ENTRIES: dict[str, ZooEntry] = _entries(
    _LENET5,
    _BASELINE,
    # chapter 02: design_cnn's variants, one knob at a time. The widths are what
    # design.fit_widths_to_macs gives at an eighth and a half of the baseline's MACs for
    # each depth profile (the chapter computes them, tests/test_zoo.py checks that they
    # agree). Seconds per epoch: the chapter's one-epoch runs.
    # depth against width at equal MACs: dense 3x3 blocks, ReLU
    _design("design_cnn_eighth_d111", 30, widths=(19, 38, 76), depths=(1, 1, 1)),
    _design("design_cnn_eighth_d122", 26, widths=(11, 22, 44), depths=(1, 2, 2)),
    _design("design_cnn_eighth_d233", 23, widths=(7, 14, 28), depths=(2, 3, 3)),
    _design("design_cnn_half_d111", 83, widths=(38, 76, 152), depths=(1, 1, 1)),
    _design("design_cnn_half_d122", 73, widths=(22, 44, 88), depths=(1, 2, 2)),
    _design("design_cnn_half_d233", 53, widths=(16, 32, 64), depths=(2, 3, 3)),
    # the other activations on the half-MACs (1, 2, 2) network (ReLU's is the one above);
    # the chapter did not print their seconds: ReLU's 73 plus 5%, about what each added to
    # the network's time at batch 256 in inference
    *(_design(f"design_cnn_half_d122_{activation}", 77, widths=(22, 44, 88), depths=(1, 2, 2),
              activation=activation) for activation in ("leaky_relu", "silu", "hardswish")),
    # the factored blocks at an eighth of the MACs (the dense one is design_cnn_eighth_d122),
    # in channels-last like chapter 03's depthwise families. The inverted residual is also
    # the hand design the searched network is compared with. Seconds: the mbconv network's
    # 6-epoch run in the chapter (5.1 min); the depthwise-separable one's were not printed,
    # so mbconv's scaled by their times at batch 256 in inference (73 against 61 ms)
    _design("design_cnn_eighth_d122_dwsep", 61, channels_last=True, widths=(31, 62, 124),
            depths=(1, 2, 2), block="dwsep"),
    _design("design_cnn_eighth_d122_mbconv", 51, channels_last=True, widths=(11, 22, 44),
            depths=(1, 2, 2), block="mbconv"),
    # the architecture chapter 02's seeded search found under an eighth of the baseline's
    # MACs on the book's AMD EPYC (the same in every run there; an Intel Xeon's rounding
    # ranked another first), trained like the hand design; seconds: its 6-epoch run (4.7 min)
    ZooEntry("searched_cnn_eighth", "searched_cnn", RECIPES["baseline_cnn"], version=1,
             epochs=20, kwargs=dict(architecture=((1, 48, 5, 1), (3, 24, 3, 1), (3, 48, 5, 1))),
             channels_last=True, minutes_per_epoch=_minutes(47)),
    # chapter 03: the survey's ten families at width 0.25, the baseline's recipe and schedule
    *(ZooEntry(f"{family}_x{_SURVEY_WIDTH}", family, RECIPES["baseline_cnn"], version=1,
               epochs=20, kwargs=dict(width_mult=_SURVEY_WIDTH), channels_last=channels_last,
               minutes_per_epoch=_minutes(seconds))
      for family, channels_last, seconds in _SURVEY),
    # chapter 04: the baseline pruned and fine-tuned (get_pruned's schedule: SGD, cosine from
    # lr 0.01, augmented batches of 128), beside the control that fine-tunes as long without
    # pruning; the 12x model also at twice the schedule, to show whether it converged
    *(_pruned(f"baseline_cnn+{tag}", _BASELINE, **settings) for tag, settings in (
        ("agp12x_e10", dict(method="agp", sparsity=SPARSITY_12X, epochs=10)),
        ("finetune_e10", dict(method="finetune", epochs=10)),
        ("agp12x_e20", dict(method="agp", sparsity=SPARSITY_12X, epochs=20)),
        ("l1_half_macs_e10", dict(method="l1", macs_share=0.5, epochs=10)),
    )),
    # chapter 04, the other pruning methods on the same schedule, beside the same control:
    # Han et al.'s iterative pruning to 12x (rounds at 60% and 85%, then 12x; the epochs
    # split 3/3/4), network slimming to half the MACs (3 penalised epochs, lambda = 2e-2,
    # before the cut: probes of the penalty phase on the baseline left 1.7% of |gamma| below
    # 0.05 at 1e-2, a unimodal histogram whose 30% cut fell to 10% accuracy; 32% below 1e-3,
    # bimodal, the cut free (89.65% before and after) at 2e-2; 51% at 3e-2 (88.24%); 93% at
    # 1e-1 (63.76%)), and L1 channels, iterative and slimming at twice the schedule, to show
    # whether each converged. Minutes per epoch from the chapter's full run (2 threads):
    # 60 s an epoch of the whole baseline, 39 s at half its MACs; slimming's 3 penalised
    # epochs are whole.
    *(_pruned(f"baseline_cnn+{tag}", _BASELINE, minutes_per_epoch=minutes, **settings)
      for tag, minutes, settings in (
          ("iterative12x_e10", 1.0, dict(method="iterative", sparsity=SPARSITY_12X,
                                         rounds=[0.6, 0.85], epochs=10)),
          ("iterative12x_e20", 1.0, dict(method="iterative", sparsity=SPARSITY_12X,
                                         rounds=[0.6, 0.85], epochs=20)),
          ("l1_half_macs_e20", 0.65, dict(method="l1", macs_share=0.5, epochs=20)),
          # the same with every width a multiple of 16 (16/48/96): chapter 09's pipeline,
          # since ONNX Runtime ran 22/45/90 slower than the unpruned network
          ("l1_half_macs_r16_e10", 0.65, dict(method="l1", macs_share=0.5, round_to=16,
                                              epochs=10)),
          ("slimming_half_macs_e10", 0.65, dict(method="slimming", macs_share=0.5, penalty=2e-2,
                                                penalty_epochs=3, epochs=10)),
          ("slimming_half_macs_e20", 0.6, dict(method="slimming", macs_share=0.5, penalty=2e-2,
                                               penalty_epochs=3, epochs=20)),
          # slimming's control: its 3 penalised epochs and 10 fine-tuning ones, as long
          ("finetune_e13", 1.0, dict(method="finetune", epochs=13)),
          # the control of the 20-epoch models (doubling 10 epochs added 0.23 to 0.58 points
          # to iterative, AGP and L1, so their 20-epoch models are the chapter's results)
          ("finetune_e20", 1.0, dict(method="finetune", epochs=20)),
      )),
    # chapter 04 on LeNet-5: Han et al.'s own 12x with the same loop and fine-tuning, beside
    # its control; and the lottery ticket at 10% of the weights (Frankle & Carbin): the
    # survivors rewound to LeNet-5's initial weights, or drawn afresh (seed 1, the control),
    # three seeds of each, trained 20 epochs with LeNet-5's own recipe, masks kept. The
    # chapter's full run: 4.1 s an epoch without augmentation (the fine-tunes augment).
    *(_pruned(f"lenet5+{tag}", _LENET5, minutes_per_epoch=minutes, **settings)
      for tag, minutes, settings in (
          ("iterative12x_e10", 0.1, dict(method="iterative", sparsity=LENET5_SPARSITY_12X,
                                         rounds=[0.6, 0.85], epochs=10)),
          ("finetune_e10", 0.1, dict(method="finetune", epochs=10)),
          ("ticket_keep10_e20", 0.07, dict(method="lottery", sparsity=0.9, reinit_seed=None,
                                           epochs=20)),
          ("reinit_keep10_e20", 0.07, dict(method="lottery", sparsity=0.9, reinit_seed=1,
                                           epochs=20)),
          # two more seeds of each (ticket and control differ by under a point on seed 0):
          # seed k trains with seed k; control k draws its weights with seed k + 1
          *((f"{kind}_keep10_e20_s{k}", 0.07,
             dict(method="lottery", sparsity=0.9, reinit_seed=reseed, epochs=20, seed=k))
            for k in (1, 2) for kind, reseed in (("ticket", None), ("reinit", k + 1))),
      )),
    # chapter 05: the baseline quantized and fine-tuned from its weights: QAT at 4 and 2
    # bits (simulated, weights and activations; the first conv and the classifier at 8 bits,
    # where the pixels come in and the classes go out; 2-bit weights are ternary, the
    # symmetric grid's three levels) and int8 QAT through the pt2e flow, at
    # get_pruned's rate and schedule, so baseline_cnn+finetune_e10 is their control; k-means
    # codebooks at 4 and 2 bits with their centroids fine-tuned by AdamW at 1e-4 (a
    # centroid's gradient sums its cluster's), beside their own control; the 2-bit ones at
    # twice the schedule, to show whether the technique converged where it has most to
    # recover. Minutes per epoch from the chapter's full run: QAT 82 s (4 bits) and 76 s
    # (2 bits) an epoch, int8 QAT about 85 s; k-means is not timed there (an estimate: the
    # baseline's 60 s and the codebook lookups).
    *(_quantized(f"baseline_cnn+{tag}", _BASELINE, minutes_per_epoch=minutes, **settings)
      for tag, minutes, settings in (
          ("qat_w4a4_e10", 1.4, dict(method="qat", bits=4, epochs=10, edge_bits=8)),
          ("qat_w2a2_e10", 1.3, dict(method="qat", bits=2, epochs=10, edge_bits=8)),
          ("qat_w2a2_e20", 1.3, dict(method="qat", bits=2, epochs=20, edge_bits=8)),
          ("int8_qat_e10", 1.4, dict(method="int8_qat", epochs=10)),
          ("kmeans4_e10", 1.2, dict(method="kmeans", bits=4, epochs=10, lr=1e-4,
                                    optimizer="adamw")),
          ("kmeans2_e10", 1.2, dict(method="kmeans", bits=2, epochs=10, lr=1e-4,
                                    optimizer="adamw")),
          ("kmeans2_e20", 1.2, dict(method="kmeans", bits=2, epochs=20, lr=1e-4,
                                    optimizer="adamw")),
          ("adamw_finetune_e10", 1.0, dict(method="finetune", epochs=10, lr=1e-4,
                                           optimizer="adamw")),
      )),
    # chapter 06: the baseline binarized five ways and fine-tuned from its weights with the
    # binary recipe (Adam, no decay, latent weights clipped); XNOR-Net also at twice the
    # schedule, to show whether the binary fine-tunes converged
    *(ZooEntry(f"binary_cnn+{tag}", "binary_cnn", RECIPES["binary_cnn"], version=1,
               epochs=epochs, kwargs=dict(scheme=scheme, keep_first_last=keep),
               init_from="baseline_cnn", minutes_per_epoch=1.5)
      for tag, scheme, keep, epochs in (
          ("bnn_e10", "bnn", True, 10),
          ("xnor_e10", "xnor", True, 10),
          ("bwn_e10", "bwn", True, 10),
          ("binaryconnect_e10", "binaryconnect", True, 10),
          ("xnor_all_binary_e10", "xnor", False, 10),
          ("xnor_e20", "xnor", True, 20),
      )),
    # chapter 06's control: the float baseline trained on as long with the binary recipe's
    # optimizer and schedule (its clipping would touch no float layer), so a chapter can
    # separate binarization from the extra epochs
    ZooEntry("baseline_cnn+binary_recipe_e10", "baseline_cnn",
             {k: v for k, v in RECIPES["binary_cnn"].items() if k != "after_step"},
             version=1, epochs=10, init_from="baseline_cnn", minutes_per_epoch=1.0),
    # chapter 07: three students from scratch, 3 seeds each, alone, distilled from the
    # baseline (T = 4, alpha = 0.1, RepDistiller's setting) and with label smoothing (the
    # regularization control: soft targets without a teacher); no augmentation, so the
    # teacher's logits are computed once. Minutes per epoch are estimates until built.
    *(ZooEntry(f"{student}+{kind}_s{seed}", model, dict(STUDENT_RECIPE, label_smoothing=0.1)
               if kind == "smooth" else STUDENT_RECIPE, version=1, epochs=20, seed=seed,
               kwargs=kwargs, teacher="baseline_cnn" if kind == "kd" else None,
               distill=dict(temperature=4.0, alpha=0.1) if kind == "kd" else None,
               minutes_per_epoch=minutes)
      for student, model, kwargs, minutes in (
          ("cnn_x0.25", "baseline_cnn", dict(widths=[8, 16, 32]), 0.2),
          ("cnn_x0.5", "baseline_cnn", dict(widths=[16, 32, 64]), 0.35),
          ("squeezenet1_1_x0.25", "squeezenet1_1", dict(width_mult=0.25), 0.45))
      for seed in (0, 1, 2) for kind in ("alone", "kd", "smooth")),
    # chapter 07's test of the ReLU head: the SqueezeNet student with linear class scores,
    # alone and distilled as above, 3 seeds (same parameters; only the ReLU is gone)
    *(ZooEntry(f"squeezenet1_1_x0.25_linear_head+{kind}_s{seed}", "squeezenet1_1",
               STUDENT_RECIPE, version=1, epochs=20, seed=seed,
               kwargs=dict(width_mult=0.25, relu_head=False),
               teacher="baseline_cnn" if kind == "kd" else None,
               distill=dict(temperature=4.0, alpha=0.1) if kind == "kd" else None,
               minutes_per_epoch=0.45)
      for seed in (0, 1, 2) for kind in ("alone", "kd")),
    # chapter 08: the baseline decomposed to half its MACs by Jaderberg's spatial scheme,
    # Tucker-2 and CP (25 ALS rounds), fine-tuned 10 epochs at LOWRANK_LR, each the epoch
    # best on 5,000 training images held out (it trains on the other 55,000); CP also at
    # twice the schedule, to show whether it converged; the control fine-tunes the
    # baseline as long the same way. Minutes per epoch are estimates until built (the
    # chapter's 3-epoch runs: spatial 69 s, Tucker-2 76 s, CP 106 s an epoch).
    *(_decomposed(f"baseline_cnn+{tag}", _BASELINE, epochs=epochs, lr=LOWRANK_LR,
                  minutes_per_epoch=minutes, **settings)
      for tag, epochs, minutes, settings in (
          ("spatial_half_macs_e10", 10, 1.2, dict(method="spatial", **_HALF_MACS)),
          ("tucker2_half_macs_e10", 10, 1.3, dict(method="tucker2", **_HALF_MACS)),
          ("cp_half_macs_e10", 10, 1.8, dict(method="cp", n_iter_max=25, **_HALF_MACS)),
          ("cp_half_macs_e20", 20, 1.8, dict(method="cp", n_iter_max=25, **_HALF_MACS)),
          ("lowrank_finetune_e10", 10, 1.0, dict(method="finetune")),
      )),
    # and the thinner dense network at the same MACs (2.03x fewer than the baseline, widths
    # multiples of 8), trained from scratch with the baseline's recipe and schedule
    ZooEntry("cnn_half_macs", "baseline_cnn", RECIPES["baseline_cnn"], version=1, epochs=20,
             kwargs=dict(widths=[24, 48, 80]), minutes_per_epoch=0.55),
)


def shipped(name: str) -> bool:
    """Whether the zoo folder's manifest holds model ``name`` (its bytes are checked on load)."""
    check_str("name", name)
    return name in _weights.read_manifest()


def expect_entry(trained: "TrainedModel", name: str, budget: Budget | str | None = None
                 ) -> "TrainedModel":
    """``trained`` itself, after checking that it is zoo entry ``name`` wherever it must be:
    whenever the entry is shipped (a call that describes a shipped entry loads it, at any
    budget), and always at the ``full`` budget (a chapter's published numbers rest on the
    zoo's converged models, never on one trained inside the chapter). At ``ci`` an entry not
    shipped yet may be trained small.

    A chapter wraps each call whose result it quotes:
    ``agp = lc.zoo.expect_entry(lc.zoo.get_pruned(base, "agp", ...), "baseline_cnn+agp12x_e10")``,
    so a call that no longer describes its entry (a changed argument) fails loudly instead
    of training something else.

    Raises:
        ValueError: ``name`` is not a zoo entry.
        ZooError: ``trained`` is not entry ``name`` where it must be (what came instead,
            and the command that builds the entry).
        TypeError: ``trained`` is not a :class:`TrainedModel`.
    """
    check_instance("trained", trained, TrainedModel)
    entry = _entry(name)
    if budget is not None and not isinstance(budget, (str, Budget)):
        raise TypeError(f"budget must be a Budget, a budget's name or None (LIGHTCNN_BUDGET), "
                        f"got {type(budget).__name__}: {budget!r}")
    budget = budget if isinstance(budget, Budget) else get_budget(budget)
    if trained.zoo_name == entry.name:
        return trained
    if shipped(entry.name) or budget.name == "full":
        came = (f"zoo entry {trained.zoo_name!r}" if trained.zoo_name else
                "a model trained in this process" if trained.trained_now else
                f"the user cache's {trained.path.name}")
        raise ZooError(f"zoo: expected entry {entry.name!r} at the {budget.name} budget, got "
                       f"{came}: the call no longer describes the entry (compare its arguments "
                       f"with lc.zoo.ENTRIES[{entry.name!r}])"
                       + ("" if shipped(entry.name) else ", or the entry is not built yet "
                          f"({_weights.rebuild_command(entry.name)})"))
    return trained


def fetch_entry(name: str, get: Callable[..., "TrainedModel"], base: "TrainedModel",
                budget: Budget | str | None = None, *, optional: bool = False,
                **settings) -> "TrainedModel | None":
    """Zoo entry ``name``, made by the call ``get(base, budget=budget, progress=False,
    **settings)`` (``get`` is :func:`get_pruned`, :func:`get_quantized` or
    :func:`get_decomposed`) and checked by :func:`expect_entry`.

    ``optional=True`` returns None, without calling ``get``, while the zoo does not ship the
    entry: a chapter prints "not in the zoo yet" instead of training it (a control or a
    longer schedule that a conclusion can do without). Otherwise the rules of
    :func:`expect_entry` hold: at ``full`` an entry not shipped raises; at ``ci`` it is
    trained small.

    Raises:
        ValueError: ``name`` is not a zoo entry.
        TypeError: ``get`` is not callable, ``base`` not a :class:`TrainedModel`,
            ``optional`` not a bool.
        ZooError: the call does not describe entry ``name`` (see :func:`expect_entry`).
    """
    _entry(name)  # an unknown name fails before anything runs
    if not callable(get):
        raise TypeError(f"get must be a callable such as lc.zoo.get_pruned, got "
                        f"{type(get).__name__}: {get!r}")
    check_instance("base", base, TrainedModel)
    check_bool("optional", optional)
    if optional and not shipped(name):
        return None
    return expect_entry(get(base, budget=budget, progress=False, **settings), name, budget)


def _entry(name: str) -> ZooEntry:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str (one of lc.zoo.ENTRIES), got {type(name).__name__}")
    if name not in ENTRIES:
        raise ValueError(f"unknown zoo entry {name!r}; the zoo has: {', '.join(ENTRIES)}")
    return ENTRIES[name]


def _check_current(entry: ZooEntry, meta: dict) -> None:
    """Refuse a shipped model whose manifest does not describe the entry in the code."""
    path = _weights.zoo_dir() / meta["file"]
    if meta.get("recipe_version") != entry.version:
        raise ZooError(f"zoo: {path} was trained by recipe version {meta.get('recipe_version')} "
                       f"of {entry.name!r}, the code's is version {entry.version}; rebuild it "
                       f"with {_weights.rebuild_command(entry.name)}")
    stored = {k: meta.get(k) for k in entry.spec()}
    if stored != entry.spec():
        changed = sorted(k for k in stored if stored[k] != entry.spec()[k])
        raise ZooError(f"zoo: the code's entry {entry.name!r} differs from what trained {path} "
                       f"({', '.join(changed)}) but keeps recipe version {entry.version}: "
                       f"bump ZooEntry.version and rebuild with "
                       f"{_weights.rebuild_command(entry.name)}")


def load(name: str) -> TrainedModel:
    """Shipped model ``name`` (one of :data:`ENTRIES`), after checking its SHA-256.

    Raises:
        ZooError: not built yet, damaged, a pickle, or trained by another recipe version;
            the message names the file and the command that rebuilds it.
    """
    entry = _entry(name)
    state, meta = _weights.load_state_dict(name)
    _check_current(entry, meta)
    model = _models.create_model(entry.model, **entry.kwargs)
    if entry.pruned_from is not None:   # removed channels: resize to the stored shapes
        from . import channel_pruning as cp

        model = cp.resize_to_state_dict(model, state)
    if entry.decomposed_from is not None:   # factored layers: rebuilt from the stored plan
        model = _decomposed_shapes(model, entry.decompose["method"],
                                   (meta.get("info") or {}).get("ranks"))
    if entry.quantized_from is not None:    # wrapped in the quantizers it trained with
        model = _quantized_shapes(model, entry.quantize)
    model.load_state_dict(state)
    model.eval()
    return TrainedModel(model, meta["test_accuracy"],
                        History.from_dict(_weights.read_history(name)),
                        _weights.zoo_dir() / meta["file"], trained_now=False,
                        info=meta.get("info") or {}, zoo_name=name)


def _zoo_name(model: TrainedModel | None) -> str | None:
    """The zoo entry ``model`` came from; a model from elsewhere matches no entry."""
    if model is None:
        return None
    return model.zoo_name or f"<not from the zoo: {model.path.name}>"


_BUILDING: set[str] = set()   # entries being built in this process: never loaded from zoo/


def _zoo_budget(budget: Budget) -> bool:
    """Whether a call at ``budget`` may be served by the zoo: every training image (the
    zoo's models saw them all), or the ``ci`` budget, which shrinks only test subsets
    (with any ``epochs``: a call's ``epochs=`` is folded into the budget before this)."""
    return (budget.train_size is None
            or dataclasses.replace(budget, epochs=BUDGETS_CI.epochs) == BUDGETS_CI)


def _match(spec: dict, epochs: int | None) -> ZooEntry | None:
    """The entry a call describes (``epochs=None``: the entry's own schedule)."""
    spec = _jsonable(spec)
    for entry in ENTRIES.values():
        mine = entry.spec()
        if all(mine[k] == v for k, v in spec.items()) and epochs in (None, entry.epochs):
            return entry
    return None


def _from_zoo(entry: ZooEntry | None) -> TrainedModel | None:
    if entry is None or entry.name in _BUILDING or not shipped(entry.name):
        return None
    return load(entry.name)


def _training_fields(budget: Budget) -> dict:
    """The budget's fields that change a trained model (part of every cache key)."""
    return {k: v for k, v in budget.as_dict().items() if k in TRAINING_BUDGET_FIELDS}


def _derived_cache_path(base: "TrainedModel", source: str, tag: str, settings: dict,
                        budget: Budget, budget_fields: dict, code: str) -> tuple[Path, str]:
    """Where get_pruned, get_decomposed and get_quantized cache a model made from ``base``,
    and its key: the SHA-256 of ``base``'s cache entry (under ``source``), the settings,
    ``budget_fields``, the hash of the ``code`` that made it and torch's version."""
    spec = {source: base.path.name, "settings": settings, "budget": budget_fields,
            "code": code, "torch": torch.__version__.split("+")[0]}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    stem = base.path.stem.split("-")[0]
    return user_cache_dir() / "zoo" / f"{stem}+{tag}-{budget.name}-{key}.pt", key


def _shipped_from(base: "TrainedModel", source: str, field: str,
                  settings: dict) -> "TrainedModel | None":
    """The shipped model of the entry made from zoo model ``base`` with ``settings``:
    ``source`` and ``field`` name the entry's kind (``pruned_from`` and ``prune``,
    ``decomposed_from`` and ``decompose``, ``quantized_from`` and ``quantize``)."""
    if base.zoo_name is None:
        return None
    wanted = _jsonable(settings)
    return _from_zoo(next((e for e in ENTRIES.values() if getattr(e, source) == base.zoo_name
                           and _jsonable(getattr(e, field)) == wanted), None))

# a teacher's logits on one training set, computed once per process (see get_trained)
_TEACHER_LOGITS: dict[tuple, torch.Tensor] = {}
BUDGETS_CI = BUDGETS["ci"]


@dataclass
class TrainedModel:
    """A trained model with its test accuracy, its history and where it is cached."""

    model: nn.Module
    accuracy: float
    history: History
    path: Path
    trained_now: bool
    # what a derived model (get_pruned) records about how it was made: ratio, sparsity...
    info: dict = dataclasses.field(default_factory=dict)
    # the zoo entry it was loaded from (None: trained in this process or the user cache)
    zoo_name: str | None = None

    def __post_init__(self) -> None:
        check_module("model", self.model)
        check_float("accuracy", self.accuracy, 0, 1)
        check_instance("history", self.history, History)
        check_path("path", self.path)
        self.path = Path(self.path)
        check_bool("trained_now", self.trained_now)
        check_mapping("info", self.info)
        check_str("zoo_name", self.zoo_name, none=True)


def _after_step(path: str | None) -> Callable[[nn.Module], None] | None:
    """The function a recipe's ``after_step`` names (``"package.module.function"``)."""
    if path is None:
        return None
    module, _, function = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"recipe's after_step {path!r} is not an importable function "
                         f"({err})") from err


def _code_modules(name: str) -> list:
    """The modules whose source decides what ``name`` trains into."""
    factory_module = inspect.getmodule(_models._REGISTRY[name])
    modules = [factory_module, _models, _data, _train]
    # the lightcnn modules the factory's module builds from (architectures -> blocks), so
    # an edited block retrains the models made of it
    package = __name__.rpartition(".")[0]
    imported = {inspect.getmodule(v) for v in vars(factory_module).values()}
    return modules + sorted((m for m in imported if m is not None and m not in modules
                             and m.__name__.startswith(package + ".")),
                            key=lambda m: m.__name__)


def _check_model_name(name) -> None:
    check_str("name", name)
    if name not in _models._REGISTRY:
        raise ValueError(f"name must be a registered model (lc.list_models()), got {name!r}")


def _source_hash(name: str) -> str:
    sources = [inspect.getsource(m) for m in _code_modules(name)]
    return hashlib.sha256("".join(sources).encode()).hexdigest()


def cache_key(name: str, budget: Budget, seed: int = 0, recipe: dict | None = None,
              channels_last: bool = False, init_from: str | None = None,
              distill: dict | None = None, device: str = "cpu", **model_kwargs) -> str:
    """16 hex digits identifying one trained model (see the module docstring).

    ``distill`` describes a distilled student: its teacher's cache file name, the loss
    settings and the hash of ``lightcnn/distillation.py`` (see :func:`get_trained`).
    """
    _check_model_name(name)
    check_instance("budget", budget, Budget)
    check_int("seed", seed, 0)
    check_mapping("recipe", recipe, none=True)
    check_bool("channels_last", channels_last)
    check_str("init_from", init_from, none=True)
    check_mapping("distill", distill, none=True)
    check_str("device", device, ("cpu", "cuda", "mps"))
    recipe = recipe or RECIPES.get(name, DEFAULT_RECIPE)
    budget_fields = _training_fields(budget)
    spec = {"model": name, "model_kwargs": model_kwargs, "recipe": recipe,
            "budget": budget_fields, "seed": seed, "code": _source_hash(name),
            "torch": torch.__version__.split("+")[0]}
    if init_from is not None:  # trained on from another cached model (absent = old keys stay)
        spec["init_from"] = init_from
    if distill is not None:  # learned from a cached teacher (absent = old keys stay)
        spec["distill"] = distill
    if device != "cpu":  # a GPU's kernels round differently: another model (cpu = old keys)
        spec["device"] = device
    if channels_last:  # other kernels, other rounding: another model (absent = old keys stay)
        spec["memory_format"] = "channels_last"
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_path(name: str, budget: Budget, key: str) -> Path:
    """Where the weights of one trained model live."""
    _check_model_name(name)
    check_instance("budget", budget, Budget)
    check_str("key", key)
    return user_cache_dir() / "zoo" / f"{name}-{budget.name}-{key}.pt"


def _load(path: Path) -> dict | None:
    """The cached entry, or None if absent; warns and returns None if it is damaged.

    Under ``torchrun`` every process must take the same branch (train, or not), and each
    machine has its own cache: an entry counts only when every process found it (otherwise
    all of them train, together)."""
    entry = _read_cache(path)
    if _distributed.is_distributed():
        everywhere = _distributed.all_reduce_sum([float(entry is not None)])[0]
        if everywhere < _distributed.get_world_size():
            return None
    return entry


def _read_cache(path: Path) -> dict | None:
    digest_file = path.with_suffix(".sha256")
    if not path.exists():
        return None
    try:
        blob = path.read_bytes()
        if hashlib.sha256(blob).hexdigest() != digest_file.read_text().strip():
            raise ValueError("SHA-256 mismatch")
        return torch.load(io.BytesIO(blob), weights_only=True)
    except Exception as err:  # any damage means: do not trust it, train again
        warnings.warn(f"zoo: cache entry {path} is unreadable or corrupted ({err}); "
                      "training the model again", stacklevel=3)
        return None


def _store(path: Path, entry: dict) -> None:
    if not _distributed.is_main_process():   # under torchrun: rank 0 writes, once
        return
    buffer = io.BytesIO()
    torch.save(entry, buffer)
    blob = buffer.getvalue()
    # the entry first, its hash last: an interrupted run leaves no hash that vouches for it
    atomic_write(path, blob)
    atomic_write(path.with_suffix(".sha256"), hashlib.sha256(blob).hexdigest().encode())


def get_trained(name: str, budget: Budget | None = None, seed: int = 0,
                progress: bool = True, recipe: dict | None = None, epochs: int | None = None,
                channels_last: bool = False, init_from: TrainedModel | None = None,
                teacher: TrainedModel | None = None, distill: dict | None = None,
                device: str | None = None, checkpoint: str | os.PathLike | None = None,
                **model_kwargs) -> TrainedModel:
    """Return model ``name`` trained at ``budget``: shipped in the zoo, from the cache, or
    trained now and cached.

    When the call describes a zoo entry exactly (architecture, arguments, recipe, seed,
    ``init_from`` / ``teacher`` from the zoo, ``epochs`` omitted or the entry's) and the
    budget trains on every image or is ``ci``, the shipped model is returned, checked.

    Args:
        name: a registered model (see ``lc.list_models()``).
        budget: defaults to ``LIGHTCNN_BUDGET``; sets the data subset and the epochs.
        seed: seeds the initial weights, the shuffling and the augmentation.
        progress: show progress bars while training.
        recipe: overrides ``RECIPES[name]`` (keys: optimizer, lr, weight_decay, schedule,
            batch_size, augment, and optionally after_step: the dotted name of a function
            called with the model after every optimizer step, and label_smoothing: the
            cross-entropy's smoothing ``eps`` in [0, 1); both part of the cache key).
        epochs: train for this many epochs instead of ``budget.epochs``; pass another of
            the budget's fields (e.g. ``budget.survey_epochs``), never a literal.
        channels_last: train with the weights in channels-last (NHWC) memory format, which
            oneDNN's CPU convolutions prefer: faster for most depthwise families, slower
            for some (ShuffleNetV2, GhostNet; chapter 03). The returned model is converted
            back to the default format, so latency is always measured in one format.
        init_from: start from this trained model's weights instead of a random
            initialization (e.g. a float model's, for its binarized twin): its state dict
            must load into the new model. Its cache entry is part of the key.
        teacher: distill the model from this trained model (chapter 07): trained with
            ``lightcnn.distillation.Distiller`` and its ``loss_fn``; when the recipe does
            not augment, the teacher's logits on the training set are computed once. The
            teacher's cache file name, the loss settings and the source of
            ``distillation.py`` are part of the key.
        distill: keyword arguments of ``Distiller`` (temperature, alpha, hints,
            hint_weight, attention, beta); its defaults when omitted. Needs ``teacher``.
        device: train on ``"cpu"``, ``"cuda"``, ``"mps"`` or ``"auto"`` (a GPU when there is
            one); ``None`` reads ``LIGHTCNN_DEVICE`` (default ``"cpu"``). The device kind
            is part of the key, since a GPU's kernels give other weights; the returned
            model is always on the CPU, where the book measures it.
        checkpoint: when the model is trained here, a file to resume from after an
            interruption (``lightcnn.fit``'s ``checkpoint``: written after every epoch,
            removed when done); ``make zoo`` passes ``zoo/partial/<entry>.v<version>.ckpt``
            so a model longer than a session is trained across sessions. Not with
            ``teacher`` (the teacher's logits are not part of the file).
        **model_kwargs: passed to ``create_model`` (e.g. ``width_mult=0.5``).
    """
    train_device = _train.resolve_device(device)
    device_kind = train_device.type
    budget = budget or get_budget()
    if epochs is not None:
        check_int("epochs", epochs, 1)
        budget = dataclasses.replace(budget, epochs=epochs)  # part of the cache key
    recipe = dict(recipe or RECIPES.get(name, DEFAULT_RECIPE))
    after_step = _after_step(recipe.get("after_step"))
    smoothing = recipe.get("label_smoothing", 0.0)
    check_float("recipe's label_smoothing", smoothing, 0, 1, high_open=True)
    torch.manual_seed(seed)  # the initial weights depend on the seed only
    model = _models.create_model(name, **model_kwargs)
    check_bool("channels_last", channels_last)
    if init_from is not None:
        if not isinstance(init_from, TrainedModel):
            raise TypeError(f"init_from must be a TrainedModel from get_trained, got "
                            f"{type(init_from).__name__}")
        try:
            model.load_state_dict(init_from.model.state_dict())
        except RuntimeError as err:
            raise ValueError(f"init_from: the weights of {init_from.path.name} do not fit "
                             f"{name!r} ({err})") from err
        if after_step is not None:  # e.g. clip loaded latent weights before the first step
            after_step(model)
    check_path("checkpoint", checkpoint, none=True)
    if checkpoint is not None and teacher is not None:
        raise ValueError("checkpoint is not supported with a teacher (the teacher's logits are "
                         "not in the file); pass checkpoint=None")
    distiller, distill_spec = None, None
    if teacher is not None:
        if not isinstance(teacher, TrainedModel):
            raise TypeError(f"teacher must be a TrainedModel from get_trained, got "
                            f"{type(teacher).__name__}")
        from . import distillation as _distillation  # chapter 07 builds on the zoo

        # built before the lookup, so bad settings fail on a cache hit too
        distiller = _distillation.Distiller(model, teacher.model, **(distill or {}))
        distill_spec = {"teacher": teacher.path.name, "settings": distiller.settings,
                        "code": hashlib.sha256(
                            inspect.getsource(_distillation).encode()).hexdigest()}
    elif distill is not None:
        raise ValueError("distill needs a teacher (teacher=get_trained(...))")
    if _zoo_budget(budget):
        # a shipped model when the call asks for exactly what a zoo entry describes
        spec = {"architecture": name, "arguments": model_kwargs, "recipe": recipe,
                "seed": seed, "channels_last": channels_last,
                "init_from": _zoo_name(init_from), "teacher": _zoo_name(teacher),
                "distill": None if distiller is None else distiller.settings,
                "pruned_from": None, "decomposed_from": None, "quantized_from": None}
        shipped_model = _from_zoo(_match(spec, epochs))
        if shipped_model is not None:
            return shipped_model
    key = cache_key(name, budget, seed, recipe, channels_last,
                    None if init_from is None else init_from.path.name, distill_spec,
                    device_kind, **model_kwargs)
    path = cache_path(name, budget, key)
    entry = _load(path)
    if entry is not None:
        model.load_state_dict(entry["state_dict"])
        model.eval()
        return TrainedModel(model, entry["accuracy"], History.from_dict(entry["history"]),
                            path, trained_now=False)
    train_loader, test_loader = get_dataloaders(recipe["batch_size"], budget,
                                                augment=recipe["augment"], seed=seed)
    if channels_last:
        # NCHW inputs meet NHWC weights: oneDNN then runs the convolutions in NHWC
        model.to(memory_format=torch.channels_last)
    trainee, loss_fn = model, None
    if smoothing and distiller is not None:
        raise ValueError("recipe's label_smoothing does not apply to a distilled student "
                         "(the Distiller's loss replaces cross-entropy)")
    if smoothing:
        # the regularization control of chapter 07: soft targets without a teacher,
        # (1 - eps) on the label and eps / K on every class (Szegedy et al. 2016)
        def loss_fn(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.cross_entropy(net(x), y, label_smoothing=smoothing)
    if distiller is not None:
        # fit optimizes the distiller: the student and its hint regressors (the teacher
        # is outside it); only the student is stored
        trainee, loss_fn = distiller, distiller.loss_fn
        if not recipe["augment"]:  # same images every epoch: run the teacher once
            # and once per process for the same images (seeds and students of a chapter)
            images = (teacher.path.name, budget.train_size,
                      None if budget.train_size is None else seed)   # what the set holds
            if images not in _TEACHER_LOGITS:
                _TEACHER_LOGITS.clear()   # keep one teacher's logits in memory, not many
                _TEACHER_LOGITS[images] = _distillation.cache_teacher_logits(
                    teacher.model, train_loader.dataset)
            train_loader = _distillation.with_teacher_logits(
                train_loader, teacher.model, logits=_TEACHER_LOGITS[images])
        if after_step is not None:
            step_function = after_step
            after_step = lambda _: step_function(model)  # noqa: E731 (on the student)
    history = fit(trainee, train_loader, budget.epochs, test_loader, lr=recipe["lr"],
                  weight_decay=recipe["weight_decay"], optimizer=recipe["optimizer"],
                  schedule=recipe["schedule"], seed=seed, progress=progress,
                  loss_fn=loss_fn, after_step=after_step, device=train_device,
                  checkpoint=checkpoint)
    # back to the CPU, where the book measures every model, in the default format
    model.to("cpu", memory_format=torch.contiguous_format)
    if teacher is not None:
        teacher.model.to("cpu")     # the Distiller took it to the training device
    # fit scored the final model on the same test loader after its last epoch
    accuracy = history.test_accuracy[-1]
    _store(path, {"state_dict": model.state_dict(), "accuracy": accuracy,
                  "history": history.as_dict(), "key": key})
    model.eval()
    return TrainedModel(model, accuracy, history, path, trained_now=True)


# ---------------------------------------------------------------------------------------
# Pruned models: a longer fine-tuning schedule, paid once per machine (chapter 04)
# ---------------------------------------------------------------------------------------

PRUNING_METHODS = ("agp", "iterative", "l1", "slimming", "lottery", "finetune")


def _pruning_code_hash() -> str:
    from . import channel_pruning, profile, pruning   # chapter 04 builds on the zoo
    sources = [inspect.getsource(m) for m in (pruning, channel_pruning, profile, _train, _data)]
    return hashlib.sha256("".join(sources).encode()).hexdigest()


def _round_epochs(epochs: int, rounds: int) -> list[int]:
    """``epochs`` split over ``rounds`` as evenly as possible, the later rounds longer:
    10 over 3 is [3, 3, 4]."""
    return [epochs // rounds + (i >= rounds - epochs % rounds) for i in range(rounds)]


def _joined(histories: Sequence[History]) -> History:
    """One history of several ``fit`` calls run one after the other."""
    return History(**{k: [v for h in histories for v in getattr(h, k)]
                      for k in History.__dataclass_fields__ if k != "best_epoch"})


def _scratch_entry(base: TrainedModel) -> ZooEntry:
    """The zoo entry ``base`` was loaded from, trained from scratch (the lottery ticket
    rewinds to its initial weights and retrains with its recipe)."""
    entry = ENTRIES.get(base.zoo_name or "")
    if entry is None:
        raise ValueError(f"method 'lottery' retrains with the recipe of a zoo model and rewinds "
                         f"to its initial weights; base must come from the zoo "
                         f"(lc.zoo.get_trained or lc.zoo.load), got {base.path.name}")
    if entry.dependencies():
        raise ValueError(f"method 'lottery' needs a base trained from scratch; zoo entry "
                         f"{entry.name!r} starts from {entry.dependencies()}")
    return entry


def _initial_weights(entry: ZooEntry) -> dict[str, torch.Tensor]:
    """The weights ``entry`` started training from: get_trained seeds torch with the
    entry's seed, then builds the model."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(entry.seed)
        return _models.create_model(entry.model, **entry.kwargs).state_dict()


class _Phases:
    """The checkpoint files of a derived model's training phases: phase ``i`` of
    ``dir/name.ckpt`` is ``dir/name.phase<i>.ckpt``. Each is kept when its phase ends (a
    resumed run replays a finished phase from it) and all are removed when the model is
    stored; with no ``checkpoint`` every phase trains without a file."""

    def __init__(self, checkpoint: str | os.PathLike | None):
        self.base = None if checkpoint is None else Path(checkpoint)
        self.used: list[Path] = []

    def next(self) -> dict:
        """``fit``'s checkpoint arguments for the next phase."""
        if self.base is None:
            return {}
        path = self.base.with_name(f"{self.base.stem}.phase{len(self.used)}{self.base.suffix}")
        self.used.append(path)
        return {"checkpoint": path, "keep_checkpoint": True}

    def remove(self) -> None:
        for path in self.used:
            path.unlink(missing_ok=True)


def get_pruned(base: TrainedModel, method: str, epochs: int, budget: Budget | None = None,
               sparsity: float | None = None, macs_share: float | None = None,
               penalty: float = 1e-2, penalty_epochs: int | None = None,
               rounds: Sequence[float] | None = None, reinit_seed: int | None = None,
               lr: float | None = None, seed: int = 0, progress: bool = True,
               round_to: int | None = None, checkpoint: str | os.PathLike | None = None
               ) -> TrainedModel:
    """``base`` pruned by ``method`` and fine-tuned ``epochs`` epochs: from the zoo, the
    cache, or made now and cached (the key hashes ``base``'s cache entry, the method and
    its settings, the budget, the seed and the source of the pruning, training and data
    code).

    Fine-tuning is the chapter's: SGD, a cosine schedule from ``lr`` (default 0.01, a
    tenth of the baseline's peak), weight decay 5e-4, augmented batches of 128.

    Methods:
        ``"agp"``: gradual magnitude pruning (Zhu & Gupta) to weight ``sparsity`` with one
            global threshold; the cubic ramp takes the first three quarters of the
            fine-tuning steps (a mask update every hundredth of them), the rest recovers
            at the target. The zeros are made permanent (a plain model).
        ``"iterative"``: Han et al.'s loop (``pruning.iterative_prune``, one global
            threshold): prune to each sparsity of ``rounds``, then to ``sparsity``, each
            round followed by its own cosine fine-tuning; the ``epochs`` are split over
            the rounds as evenly as possible, the later ones longer. Zeros made permanent.
        ``"l1"``: the same fraction of every layer's channels removed by filter L1 norm
            (Li et al.), the smallest ratio in steps of 0.05 that leaves at most
            ``macs_share`` of the MACs (``channel_pruning.ratio_for_macs``), then fine-tuned.
        ``"slimming"``: network slimming (Liu et al.): ``penalty_epochs`` of fine-tuning
            with ``penalty * sum |gamma|`` on the batch-norm scales, then channels cut
            by one global threshold on ``|gamma|`` at the smallest ratio leaving
            ``macs_share`` of the MACs, then fine-tuned.
        For ``"l1"`` and ``"slimming"``, ``round_to`` keeps a multiple of that many
        channels in every pruned layer (``channel_pruning.prune_to_macs``): engines such
        as ONNX Runtime run widths like 22/45/90 slower than the unpruned 32/64/128.
        ``"lottery"``: Frankle & Carbin's experiment: the ``sparsity`` smallest weights of
            ``base`` (one global threshold) masked, the survivors rewound to the weights
            ``base`` started from (``reinit_seed`` None: the ticket) or drawn afresh with
            ``reinit_seed`` (the control, ``pruning.random_reinit``), and the sparse net
            trained ``epochs`` epochs with ``base``'s own recipe, masks kept. ``base``
            must be a zoo model trained from scratch (its entry says how it started); takes
            no ``lr``.
        ``"finetune"``: nothing removed, the same fine-tuning: the control that separates
            a technique's effect from its extra training.

    ``checkpoint``: when the model is made here, a file name (``zoo/partial/<name>.ckpt``
    in a zoo build) from which each training phase's checkpoint is named
    (``<name>.phase0.ckpt``, ...: slimming's penalty and fine-tuning, iterative's rounds):
    a run interrupted in any phase resumes after the last finished epoch and gives the
    same weights, bit for bit, as one uninterrupted run (on the CPU). Not for ``"agp"``,
    whose pruner's schedule is not in the file.

    ``info`` of the result holds ``method``; ``sparsity`` (agp, iterative, lottery);
    ``round_sparsity`` and ``round_accuracy`` (iterative: after each round); ``ratio`` and
    ``oneshot_accuracy``, the test accuracy right after the cut (structured); and for
    slimming the penalty phase's ``penalty_history``, ``penalty_accuracy`` and the
    ``bn_scales`` (every ``|gamma|``) it left for the cut to rank.

    Raises:
        TypeError: ``base`` is not a :class:`TrainedModel`.
        ValueError: an unknown method, a missing or out-of-range setting, or a setting
            the method does not take.
    """
    from . import channel_pruning as cp
    from . import pruning

    if not isinstance(base, TrainedModel):
        raise TypeError(f"base must be a TrainedModel from get_trained, got {type(base).__name__}")
    if method not in PRUNING_METHODS:
        raise ValueError(f"method must be one of {PRUNING_METHODS}, got {method!r}")
    for arg, value in (("epochs", epochs), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (arg == "epochs"):
            raise ValueError(f"{arg} must be an int >= {int(arg == 'epochs')}, got {value!r}")
    # what each method needs (checked first), then what it must not be given
    wanted = {"agp": "sparsity", "iterative": "sparsity", "lottery": "sparsity",
              "l1": "macs_share", "slimming": "macs_share"}.get(method)
    value = sparsity if wanted == "sparsity" else macs_share
    if wanted is not None and (value is None or isinstance(value, bool)
                               or not isinstance(value, (int, float)) or not 0 < value < 1):
        raise ValueError(f"method {method!r} needs {wanted} in (0, 1), got {value!r}")
    if method == "slimming":
        if isinstance(penalty_epochs, bool) or not isinstance(penalty_epochs, int) \
                or penalty_epochs < 1:
            raise ValueError(f"slimming needs penalty_epochs, an int >= 1, got {penalty_epochs!r}")
        if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not penalty > 0:
            raise ValueError(f"penalty must be a number > 0, got {penalty!r}")
    if method == "iterative":
        if rounds is None:
            raise ValueError("method 'iterative' needs rounds, the sparsities pruned to before "
                             "the last round's (e.g. (0.6, 0.85))")
        check_sequence("rounds", rounds, (int, float))
        if any(isinstance(r, bool) or not 0 < r < sparsity for r in rounds) \
                or list(rounds) != sorted(rounds):
            raise ValueError(f"rounds must be non-decreasing sparsities in (0, sparsity="
                             f"{sparsity}), got {list(rounds)}")
        if epochs < len(rounds) + 1:
            raise ValueError(f"epochs must be at least one per round ({len(rounds) + 1}), "
                             f"got {epochs}")
    if method == "lottery":
        check_int("reinit_seed", reinit_seed, 0, none=True)
    check_int("round_to", round_to, 1, none=True)
    check_path("checkpoint", checkpoint, none=True)
    if checkpoint is not None and method == "agp":
        raise ValueError("checkpoint is not supported with method 'agp' (the pruner's "
                         "schedule is not in the file); pass checkpoint=None")
    given = {"sparsity": sparsity, "macs_share": macs_share, "penalty_epochs": penalty_epochs,
             "rounds": rounds, "reinit_seed": reinit_seed, "lr": lr, "round_to": round_to}
    takes = {"sparsity": wanted == "sparsity", "macs_share": wanted == "macs_share",
             "penalty_epochs": method == "slimming", "rounds": method == "iterative",
             "reinit_seed": method == "lottery", "lr": method != "lottery",
             "round_to": wanted == "macs_share"}
    for arg, value_given in given.items():
        if value_given is not None and not takes[arg]:
            raise ValueError(f"method {method!r} does not take {arg}")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float))
                           or not lr > 0):
        raise ValueError(f"lr must be a number > 0, got {lr!r}")
    lr = 0.01 if lr is None else lr

    budget = budget or get_budget()
    settings = _pruning_settings(method, epochs, lr, seed, sparsity, macs_share, penalty,
                                 penalty_epochs, rounds, reinit_seed, round_to)
    scratch = _scratch_entry(base) if method == "lottery" else None   # checked on a hit too
    shipped_model = (_shipped_from(base, "pruned_from", "prune", settings)
                     if _zoo_budget(budget) else None)
    if shipped_model is not None:
        return shipped_model
    path, key = _derived_cache_path(base, "pruned_from", method, settings, budget,
                                    _training_fields(budget), _pruning_code_hash())

    def restore(state: dict) -> nn.Module:
        # a copy of the base resized to the stored shapes (removed channels) and loaded
        model = cp.resize_to_state_dict(copy.deepcopy(base.model), state)
        return model.eval()

    entry = _load(path)
    if entry is not None:
        return TrainedModel(restore(entry["state_dict"]), entry["accuracy"],
                            History.from_dict(entry["history"]), path, trained_now=False,
                            info=entry["info"])

    # the lottery trains as its base was trained; every other method fine-tunes on the
    # baseline's augmented batches of 128
    batch_size, augment = ((128, True) if scratch is None else
                           (scratch.recipe["batch_size"], scratch.recipe["augment"]))
    train_loader, test_loader = get_dataloaders(batch_size, budget, augment=augment, seed=seed)

    phases = _Phases(checkpoint)

    def finetune(model: nn.Module, n: int, **kwargs) -> History:
        return fit(model, train_loader, n, test_loader, lr=lr, schedule="cosine", seed=seed,
                   progress=progress, **phases.next(), **kwargs)

    model = copy.deepcopy(base.model)
    info: dict = {"method": method}
    if method == "finetune":
        history = finetune(model, epochs)
    elif method == "agp":
        steps = epochs * len(train_loader)
        pruner = pruning.AGPPruner(value, total_steps=int(0.75 * steps),
                                   frequency=max(1, steps // 100))
        history = finetune(model, epochs, after_step=pruner)
        pruning.remove_masks(model)            # zeros made permanent: a plain model again
        info["sparsity"] = pruning.sparsity(model)
    elif method == "iterative":
        per_round, histories = iter(_round_epochs(epochs, len(rounds) + 1)), []
        achieved = pruning.iterative_prune(
            model, [*rounds, value], lambda m: histories.append(finetune(m, next(per_round))))
        pruning.remove_masks(model)
        history = _joined(histories)
        info.update(sparsity=pruning.sparsity(model), round_sparsity=achieved,
                    round_accuracy=[h.test_accuracy[-1] for h in histories])
    elif method == "lottery":
        # the mask of the trained weights; the survivors rewound, or drawn afresh
        masks = pruning.global_masks(base.model, value)
        model = (pruning.rewind(base.model, _initial_weights(scratch), masks)
                 if reinit_seed is None
                 else pruning.random_reinit(base.model, masks, seed=reinit_seed))
        recipe = scratch.recipe
        history = fit(model, train_loader, epochs, test_loader, lr=recipe["lr"],
                      weight_decay=recipe["weight_decay"], optimizer=recipe["optimizer"],
                      schedule=recipe["schedule"], seed=seed, progress=progress,
                      **phases.next())
        pruning.remove_masks(model)
        info["sparsity"] = pruning.sparsity(model)
    else:
        rule, scope = cp.l1_importance, "layer"
        if method == "slimming":
            penalised = finetune(model, penalty_epochs, loss_fn=cp.slimming_loss(penalty))
            info.update(penalty_history=penalised.as_dict(),
                        penalty_accuracy=penalised.test_accuracy[-1],
                        # the scales the global cut ranks, kept to show what the penalty did
                        bn_scales=torch.cat([m.weight.detach().abs().flatten()
                                             for m in model.modules()
                                             if isinstance(m, nn.BatchNorm2d)]))
            rule, scope = cp.bn_scale_importance, "global"
        model, ratio = cp.prune_to_macs(model, rule, share=value, scope=scope, round_to=round_to)
        info.update(ratio=ratio, oneshot_accuracy=_train.evaluate(model, test_loader)["accuracy"])
        history = finetune(model, epochs)
    accuracy = history.test_accuracy[-1]
    _store(path, {"state_dict": model.state_dict(), "accuracy": accuracy,
                  "history": history.as_dict(), "info": info, "key": key})
    phases.remove()   # stored: the phases' files are no longer needed
    return TrainedModel(model.eval(), accuracy, history, path, trained_now=True, info=info)


# ---------------------------------------------------------------------------------------
# Decomposed models: low-rank layers, then fine-tuning (chapter 08)
# ---------------------------------------------------------------------------------------

def _lowrank_code_hash() -> str:
    from . import lowrank, profile   # chapter 08 builds on the zoo
    sources = [inspect.getsource(m) for m in (lowrank, profile, _train, _data)]
    return hashlib.sha256("".join(sources).encode()).hexdigest()


def _decomposed_shapes(base: nn.Module, method: str, ranks: dict | None) -> nn.Module:
    """A copy of ``base`` in the shapes of its decomposition at ``ranks``, untrained (see
    ``lowrank.build_decomposed``), for a stored state dict to load into."""
    from . import lowrank

    if method == "finetune":     # the control: the base's own shapes
        return copy.deepcopy(base)
    return lowrank.build_decomposed(base, method, ranks)


def get_decomposed(base: TrainedModel, method: str, epochs: int, budget: Budget | None = None,
                   macs_ratio: float | None = None, round_to: int | None = None,
                   skip: Sequence[str] = (), n_iter_max: int | None = None, lr: float = 0.01,
                   keep_best: bool = False, seed: int = 0, progress: bool = True,
                   checkpoint: str | os.PathLike | None = None) -> TrainedModel:
    """``base`` with its layers decomposed by ``method`` into low-rank ones
    (``lowrank.decompose_model(model, method, macs_ratio=..., round_to=..., skip=...)``)
    and fine-tuned ``epochs`` epochs: from the zoo, the cache, or made now and cached (the
    key hashes ``base``'s cache entry, the settings, the budget, the seed and the source
    of the low-rank, profiling, training and data code).

    Fine-tuning is chapter 04's (:func:`get_pruned`): SGD with Nesterov momentum, a cosine
    schedule from ``lr``, weight decay 5e-4, augmented batches of 128. With
    ``keep_best``, ``budget.val_size`` class-balanced training images (5,000 at the full
    budget, picked by :data:`VAL_SEED`) are held out of training
    (``data.get_dataloaders_with_val``) and the model is the epoch with the best
    accuracy on them (``fit(..., keep_best=True)``): the test set chooses nothing, and
    the accuracy returned is the test accuracy of that epoch.

    Methods:
        ``"spatial"``, ``"tucker2"``, ``"cp"``: Jaderberg's scheme 2, Kim et al.'s
            Tucker-2 (HOSVD), Lebedev et al.'s CP (TensorLy's CP-ALS, ``n_iter_max``
            rounds; ``lowrank.cp_conv``'s default when None), at the ranks that divide
            the model's MACs by at least ``macs_ratio``, rounded to multiples of
            ``round_to`` when given; the layers in ``skip`` stay whole.
        ``"finetune"``: nothing decomposed, the same fine-tuning: the control that
            separates a decomposition's effect from its extra training.

    ``info`` of the result holds ``method``; ``ranks`` (the plan, what
    ``lowrank.build_decomposed`` needs to rebuild the model) and ``oneshot_accuracy``,
    the test accuracy right after decomposing; and with ``keep_best`` ``val_size`` and
    ``val_seed``. The history holds ``val_accuracy`` and ``best_epoch``.

    ``checkpoint``: when the model is made here, a file name from which the fine-tuning's
    checkpoint is named (``<name>.phase0.ckpt``, as :func:`get_pruned`'s): an interrupted
    run resumes after its last finished epoch, bit for bit.

    Raises:
        TypeError: ``base`` is not a :class:`TrainedModel`.
        ValueError: an unknown method, a missing or out-of-range setting, or a setting
            the method does not take.
    """
    from . import lowrank

    if not isinstance(base, TrainedModel):
        raise TypeError(f"base must be a TrainedModel from get_trained, got {type(base).__name__}")
    check_str("method", method, LOWRANK_METHODS)
    check_int("epochs", epochs, 1)
    check_instance("budget", budget, Budget, none=True)
    check_float("macs_ratio", macs_ratio, 1, low_open=True, none=True)
    check_int("round_to", round_to, 1, none=True)
    check_sequence("skip", skip, str)
    check_int("n_iter_max", n_iter_max, 1, none=True)
    check_float("lr", lr, 0, low_open=True)
    check_bool("keep_best", keep_best)
    check_int("seed", seed, 0)
    check_bool("progress", progress)
    check_path("checkpoint", checkpoint, none=True)
    if method == "finetune":   # the control: the same fine-tuning, nothing decomposed
        for arg, given in (("macs_ratio", macs_ratio), ("round_to", round_to),
                           ("skip", skip or None), ("n_iter_max", n_iter_max)):
            if given is not None:
                raise ValueError(f"method 'finetune' does not take {arg}")
    elif macs_ratio is None:
        raise ValueError(f"method {method!r} needs macs_ratio, a number > 1 (how many times "
                         f"fewer MACs)")
    if method not in ("cp", "finetune") and n_iter_max is not None:
        raise ValueError(f"method {method!r} does not take n_iter_max (CP-ALS's rounds)")

    budget = budget or get_budget()
    settings = _lowrank_settings(method, epochs, lr, seed, keep_best, macs_ratio, round_to,
                                 skip, n_iter_max)
    shipped_model = (_shipped_from(base, "decomposed_from", "decompose", settings)
                     if _zoo_budget(budget) else None)
    if shipped_model is not None:
        return shipped_model
    budget_fields = _training_fields(budget)
    if keep_best:   # the held-out images change what is trained on
        budget_fields.update(val_size=budget.val_size, val_seed=VAL_SEED)
    path, key = _derived_cache_path(base, "decomposed_from", f"lowrank_{method}", settings,
                                    budget, budget_fields, _lowrank_code_hash())
    cached = _load(path)
    if cached is not None:
        info = cached["info"]
        model = _decomposed_shapes(base.model, method, info.get("ranks"))
        model.load_state_dict(cached["state_dict"])
        return TrainedModel(model.eval(), cached["accuracy"], History.from_dict(cached["history"]),
                            path, trained_now=False, info=info)

    if keep_best:
        train_loader, val_loader, test_loader = _data.get_dataloaders_with_val(
            128, budget, augment=True, seed=seed, val_seed=VAL_SEED)
    else:
        (train_loader, test_loader), val_loader = get_dataloaders(128, budget, augment=True,
                                                                  seed=seed), None
    info: dict = {"method": method}
    if method == "finetune":
        model = copy.deepcopy(base.model)
    else:
        options = {} if n_iter_max is None else {"n_iter_max": n_iter_max}
        model, plan = lowrank.decompose_model(base.model, method, macs_ratio=macs_ratio,
                                              round_to=round_to, skip=skip, **options)
        info.update(ranks=plan, oneshot_accuracy=_train.evaluate(model, test_loader)["accuracy"])
    if keep_best:
        info.update(val_size=len(val_loader.dataset), val_seed=VAL_SEED)
    phases = _Phases(checkpoint)
    history = fit(model, train_loader, epochs, test_loader, lr=lr, schedule="cosine",
                  seed=seed, progress=progress, val_loader=val_loader, keep_best=keep_best,
                  **phases.next())
    # fit scored every epoch on the test set: the kept epoch's score is the model's
    accuracy = history.test_accuracy[history.kept_epoch]
    _store(path, {"state_dict": model.state_dict(), "accuracy": accuracy,
                  "history": history.as_dict(), "info": info, "key": key})
    phases.remove()
    return TrainedModel(model.eval(), accuracy, history, path, trained_now=True, info=info)


# ---------------------------------------------------------------------------------------
# Quantized models: quantization-aware training, k-means codebooks (chapter 05)
# ---------------------------------------------------------------------------------------

# the capture example of an int8 QAT graph: only its shape and dtype matter (the batch
# dimension stays dynamic); Fashion-MNIST's, the only data the zoo trains on
_INT8_EXAMPLE_SHAPE = (2, 1, 28, 28)


def _quantization_code_hash() -> str:
    from . import int8, quantization, weight_sharing   # chapter 05 builds on the zoo
    sources = [inspect.getsource(m) for m in (quantization, weight_sharing, int8, _train, _data)]
    return hashlib.sha256("".join(sources).encode()).hexdigest()


def _quantized_shapes(base: nn.Module, settings: dict) -> nn.Module:
    """A copy of ``base`` wrapped in the quantizers get_quantized trained it with, for a
    stored state dict to load into: ``Q.prepare_qat``'s wrappers, or the int8 QAT graph
    captured again (the same node names, so the same keys). k-means models and the
    control are stored as plain models: their own shapes."""
    from . import int8, quantization

    if settings["method"] == "qat":
        return quantization.prepare_qat(base, settings["bits"], settings["bits"],
                                        edge_bits=settings.get("edge_bits"))
    if settings["method"] == "int8_qat":
        return int8.prepare_int8_qat(copy.deepcopy(base), torch.zeros(_INT8_EXAMPLE_SHAPE))
    return copy.deepcopy(base)


def get_quantized(base: TrainedModel, method: str, epochs: int, budget: Budget | None = None,
                  bits: int | None = None, lr: float = 0.01, optimizer: str = "sgd",
                  seed: int = 0, progress: bool = True, edge_bits: int | None = None,
                  checkpoint: str | os.PathLike | None = None) -> TrainedModel:
    """``base`` quantized by ``method`` and fine-tuned ``epochs`` epochs: from the zoo, the
    cache, or made now and cached (the key hashes ``base``'s cache entry, the settings, the
    budget, the seed and the source of the quantization, weight-sharing, int8, training
    and data code).

    Fine-tuning is chapter 04's (:func:`get_pruned`) with a choice of optimizer: a cosine
    schedule from ``lr``, weight decay 5e-4 (decoupled for AdamW; none on 1-d tensors such
    as codebooks), augmented batches of 128.

    Methods:
        ``"qat"``: quantization-aware training, simulated (``quantization.prepare_qat``):
            weights (per channel) and input activations of every conv and linear layer
            fake-quantized to ``bits``, straight-through gradients; with ``edge_bits``,
            the first conv and the last layer at that width instead. The model keeps its
            quantizers; their scales and zero points, and their observers' running
            statistics, are in its state dict.
        ``"int8_qat"``: the same through PyTorch's export flow (``int8.prepare_int8_qat``:
            X86InductorQuantizer's int8 fake quantizers, batch norm folded in training);
            the model is the prepared graph, which ``int8.convert_int8_qat`` turns into
            int8. Takes no ``bits`` (always 8).
        ``"kmeans"``: Deep Compression's weight sharing (``weight_sharing.share_weights``):
            every conv and linear weight clustered into ``2 ** bits`` centroids, then the
            centroids (and batch norm, biases) fine-tuned. The model returned has plain
            weights equal to the shared ones (``weight_sharing.unshare``), at most
            ``2 ** bits`` distinct values per layer.
        ``"finetune"``: nothing quantized, the same fine-tuning: the control that
            separates a technique's effect from its extra training.

    ``checkpoint``: when the model is made here, a file name from which the fine-tuning's
    checkpoint is named (``<name>.phase0.ckpt``, as :func:`get_pruned`'s): an interrupted
    run resumes after its last finished epoch, bit for bit (for ``"qat"`` too: the
    quantizers' observers keep their statistics in the model's state dict).

    ``info`` of the result holds ``method``, and for k-means ``oneshot_accuracy``, the test
    accuracy right after clustering.

    Raises:
        TypeError: ``base`` is not a :class:`TrainedModel`.
        ValueError: an unknown method or optimizer, a missing or out-of-range setting, or
            a setting the method does not take.
    """
    from . import int8, quantization, weight_sharing

    if not isinstance(base, TrainedModel):
        raise TypeError(f"base must be a TrainedModel from get_trained, got {type(base).__name__}")
    check_str("method", method, QUANTIZATION_METHODS)
    check_int("epochs", epochs, 1)
    check_instance("budget", budget, Budget, none=True)
    check_float("lr", lr, 0, low_open=True)
    check_str("optimizer", optimizer, ("sgd", "adamw"))
    check_int("seed", seed, 0)
    check_bool("progress", progress)
    check_path("checkpoint", checkpoint, none=True)
    allowed = {"qat": quantization.UNIFORM_BITS, "kmeans": quantization.CODE_BITS}.get(method)
    if allowed is None and bits is not None:
        raise ValueError(f"method {method!r} does not take bits")
    if allowed is not None:
        if bits is None:
            raise ValueError(f"method {method!r} needs bits, an int in "
                             f"[{allowed[0]}, {allowed[1]}]")
        check_int("bits", bits, allowed[0], allowed[1])

    budget = budget or get_budget()
    if edge_bits is not None:
        if method != "qat":
            raise ValueError(f"edge_bits is a setting of method 'qat', got method {method!r}")
        check_int("edge_bits", edge_bits, quantization.UNIFORM_BITS[0],
                  quantization.UNIFORM_BITS[1])
    settings = _quantization_settings(method, epochs, bits, lr, optimizer, seed, edge_bits)
    shipped_model = (_shipped_from(base, "quantized_from", "quantize", settings)
                     if _zoo_budget(budget) else None)
    if shipped_model is not None:
        return shipped_model
    path, key = _derived_cache_path(base, "quantized_from", f"quant_{method}", settings, budget,
                                    _training_fields(budget), _quantization_code_hash())
    cached = _load(path)
    if cached is not None:
        model = _quantized_shapes(base.model, settings)
        model.load_state_dict(cached["state_dict"])
        model.eval()    # an exported graph's .eval() returns None: not chained
        return TrainedModel(model, cached["accuracy"], History.from_dict(cached["history"]),
                            path, trained_now=False, info=cached["info"])

    train_loader, test_loader = get_dataloaders(128, budget, augment=True, seed=seed)
    info: dict = {"method": method}
    if method == "kmeans":
        model = weight_sharing.share_weights(base.model, bits)
        info["oneshot_accuracy"] = _train.evaluate(model, test_loader)["accuracy"]
    elif method == "int8_qat":   # the captured graph shares the copy's weights
        model = int8.prepare_int8_qat(copy.deepcopy(base.model), torch.zeros(_INT8_EXAMPLE_SHAPE))
    else:
        model = _quantized_shapes(base.model, settings)
    phases = _Phases(checkpoint)
    history = fit(model, train_loader, epochs, test_loader, lr=lr, optimizer=optimizer,
                  schedule="cosine", seed=seed, progress=progress, **phases.next())
    if method == "kmeans":   # stored plain: the same weights, no codebook to rebuild
        model = weight_sharing.unshare(model)
    accuracy = history.test_accuracy[-1]
    _store(path, {"state_dict": model.state_dict(), "accuracy": accuracy,
                  "history": history.as_dict(), "info": info, "key": key})
    phases.remove()
    model.eval()
    return TrainedModel(model, accuracy, history, path, trained_now=True, info=info)


# ---------------------------------------------------------------------------------------
# make zoo: build the shipped models, resumable model by model
# ---------------------------------------------------------------------------------------

def _trained_on(device: torch.device) -> str:
    from .runtime import cpu_name

    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)} (cuda)"
    elif device.type == "mps":
        where = "Apple GPU (mps)"
    else:
        where = (f"{cpu_name()}, {os.cpu_count()} logical cores, "
                 f"{torch.get_num_threads()} threads (cpu)")
    world = _distributed.get_world_size()   # one process per GPU, or per CPU share
    return where if world == 1 else f"{world} processes (DDP) x {where}"


def _json_info(info: dict) -> dict:
    """``info`` with tensors as lists, for the manifest."""
    return {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in info.items()}


def subset_correct(model: nn.Module) -> int:
    """Images right among the ``ci`` budget's fixed 1,000-image test subset: the number a
    test re-checks for every shipped model (evaluation is deterministic)."""
    _, test_loader = get_dataloaders(128, BUDGETS_CI, augment=False, seed=0)
    logits, labels = _train.predict(model, test_loader)
    return int((logits.argmax(1) == labels).sum())


def partial_checkpoint(entry: ZooEntry) -> Path:
    """Where a build keeps ``entry``'s training between epochs:
    ``zoo/partial/<name>.v<version>.ckpt`` for a model trained from scratch, and for a
    derived one (pruned, quantized, decomposed) ``<name>.v<version>.phase<i>.ckpt`` per
    training phase; a new recipe version starts afresh. AGP and distilled models train
    without one (a pruner's schedule, a teacher's logits are not in the file) and start
    again when interrupted."""
    check_instance("entry", entry, ZooEntry)
    return _weights.zoo_dir() / "partial" / f"{entry.name}.v{entry.version}.ckpt"


def _train_entry(entry: ZooEntry, full: Budget, device: str | None = None,
                 progress: bool = True, threads: int | None = None
                 ) -> tuple[str, dict, dict, dict]:
    """Train ``entry`` at budget ``full`` (its dependencies from the zoo) and return
    ``(name, state_dict, manifest fields, history)``; the user cache keeps the result, so
    an interrupted build resumes after the last finished model. Takes the entry and the
    budget themselves, not names, so that a worker process trains what its parent asked."""
    if threads is not None:   # a worker process of build(jobs > 1): the book's settings
        from .runtime import setup

        setup(seed=0, threads=threads, plots=False)
    name = entry.name
    train_device = _train.resolve_device(device)
    _BUILDING.add(name)
    start = time.perf_counter()
    try:
        # every model resumes from its last finished epoch: the checkpoints live in the
        # zoo folder, committed when a session ends mid-model
        partial = (None if entry.teacher is not None or _distributed.is_distributed()
                   or (entry.prune or {}).get("method") == "agp"
                   else partial_checkpoint(entry))
        if entry.pruned_from is not None:
            result = get_pruned(load(entry.pruned_from), budget=full, progress=progress,
                                checkpoint=partial, **entry.prune)
            seconds = sum(result.history.seconds) + sum(
                result.info.get("penalty_history", {}).get("seconds", []))
        elif entry.decomposed_from is not None:
            result = get_decomposed(load(entry.decomposed_from), budget=full,
                                    progress=progress, checkpoint=partial, **entry.decompose)
            seconds = sum(result.history.seconds)
        elif entry.quantized_from is not None:
            result = get_quantized(load(entry.quantized_from), budget=full, progress=progress,
                                   checkpoint=partial, **entry.quantize)
            seconds = sum(result.history.seconds)
        else:
            result = get_trained(
                entry.model, budget=full, seed=entry.seed, progress=progress, checkpoint=partial,
                recipe=entry.recipe, epochs=entry.epochs, channels_last=entry.channels_last,
                init_from=None if entry.init_from is None else load(entry.init_from),
                teacher=None if entry.teacher is None else load(entry.teacher),
                distill=entry.distill, device=device, **entry.kwargs)
            seconds = sum(result.history.seconds)
    finally:
        _BUILDING.discard(name)
    kind = ("pruned" if entry.pruned_from else "decomposed" if entry.decomposed_from
            else "quantized" if entry.quantized_from else "trained")
    meta = dict(entry.spec(), name=name, kind=kind,
                test_accuracy=result.accuracy, subset_correct=subset_correct(result.model),
                subset_size=1000, trained_on=_trained_on(train_device),
                torch=torch.__version__.split("+")[0],
                train_minutes=round(seconds / 60, 2),
                # 0 when the user cache already held the model (an earlier, interrupted build)
                build_minutes=round((time.perf_counter() - start) / 60, 2),
                info=_json_info(result.info))
    return name, result.model.state_dict(), meta, result.history.as_dict()


def _plan(names: list[str] | None, rebuild: bool) -> list[str]:
    """The entries to train, dependencies first: the named ones (default all) that are
    not shipped at their current version, and the unshipped entries they build on."""
    manifest = _weights.read_manifest()
    wanted = list(ENTRIES) if not names else [_entry(n).name for n in names]
    todo: list[str] = []

    def visit(name: str, named: bool) -> None:
        for dependency in ENTRIES[name].dependencies():
            visit(dependency, False)
        current = manifest.get(name, {}).get("recipe_version") == ENTRIES[name].version
        if name not in todo and (not current or (rebuild and named)):
            todo.append(name)

    for name in wanted:
        visit(name, True)
    return todo


def estimate_pace(manifest: dict[str, dict] | None = None) -> tuple[float, int]:
    """How much longer the shipped models took to train than their entries estimated:
    ``(median of train_minutes / estimated_minutes over the shipped entries, how many)``;
    ``(1.0, 0)`` when none is shipped. The estimates come from one epoch of each model in
    a chapter on an idle machine; a build shares the cores (``-j``) and the machine, so the
    book's estimates of what is left are scaled by this factor."""
    manifest = _weights.read_manifest() if manifest is None else manifest
    check_mapping("manifest", manifest, what="a dict of name -> manifest entry")
    ratios = [meta["train_minutes"] / ENTRIES[name].estimated_minutes()
              for name, meta in manifest.items() if name in ENTRIES and meta.get("train_minutes")]
    return (statistics.median(ratios), len(ratios)) if ratios else (1.0, 0)


def _estimate_text(minutes: float, manifest: dict[str, dict]) -> str:
    """``minutes`` of entry estimates, said as is and at the shipped models' pace."""
    pace, shipped_count = estimate_pace(manifest)
    return (f"about {minutes:.0f} min on the book's 2-core CPU by the entries' estimates"
            + (f", about {minutes * pace:.0f} at the pace of the {shipped_count} shipped "
               f"models (median x{pace:.2f} of their estimates)" if shipped_count else ""))


def _exit_with_parent(parent: int, every: float = 2.0) -> None:
    """A build worker's initializer: a daemon thread ends the worker as soon as the build
    that started it (process ``parent``) is gone. Without it, a build killed mid-run leaves
    its ``-j`` workers training for hours, and the next build races them for the cores and
    the partial checkpoints. Nothing is lost: each model resumes from its last finished
    epoch (:func:`partial_checkpoint`)."""
    def watch() -> None:
        while os.getppid() == parent:   # an orphan is adopted by another process
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def build(names: list[str] | None = None, jobs: int = 1, device: str | None = None,
          progress: bool = True) -> list[str]:
    """Train the zoo's models that are not shipped at their current recipe version and
    write each into ``zoo/`` as soon as it is done (an interrupted build resumes with the
    next model). Returns the names written.

    Args:
        names: entries to build (default: every entry); their unshipped dependencies are
            built first.
        jobs: models trained at once in separate processes, each with ``cores // jobs``
            threads; a model waits for the models it starts from.
        device: where to train (``"auto"``: a GPU when there is one); ``None`` reads
            ``LIGHTCNN_DEVICE``. The manifest records where each model was trained.

    Under ``torchrun`` (``torchrun --nproc-per-node 4 -m lightcnn.zoo build --device auto``
    on a 4-GPU machine) every process trains each model together, data-parallel
    (:func:`lightcnn.train.fit` under DDP: the global batch and the schedule stay the
    recipe's), rank 0 alone prints and writes ``zoo/`` and the cache, and every process
    waits for a model to be written before the next starts. ``jobs`` must then be 1.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an int >= 1, got {jobs!r}")
    parallel = _distributed.is_distributed()
    if parallel and jobs > 1:
        raise ValueError(f"jobs must be 1 under torchrun (every process trains each model "
                         f"together, data-parallel), got {jobs}")
    _train.resolve_device(device)   # refuse a bad device before hours of work
    main = _distributed.is_main_process()
    say = print if main else (lambda *args, **kwargs: None)
    todo = _plan(names, rebuild=False)
    if not todo:
        say("zoo: every requested model is shipped at its recipe's version")
        return []
    manifest = _weights.read_manifest()
    total = sum(ENTRIES[n].estimated_minutes() for n in todo)
    say(f"zoo: {len(todo)} model(s) to train ({', '.join(todo)}), "
        f"{_estimate_text(total, manifest)}"
        + (f", in {_distributed.get_world_size()} processes" if parallel else ""))
    written: list[str] = []
    spent, estimated_done = 0.0, 0.0

    def store(result: tuple[str, dict, dict, dict]) -> None:
        nonlocal spent, estimated_done
        name, state, meta, history = result
        if main:
            _weights.write_entry(name, state, meta, history, replace=name in manifest)
        if parallel:   # the next model may start from this one: wait until it is written
            torch.distributed.barrier()
        written.append(name)
        spent += meta["build_minutes"]
        estimated_done += ENTRIES[name].estimated_minutes()
        # time left: the estimate of what is left, scaled by how fast this machine went
        pace = spent / estimated_done if spent > 0 else 1.0
        left = (total - estimated_done) * pace
        say(f"zoo: [{len(written)}/{len(todo)}] {name}: {100 * meta['test_accuracy']:.2f}% "
            f"in {meta['build_minutes']:.1f} min; about {left:.0f} min left", flush=True)

    if jobs == 1:
        for name in todo:
            store(_train_entry(ENTRIES[name], BUDGETS["full"], device, progress))
        return written
    threads = max(1, (os.cpu_count() or 1) // jobs)
    pending, running = list(todo), {}
    context = __import__("multiprocessing").get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context,
                                                initializer=_exit_with_parent,
                                                initargs=(os.getpid(),)) as pool:
        while pending or running:
            ready = [n for n in pending if all(d in written or d not in todo
                                               for d in ENTRIES[n].dependencies())]
            for name in ready[:jobs - len(running)]:
                pending.remove(name)
                running[pool.submit(_train_entry, ENTRIES[name], BUDGETS["full"], device,
                                    False, threads)] = name
            done, _ = concurrent.futures.wait(running, return_when="FIRST_COMPLETED")
            for future in done:
                del running[future]
                store(future.result())
    return written


def _made(entry: ZooEntry) -> str:
    """How an entry was made, in a few words, for :func:`table`."""
    arguments = ", ".join(f"{k}={v}" for k, v in entry.kwargs.items())
    what = f"{entry.model}({arguments})"
    if entry.pruned_from is not None:
        settings = {k: v for k, v in entry.prune.items() if k not in ("epochs", "seed", "method")}
        shown = ", ".join(f"{k}={round(v, 4) if isinstance(v, float) else v}"
                          for k, v in settings.items())
        if entry.prune["method"] == "finetune":
            return f"{entry.pruned_from} fine-tuned without pruning ({shown}): the control"
        if entry.prune["method"] == "lottery":
            seed = entry.prune["reinit_seed"]
            kept = f"{entry.pruned_from}'s {1 - entry.prune['sparsity']:.0%} largest weights"
            return (f"{kept} rewound to its initial ones (the lottery ticket), retrained with its "
                    f"recipe" if seed is None else f"{kept} drawn afresh (seed {seed}), "
                    f"retrained with its recipe: the lottery ticket's control")
        return f"{entry.pruned_from} pruned by {entry.prune['method']} ({shown}), fine-tuned"
    if entry.decomposed_from is not None:
        settings = {k: v for k, v in entry.decompose.items()
                    if k not in ("epochs", "seed", "method")}
        shown = ", ".join(f"{k}={v}" for k, v in settings.items())
        if entry.decompose["method"] == "finetune":
            return f"{entry.decomposed_from} fine-tuned without decomposing ({shown}): the control"
        return (f"{entry.decomposed_from} decomposed by {entry.decompose['method']} ({shown}), "
                f"fine-tuned")
    if entry.quantized_from is not None:
        method = entry.quantize["method"]
        shown = ", ".join(f"{k}={v}" for k, v in entry.quantize.items()
                          if k not in ("epochs", "seed", "method"))
        if method == "finetune":
            return f"{entry.quantized_from} fine-tuned without quantizing ({shown}): the control"
        return f"{entry.quantized_from} quantized by {method} ({shown}), fine-tuned"
    recipe = f"{entry.recipe.get('optimizer')} lr {entry.recipe.get('lr')}"
    if entry.init_from is not None:
        return f"{what} from {entry.init_from}, {recipe}"
    if entry.teacher is not None:
        return f"{what} distilled from {entry.teacher}, {recipe}"
    return f"{what}, {recipe}"


def table() -> str:
    """The zoo as a Markdown table, from ``zoo/manifest.json`` and :data:`ENTRIES`: every
    entry (shipped or not) with how it was made, epochs, seed, test accuracy, bytes, the
    minutes its training took and where; then the zoo's total size and training time.
    ``python -m lightcnn.zoo table --write book/results/zoo.md`` writes the book's copy."""
    manifest = _weights.read_manifest()
    lines = ["| model | made from | epochs | seed | test accuracy | bytes | training min | trained on |",
             "|---|---|---|---|---|---|---|---|"]
    size = minutes = todo = 0.0
    for name, entry in ENTRIES.items():
        meta = manifest.get(name)
        if meta is None:
            todo += entry.estimated_minutes()
            lines.append(f"| `{name}` | {_made(entry)} | {entry.epochs} | {entry.seed} | not built "
                         f"| | about {entry.estimated_minutes():.0f} (estimate) | |")
            continue
        size += meta["bytes"]
        minutes += meta["train_minutes"]
        lines.append(f"| `{name}` | {_made(entry)} | {meta['epochs']} | {meta['seed']} "
                     f"| {100 * meta['test_accuracy']:.2f}% | {meta['bytes']:,} "
                     f"| {meta['train_minutes']:.1f} | {meta['trained_on']} |")
    shipped_count = sum(name in manifest for name in ENTRIES)
    lines += ["", f"{shipped_count} of {len(ENTRIES)} entries shipped: {size / 2**20:.2f} MiB of "
              f"weights, {minutes:.0f} minutes of training as recorded (on a machine shared with "
              f"other work, so longer than a quiet run)"
              + (f"; the {len(ENTRIES) - shipped_count} not built are estimated at about "
                 f"{todo:.0f} minutes on 2 cores, about {todo * estimate_pace(manifest)[0]:.0f} "
                 f"at the shipped models' pace (the median ratio of their recorded to their "
                 f"estimated minutes)." if todo else ".")]
    return "\n".join(lines) + "\n"


def check(name: str, device: str | None = None, progress: bool = True) -> dict:
    """Retrain shipped model ``name`` from scratch (in an empty temporary cache) and say
    whether it reproduces the manifest: the same SHA-256 (bitwise), or the test accuracy
    within 0.2 points.

    Bitwise equality is reported, not required, even on the CPU kind and torch version
    that trained the model: oneDNN's CPU kernels are not bitwise reproducible from one
    training run to the next (two 1-epoch LeNet-5 trainings in one process, with
    deterministic algorithms on, differed in the last bits of their weights; their test
    predictions were the same).

    Returns:
        ``{"name", "sha256_equal", "weights_equal", "accuracy", "manifest_accuracy",
        "same_machine", "reproduced"}``: ``sha256_equal`` compares the file the retrained
        weights would make (in the shipped file's encoding) with the manifest's SHA-256;
        ``weights_equal``, every tensor bit for bit (what the SHA-256 stands for: files of
        encoding 0 can differ in their header's key order alone).
    """
    entry = _entry(name)
    meta = _weights.read_manifest().get(name)
    if meta is None:
        raise ZooError(f"zoo: {name!r} is not shipped; build it with "
                       f"{_weights.rebuild_command(name)}")
    previous = os.environ.get("LIGHTCNN_CACHE")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["LIGHTCNN_CACHE"] = cache
        try:
            _, state, new_meta, _ = _train_entry(entry, BUDGETS["full"], device, progress)
        finally:
            if previous is None:
                os.environ.pop("LIGHTCNN_CACHE", None)
            else:
                os.environ["LIGHTCNN_CACHE"] = previous
    # the shipped file's own layout; files of encoding 0 hold two metadata keys that
    # safetensors writes in either order, so for them only the weights can be compared
    encoding = meta.get("encoding", 0)
    blob = _weights._serialize(name, state, entry.version, encoding=encoding)
    same_machine = (new_meta["trained_on"] == meta["trained_on"]
                    and new_meta["torch"] == meta["torch"])
    sha_equal = hashlib.sha256(blob).hexdigest() == meta["sha256"]
    shipped, _ = _weights.load_state_dict(name)
    weights_equal = shipped.keys() == state.keys() and all(
        _weights.bitwise_equal(shipped[k], state[k]) for k in shipped)
    close = abs(new_meta["test_accuracy"] - meta["test_accuracy"]) <= 0.002
    return {"name": name, "sha256_equal": sha_equal, "weights_equal": weights_equal,
            "accuracy": new_meta["test_accuracy"], "manifest_accuracy": meta["test_accuracy"],
            "same_machine": same_machine, "reproduced": sha_equal or weights_equal or close}


def main(argv: list[str] | None = None) -> int:
    """``python -m lightcnn.zoo build [NAMES] [-j N] [--device D]``, ``... check NAME``,
    ``... list``."""
    check_sequence("argv", argv, str, none=True)
    parser = argparse.ArgumentParser(prog="python -m lightcnn.zoo",
                                     description="Build, check and list the shipped zoo.")
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="train the models not shipped yet")
    build_parser.add_argument("names", nargs="*", help="entries (default: all)")
    build_parser.add_argument("-j", "--jobs", type=int, default=1,
                              help="models trained at once, in separate processes")
    build_parser.add_argument("--device", default=None, help="cpu, cuda, mps or auto")
    build_parser.add_argument("--check", metavar="NAME", default=None,
                              help="retrain one shipped model and compare with the manifest")
    check_parser = commands.add_parser("check", help="retrain NAME, compare with the manifest")
    check_parser.add_argument("name")
    check_parser.add_argument("--device", default=None)
    commands.add_parser("list", help="every entry, shipped or not")
    table_parser = commands.add_parser("table", help="the zoo as a Markdown table")
    table_parser.add_argument("--write", metavar="FILE", default=None,
                              help="write the table to FILE instead of printing it")
    args = parser.parse_args(argv)
    from .runtime import setup

    try:
        if args.command == "list":
            manifest = _weights.read_manifest()
            for name, entry in ENTRIES.items():
                meta = manifest.get(name)
                state = (f"not built (about {entry.estimated_minutes():.0f} min)" if meta is None
                         else f"{100 * meta['test_accuracy']:.2f}%, {meta['bytes']:,} B, "
                              f"v{meta['recipe_version']}")
                print(f"{name:40s} v{entry.version} {entry.epochs:3d} epochs  {state}")
            todo = [e for n, e in ENTRIES.items() if n not in manifest]
            print(f"{len(todo)} of {len(ENTRIES)} entries not built: "
                  f"{_estimate_text(sum(e.estimated_minutes() for e in todo), manifest)}")
            return 0
        if args.command == "table":
            text = table()
            if args.write is None:
                print(text, end="")
            else:
                Path(args.write).write_text(text)
            return 0
        # under torchrun: join the process group, and share the machine's cores among the
        # processes it runs (a plain run: no group, every core)
        _distributed.init_distributed()
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        from .runtime import DEFAULT_THREADS

        setup(seed=0, plots=False,   # seeds, deterministic algorithms, threads
              threads=max(1, (os.cpu_count() or 1) // local) if local > 1 else DEFAULT_THREADS)
        name = args.name if args.command == "check" else args.check
        if name is not None:
            report = check(name, args.device)
            print(json.dumps(report, indent=1))
            return 0 if report["reproduced"] else 1
        build(args.names or None, jobs=args.jobs, device=args.device)
        return 0
    except (ZooError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
