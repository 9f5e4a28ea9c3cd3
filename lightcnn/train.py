"""Seeded, deterministic training and evaluation loops.

Smith & Topin, "Super-Convergence: Very Fast Training of Neural Networks Using Large
Learning Rates", arXiv 1708.07120 (the one-cycle schedule used by default). Loshchilov &
Hutter, "SGDR", arXiv 1608.03983 (cosine schedule).

``fit`` runs mini-batch SGD (or AdamW) on cross-entropy, optionally with weight decay and
a learning-rate schedule, and records one row of history per epoch. The same seed gives
the same numbers: the model's initial weights are the caller's, and ``fit`` seeds the
augmentation and the shuffling itself. Training runs on the CPU by default, or on a GPU
(``device="auto"`` picks CUDA or Apple's MPS when present); the book times models on the
CPU only.

Under ``torchrun`` (a process group initialized, see :mod:`lightcnn.distributed`) the same
call trains data-parallel: the model is wrapped in ``DistributedDataParallel``, each
process reads its share of every batch (the loader's batch size stays the global one, so a
recipe's steps and learning rate do not change), and the history's losses and accuracies
are taken over all processes' images together; only rank 0 prints.

Taught in chapters/01_cnn_basics.
"""

from __future__ import annotations

import importlib.util
import io
import math
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from . import distributed
from ._io import atomic_write
from ._checks import (check_bool, check_callable, check_float, check_int, check_module,
                      check_path, check_str, check_tensor, is_real)

__all__ = ["History", "fit", "evaluate", "accuracy", "predict", "confusion_matrix", "make_optimizer",
           "resolve_device"]

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class History:
    """Per-epoch metrics of one ``fit`` call: lists indexed by epoch.

    ``val_loss`` and ``val_accuracy`` are filled when ``fit`` is given a validation
    loader; ``best_epoch`` is the epoch (an index into the lists) whose weights
    ``fit(..., keep_best=True)`` kept, the highest validation accuracy, and ``None`` when
    the model ends with the last epoch's weights. :attr:`kept_epoch` is either one.
    """

    train_loss: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    best_epoch: int | None = None

    def __post_init__(self) -> None:
        # losses may be NaN or infinite (a diverged run records what it saw); the rest
        # are in range
        _check_series("train_loss", self.train_loss, finite=False)
        _check_series("test_loss", self.test_loss, finite=False)
        _check_series("test_accuracy", self.test_accuracy, 0.0, 1.0)
        _check_series("lr", self.lr, 0.0)
        _check_series("seconds", self.seconds, 0.0)
        _check_series("val_loss", self.val_loss, finite=False)
        _check_series("val_accuracy", self.val_accuracy, 0.0, 1.0)
        check_int("best_epoch", self.best_epoch, 0, none=True)
        if self.best_epoch is not None and self.best_epoch >= len(self.val_accuracy):
            raise ValueError(f"best_epoch must index val_accuracy (the epoch chosen on it), "
                             f"got {self.best_epoch} with {len(self.val_accuracy)} epochs")

    @property
    def kept_epoch(self) -> int:
        """The epoch whose weights the model ended with: ``best_epoch``, or the last."""
        return self.best_epoch if self.best_epoch is not None else len(self.train_loss) - 1

    def as_dict(self) -> dict[str, list[float] | int | None]:
        """The history as a plain dict of lists and ``best_epoch`` (JSON-serializable)."""
        return {k: list(v) if isinstance(v, list) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict[str, list[float] | int | None]) -> "History":
        # histories stored before the validation fields existed load with them empty
        return cls(**{k: list(v) if isinstance(v, (list, tuple)) else v for k, v in d.items()})


def _check_series(name: str, values, low: float | None = None, high: float | None = None,
                  finite: bool = True) -> None:
    """``values`` is a list (or tuple) of numbers in ``[low, high]``; NaN and infinities
    pass only where not ``finite``."""
    if not isinstance(values, (list, tuple)):
        raise TypeError(f"{name} must be a list of numbers, one per epoch, got "
                        f"{type(values).__name__}")
    for v in values:
        if not is_real(v):
            raise TypeError(f"{name} must be a list of numbers, got an item of type "
                            f"{type(v).__name__}")
        if not finite and not math.isfinite(v):
            continue
        if (not math.isfinite(v) or (low is not None and v < low)
                or (high is not None and v > high)):
            bounds = ("" if low is None and high is None else f" >= {low}" if high is None
                      else f" in [{low}, {high}]")
            raise ValueError(f"{name} must hold finite numbers{bounds}, got {v!r}")


