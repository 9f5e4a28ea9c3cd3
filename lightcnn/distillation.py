"""Knowledge distillation: a small student trained on what a large teacher outputs.

Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", arXiv 1503.02531.
Romero, Ballas, Kahou, Chassang, Gatta, Bengio, "FitNets: Hints for Thin Deep Nets",
arXiv 1412.6550. Zagoruyko, Komodakis, "Paying More Attention to Attention: Improving the
Performance of Convolutional Neural Networks via Attention Transfer", arXiv 1612.03928.

A trained teacher knows more than its top-1 answer: the small probabilities it gives to the
wrong classes ("dark knowledge": a shirt looks a bit like a T-shirt, nothing like a bag)
say how it generalizes. Hinton et al. soften both networks' outputs with a temperature
``T`` and train the student to match the teacher's soft targets as well as the labels::

    L = alpha * CE(z_s, y) + (1 - alpha) * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))

FitNets add *hints*: a learned 1x1 conv (the regressor) maps an inner student feature map
to a teacher one, and their squared distance joins the loss. Attention transfer matches
where the two networks look instead: each feature map is reduced to a spatial map
``mean_c |A_c|^2``, normalized, and the maps are compared. Features are read through
forward hooks (:class:`FeatureHooks`), so neither network is edited.

:class:`Distiller` puts it together for ``lc.fit``: a module whose forward is the
student's and whose parameters are the student's plus the regressors' (so ``fit``'s
optimizer trains both), and whose ``loss_fn`` runs the frozen teacher. In a loop of one's
own it is the loss module, ``loss = distiller(x, y)``; :class:`DistillationLoss` is the
logits-only loss for a loop that runs the teacher itself. Without
augmentation the teacher's logits on the training set are computed once
(:func:`with_teacher_logits`). ``lc.zoo.get_trained(..., teacher=..., distill=...)``
caches distilled students like every other trained model.

Taught in chapters/07_distillation.
"""

from __future__ import annotations

import copy
import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset

from ._checks import (check_callable, check_float, check_instance, check_int, check_ints,
                      check_module, check_str, check_tensor)
from .train import History, fit

__all__ = ["soft_targets", "distillation_loss", "attention_map", "attention_transfer_loss",
           "hint_loss", "FeatureHooks", "DistillationLoss", "Distiller", "distill", "split_targets",
           "cache_teacher_logits",
           "TeacherLogitsDataset", "with_teacher_logits", "without_class", "balancing_bias",
           "raise_class_bias"]


def _check_temperature(temperature: float) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")


def _check_dataset(name: str, dataset) -> None:
    # a map-style dataset: items by index, and a length (a str has both, and is refused)
    if not isinstance(dataset, Dataset) or not hasattr(type(dataset), "__len__"):
        raise TypeError(f"{name} must be a map-style torch Dataset (with __len__ and "
                        f"__getitem__), got {type(dataset).__name__}")


def _check_alpha(alpha: float) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")


