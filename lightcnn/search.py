"""Architecture search: random search and regularized evolution under a MACs budget.

Zoph & Le, "Neural Architecture Search with Reinforcement Learning", arXiv 1611.01578
(the problem). Li & Talwalkar, "Random Search and Reproducibility for Neural Architecture
Search", arXiv 1902.07638 (random search is a strong baseline). Real et al., "Regularized
Evolution for Image Classifier Architecture Search", arXiv 1802.01548 (tournament
selection with aging).

An architecture is one row per stage, ``(depth, width, kernel, expansion)``: ``depth``
inverted-residual blocks of ``width`` output channels with a ``kernel`` x ``kernel``
depthwise convolution and expansion ratio ``expansion``; each stage after the first
halves the resolution. A search spends its evaluations only on architectures within the
MACs budget (others are redrawn, which costs a MAC count, not a training). The score of
an architecture comes from a caller-supplied ``evaluate`` function, in the book a short
*proxy* training (few epochs) that ranks architectures roughly as full training would.

Regularized evolution keeps a population of the most recent ``population`` architectures.
Each cycle samples ``sample_size`` of them, mutates the best of the sample (one field of
one stage), evaluates the child, adds it and removes the *oldest* member (aging: a lucky
early score cannot dominate forever).

Taught in chapters/02_design_principles.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ._checks import (check_callable, check_float, check_instance, check_int, check_ints,
                      check_sequence)
from .blocks import ConvBNAct, InvertedResidual
from .models import register_model
from .profile import count_macs

__all__ = ["SearchSpace", "Trial", "build_searched", "searched_cnn", "sample_architecture", "mutate",
           "random_search", "evolutionary_search"]

Architecture = tuple[tuple[int, int, int, int], ...]
FIELDS = ("depth", "width", "kernel", "expansion")


@dataclass(frozen=True)
class SearchSpace:
    """The choices for every stage; an architecture picks one value of each per stage.

    With the defaults: (3 * 4 * 2 * 3) ** 3 = 373,248 architectures.
    """

    depths: tuple[int, ...] = (1, 2, 3)
    widths: tuple[int, ...] = (16, 24, 32, 48)
    kernels: tuple[int, ...] = (3, 5)
    expansions: tuple[int, ...] = (1, 3, 6)
    stages: int = 3
    stem_width: int = 16

    def __post_init__(self):
        for name in ("depths", "widths", "kernels", "expansions"):
            values = getattr(self, name)
            check_ints(name, values, 1)
            if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                                 for v in values):
                raise ValueError(f"{name} must be a non-empty tuple of positive ints, got {values!r}")
        if any(k % 2 == 0 for k in self.kernels):
            raise ValueError(f"kernels must be odd (symmetric padding), got {self.kernels!r}")
        if not isinstance(self.stages, int) or self.stages < 1:
            raise ValueError(f"stages must be a positive int, got {self.stages!r}")
        check_int("stem_width", self.stem_width, 1)

    def choices(self, field: str) -> tuple[int, ...]:
        """The values allowed for one of ``FIELDS``."""
        return getattr(self, field + "s")

    @property
    def size(self) -> int:
        """Number of distinct architectures."""
        per_stage = len(self.depths) * len(self.widths) * len(self.kernels) * len(self.expansions)
        return per_stage ** self.stages


@dataclass(frozen=True)
class Trial:
    """One evaluated architecture: its score, its MACs, and when it was evaluated."""

    architecture: Architecture
    score: float
    macs: int
    step: int

    def __post_init__(self):
        _check_architecture(self.architecture)
        check_float("score", self.score)
        check_int("macs", self.macs, 0)
        check_int("step", self.step, 0)


def build_searched(architecture: Architecture, num_classes: int = 10, in_channels: int = 1,
                   stem_width: int = 16) -> nn.Module:
    """The network an architecture describes: a 3x3 stem, the stages, pooling, linear.

    Stage ``i > 0`` starts with a stride-2 block (28 -> 14 -> 7 for three stages).
    Blocks are MobileNetV2 inverted residuals (ReLU6, linear bottleneck, residual where
    shapes allow).
    """
    _check_architecture(architecture)
    check_int("num_classes", num_classes, 1)
    check_int("in_channels", in_channels, 1)
    check_int("stem_width", stem_width, 1)
    layers: list[nn.Module] = [ConvBNAct(in_channels, stem_width, 3)]
    channels = stem_width
    for i, (depth, width, kernel, expansion) in enumerate(architecture):
        for j in range(depth):
            stride = 2 if i > 0 and j == 0 else 1
            layers.append(InvertedResidual(channels, width, channels * expansion, kernel, stride,
                                           activation=nn.ReLU6))
            channels = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(channels, num_classes))


@register_model
def searched_cnn(architecture: Architecture = ((1, 16, 3, 1), (2, 24, 3, 3), (2, 48, 3, 3)),
                 num_classes: int = 10, **kwargs) -> nn.Module:
    """``build_searched`` as a registered model, so that ``lc.zoo.get_trained("searched_cnn",
    architecture=...)`` trains a found architecture fully and caches it."""
    # JSON (the zoo's cache key) turns tuples into lists; accept both spellings
    _check_architecture(architecture)
    return build_searched(tuple(tuple(stage) for stage in architecture), num_classes, **kwargs)


def _check_architecture(architecture: Architecture) -> None:
    check_sequence("architecture", architecture)
    if not architecture or any(not isinstance(stage, (tuple, list)) or len(stage) != 4
                               or not all(isinstance(v, int) and not isinstance(v, bool)
                                          and v >= 1 for v in stage)
                               for stage in architecture):
        raise ValueError("architecture must be a non-empty tuple of (depth, width, kernel, "
                         f"expansion) rows, got {architecture!r}")


def sample_architecture(space: SearchSpace, rng: random.Random) -> Architecture:
    """A uniformly random architecture of ``space``."""
    _check_space(space, rng)
    return tuple(tuple(rng.choice(space.choices(f)) for f in FIELDS) for _ in range(space.stages))


def mutate(architecture: Architecture, space: SearchSpace, rng: random.Random) -> Architecture:
    """Change one field of one stage to a different allowed value (a one-step neighbour)."""
    _check_architecture(architecture)
    _check_space(space, rng)
    stage = rng.randrange(len(architecture))
    # only fields with an alternative value can change
    fields = [i for i, f in enumerate(FIELDS) if len(space.choices(f)) > 1]
    if not fields:
        raise ValueError("the search space has a single architecture; nothing to mutate")
    field = rng.choice(fields)
    row = list(architecture[stage])
    row[field] = rng.choice([v for v in space.choices(FIELDS[field]) if v != row[field]])
    return architecture[:stage] + (tuple(row),) + architecture[stage + 1:]


def _macs(architecture: Architecture, space: SearchSpace, input_shape: tuple[int, int, int]) -> int:
    return count_macs(build_searched(architecture, in_channels=input_shape[0],
                                     stem_width=space.stem_width), input_shape)


def _check_space(space: SearchSpace, rng: random.Random) -> None:
    check_instance("space", space, SearchSpace)
    check_instance("rng", rng, random.Random, "a random.Random")


def _check_search(space: SearchSpace, evaluate: Callable, macs_budget: int, evaluations: int,
                  seed: int, input_shape: tuple[int, int, int]) -> None:
    check_instance("space", space, SearchSpace)
    check_callable("evaluate", evaluate)
    check_int("seed", seed, 0)
    check_ints("input_shape", input_shape, 1, length=3)
    if isinstance(macs_budget, bool) or not isinstance(macs_budget, int) or macs_budget < 1:
        raise ValueError(f"macs_budget must be a positive int, got {macs_budget!r}")
    if isinstance(evaluations, bool) or not isinstance(evaluations, int) or evaluations < 1:
        raise ValueError(f"evaluations must be a positive int, got {evaluations!r}")


def _draw_within_budget(draw: Callable[[], Architecture], space: SearchSpace, macs_budget: int,
                        input_shape: tuple[int, int, int], max_tries: int = 200
                        ) -> tuple[Architecture, int]:
    for _ in range(max_tries):
        architecture = draw()
        macs = _macs(architecture, space, input_shape)
        if macs <= macs_budget:
            return architecture, macs
    raise ValueError(f"no architecture within macs_budget={macs_budget:,d} found in "
                     f"{max_tries} draws; raise the budget or shrink the search space")


def random_search(space: SearchSpace, evaluate: Callable[[Architecture], float], macs_budget: int,
                  evaluations: int, seed: int = 0,
                  input_shape: tuple[int, int, int] = (1, 28, 28)) -> list[Trial]:
    """Evaluate ``evaluations`` random architectures within ``macs_budget``.

    Returns:
        The trials in evaluation order; the best is ``max(trials, key=lambda t: t.score)``.
    """
    _check_search(space, evaluate, macs_budget, evaluations, seed, input_shape)
    rng = random.Random(seed)
    trials = []
    for step in range(evaluations):
        architecture, macs = _draw_within_budget(lambda: sample_architecture(space, rng), space,
                                                 macs_budget, input_shape)
        trials.append(Trial(architecture, float(evaluate(architecture)), macs, step))
    return trials


def evolutionary_search(space: SearchSpace, evaluate: Callable[[Architecture], float],
                        macs_budget: int, evaluations: int, population: int = 8,
                        sample_size: int = 3, seed: int = 0,
                        input_shape: tuple[int, int, int] = (1, 28, 28)) -> list[Trial]:
    """Regularized evolution (Real et al. 2019) within ``macs_budget``.

    The first ``population`` evaluations are random architectures; every later one is a
    mutation of the best of ``sample_size`` members drawn from the population, which
    then drops its oldest member.

    Returns:
        Every trial in evaluation order (``evaluations`` of them).
    """
    _check_search(space, evaluate, macs_budget, evaluations, seed, input_shape)
    if isinstance(population, bool) or not isinstance(population, int) or population < 2:
        raise ValueError(f"population must be an int >= 2, got {population!r}")
    if not isinstance(sample_size, int) or not 1 <= sample_size <= population:
        raise ValueError(f"sample_size must be an int in [1, population={population}], "
                         f"got {sample_size!r}")
    rng = random.Random(seed)
    alive: deque[Trial] = deque()
    trials: list[Trial] = []
    for step in range(evaluations):
        if step < population:
            draw = lambda: sample_architecture(space, rng)
        else:
            parent = max(rng.sample(list(alive), sample_size), key=lambda t: t.score)
            draw = lambda: mutate(parent.architecture, space, rng)
        architecture, macs = _draw_within_budget(draw, space, macs_budget, input_shape)
        trial = Trial(architecture, float(evaluate(architecture)), macs, step)
        trials.append(trial)
        alive.append(trial)
        if len(alive) > population:
            alive.popleft()  # aging: the oldest goes, however good it was
    return trials