def _check_loader(name: str, loader, sized: bool = False) -> None:
    """``loader`` yields ``(x, y)`` batches: a DataLoader or another iterable (with a
    length if ``sized``); not empty when it has a length. A str, a dict (its keys) or a
    tensor (its rows) iterate, but not over batches."""
    iterable = hasattr(loader, "__iter__") or hasattr(loader, "__getitem__")
    if not iterable or isinstance(loader, (str, bytes, Mapping, torch.Tensor)):
        raise TypeError(f"{name} must be a DataLoader (or another iterable) of (x, y) "
                        f"batches, got {type(loader).__name__}")
    try:
        empty = len(loader) == 0
    except TypeError:   # no length (a loader of an IterableDataset)
        if sized:
            raise TypeError(f"{name} must have a length (fit schedules the learning rate "
                            f"over epochs * len({name}) steps), got a "
                            f"{type(loader).__name__} without one") from None
        empty = False
    if empty:
        raise ValueError(f"{name} must yield at least one batch, got an empty "
                         f"{type(loader).__name__}")


def _live_bar_available() -> bool:
    """True where a progress bar redraws in place: a terminal, or a notebook with ipywidgets.

    In a notebook without ipywidgets (and when nbconvert or nbval execute one) tqdm's text
    bar would be stored as hundreds of lines, so ``fit`` prints one line per epoch instead.
    """
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    if shell is not None and type(shell).__name__ == "ZMQInteractiveShell":
        return importlib.util.find_spec("ipywidgets") is not None
    return sys.stderr.isatty()


class _Progress:
    """A tqdm bar over all steps where it can redraw, else one printed line per epoch."""

    def __init__(self, total: int, epochs: int, enabled: bool):
        self.epochs = epochs
        self.enabled = enabled
        self.bar = None
        if enabled and _live_bar_available():
            from tqdm.auto import tqdm  # a widget in notebooks, text in terminals

            self.bar = tqdm(total=total, desc="training", unit="step")

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def epoch_end(self, epoch: int, history: "History") -> None:
        if not self.enabled:
            return
        summary = f"epoch {epoch + 1}/{self.epochs}: train loss {history.train_loss[-1]:.4f}"
        if history.val_accuracy:
            summary += f", val accuracy {100 * history.val_accuracy[-1]:.2f}%"
        if history.test_accuracy:
            summary += f", test accuracy {100 * history.test_accuracy[-1]:.2f}%"
        summary += f" ({history.seconds[-1]:.1f} s)"
        if self.bar is not None:
            self.bar.set_postfix_str(summary)
        else:
            print(summary, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The device to train on: ``"cpu"``, ``"cuda"`` (``"cuda:1"``), ``"mps"``, or
    ``"auto"``, which picks CUDA, then Apple's MPS, when present, and the CPU otherwise.
    ``None`` reads ``LIGHTCNN_DEVICE`` (default ``"cpu"``), so ``LIGHTCNN_DEVICE=auto make
    execute`` trains every chapter's models on a GPU.

    Raises:
        ValueError: an unknown device name, or a GPU that this machine does not have.
    """
    if device is None:
        device = os.environ.get("LIGHTCNN_DEVICE", "cpu").strip().lower() or "cpu"
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise ValueError(f"device must be 'cpu', 'cuda', 'mps' or 'auto', got {device!r}")
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif _mps_available():
            device = "mps"
        else:
            device = "cpu"
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device must be 'cpu', 'cuda', 'mps' or 'auto', got {device!r}") from err
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r}, but this machine has no CUDA GPU (use 'auto')")
        # deterministic cuBLAS (lc.setup turns deterministic algorithms on) needs this
        # workspace setting before its first call
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif resolved.type == "mps":
        if not _mps_available():
            raise ValueError(f"device={device!r}, but this machine has no Apple GPU (use 'auto')")
    elif resolved.type != "cpu":
        raise ValueError(f"device must be 'cpu', 'cuda', 'mps' or 'auto', got {device!r}")
    return resolved


def _model_device(model: nn.Module) -> torch.device:
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def make_optimizer(model: nn.Module, optimizer: str, lr: float, weight_decay: float,
                   momentum: float = 0.9) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum, or AdamW; weight decay skips biases and norm scales.

    Decaying BatchNorm scales and biases only shrinks them towards zero without reducing
    capacity, so only weights with two or more dimensions are decayed.
    """
    check_module("model", model)
    check_str("optimizer", optimizer, ("sgd", "adamw"))
    check_float("lr", lr, 0, low_open=True)
    check_float("weight_decay", weight_decay, 0)
    check_float("momentum", momentum, 0, 1)
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    if optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}")


