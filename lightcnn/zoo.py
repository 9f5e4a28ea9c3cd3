"""Trained models, cached on disk, so chapters share one baseline and one teacher.

``get_trained("baseline_cnn")`` trains the model deterministically on first use, at the
current budget, and stores its weights under the user cache. Later calls (from any
chapter) load it. The cache key hashes everything that changes the result: the model name
and arguments, the training recipe, the budget, the seed, the source code of the model,
the data and the training loop, and torch's version. A stale entry is never loaded (its
key differs), and an unreadable or corrupted one (its SHA-256 does not match) is trained
again, with a warning. Weights are never committed to the repository.

Taught in chapters/01_cnn_basics.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib
import inspect
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import data as _data
from . import models as _models
from . import train as _train
from .budget import Budget, get_budget
from .data import get_dataloaders, user_cache_dir
from .train import History, fit

__all__ = ["RECIPES", "TRAINING_BUDGET_FIELDS", "TrainedModel", "cache_key", "cache_path",
           "get_trained", "PRUNING_METHODS", "get_pruned"]

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

# a teacher's logits on one training set, computed once per process (see get_trained)
_TEACHER_LOGITS: dict[tuple, torch.Tensor] = {}


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
    recipe = recipe or RECIPES.get(name, DEFAULT_RECIPE)
    budget_fields = {k: v for k, v in budget.as_dict().items() if k in TRAINING_BUDGET_FIELDS}
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
    return user_cache_dir() / "zoo" / f"{name}-{budget.name}-{key}.pt"


def _load(path: Path) -> dict | None:
    """The cached entry, or None if absent; warns and returns None if it is damaged."""
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
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(entry, buffer)
    blob = buffer.getvalue()
    # Write both files through temporary names so an interrupted run leaves no entry.
    for target, content in ((path, blob),
                            (path.with_suffix(".sha256"), hashlib.sha256(blob).hexdigest().encode())):
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(content)
        tmp.replace(target)


def get_trained(name: str, budget: Budget | None = None, seed: int = 0,
                progress: bool = True, recipe: dict | None = None, epochs: int | None = None,
                channels_last: bool = False, init_from: TrainedModel | None = None,
                teacher: TrainedModel | None = None, distill: dict | None = None,
                device: str | None = None, **model_kwargs) -> TrainedModel:
    """Return model ``name`` trained at ``budget``: from the cache, or trained now and cached.

    Args:
        name: a registered model (see ``lc.list_models()``).
        budget: defaults to ``LIGHTCNN_BUDGET``; sets the data subset and the epochs.
        seed: seeds the initial weights, the shuffling and the augmentation.
        progress: show progress bars while training.
        recipe: overrides ``RECIPES[name]`` (keys: optimizer, lr, weight_decay, schedule,
            batch_size, augment, and optionally after_step: the dotted name of a function
            called with the model after every optimizer step, part of the cache key).
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
        **model_kwargs: passed to ``create_model`` (e.g. ``width_mult=0.5``).
    """
    train_device = _train.resolve_device(device)
    device_kind = train_device.type
    budget = budget or get_budget()
    if epochs is not None:
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive int, got {epochs!r}")
        budget = dataclasses.replace(budget, epochs=epochs)  # part of the cache key
    recipe = dict(recipe or RECIPES.get(name, DEFAULT_RECIPE))
    after_step = _after_step(recipe.get("after_step"))
    torch.manual_seed(seed)  # the initial weights depend on the seed only
    model = _models.create_model(name, **model_kwargs)
    if not isinstance(channels_last, bool):
        raise TypeError(f"channels_last must be a bool, got {channels_last!r}")
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
                  loss_fn=loss_fn, after_step=after_step, device=train_device)
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

PRUNING_METHODS = ("agp", "l1", "slimming")


def _pruning_code_hash() -> str:
    from . import channel_pruning, profile, pruning   # chapter 04 builds on the zoo
    sources = [inspect.getsource(m) for m in (pruning, channel_pruning, profile, _train, _data)]
    return hashlib.sha256("".join(sources).encode()).hexdigest()


def get_pruned(base: TrainedModel, method: str, epochs: int, budget: Budget | None = None,
               sparsity: float | None = None, macs_share: float | None = None,
               penalty: float = 1e-2, penalty_epochs: int | None = None, lr: float = 0.01,
               seed: int = 0, progress: bool = True) -> TrainedModel:
    """``base`` pruned by ``method`` and fine-tuned ``epochs`` epochs: from the cache, or
    made now and cached (the key hashes ``base``'s cache entry, the method and its
    settings, the budget, the seed and the source of the pruning, training and data code).

    Fine-tuning is the chapter's: SGD, a cosine schedule from ``lr`` (a tenth of the
    baseline's peak), weight decay 5e-4, augmented batches of 128.

    Methods:
        ``"agp"``: gradual magnitude pruning (Zhu & Gupta) to weight ``sparsity`` with one
            global threshold; the cubic ramp takes the first three quarters of the
            fine-tuning steps (a mask update every hundredth of them), the rest recovers
            at the target. The zeros are made permanent (a plain model).
        ``"l1"``: the same fraction of every layer's channels removed by filter L1 norm
            (Li et al.), the smallest ratio in steps of 0.05 that leaves at most
            ``macs_share`` of the MACs (``channel_pruning.ratio_for_macs``), then fine-tuned.
        ``"slimming"``: network slimming (Liu et al.): ``penalty_epochs`` of fine-tuning
            with ``penalty * sum |gamma|`` on the batch-norm scales, then channels cut
            by one global threshold on ``|gamma|`` at the smallest ratio leaving
            ``macs_share`` of the MACs, then fine-tuned.

    ``info`` of the result holds ``method``; ``sparsity`` (agp); ``ratio`` and
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
    wanted, unwanted = (("sparsity", "macs_share") if method == "agp"
                        else ("macs_share", "sparsity"))
    value = sparsity if method == "agp" else macs_share
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not 0 < value < 1:
        raise ValueError(f"method {method!r} needs {wanted} in (0, 1), got {value!r}")
    if (macs_share if method == "agp" else sparsity) is not None:
        raise ValueError(f"method {method!r} does not take {unwanted}")
    if method == "slimming":
        if isinstance(penalty_epochs, bool) or not isinstance(penalty_epochs, int) \
                or penalty_epochs < 1:
            raise ValueError(f"slimming needs penalty_epochs, an int >= 1, got {penalty_epochs!r}")
        if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not penalty > 0:
            raise ValueError(f"penalty must be a number > 0, got {penalty!r}")
    elif penalty_epochs is not None:
        raise ValueError(f"method {method!r} does not take penalty_epochs")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr must be a number > 0, got {lr!r}")

    budget = budget or get_budget()
    settings = {"method": method, wanted: value, "epochs": epochs, "lr": lr, "seed": seed}
    if method == "slimming":
        settings.update(penalty=penalty, penalty_epochs=penalty_epochs)
    spec = {"pruned_from": base.path.name, "settings": settings,
            "budget": {k: v for k, v in budget.as_dict().items() if k in TRAINING_BUDGET_FIELDS},
            "code": _pruning_code_hash(), "torch": torch.__version__.split("+")[0]}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    stem = base.path.name.split("-")[0]
    path = user_cache_dir() / "zoo" / f"{stem}+{method}-{budget.name}-{key}.pt"

    def restore(state: dict) -> nn.Module:
        # a copy of the base resized to the stored shapes (removed channels) and loaded
        model = cp.resize_to_state_dict(copy.deepcopy(base.model), state)
        return model.eval()

    entry = _load(path)
    if entry is not None:
        return TrainedModel(restore(entry["state_dict"]), entry["accuracy"],
                            History.from_dict(entry["history"]), path, trained_now=False,
                            info=entry["info"])

    train_loader, test_loader = get_dataloaders(128, budget, augment=True, seed=seed)

    def finetune(model: nn.Module, n: int, **kwargs) -> History:
        return fit(model, train_loader, n, test_loader, lr=lr, schedule="cosine", seed=seed,
                   progress=progress, **kwargs)

    model = copy.deepcopy(base.model)
    info: dict = {"method": method}
    if method == "agp":
        steps = epochs * len(train_loader)
        pruner = pruning.AGPPruner(value, total_steps=int(0.75 * steps),
                                   frequency=max(1, steps // 100))
        history = finetune(model, epochs, after_step=pruner)
        pruning.remove_masks(model)            # zeros made permanent: a plain model again
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
        model, ratio = cp.prune_to_macs(model, rule, share=value, scope=scope)
        info.update(ratio=ratio, oneshot_accuracy=_train.evaluate(model, test_loader)["accuracy"])
        history = finetune(model, epochs)
    accuracy = history.test_accuracy[-1]
    _store(path, {"state_dict": model.state_dict(), "accuracy": accuracy,
                  "history": history.as_dict(), "info": info, "key": key})
    return TrainedModel(model.eval(), accuracy, history, path, trained_now=True, info=info)