def soft_targets(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Class probabilities softened by a temperature: ``p_i = exp(z_i/T) / sum_j exp(z_j/T)``.

    ``T = 1`` is the ordinary softmax; a larger ``T`` lifts the small probabilities of the
    wrong classes (the teacher's "dark knowledge") towards ``1 / num_classes``.

    Args:
        logits: ``(B, num_classes)``.
        temperature: ``T > 0``.
    """
    _check_temperature(temperature)
    if not isinstance(logits, Tensor) or logits.ndim != 2:
        raise ValueError(f"logits must be a (B, num_classes) tensor, got "
                         f"{tuple(logits.shape) if isinstance(logits, Tensor) else logits!r}")
    return F.softmax(logits / temperature, dim=1)


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor,
                      temperature: float = 4.0, alpha: float = 0.5) -> Tensor:
    """Hinton et al.'s loss: hard cross-entropy plus the ``T^2``-scaled soft KL divergence.

    ``L = alpha * CE(z_s, y) + (1 - alpha) * T^2 * KL(p_t || p_s)`` with
    ``p = softmax(z / T)``, the KL summed over classes and averaged over the batch
    (``reduction="batchmean"``). ``alpha = 1`` is plain training on labels, ``alpha = 0``
    pure distillation. The teacher's logits are treated as constants.

    Gradient of the soft term with respect to a student logit, per sample (``N`` classes):
    ``d(T^2 KL)/dz_s,i = T * (p_s,i - p_t,i)``. For ``T`` large against the logits,
    ``p_i ~ (1 + (z_i - mean(z)) / T) / N``, so it tends to
    ``((z_s,i - mean z_s) - (z_t,i - mean z_t)) / N``, and for zero-mean logits to
    ``(z_s,i - z_t,i) / N``: at high temperature distillation is logit matching (Hinton
    et al., section 2.1), and the ``T^2`` keeps that gradient's size independent of ``T``.
    Averaged over a batch of ``B``, each gradient is further divided by ``B``.

    Args:
        student_logits: ``(B, N)``.
        teacher_logits: ``(B, N)``; detached.
        labels: ``(B,)`` class indices.
        temperature: ``T > 0``; Hinton et al. used 1 to 20 (lower for smaller students).
        alpha: weight of the hard loss, in [0, 1].

    Raises:
        ValueError: a bad temperature or alpha, or logits whose shapes differ (naming both
            class counts).
    """
    check_tensor("student_logits", student_logits)
    check_tensor("teacher_logits", teacher_logits)
    check_tensor("labels", labels)
    _check_temperature(temperature)
    _check_alpha(alpha)
    if student_logits.ndim != 2 or teacher_logits.ndim != 2:
        raise ValueError(f"student_logits and teacher_logits must be (B, num_classes), got "
                         f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    if student_logits.shape[1] != teacher_logits.shape[1]:
        raise ValueError(f"student_logits has {student_logits.shape[1]} classes but "
                         f"teacher_logits has {teacher_logits.shape[1]}: the student must "
                         f"predict the teacher's classes")
    if student_logits.shape[0] != teacher_logits.shape[0] or labels.shape != (len(student_logits),):
        raise ValueError(f"batch sizes differ: student_logits {tuple(student_logits.shape)}, "
                         f"teacher_logits {tuple(teacher_logits.shape)}, labels "
                         f"{tuple(labels.shape)}")
    hard = F.cross_entropy(student_logits, labels)
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    # KL(p_t || p_s) = sum_i p_t,i (log p_t,i - log p_s,i), averaged over the batch
    soft = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    # scale the soft loss by T**2 so its gradients keep the size of the hard loss
    return alpha * hard + (1 - alpha) * temperature ** 2 * soft


def _check_features(features: Tensor, argument: str) -> None:
    if not isinstance(features, Tensor) or features.ndim != 4:
        raise ValueError(f"{argument} must be a (B, C, H, W) feature map, got "
                         f"{tuple(features.shape) if isinstance(features, Tensor) else features!r}")


def attention_map(features: Tensor, p: float = 2.0) -> Tensor:
    """Zagoruyko & Komodakis's activation-based spatial attention, flattened and normalized.

    ``Q = vec(mean_c |A_c|^p) / ||vec(mean_c |A_c|^p)||_2``: one value per position, how
    strongly all channels fire there (the paper's ``F_sum^p``; the mean over channels
    differs from their sum by a constant that the normalization removes).

    Args:
        features: ``(B, C, H, W)``.
        p: the power; the paper uses 2.

    Returns:
        ``(B, H * W)``, each row of unit L2 norm.
    """
    _check_features(features, "features")
    check_float("p", p, 0, low_open=True)
    # (B, C, H, W) -> (B, H, W) -> (B, H*W)
    return F.normalize(features.abs().pow(p).mean(1).flatten(1), dim=1)


def attention_transfer_loss(student_features: Tensor, teacher_features: Tensor,
                            p: float = 2.0) -> Tensor:
    """Squared distance of two attention maps, as the authors' code computes it.

    ``mean over batch and positions of (Q_s - Q_t)^2``, i.e.
    ``sum_b ||Q_s,b - Q_t,b||_2^2 / (B * H * W)``. The paper writes the (unsquared) norm
    ``||Q_s - Q_t||_p``; its code (``at_loss`` in szagoruyko/attention-transfer), and every
    result it reports, use this mean square, weighted by ``beta / 2`` per pair of layers
    with ``beta = 1000`` (see :class:`Distiller`). Channel counts may differ. When the
    spatial sizes differ, the larger map is average-pooled to the smaller size first.

    Args:
        student_features: ``(B, C_s, H_s, W_s)``.
        teacher_features: ``(B, C_t, H_t, W_t)``.
        p: the power of :func:`attention_map`.
    """
    _check_features(student_features, "student_features")
    _check_features(teacher_features, "teacher_features")
    check_float("p", p, 0, low_open=True)
    s_size, t_size = student_features.shape[-2:], teacher_features.shape[-2:]
    if s_size != t_size:
        smaller = (min(s_size[0], t_size[0]), min(s_size[1], t_size[1]))
        student_features = F.adaptive_avg_pool2d(student_features, smaller)
        teacher_features = F.adaptive_avg_pool2d(teacher_features, smaller)
    q_s = attention_map(student_features, p)
    q_t = attention_map(teacher_features.detach(), p)
    return (q_s - q_t).pow(2).mean()


def hint_loss(student_features: Tensor, teacher_features: Tensor, regressor: nn.Module
              ) -> Tensor:
    """FitNets' hint loss: mean squared error between ``regressor(student)`` and the teacher.

    ``mean((r(pool(v)) - u)^2)``: ``v`` is the student's guided layer, ``u`` the teacher's
    hint layer, ``r`` a learned 1x1 conv from the student's channels to the teacher's, and
    ``pool`` an adaptive average pool to the teacher's spatial size (identity when the
    sizes agree; a 1x1 conv commutes with it, so pooling first is just cheaper). FitNets
    write half the *summed* square; the mean only rescales the loss weight.

    Args:
        student_features: ``(B, C_s, H_s, W_s)``.
        teacher_features: ``(B, C_t, H_t, W_t)``; detached.
        regressor: maps ``C_s`` channels to ``C_t``.
    """
    _check_features(student_features, "student_features")
    _check_features(teacher_features, "teacher_features")
    check_callable("regressor", regressor)
    if student_features.shape[-2:] != teacher_features.shape[-2:]:
        student_features = F.adaptive_avg_pool2d(student_features, teacher_features.shape[-2:])
    guess = regressor(student_features)
    if guess.shape != teacher_features.shape:
        raise ValueError(f"regressor maps the student's features to {tuple(guess.shape)}, "
                         f"but teacher_features are {tuple(teacher_features.shape)}")
    return F.mse_loss(guess, teacher_features.detach())


class FeatureHooks:
    """Capture the outputs of named submodules during a forward pass, without editing the model.

    ``hooks.outputs[name]`` is the output of ``model.get_submodule(name)`` in the latest
    forward pass (of its last call, if the module runs more than once). A layer followed
    by an in-place activation (``ReLU(inplace=True)``) has its output overwritten by it:
    hook the block that contains both. Use as a context manager, or call :meth:`remove`.

    Example::

        with FeatureHooks(model, ["features.4"]) as hooks:
            model(x)
        hooks.outputs["features.4"].shape     # (B, C, H, W)

    Args:
        model: the network to observe.
        names: submodule names, as in ``model.named_modules()``.
        argument: the caller's name for ``names`` in error messages.

    Raises:
        ValueError: a name that is not a submodule of ``model`` (the message lists some
            that are).
    """

    def __init__(self, model: nn.Module, names: Sequence[str], argument: str = "names"):
        check_str("argument", argument)
        check_module("model", model)
        if isinstance(names, str):
            raise ValueError(f"{argument} must be a sequence of layer names, got the string "
                             f"{names!r} (write [{names!r}])")
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise TypeError(f"{argument} must be a list or tuple of layer names (str), got "
                            f"{type(names).__name__}: {names!r}")
        known = dict(model.named_modules())
        unknown = [n for n in names if n not in known or n == ""]
        if unknown:
            examples = [n for n in known if n][:12]
            raise ValueError(f"{argument}: {unknown} are not submodules of "
                             f"{type(model).__name__}; its submodules include {examples}")
        self.outputs: dict[str, Tensor] = {}
        self._handles = [model.get_submodule(n).register_forward_hook(self._keeper(n))
                         for n in dict.fromkeys(names)]  # each name once, in order

    def _keeper(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            self.outputs[name] = output
        return hook

    def remove(self) -> None:
        """Detach every hook; the outputs captured so far stay readable."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> "FeatureHooks":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _check_layer_pairs(pairs: Mapping[str, str] | None, argument: str) -> dict[str, str]:
    if pairs is None:
        return {}
    if not isinstance(pairs, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in pairs.items()):
        raise ValueError(f"{argument} must map student layer names to teacher layer names "
                         f"(a dict of str to str), got {pairs!r}")
    # sorted: the zoo's key ignores the order, so the regressors' creation must too
    return dict(sorted(pairs.items()))


def _check_weight(value: float, argument: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value < 0:
        raise ValueError(f"{argument} must be a finite number >= 0, got {value!r}")


class DistillationLoss(nn.Module):
    """:func:`distillation_loss` as a loss module, for a loop that runs both networks.

    ``criterion = DistillationLoss(temperature=4.0, alpha=0.5)``, then per batch
    ``loss = criterion(student(x), teacher_logits, y)`` with the teacher's logits computed
    under ``torch.no_grad()`` (or cached): the counterpart of ``nn.CrossEntropyLoss``.
    For hints, attention transfer or a teacher run for you, use :class:`Distiller`.

    Raises:
        ValueError: a bad temperature or alpha.
    """

    def __init__(self, temperature: float = 4.0, alpha: float = 0.5):
        super().__init__()
        _check_temperature(temperature)
        _check_alpha(alpha)
        self.temperature, self.alpha = float(temperature), float(alpha)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, y: Tensor) -> Tensor:
        return distillation_loss(student_logits, teacher_logits, y, self.temperature,
                                 self.alpha)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}"


