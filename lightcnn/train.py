"""Seeded, deterministic training and evaluation loops.

Smith & Topin, "Super-Convergence: Very Fast Training of Neural Networks Using Large
Learning Rates", arXiv 1708.07120 (the one-cycle schedule used by default). Loshchilov &
Hutter, "SGDR", arXiv 1608.03983 (cosine schedule).

``fit`` runs mini-batch SGD (or AdamW) on cross-entropy, optionally with weight decay and
a learning-rate schedule, and records one row of history per epoch. The same seed gives
the same numbers: the model's initial weights are the caller's, and ``fit`` seeds the
augmentation and the shuffling itself.

Taught in chapters/01_cnn_basics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

__all__ = ["History", "fit", "evaluate", "predict", "confusion_matrix", "make_optimizer"]

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class History:
    """Per-epoch metrics of one ``fit`` call: lists indexed by epoch."""

    train_loss: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[float]]:
        """The history as a plain dict of lists (JSON-serializable)."""
        return {k: list(v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict[str, list[float]]) -> "History":
        return cls(**{k: list(v) for k, v in d.items()})


def _progress_bar(total: int, enabled: bool, desc: str):
    """One tqdm bar over all training steps (tqdm.auto: a widget in notebooks where
    ipywidgets is installed, text elsewhere), or None when disabled."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    # A single bar (no nested per-epoch bars) keeps stored notebook output readable.
    return tqdm(total=total, desc=desc, mininterval=5.0, unit="step")


def make_optimizer(model: nn.Module, optimizer: str, lr: float, weight_decay: float,
                   momentum: float = 0.9) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum, or AdamW; weight decay skips biases and norm scales.

    Decaying BatchNorm scales and biases only shrinks them towards zero without reducing
    capacity, so only weights with two or more dimensions are decayed.
    """
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


def fit(model: nn.Module, train_loader: DataLoader, epochs: int,
        test_loader: DataLoader | None = None, lr: float = 0.1, weight_decay: float = 5e-4,
        optimizer: str = "sgd", schedule: str | None = "onecycle", seed: int = 0,
        loss_fn: LossFn | None = None, progress: bool = True,
        after_step: Callable[[nn.Module], None] | None = None) -> History:
    """Train ``model`` in place and return its per-epoch history.

    Args:
        model: the network; trained on the CPU.
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
        progress: show tqdm progress bars.
        after_step: called with the model after every optimizer step (e.g. to re-apply
            pruning masks).
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if schedule not in ("onecycle", "cosine", None):
        raise ValueError(f"schedule must be 'onecycle', 'cosine' or None, got {schedule!r}")
    loss_fn = loss_fn or _default_loss
    opt = make_optimizer(model, optimizer, lr, weight_decay)
    steps = epochs * len(train_loader)
    if schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    elif schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    else:
        sched = None
    # Seed the global generator (augmentation) and the loader's own one (shuffling).
    torch.manual_seed(seed)
    if getattr(train_loader, "generator", None) is not None:
        train_loader.generator.manual_seed(seed)
    history = History()
    bar = _progress_bar(steps, progress, desc="training")
    for epoch in range(epochs):
        model.train()
        start = time.perf_counter()
        total_loss, seen = 0.0, 0
        for x, y in train_loader:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model, x, y)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            if after_step is not None:
                after_step(model)
            total_loss += loss.item() * len(y)
            seen += len(y)
            if bar is not None:
                bar.update(1)
        history.lr.append(opt.param_groups[0]["lr"])
        history.train_loss.append(total_loss / seen)
        history.seconds.append(time.perf_counter() - start)
        if test_loader is not None:
            metrics = evaluate(model, test_loader)
            history.test_loss.append(metrics["loss"])
            history.test_accuracy.append(metrics["accuracy"])
        if bar is not None:
            postfix = {"epoch": epoch + 1, "loss": f"{history.train_loss[-1]:.4f}"}
            if history.test_accuracy:
                postfix["test_acc"] = f"{history.test_accuracy[-1]:.4f}"
            bar.set_postfix(postfix)
    if bar is not None:
        bar.close()
    return history


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(logits, labels)`` for every batch of ``loader``, model in eval mode."""
    model.eval()
    all_logits, all_labels = [], []
    for x, y in loader:
        all_logits.append(model(x))
        all_labels.append(y)
    return torch.cat(all_logits), torch.cat(all_labels)


def evaluate(model: nn.Module, loader: DataLoader) -> dict[str, float]:
    """Mean cross-entropy and accuracy (fraction correct) of ``model`` on ``loader``."""
    logits, labels = predict(model, loader)
    return {"loss": nn.functional.cross_entropy(logits, labels).item(),
            "accuracy": (logits.argmax(1) == labels).float().mean().item()}


def confusion_matrix(logits: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None
                     ) -> torch.Tensor:
    """``C[i, j]`` = number of images of true class ``i`` predicted as class ``j``."""
    num_classes = num_classes or logits.shape[1]
    index = labels * num_classes + logits.argmax(1)
    return torch.bincount(index, minlength=num_classes ** 2).reshape(num_classes, num_classes)