def _default_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


def _local_rank() -> int:
    """This process's GPU under torchrun (``LOCAL_RANK``), else the current CUDA device."""
    if "LOCAL_RANK" in os.environ:
        return int(os.environ["LOCAL_RANK"])
    return torch.cuda.current_device()


def fit(model: nn.Module, train_loader: DataLoader, epochs: int,
        test_loader: DataLoader | None = None, lr: float = 0.1, weight_decay: float = 5e-4,
        optimizer: str = "sgd", schedule: str | None = "onecycle", seed: int = 0,
        loss_fn: LossFn | None = None, progress: bool = True,
        after_step: Callable[[nn.Module], None] | None = None,
        device: str | torch.device | None = None, val_loader: DataLoader | None = None,
        keep_best: bool = False, checkpoint: str | os.PathLike | None = None,
        keep_checkpoint: bool = False) -> History:
    """Train ``model`` in place and return its per-epoch history.

    Args:
        model: the network; trained on ``device``, then moved back to where it was.
        train_loader: batches of ``(x, y)``.
        epochs: number of passes over ``train_loader``.
        test_loader: evaluated after every epoch when given.
        lr: peak learning rate (one-cycle), initial rate (cosine) or constant rate.
        weight_decay: L2 penalty on weights with 2+ dims (decoupled for AdamW).
        optimizer: ``"sgd"`` (Nesterov, momentum 0.9) or ``"adamw"``.
        schedule: ``"onecycle"``, ``"cosine"`` or ``None`` (constant).
        seed: seeds shuffling and augmentation, so two calls give identical results.
        loss_fn: ``loss_fn(model, x, y) -> loss``; cross-entropy of ``model(x)`` by default
            (distillation and sparsity penalties pass their own).
        progress: report progress: a tqdm bar in terminals and in notebooks with
            ipywidgets, one line per epoch elsewhere.
        after_step: called with the model after every optimizer step (e.g. to re-apply
            pruning masks).
        device: where to train (see :func:`resolve_device`: ``"auto"`` uses a GPU when
            there is one; ``None`` reads ``LIGHTCNN_DEVICE``, default the CPU). Batches
            are moved there one at a time, and the test set is scored there.
        val_loader: scored after every epoch when given (``history.val_loss`` and
            ``val_accuracy``): images held out of ``train_loader`` (see
            :func:`lightcnn.data.get_dataloaders_with_val`), so that choosing by them
            leaves the test set out of every decision.
        keep_best: end with the weights (parameters and buffers) of the epoch with the
            highest validation accuracy, the earliest among ties, instead of the last
            epoch's; ``history.best_epoch`` says which, and the model's test accuracy is
            ``history.test_accuracy[history.best_epoch]``. Needs ``val_loader``.
        checkpoint: a file to resume from: after every epoch the weights, the optimizer and
            schedule, the random generators' states and the history so far are written
            there (atomically), and a call that finds the file resumes after its last
            epoch, with the same weights, bit for bit, as one uninterrupted call (on the
            CPU). A file written by a call with other settings, or a damaged one, is
            refused (``ValueError``), never overwritten; the file is removed when the call
            ends. A zoo build passes one, so a model interrupted mid-training (a session
            that ends) loses at most one epoch. Not supported in several processes.
        keep_checkpoint: leave ``checkpoint`` in place when the call ends (the caller
            removes it): a caller with several training phases (network slimming's penalty,
            cut and fine-tuning) resumes past a finished phase, whose file a new call
            replays, weights, history and random state, without training.

    In several processes (``torchrun``, a process group initialized, e.g. by
    :func:`lightcnn.distributed.init_distributed`), the same call trains data-parallel:

    - ``"cuda"`` means this process's GPU, ``cuda:LOCAL_RANK``;
    - the model is wrapped in ``DistributedDataParallel``: ``loss_fn`` receives the
      wrapper (calling it runs the forward pass through DDP, which then averages the
      gradients), ``after_step`` the model itself (its own layer names);
    - ``train_loader`` is replaced by :func:`lightcnn.distributed.distributed_loader`:
      each process reads ``1 / world_size`` of every batch, so the loader's batch size is
      the global batch and the recipe's steps and learning rate are unchanged (a loader
      that already has a ``DistributedSampler`` is used as it is); ``set_epoch`` is called
      before every epoch;
    - augmentation is seeded with ``seed + rank``, so the processes draw different crops;
    - after every epoch rank 0's buffers (batch-norm statistics, pruning masks) are copied
      to the others, so every process holds identical weights;
    - the history's train loss is the mean over every process's batches, and the
      evaluation is all-reduced: each process scores every ``world_size``-th test image
      with the unwrapped model and the sums of losses and of correct answers are added
      up, which gives one process's accuracy exactly and its loss up to rounding;
    - only rank 0 reports progress; every process returns the same history (its
      ``seconds`` are each process's own). Saving is the caller's: do it on rank 0
      (:func:`lightcnn.distributed.is_main_process`).
    """
    check_module("model", model)
    _check_loader("train_loader", train_loader, sized=True)
    check_int("epochs", epochs, 1)
    if test_loader is not None:
        _check_loader("test_loader", test_loader)
    check_float("lr", lr, 0, low_open=True)
    check_float("weight_decay", weight_decay, 0)
    check_str("optimizer", optimizer, ("sgd", "adamw"))
    if schedule not in ("onecycle", "cosine", None):
        raise ValueError(f"schedule must be 'onecycle', 'cosine' or None, got {schedule!r}")
    check_int("seed", seed, 0)
    check_callable("loss_fn", loss_fn, none=True)
    check_bool("progress", progress)
    check_callable("after_step", after_step, none=True)
    if val_loader is not None:
        _check_loader("val_loader", val_loader)
    check_bool("keep_best", keep_best)
    if keep_best and val_loader is None:
        raise ValueError("keep_best needs val_loader (the epoch is chosen on validation "
                         "data, never on the test set)")
    check_path("checkpoint", checkpoint, none=True)
    check_bool("keep_checkpoint", keep_checkpoint)
    if keep_checkpoint and checkpoint is None:
        raise ValueError("keep_checkpoint needs a checkpoint file")
    parallel, rank = distributed.is_distributed(), distributed.get_rank()
    if parallel and checkpoint is not None:
        raise ValueError("checkpoint is not supported in several processes (each rank's "
                         "random state would have to be saved); pass checkpoint=None")
    device = resolve_device(device)
    if parallel and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", _local_rank())
    loss_fn = loss_fn or _default_loss
    home = _model_device(model)
    model.to(device)   # before the optimizer, so it holds the moved parameters
    opt = make_optimizer(model, optimizer, lr, weight_decay)
    trainee = model    # what loss_fn calls: the model, or its DDP wrapper
    if parallel:
        if not isinstance(getattr(train_loader, "sampler", None), DistributedSampler):
            train_loader = distributed.distributed_loader(train_loader, seed)
        # DDP broadcasts rank 0's weights and buffers now, and averages gradients later
        trainee = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    steps = epochs * len(train_loader)
    if schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    elif schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    else:
        sched = None
    # Seed the global generator (augmentation) and the loader's own one (shuffling); in
    # several processes each augments its own share differently (rank 0 as one process)
    torch.manual_seed(seed + rank)
    if getattr(train_loader, "generator", None) is not None:
        train_loader.generator.manual_seed(seed)
    history = History()
    best_state = None   # keep_best: a copy of the best epoch's weights so far
    first_epoch = 0
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        fingerprint = dict(epochs=epochs, batches=len(train_loader), lr=lr,
                           weight_decay=weight_decay, optimizer=optimizer, schedule=schedule,
                           seed=seed, keep_best=keep_best, validation=val_loader is not None,
                           parameters=[[n, list(p.shape)] for n, p in model.named_parameters()])
        if checkpoint.exists():
            saved = _read_checkpoint(checkpoint, fingerprint)
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["optimizer"])
            if sched is not None:
                sched.load_state_dict(saved["schedule"])
            torch.set_rng_state(saved["rng"])
            if saved["loader_rng"] is not None:
                train_loader.generator.set_state(saved["loader_rng"])
            if saved["cuda_rng"] is not None and device.type == "cuda":
                torch.cuda.set_rng_state(saved["cuda_rng"], device)
            history = History.from_dict(saved["history"])
            best_state, first_epoch = saved["best_state"], saved["epoch"]
    reporter = _Progress(steps, epochs, progress and rank == 0)
    for epoch in range(first_epoch, epochs):
        if parallel:
            train_loader.sampler.set_epoch(epoch)   # a new common permutation each epoch
        model.train()
        start = time.perf_counter()
        total_loss, seen = 0.0, 0
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(trainee, x, y)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            if after_step is not None:
                after_step(model)
            total_loss += loss.item() * len(y)
            seen += len(y)
            reporter.step()
        if parallel:
            total_loss, seen = distributed.all_reduce_sum([total_loss, seen], device)
            distributed.broadcast_buffers(model)
        history.lr.append(opt.param_groups[0]["lr"])
        history.train_loss.append(total_loss / seen)
        history.seconds.append(time.perf_counter() - start)
        if test_loader is not None:
            metrics = (_evaluate_all_reduced(model, test_loader, device) if parallel
                       else evaluate(model, test_loader))
            history.test_loss.append(metrics["loss"])
            history.test_accuracy.append(metrics["accuracy"])
        if val_loader is not None:
            metrics = (_evaluate_all_reduced(model, val_loader, device) if parallel
                       else evaluate(model, val_loader))
            history.val_loss.append(metrics["loss"])
            history.val_accuracy.append(metrics["accuracy"])
            # strictly better only: among equal epochs the earliest (least trained) wins
            if keep_best and (best_state is None
                              or metrics["accuracy"] > history.val_accuracy[history.best_epoch]):
                history.best_epoch = epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        reporter.epoch_end(epoch, history)
        if checkpoint is not None:
            _write_checkpoint(checkpoint, dict(
                fingerprint=fingerprint, epoch=epoch + 1, model=model.state_dict(),
                optimizer=opt.state_dict(), schedule=None if sched is None else sched.state_dict(),
                rng=torch.get_rng_state(),
                loader_rng=(train_loader.generator.get_state()
                            if getattr(train_loader, "generator", None) is not None else None),
                cuda_rng=torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                history=history.as_dict(), best_state=best_state))
    reporter.close()
    if checkpoint is not None and not keep_checkpoint:
        checkpoint.unlink(missing_ok=True)   # done: what it held is the model now
    if best_state is not None:
        model.load_state_dict(best_state)
    del trainee        # a DDP wrapper takes its gradient hooks off the parameters with it
    model.to(home)     # the book measures latency on the CPU, where the model came from
    return history


