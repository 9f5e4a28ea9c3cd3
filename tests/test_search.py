import random

import pytest
import torch

import lightcnn as lc
from lightcnn import search

SPACE = search.SearchSpace(depths=(1, 2), widths=(8, 16, 24), kernels=(3, 5), expansions=(1, 3))
TARGET = ((2, 24, 5, 3), (2, 24, 5, 3), (2, 24, 5, 3))


def fitness(architecture):
    # a cheap stand-in for proxy training: how many fields equal TARGET's
    return sum(a == b for row, goal in zip(architecture, TARGET) for a, b in zip(row, goal))


def test_space_size_and_sampling_stay_in_the_space():
    assert SPACE.size == (2 * 3 * 2 * 2) ** 3
    rng = random.Random(0)
    for _ in range(50):
        arch = search.sample_architecture(SPACE, rng)
        assert len(arch) == SPACE.stages
        for depth, width, kernel, expansion in arch:
            assert depth in SPACE.depths and width in SPACE.widths
            assert kernel in SPACE.kernels and expansion in SPACE.expansions


def test_mutate_changes_exactly_one_field():
    rng = random.Random(1)
    arch = search.sample_architecture(SPACE, rng)
    for _ in range(50):
        child = search.mutate(arch, SPACE, rng)
        changed = sum(a != b for r1, r2 in zip(arch, child) for a, b in zip(r1, r2))
        assert changed == 1


def test_build_searched_matches_its_description():
    arch = ((1, 8, 3, 1), (2, 16, 5, 3), (1, 24, 3, 3))
    model = search.build_searched(arch)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    blocks = [m for m in model if isinstance(m, lc.blocks.InvertedResidual)]
    assert len(blocks) == 4
    kernels = [b.block[-2][0].kernel_size[0] for b in blocks]  # the depthwise conv of each
    assert kernels == [3, 5, 5, 3]


@pytest.mark.parametrize("searcher", ["random", "evolution"])
def test_searches_respect_the_macs_budget_and_are_seeded(searcher):
    budget = 2_000_000  # about a third of the random draws exceed it
    run = (lambda seed: search.random_search(SPACE, fitness, budget, 12, seed=seed)) \
        if searcher == "random" else \
        (lambda seed: search.evolutionary_search(SPACE, fitness, budget, 12, population=4, seed=seed))
    trials = run(0)
    assert len(trials) == 12 and [t.step for t in trials] == list(range(12))
    for t in trials:
        assert t.macs <= budget
        assert t.macs == lc.count_macs(search.build_searched(t.architecture))
    assert [t.architecture for t in run(0)] == [t.architecture for t in trials]
    assert [t.architecture for t in run(1)] != [t.architecture for t in trials]


def test_evolution_beats_random_search_on_a_smooth_fitness():
    big = 10 ** 9  # no MACs constraint: compare the search strategies alone
    wins = 0
    for seed in range(5):
        rs = max(t.score for t in search.random_search(SPACE, fitness, big, 40, seed=seed))
        ev = max(t.score for t in search.evolutionary_search(SPACE, fitness, big, 40, population=8,
                                                             sample_size=3, seed=seed))
        wins += ev >= rs
    assert wins >= 4


def test_evolution_children_are_one_mutation_from_a_population_member():
    trials = search.evolutionary_search(SPACE, fitness, 10 ** 9, 20, population=5, seed=3)
    for t in trials[5:]:
        distances = [sum(a != b for r1, r2 in zip(t.architecture, p.architecture) for a, b in zip(r1, r2))
                     for p in trials[max(0, t.step - 5):t.step]]
        assert 1 in distances  # its parent; it may also equal another member (distance 0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(macs_budget=0), "macs_budget"), (dict(evaluations=0), "evaluations"),
    (dict(population=1), "population"), (dict(sample_size=9), "sample_size"),
])
def test_bad_arguments_are_rejected(kwargs, match):
    args = dict(macs_budget=10 ** 9, evaluations=4, population=4, sample_size=2) | kwargs
    with pytest.raises(ValueError, match=match):
        search.evolutionary_search(SPACE, fitness, **args)


def test_impossible_budget_and_bad_space_are_reported():
    with pytest.raises(ValueError, match="macs_budget"):
        search.random_search(SPACE, fitness, 10, 1)
    with pytest.raises(ValueError, match="kernels"):
        search.SearchSpace(kernels=(2, 3))
    with pytest.raises(ValueError, match="widths"):
        search.SearchSpace(widths=())


def test_searched_cnn_is_registered_and_cached_per_architecture():
    arch = ((1, 8, 3, 1), (2, 16, 5, 3), (1, 24, 3, 3))
    as_json = [list(stage) for stage in arch]  # the spelling the zoo's JSON key produces
    torch.manual_seed(0)
    direct = search.build_searched(arch).eval()
    torch.manual_seed(0)
    registered = lc.create_model("searched_cnn", architecture=as_json).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(direct(x), registered(x))
    budget = lc.get_budget("ci")
    assert (lc.zoo.cache_key("searched_cnn", budget, architecture=arch)
            != lc.zoo.cache_key("searched_cnn", budget, architecture=TARGET))
    with pytest.raises(ValueError, match="architecture"):
        lc.create_model("searched_cnn", architecture=((1, 8, 3),))