class Distiller(nn.Module):
    """A student to train with ``lc.fit`` against a frozen teacher: logits, hints, attention.

    ``forward(x)`` is the student's, and ``parameters()`` are the student's plus the FitNets
    regressors', so ``lc.fit(distiller, loader, epochs, loss_fn=distiller.loss_fn)``
    trains both with one optimizer (the regressors are thrown away afterwards; only
    ``distiller.student`` is kept). The teacher is held outside the module registry: it is
    not in ``parameters()`` or ``state_dict()``, ``fit``'s ``model.train()`` does not
    reach it, and :meth:`loss_fn` runs it in eval mode under ``torch.no_grad()``, so its
    weights and batch-norm statistics never change.

    The loss per batch::

        distillation_loss(z_s, z_t, y, temperature, alpha)
          + hint_weight * sum over hints of hint_loss(student layer, teacher layer)
          + beta / 2 * sum over attention pairs of attention_transfer_loss(...)

    FitNets train in two stages (hints first, then distillation); this is the one-stage
    variant most reimplementations use.

    In a loop of one's own it is the loss module: ``loss = distiller(x, y)`` (``forward``
    with labels returns the loss above), with an optimizer over ``distiller.parameters()``.
    Under ``torchrun`` wrap the distiller itself in DDP and call the wrapper the same way,
    so that the whole loss, regressors included, runs inside DDP's forward pass.

    Args:
        student: the network to train.
        teacher: the trained network to learn from; set to eval mode.
        temperature: ``T > 0`` of the soft targets.
        alpha: weight of the hard (label) loss, in [0, 1].
        hints: ``{student layer: teacher layer}`` pairs for FitNets hints; each gets a 1x1
            conv regressor from the student's channels to the teacher's.
        hint_weight: weight of the hint losses, >= 0.
        attention: ``{student layer: teacher layer}`` pairs for attention transfer.
        beta: weight of the attention losses, >= 0 (the paper's 1000).
        input_shape: the shape of one input, for one dry forward pass at construction that
            finds channel counts (for the regressors) and class counts.

    Raises:
        ValueError: a bad temperature, alpha or weight; a layer name that is not a
            submodule; a hint or attention layer whose output is not a 4-D feature map;
            student and teacher that predict different numbers of classes.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, temperature: float = 4.0,
                 alpha: float = 0.5, hints: Mapping[str, str] | None = None,
                 hint_weight: float = 1.0, attention: Mapping[str, str] | None = None,
                 beta: float = 1000.0, input_shape: tuple[int, ...] = (1, 28, 28)):
        super().__init__()
        check_module("student", student)
        check_module("teacher", teacher)
        _check_temperature(temperature)
        _check_alpha(alpha)
        _check_weight(hint_weight, "hint_weight")
        _check_weight(beta, "beta")
        check_ints("input_shape", input_shape, 1)
        self.hints = _check_layer_pairs(hints, "hints")
        self.attention = _check_layer_pairs(attention, "attention")
        for argument, pairs in (("hints", self.hints), ("attention", self.attention)):
            FeatureHooks(student, list(pairs), f"{argument} (student layers)").remove()
            FeatureHooks(teacher, list(pairs.values()), f"{argument} (teacher layers)").remove()
        self.temperature, self.alpha = float(temperature), float(alpha)
        self.hint_weight, self.beta = float(hint_weight), float(beta)
        self.student = student
        # stored outside nn.Module's registry: not in parameters() (never optimized), not in
        # state_dict(), and fit's model.train() does not switch it to training mode
        self.__dict__["teacher"] = teacher.eval()
        self._student_layers = list(dict.fromkeys([*self.hints, *self.attention]))
        self._teacher_layers = list(dict.fromkeys([*self.hints.values(),
                                                   *self.attention.values()]))
        s_out, t_out, s_logits, t_logits = self._dry_run(input_shape)
        if s_logits.shape[1] != t_logits.shape[1]:
            raise ValueError(f"student predicts {s_logits.shape[1]} classes but teacher "
                             f"predicts {t_logits.shape[1]}: they must agree")
        for s_name, t_name in [*self.hints.items(), *self.attention.items()]:
            _check_features(s_out[s_name], f"student layer {s_name!r}'s output")
            _check_features(t_out[t_name], f"teacher layer {t_name!r}'s output")
        # one 1x1 conv per hint, student channels -> teacher channels (a list: module
        # names hold dots, which nn.ModuleDict keys may not)
        self.regressors = nn.ModuleList(
            nn.Conv2d(s_out[s].shape[1], t_out[t].shape[1], kernel_size=1)
            for s, t in self.hints.items())

    @torch.no_grad()
    def _dry_run(self, input_shape: tuple[int, ...]):
        was_training = self.student.training
        self.student.eval()  # eval: a dry batch must not move batch-norm statistics
        x = torch.zeros(2, *input_shape)
        with FeatureHooks(self.student, self._student_layers) as s_hooks, \
                FeatureHooks(self.teacher, self._teacher_layers) as t_hooks:
            s_logits, t_logits = self.student(x), self.teacher(x)
        self.student.train(was_training)
        return s_hooks.outputs, t_hooks.outputs, s_logits, t_logits

    @property
    def settings(self) -> dict:
        """What changes the trained student (used in the zoo's cache key); weights of
        absent terms are left out."""
        settings = {"temperature": self.temperature, "alpha": self.alpha}
        if self.hints:
            settings.update(hints=self.hints, hint_weight=self.hint_weight)
        if self.attention:
            settings.update(attention=self.attention, beta=self.beta)
        return settings

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The student's logits ``(B, num_classes)``; with ``y``, the batch loss instead
        (see :meth:`loss_fn` for ``y``'s two forms)."""
        if y is None:
            return self.student(x)
        return self._loss(x, y, self.student)

    def loss_fn(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The batch loss, for ``fit(..., loss_fn=distiller.loss_fn)``.

        Args:
            model: this distiller (or its student, when there are no regressors to train),
                or either wrapped in DDP (``lc.fit`` under ``torchrun``), whose forward
                pass then computes the loss.
            x: ``(B, *input_shape)``.
            y: ``(B,)`` labels, or ``(B, 1 + num_classes)`` targets carrying the teacher's
                cached logits (:func:`with_teacher_logits`).
        """
        if isinstance(model, DistributedDataParallel) and model.module is self:
            return model(x, y)   # the loss inside DDP's forward: gradients get averaged
        if isinstance(model, DistributedDataParallel) and model.module is self.student \
                and not self.hints:
            return self._loss(x, y, model)
        if model is not self and not (model is self.student and not self.hints):
            raise ValueError("model: pass the Distiller itself to fit, so that fit's "
                             "optimizer trains its hint regressors too")
        return self._loss(x, y, self.student)

    def _loss(self, x: Tensor, y: Tensor, student: nn.Module) -> Tensor:
        """The loss of the class docstring, the student's logits from ``student(x)`` (the
        student, or a DDP wrapper of it)."""
        labels, cached = split_targets(y)
        self.teacher.eval()  # in case the caller switched it back to training
        # the teacher must run for its features even when its logits are cached
        run_teacher = cached is None or bool(self._teacher_layers)
        if run_teacher:
            # fit moves the Distiller (student, regressors) to its device, not the teacher
            self.teacher.to(x.device)
        with FeatureHooks(self.student, self._student_layers) as s_hooks, \
                FeatureHooks(self.teacher, self._teacher_layers) as t_hooks:
            student_logits = student(x)
            if run_teacher:
                with torch.no_grad():
                    teacher_logits = self.teacher(x)
        if cached is not None:
            teacher_logits = cached
        loss = distillation_loss(student_logits, teacher_logits, labels, self.temperature,
                                 self.alpha)
        for (s_name, t_name), regressor in zip(self.hints.items(), self.regressors):
            loss = loss + self.hint_weight * hint_loss(
                s_hooks.outputs[s_name], t_hooks.outputs[t_name], regressor)
        for s_name, t_name in self.attention.items():
            loss = loss + self.beta / 2 * attention_transfer_loss(
                s_hooks.outputs[s_name], t_hooks.outputs[t_name])
        return loss


def split_targets(y: Tensor) -> tuple[Tensor, Tensor | None]:
    """``(labels, cached teacher logits or None)`` from a batch's targets.

    A target row of :class:`TeacherLogitsDataset` is ``[label, z_t,0, ..., z_t,N-1]``
    (the label as a float, exact below 2**24), so that ``fit``'s ``len(y)`` still counts
    the batch; plain ``(B,)`` labels carry no logits.
    """
    check_tensor("y", y)
    if y.ndim == 1:
        return y, None
    if y.ndim == 2 and y.shape[1] >= 2:
        return y[:, 0].long(), y[:, 1:]
    raise ValueError(f"y must be (B,) labels or (B, 1 + num_classes) targets, got "
                     f"{tuple(y.shape)}")


def _augments(dataset: Dataset) -> bool:
    # look through wrappers (Subset, TeacherLogitsDataset) for an augment flag
    while dataset is not None:
        if getattr(dataset, "augment", False):
            return True
        dataset = getattr(dataset, "dataset", None)
    return False


@torch.no_grad()
def cache_teacher_logits(teacher: nn.Module, dataset: Dataset, batch_size: int = 1000
                         ) -> Tensor:
    """The teacher's logits on every item of ``dataset``, in order: ``(len(dataset), N)``.

    Runs the teacher once in eval mode. Only valid when the items do not change between
    epochs: a dataset with ``augment=True`` (here or in a dataset it wraps) is refused.

    Raises:
        ValueError: the dataset augments, or ``batch_size`` is not a positive int.
    """
    check_module("teacher", teacher)
    _check_dataset("dataset", dataset)
    if len(dataset) == 0:
        raise ValueError("dataset must hold at least one item, got an empty dataset")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if _augments(dataset):
        raise ValueError("dataset augments its images (augment=True), so the teacher's "
                         "logits change every epoch: run the teacher on each batch instead")
    teacher.eval()
    return torch.cat([teacher(x) for x, _ in DataLoader(dataset, batch_size=batch_size)])


class TeacherLogitsDataset(Dataset):
    """Items ``(x, [y, z_t])`` of ``dataset`` with the teacher's cached logits appended to
    the label (see :func:`split_targets`)."""

    def __init__(self, dataset: Dataset, logits: Tensor):
        _check_dataset("dataset", dataset)
        check_tensor("logits", logits)
        if logits.ndim != 2 or len(logits) != len(dataset):
            raise ValueError(f"logits must be (len(dataset), num_classes) = "
                             f"({len(dataset)}, N), got {tuple(logits.shape)}")
        self.dataset, self.logits = dataset, logits.detach()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x, y = self.dataset[i]
        label = torch.as_tensor(y, dtype=self.logits.dtype).reshape(1)
        return x, torch.cat([label, self.logits[i]])


def with_teacher_logits(loader: DataLoader, teacher: nn.Module, batch_size: int = 1000,
                        logits: Tensor | None = None) -> DataLoader:
    """``loader`` again, its targets carrying the teacher's logits computed once.

    The new loader shuffles with the same generator, so with the same seed it yields the
    same batches in the same order, and :meth:`Distiller.loss_fn` skips the teacher's
    forward pass (the bulk of a large teacher's cost) in every epoch.

    Args:
        loader: batches of ``(x, y)`` over a dataset that does not augment.
        teacher: run once over ``loader.dataset`` (unless ``logits`` are given).
        batch_size: the teacher's batch size for that pass.
        logits: the teacher's logits on ``loader.dataset`` from an earlier
            :func:`cache_teacher_logits` (several students, one teacher pass).

    Raises:
        ValueError: the loader's dataset augments (the teacher must then see each
            augmented batch), the loader has no fixed batch size, or ``logits`` has not
            one row per item.
    """
    check_instance("loader", loader, DataLoader, "a torch DataLoader")
    check_module("teacher", teacher)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    check_tensor("logits", logits, none=True)
    if loader.batch_size is None:
        raise ValueError("loader must have a fixed batch_size (no custom batch_sampler)")
    if logits is None:
        logits = cache_teacher_logits(teacher, loader.dataset, batch_size)
    elif _augments(loader.dataset):
        raise ValueError("dataset augments its images (augment=True), so cached logits "
                         "would be stale: run the teacher on each batch instead")
    return DataLoader(TeacherLogitsDataset(loader.dataset, logits),
                      batch_size=loader.batch_size,
                      shuffle=isinstance(loader.sampler, RandomSampler),
                      generator=loader.generator, num_workers=loader.num_workers,
                      drop_last=loader.drop_last)


def distill(student: nn.Module, teacher: nn.Module, train_loader: DataLoader, epochs: int,
            test_loader: DataLoader | None = None, *, temperature: float = 4.0,
            alpha: float = 0.5, hints: Mapping[str, str] | None = None,
            hint_weight: float = 1.0, attention: Mapping[str, str] | None = None,
            beta: float = 1000.0, input_shape: tuple[int, ...] = (1, 28, 28),
            cache_logits: bool | None = None, **fit_kwargs) -> History:
    """Train ``student`` in place on what ``teacher`` outputs; return ``lc.fit``'s History.

    The one-call form of ``lc.fit(Distiller(...), loader, epochs,
    loss_fn=distiller.loss_fn)``: builds the :class:`Distiller`, runs the teacher once over
    the training set when its images do not change between epochs, and trains the student
    (and any hint regressors, which are then dropped).

    Args:
        student: the network to train (in place).
        teacher: the trained network; left unchanged (eval mode, no gradient).
        train_loader: the transfer set, batches of ``(x, y)``.
        epochs: passes over ``train_loader``.
        test_loader: scored after every epoch when given.
        temperature, alpha, hints, hint_weight, attention, beta, input_shape: see
            :class:`Distiller`.
        cache_logits: run the teacher once and reuse its logits in every epoch; ``None``
            (default) does so exactly when the loader does not augment its images.
            ``True`` with an augmenting loader is refused, since the logits would be stale.
        **fit_kwargs: passed to ``lc.fit`` (lr, weight_decay, optimizer, schedule, seed,
            progress, after_step, device); not ``loss_fn``, which is the distiller's.

    Raises:
        ValueError: bad distillation settings (see :class:`Distiller`), ``cache_logits=True``
            with augmented data, or a ``loss_fn`` in ``fit_kwargs``.
    """
    check_module("student", student)
    check_module("teacher", teacher)
    check_instance("train_loader", train_loader, DataLoader, "a torch DataLoader")
    check_int("epochs", epochs, 1)
    check_instance("test_loader", test_loader, DataLoader, "a torch DataLoader", none=True)
    if "loss_fn" in fit_kwargs:
        raise ValueError("fit_kwargs: loss_fn is the distiller's; drop it")
    if cache_logits is not None and not isinstance(cache_logits, bool):
        raise TypeError(f"cache_logits must be None, True or False, got {cache_logits!r}")
    distiller = Distiller(student, teacher, temperature, alpha, hints, hint_weight,
                          attention, beta, input_shape)
    augments = _augments(train_loader.dataset)
    if cache_logits and augments:
        raise ValueError("cache_logits=True but train_loader augments its images, so the "
                         "teacher's logits change every epoch: pass cache_logits=None")
    if cache_logits or (cache_logits is None and not augments):
        train_loader = with_teacher_logits(train_loader, teacher)
    return fit(distiller, train_loader, epochs, test_loader, loss_fn=distiller.loss_fn,
               **fit_kwargs)


def without_class(dataset: Dataset, class_index: int) -> Subset:
    """The items of ``dataset`` whose label is not ``class_index``: Hinton et al.'s transfer
    set with one class left out (section 3: no 3s in the MNIST transfer set)."""
    _check_dataset("dataset", dataset)
    if isinstance(class_index, bool) or not isinstance(class_index, int) or class_index < 0:
        raise ValueError(f"class_index must be an int >= 0, got {class_index!r}")
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])
    if not (labels == class_index).any():
        raise ValueError(f"class_index {class_index} does not occur in dataset's labels")
    return Subset(dataset, torch.nonzero(labels != class_index).flatten().tolist())


def balancing_bias(logits: Tensor, class_index: int, fraction: float | None = None) -> float:
    """The shift of one class's logit that makes it the prediction for ``fraction`` of inputs.

    Adding ``delta`` to logit ``c`` predicts ``c`` for input ``i`` exactly when
    ``delta > m_i = max_{j != c} z_ij - z_ic``, so with the margins sorted,
    ``m_(1) <= ... <= m_(n)``, and ``k = round(fraction * n)``, any ``delta`` in
    ``(m_(k), m_(k+1)]`` gives ``k`` such predictions; this returns the midpoint (or one
    logit beyond the end when ``k`` is 0 or ``n``). This is the bias correction of Hinton
    et al.'s missing-class experiment chosen without labels: they raised the left-out
    class's bias by 3.5, tuned on test data; here its predicted frequency is matched to
    its prior (``1 / num_classes`` by default, Fashion-MNIST's).

    Args:
        logits: ``(n, num_classes)`` of the student on unlabelled inputs.
        class_index: the class whose bias to raise.
        fraction: wanted fraction of predictions of that class, in [0, 1].
    """
    check_tensor("logits", logits)
    check_float("fraction", fraction, none=True)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be (n, num_classes >= 2), got {tuple(logits.shape)}")
    n, num_classes = logits.shape
    if isinstance(class_index, bool) or not isinstance(class_index, int) \
            or not 0 <= class_index < num_classes:
        raise ValueError(f"class_index must be an int in [0, {num_classes}), got {class_index!r}")
    fraction = 1 / num_classes if fraction is None else fraction
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    others = torch.cat([logits[:, :class_index], logits[:, class_index + 1:]], dim=1)
    margins = (others.max(1).values - logits[:, class_index]).sort().values
    k = round(fraction * n)
    if k == 0:
        return float(margins[0] - 1)
    if k == n:
        return float(margins[-1] + 1)
    return float((margins[k - 1] + margins[k]) / 2)


def raise_class_bias(model: nn.Module, class_index: int, delta: float,
                     layer: str | None = None) -> nn.Module:
    """A copy of ``model`` whose classifier bias for ``class_index`` is raised by ``delta``.

    Every logit of that class grows by ``delta``; the others do not change.

    Args:
        model: left unchanged.
        class_index: the output to shift.
        delta: added to its bias.
        layer: the name of the final layer; default the last ``nn.Linear``.

    Raises:
        ValueError: no such layer, a layer without a bias, or a class_index out of range.
    """
    check_module("model", model)
    check_float("delta", delta)
    check_str("layer", layer, none=True)
    model = copy.deepcopy(model)
    if layer is None:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError("model has no nn.Linear layer; name the final layer in layer")
        final = linears[-1]
    else:
        FeatureHooks(model, [layer], "layer").remove()
        final = model.get_submodule(layer)
    bias = getattr(final, "bias", None)
    if not isinstance(bias, Tensor):
        raise ValueError(f"layer {layer or type(final).__name__!r} has no bias to raise")
    if isinstance(class_index, bool) or not isinstance(class_index, int) \
            or not 0 <= class_index < len(bias):
        raise ValueError(f"class_index must be an int in [0, {len(bias)}), got {class_index!r}")
    with torch.no_grad():
        bias[class_index] += delta
    return model