def _read_checkpoint(path: Path, fingerprint: dict) -> dict:
    """A checkpoint written by :func:`fit` with the same settings, or a ``ValueError``
    that names the file and what differs (the file is left as it is)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:   # truncated, not a torch file, not the checkpoint's types
        raise ValueError(f"checkpoint {path} is not readable ({type(err).__name__}: {err}); "
                         "delete it to train from the start") from err
    if not isinstance(saved, dict) or "fingerprint" not in saved:
        raise ValueError(f"checkpoint {path} is not readable (not a lightcnn fit checkpoint); "
                         "delete it to train from the start")
    theirs = saved["fingerprint"]
    differ = [f"{k} {theirs.get(k)!r} there, {v!r} here" for k, v in fingerprint.items()
              if theirs.get(k) != v]
    if differ:
        raise ValueError(f"checkpoint {path} was written by another run ({'; '.join(differ)}); "
                         "delete it to train from the start")
    return saved


def _write_checkpoint(path: Path, state: dict) -> None:
    """``state`` saved to ``path`` through a temporary file: an interruption while writing
    leaves the previous epoch's checkpoint."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, buffer.getvalue())


@torch.no_grad()
def _evaluate_all_reduced(model: nn.Module, loader: DataLoader, device: torch.device
                          ) -> dict[str, float]:
    """:func:`evaluate` over all processes: each scores its shard of ``loader.dataset``
    (every ``world_size``-th image, none repeated) and the sums are all-reduced."""
    shard = DataLoader(distributed.shard_dataset(loader.dataset),
                       batch_size=loader.batch_size or 1000, collate_fn=loader.collate_fn)
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for x, y in shard:
        logits = model(x.to(device)).cpu()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(1) == y).sum())
        count += len(y)
    loss_sum, correct, count = distributed.all_reduce_sum([loss_sum, correct, count], device)
    return {"loss": loss_sum / count, "accuracy": correct / count}


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(logits, labels)`` for every batch of ``loader``, model in eval mode, on
    the device the model is on; both returned on the CPU."""
    check_module("model", model)
    _check_loader("loader", loader)
    model.eval()
    device = _model_device(model)
    all_logits, all_labels = [], []
    for batch in loader:
        try:
            x, y = batch
        except (TypeError, ValueError):
            raise ValueError(f"loader must yield (x, y) batches, got a "
                             f"{type(batch).__name__}") from None
        all_logits.append(model(x.to(device)).cpu())
        all_labels.append(y)
    if not all_logits:
        raise ValueError("loader yielded no batch")
    return torch.cat(all_logits), torch.cat(all_labels)


def evaluate(model: nn.Module, loader: DataLoader) -> dict[str, float]:
    """Mean cross-entropy and accuracy (fraction correct) of ``model`` on ``loader``, run
    on the device the model is on."""
    check_module("model", model)
    _check_loader("loader", loader)
    logits, labels = predict(model, loader)
    return {"loss": nn.functional.cross_entropy(logits, labels).item(),
            "accuracy": (logits.argmax(1) == labels).float().mean().item()}


def accuracy(model: nn.Module, loader: DataLoader) -> float:
    """The fraction of ``loader``'s images ``model`` classifies right:
    ``evaluate(model, loader)["accuracy"]``, the number every chapter's tables print."""
    return evaluate(model, loader)["accuracy"]


def confusion_matrix(logits: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None
                     ) -> torch.Tensor:
    """``C[i, j]`` = number of images of true class ``i`` predicted as class ``j``.

    Args:
        logits: ``(N, K)`` scores; the prediction is the argmax over the K classes.
        labels: ``(N,)`` true classes.
        num_classes: the matrix's size; ``K`` by default.
    """
    check_tensor("logits", logits, 2)
    if logits.shape[1] < 1:
        raise ValueError(f"logits must hold at least one class score per row, got shape "
                         f"{tuple(logits.shape)}")
    check_tensor("labels", labels, 1, integer=True)
    check_int("num_classes", num_classes, 1, none=True)
    if len(labels) != len(logits):
        raise ValueError(f"labels must hold one class per row of logits ({len(logits)}), "
                         f"got {len(labels)}")
    num_classes = num_classes or logits.shape[1]
    predicted = logits.argmax(1)
    for name, values in (("labels", labels), ("logits", predicted)):
        if len(values) and not 0 <= int(values.min()) <= int(values.max()) < num_classes:
            what = "classes" if name == "labels" else "predicted classes (argmax)"
            raise ValueError(f"{name} must hold {what} in [0, {num_classes - 1}] "
                             f"(num_classes={num_classes}), got "
                             f"[{int(values.min())}, {int(values.max())}]")
    index = labels * num_classes + predicted
    return torch.bincount(index, minlength=num_classes ** 2).reshape(num_classes, num_classes)
