"""Tests for lightcnn.pruning: exact sparsities, masks that survive training, AGP, tickets."""

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightcnn as lc
from lightcnn import pruning as P

LENET_LAYERS = ["features.0", "features.3", "classifier.1", "classifier.3", "classifier.5"]
BAD_SPARSITIES = [-0.1, 1.0, 1.5, math.nan]


def _lenet() -> nn.Module:
    torch.manual_seed(0)
    return lc.create_model("lenet5")


def _num_weights(model: nn.Module, exclude=()) -> int:
    return sum(m.weight_orig.numel() if hasattr(m, "weight_orig") else m.weight.numel()
               for n, m in P.prunable_layers(model).items() if n not in exclude)


def _effective(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: (m.weight_orig * m.weight_mask if hasattr(m, "weight_orig") else m.weight).detach()
            for n, m in P.prunable_layers(model).items()}


def _loader(n: int = 32, batch_size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


# ---------------------------------------------------------------- magnitude_prune

def test_prunable_layers_are_conv_and_linear():
    assert list(P.prunable_layers(_lenet())) == LENET_LAYERS
    model = lc.create_model("baseline_cnn")
    expected = [n for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    assert list(P.prunable_layers(model)) == expected and len(expected) == 6


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=4),
       sparsity=st.floats(0.0, 1.0, exclude_max=True), seed=st.integers(0, 2**16),
       ties=st.booleans())
def test_magnitude_prune_is_exact_and_keeps_the_largest(shape, sparsity, seed, ties):
    g = torch.Generator().manual_seed(seed)
    # integer weights in [-3, 3] force many ties (and zeros)
    w = (torch.randint(-3, 4, shape, generator=g).float() if ties
         else torch.randn(shape, generator=g))
    mask = P.magnitude_prune(w, sparsity)
    k = round(sparsity * w.numel())
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert int((~mask).sum()) == k
    if 0 < k < w.numel():
        assert w.abs()[mask].min() >= w.abs()[~mask].max()
    assert torch.equal(mask, P.magnitude_prune(w, sparsity))  # deterministic ties


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.9])
def test_magnitude_prune_matches_kthvalue_and_topk(sparsity):
    w = torch.randn(16, 8, 3, 3)  # continuous values: no ties
    k = round(sparsity * w.numel())
    threshold = torch.kthvalue(w.abs().flatten(), k).values
    mask = P.magnitude_prune(w, sparsity)
    assert torch.equal(mask, w.abs() > threshold)
    kept = torch.topk(w.abs().flatten(), w.numel() - k).indices
    assert torch.equal(mask.flatten().nonzero().flatten(), kept.sort().values)


def test_magnitude_prune_breaks_ties_by_index_and_leaves_weight_alone():
    w = torch.tensor([1.0, -1.0, 1.0, 2.0])
    before = w.clone()
    assert P.magnitude_prune(w, 0.5).tolist() == [False, False, True, True]
    assert P.magnitude_prune(w, 0.0).all()
    assert torch.equal(w, before)


# ---------------------------------------------------------------- layer-wise and global

@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.8])
def test_layerwise_masks_are_exact_per_layer(sparsity):
    model = _lenet()
    masks = P.layerwise_masks(model, sparsity, exclude=["features.0"])
    assert list(masks) == LENET_LAYERS[1:]
    for name, mask in masks.items():
        weight = P.prunable_layers(model)[name].weight
        assert torch.equal(mask, P.magnitude_prune(weight, sparsity))
        assert int((~mask).sum()) == round(sparsity * weight.numel())


def test_layerwise_masks_take_one_sparsity_per_layer():
    model = _lenet()
    masks = P.layerwise_masks(model, {"features.3": 0.5, "classifier.1": 0.9})
    assert list(masks) == ["features.3", "classifier.1"]
    assert int((~masks["classifier.1"]).sum()) == round(0.9 * 400 * 120)


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.95])
def test_global_masks_share_one_threshold_and_are_exact(sparsity):
    model = _lenet()
    masks = P.global_masks(model, sparsity, exclude=["classifier.5"])
    assert "classifier.5" not in masks
    n = _num_weights(model, exclude=["classifier.5"])
    assert sum(int((~m).sum()) for m in masks.values()) == round(sparsity * n)
    weights = {name: P.prunable_layers(model)[name].weight.abs() for name in masks}
    kept = torch.cat([weights[k][m] for k, m in masks.items()])
    pruned = torch.cat([weights[k][~m] for k, m in masks.items()])
    if len(pruned) and len(kept):
        assert kept.min() >= pruned.max()
    # reference: the same as pruning the concatenated weights in one go
    flat = torch.cat([w.flatten() for w in weights.values()])
    assert torch.equal(torch.cat([m.flatten() for m in masks.values()]),
                       P.magnitude_prune(flat, sparsity))


# ---------------------------------------------------------------- attaching masks

def test_apply_masks_equals_multiplying_by_hand():
    model = _lenet()
    by_hand = copy.deepcopy(model)
    masks = P.global_masks(model, 0.7)
    assert P.apply_masks(model, masks) is model
    with torch.no_grad():
        for name, layer in P.prunable_layers(by_hand).items():
            layer.weight.mul_(masks[name])
    for name, layer in P.prunable_layers(model).items():
        assert isinstance(layer.weight_orig, nn.Parameter) and "weight" not in layer._parameters
        assert torch.equal(layer.weight_mask.bool(), masks[name])
        assert len(layer._forward_pre_hooks) == 1
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), by_hand(x))
    assert all(torch.equal(P.masks_of(model)[k], masks[k]) for k in masks)


def test_apply_masks_twice_keeps_the_product():
    model = _lenet()
    first = P.layerwise_masks(model, 0.5)
    second = {k: torch.rand(m.shape) > 0.5 for k, m in first.items()}
    P.apply_masks(P.apply_masks(model, first), second)
    for name, mask in P.masks_of(model).items():
        assert torch.equal(mask, first[name] & second[name])
        assert len(P.prunable_layers(model)[name]._forward_pre_hooks) == 1


def test_masks_survive_optimizer_steps():
    model = _lenet()
    masks = P.global_masks(model, 0.8)
    P.apply_masks(model, masks)
    before = {k: v.clone() for k, v in _effective(model).items()}
    # weight decay and momentum move weight_orig everywhere; the mask must still win
    lc.fit(model, _loader(), epochs=2, lr=0.05, weight_decay=1e-2, schedule=None, progress=False)
    after = _effective(model)
    assert any(not torch.equal(before[k], after[k]) for k in after)  # it did train
    for name, mask in masks.items():
        assert torch.count_nonzero(after[name][~mask]) == 0
    with torch.no_grad():
        model(torch.randn(1, 1, 28, 28))  # the pre-hook refreshes weight
    for name, layer in P.prunable_layers(model).items():
        assert torch.count_nonzero(layer.weight[~masks[name]]) == 0
    assert torch.equal(P.masks_of(model)["classifier.1"], masks["classifier.1"])


def test_remove_masks_gives_plain_weights_with_the_same_zeros():
    model = P.apply_masks(_lenet(), P.global_masks(_lenet(), 0.6))
    expected = {k: v.clone() for k, v in _effective(model).items()}
    before = P.sparsity(model)
    assert P.remove_masks(model) is model
    for name, layer in P.prunable_layers(model).items():
        assert isinstance(layer.weight, nn.Parameter) and "weight" in layer._parameters
        assert not hasattr(layer, "weight_orig") and not hasattr(layer, "weight_mask")
        assert not layer._forward_pre_hooks
        assert torch.equal(layer.weight.detach(), expected[name])
    assert P.masks_of(model) == {}
    assert P.sparsity(model) == before


def test_sparsity_agrees_with_count_nonzero_params():
    model = _lenet()
    n = _num_weights(model)
    assert P.sparsity(model) == 0.0
    P.apply_masks(model, P.global_masks(model, 0.75))
    assert P.sparsity(model) == round(0.75 * n) / n
    # LeNet-5's biases are never exactly zero, so every zero parameter is a pruned weight
    for stage in ("masked", "removed"):
        zeros = lc.count_params(model) - lc.count_nonzero_params(model)
        assert zeros == round(P.sparsity(model) * n), stage
        P.remove_masks(model)
    per_layer = P.layer_sparsity(model)
    assert list(per_layer) == LENET_LAYERS
    sizes = {k: w.numel() for k, w in _effective(model).items()}
    assert sum(per_layer[k] * sizes[k] for k in sizes) == pytest.approx(round(0.75 * n))


# ---------------------------------------------------------------- sensitivity and AGP

def test_sensitivity_scan_prunes_one_layer_on_a_copy():
    model = _lenet()
    state = copy.deepcopy(model.state_dict())
    n = _num_weights(model)
    sizes = {k: w.numel() for k, w in _effective(model).items()}
    layers = ["features.3", "classifier.1"]
    scores = P.sensitivity_scan(model, P.sparsity, [0.0, 0.5, 0.9], layers=layers)
    assert list(scores) == layers
    for name in layers:  # the copy's sparsity: only this layer pruned, exactly
        assert scores[name] == [round(s * sizes[name]) / n for s in (0.0, 0.5, 0.9)]
    assert P.masks_of(model) == {}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert list(P.sensitivity_scan(model, P.sparsity, [0.5])) == LENET_LAYERS


def test_agp_sparsity_endpoints_monotone_and_cubic():
    s_i, s_f, t0, n = 0.1, 0.9, 10, 100
    agp = lambda t: P.agp_sparsity(t, s_f, n, initial_sparsity=s_i, start_step=t0)
    assert agp(0) == agp(t0) == pytest.approx(s_i)
    assert agp(t0 + n) == agp(10 * n) == pytest.approx(s_f)
    values = [agp(t) for t in range(0, t0 + n + 20)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert agp(t0 + n // 2) == pytest.approx(s_f + (s_i - s_f) * 0.5 ** 3)
    assert agp(t0 + 25) == pytest.approx(s_f + (s_i - s_f) * 0.75 ** 3)


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_agp_pruner_reaches_final_sparsity_with_fit(scope):
    model = _lenet()
    loader = _loader()  # 4 steps per epoch
    total = 3 * len(loader)
    pruner = P.AGPPruner(0.8, total_steps=total - 2, frequency=3, scope=scope,
                         exclude=["classifier.5"])
    seen = []
    after_step = lambda m: (pruner(m), seen.append(P.sparsity(m)))
    lc.fit(model, loader, epochs=3, lr=0.05, schedule=None, progress=False, after_step=after_step)
    assert pruner.step_count == total
    assert all(b >= a for a, b in zip(seen, seen[1:]))  # sparsity never decreases
    assert [t for t, _ in pruner.history] == [0, 3, 6, 9, 10]
    assert pruner.history[-1][1] == pytest.approx(0.8)
    assert "classifier.5" not in P.masks_of(model)
    effective = _effective(model)
    if scope == "global":
        n = _num_weights(model, exclude=["classifier.5"])
        assert sum(int((effective[k] == 0).sum()) for k in P.masks_of(model)) == round(0.8 * n)
    else:
        for name in P.masks_of(model):
            assert int((effective[name] == 0).sum()) == round(0.8 * effective[name].numel())


# ---------------------------------------------------------------- iterative pruning and tickets

def test_iterative_prune_keeps_masks_during_finetuning():
    model = _lenet()
    n = _num_weights(model)
    rounds = []

    def finetune(m: nn.Module) -> None:
        rounds.append(P.masks_of(m))
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
        for x, y in _loader():
            opt.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            opt.step()

    achieved = P.iterative_prune(model, [0.5, 0.8, 0.9], finetune)
    assert achieved == [round(s * n) / n for s in (0.5, 0.8, 0.9)]
    for earlier, later in zip(rounds, rounds[1:]):  # pruned weights stay pruned
        assert all(not (later[k] & ~earlier[k]).any() for k in earlier)


def test_rewind_restores_initial_weights_on_kept_entries():
    model = _lenet()
    initial = copy.deepcopy(model.state_dict())
    lc.fit(model, _loader(), epochs=1, lr=0.05, schedule=None, progress=False)
    masks = P.global_masks(model, 0.8)
    P.apply_masks(model, masks)
    model(torch.randn(2, 1, 28, 28)).sum().backward()  # weight now has autograd history
    trained = copy.deepcopy(model.state_dict())
    ticket = P.rewind(model, initial)
    assert ticket is not model
    for name, layer in P.prunable_layers(ticket).items():
        w0 = initial[f"{name}.weight"]
        assert torch.equal(layer.weight_mask.bool(), masks[name])
        assert torch.equal((layer.weight_orig * layer.weight_mask).detach(), w0 * masks[name])
        assert torch.equal(layer.bias.detach(), initial[f"{name}.bias"])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in trained.items())
    # the state of a masked model (weight_orig, weight_mask) works too
    again = P.rewind(model, P.rewind(model, initial).state_dict(), masks)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in ticket.state_dict().items())


def test_random_reinit_keeps_masks_and_draws_new_weights():
    model = _lenet()
    masks = P.layerwise_masks(model, 0.5)
    P.apply_masks(model, masks)
    state = torch.random.get_rng_state()
    control = P.random_reinit(model, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert P.masks_of(control).keys() == masks.keys()
    for name, mask in P.masks_of(control).items():
        assert torch.equal(mask, masks[name])
    new, old = _effective(control), _effective(model)
    assert all(not torch.equal(new[k], old[k]) for k in new)
    same = _effective(P.random_reinit(model, masks, seed=1))
    other = _effective(P.random_reinit(model, masks, seed=2))
    assert all(torch.equal(same[k], new[k]) and not torch.equal(other[k], new[k]) for k in new)
    torch.manual_seed(1)  # reference: the layer's own reset_parameters under the seed
    reference = lc.create_model("lenet5")
    assert torch.equal(new["features.0"], reference.features[0].weight.detach() * masks["features.0"])


# ---------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("bad", BAD_SPARSITIES)
def test_sparsity_outside_unit_interval_is_rejected(bad):
    model = _lenet()
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        P.magnitude_prune(torch.randn(4), bad)
    with pytest.raises(ValueError, match="sparsity"):
        P.layerwise_masks(model, bad)
    with pytest.raises(ValueError, match="features.3"):
        P.layerwise_masks(model, {"features.3": bad})
    with pytest.raises(ValueError, match="sparsity"):
        P.global_masks(model, bad)
    with pytest.raises(ValueError, match="final_sparsity"):
        P.agp_sparsity(0, bad, 10)
    with pytest.raises(ValueError, match="final_sparsity"):
        P.AGPPruner(bad, 10)
    with pytest.raises(ValueError, match=r"sparsities\[1\]"):
        P.sensitivity_scan(model, P.sparsity, [0.5, bad])
    with pytest.raises(ValueError, match=r"sparsities\[0\]"):
        P.iterative_prune(model, [bad], lambda m: None)


def test_magnitude_prune_rejects_bad_weights():
    with pytest.raises(ValueError, match="at least one entry"):
        P.magnitude_prune(torch.empty(0, 3), 0.5)
    for value in (math.nan, math.inf):
        with pytest.raises(ValueError, match="finite"):
            P.magnitude_prune(torch.tensor([1.0, value]), 0.5)
    with pytest.raises(TypeError, match="torch.Tensor"):
        P.magnitude_prune([1.0, 2.0], 0.5)
    with pytest.raises(TypeError, match="sparsity"):
        P.magnitude_prune(torch.randn(3), "0.5")


def test_unknown_layer_names_are_rejected():
    model = _lenet()
    with pytest.raises(ValueError, match="'features.1'"):
        P.apply_masks(model, {"features.1": torch.ones(6, 1, 5, 5, dtype=torch.bool)})
    with pytest.raises(ValueError, match="'head'"):
        P.layerwise_masks(model, 0.5, exclude=["head"])
    with pytest.raises(ValueError, match="'head'"):
        P.global_masks(model, 0.5, exclude=["head"])
    with pytest.raises(ValueError, match="'head'"):
        P.sensitivity_scan(model, P.sparsity, [0.5], layers=["head"])
    with pytest.raises(TypeError, match="sequence of layer names"):
        P.global_masks(model, 0.5, exclude="features.0")
    with pytest.raises(ValueError, match="no Conv2d or Linear layer left"):
        P.global_masks(model, 0.5, exclude=LENET_LAYERS)
    with pytest.raises(ValueError, match="no Conv2d or Linear"):
        P.sparsity(nn.Sequential(nn.ReLU()))
    with pytest.raises(TypeError, match="nn.Module"):
        P.prunable_layers("lenet5")


def test_bad_masks_are_rejected_before_any_is_applied():
    model = _lenet()
    good = torch.ones(6, 1, 5, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"'features.3' has shape \(6, 1, 5, 5\).*\(16, 6, 5, 5\)"):
        P.apply_masks(model, {"features.0": good, "features.3": good})
    assert P.masks_of(model) == {}  # nothing half-applied
    with pytest.raises(ValueError, match="'features.0' must be bool or hold only 0 and 1"):
        P.apply_masks(model, {"features.0": torch.full((6, 1, 5, 5), 0.5)})
    with pytest.raises(TypeError, match="mapping"):
        P.apply_masks(model, [good])


def test_schedule_and_loop_arguments_are_checked():
    model = _lenet()
    with pytest.raises(ValueError, match="total_steps must be an int >= 1, got 0"):
        P.agp_sparsity(0, 0.5, 0)
    with pytest.raises(ValueError, match="start_step must be an int >= 0, got -1"):
        P.agp_sparsity(0, 0.5, 10, start_step=-1)
    with pytest.raises(ValueError, match="initial_sparsity must be <= final_sparsity"):
        P.agp_sparsity(0, 0.5, 10, initial_sparsity=0.6)
    with pytest.raises(ValueError, match="frequency must be an int >= 1, got 0"):
        P.AGPPruner(0.5, 10, frequency=0)
    with pytest.raises(ValueError, match="scope must be one of"):
        P.AGPPruner(0.5, 10, scope="local")
    with pytest.raises(ValueError, match="non-decreasing"):
        P.iterative_prune(model, [0.8, 0.5], lambda m: None)
    with pytest.raises(ValueError, match="scope must be one of"):
        P.iterative_prune(model, [0.5], lambda m: None, scope="local")
    with pytest.raises(ValueError, match="non-empty sequence"):
        P.sensitivity_scan(model, P.sparsity, [])
    with pytest.raises(TypeError, match="evaluate must be callable"):
        P.sensitivity_scan(model, 0.9, [0.5])
    with pytest.raises(ValueError, match="initial_state does not fit"):
        P.rewind(model, lc.create_model("baseline_cnn").state_dict(), {})
    with pytest.raises(TypeError, match="seed must be an int"):
        P.random_reinit(model, {}, seed=1.5)


@pytest.mark.parametrize("ratio", [2, 12.0])
def test_sparsity_for_ratio_leaves_ratio_times_fewer_nonzero_parameters(ratio):
    model = lc.create_model("baseline_cnn")
    with torch.no_grad():     # no zeros before pruning (a fresh model's biases start at 0)
        for p in model.parameters():
            p.uniform_(0.1, 1.0)
    s = P.sparsity_for_ratio(model, ratio)
    pruned = P.apply_masks(copy.deepcopy(model), P.global_masks(model, s))
    P.remove_masks(pruned)
    # one weight of rounding (the masks keep a whole number of weights)
    assert lc.count_nonzero_params(pruned) == pytest.approx(lc.count_params(model) / ratio, abs=1)


@pytest.mark.parametrize("ratio, match", [(1, "ratio must be a number > 1"), ("12", "ratio must be"),
                                          (1e9, "cannot be reached")])
def test_sparsity_for_ratio_rejects_bad_ratios(ratio, match):
    with pytest.raises(ValueError, match=match):
        P.sparsity_for_ratio(lc.create_model("baseline_cnn"), ratio)


# ---------------------------------------------------------------- AGP in a loop of one's own

def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def _train_steps(model, optimizer, pruner, batches) -> None:
    for x, y in batches:
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.step()


def test_agp_step_in_a_plain_loop_equals_the_after_step_call():
    batches = list(_loader()) * 3                      # 12 steps
    runs = []
    for explicit in (True, False):
        model = _lenet()
        optimizer = _sgd(model)
        pruner = P.AGPPruner(0.7, total_steps=9, frequency=2,
                             model=model if explicit else None)
        for x, y in batches:
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            pruner.step() if explicit else pruner(model)
        runs.append((model.state_dict(), pruner.history, pruner.step_count))
    (s1, h1, n1), (s2, h2, n2) = runs
    assert h1 == h2 and n1 == n2 == 12
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert [t for t, _ in h1] == [0, 2, 4, 6, 8, 9]


def test_agp_checkpoint_resumes_the_schedule_exactly():
    batches = list(_loader()) * 4                      # 16 steps, checkpoint after 7
    settings = dict(final_sparsity=0.8, total_steps=12, frequency=3, scope="layerwise",
                    exclude=["classifier.5"])
    model = _lenet()
    optimizer = _sgd(model)
    pruner = P.AGPPruner(**settings, model=model)
    _train_steps(model, optimizer, pruner, batches[:7])
    checkpoint = copy.deepcopy({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                "pruner": pruner.state_dict()})
    _train_steps(model, optimizer, pruner, batches[7:])   # the uninterrupted run
    # a fresh process would do this: model, optimizer (before the masks), masks, schedule
    resumed = lc.create_model("lenet5")
    optimizer = _sgd(resumed)
    P.load_masked_state_dict(resumed, checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    again = P.AGPPruner(**settings, model=resumed)
    again.load_state_dict(checkpoint["pruner"])
    assert again.step_count == 7 and again.history == [(0, 0.0), (3, again.history[1][1]),
                                                      (6, again.history[2][1])]
    _train_steps(resumed, optimizer, again, batches[7:])
    assert again.history == pruner.history and again.step_count == 16
    s1, s2 = model.state_dict(), resumed.state_dict()
    assert s1.keys() == s2.keys()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert P.layer_sparsity(resumed)["features.0"] == pytest.approx(0.8, abs=0.01)


def test_agp_state_dict_is_plain_data_and_refuses_another_schedule(tmp_path):
    pruner = P.AGPPruner(0.5, total_steps=10, frequency=2)
    model = _lenet()
    for _ in range(5):
        pruner.step(model)
    torch.save(pruner.state_dict(), tmp_path / "pruner.pt")
    state = torch.load(tmp_path / "pruner.pt", weights_only=True)
    assert state["step_count"] == 5 and state["history"] == [[0, 0.0], [2, pytest.approx(
        P.agp_sparsity(2, 0.5, 10))], [4, pytest.approx(P.agp_sparsity(4, 0.5, 10))]]
    other = P.AGPPruner(0.6, total_steps=10, frequency=2)
    with pytest.raises(ValueError, match=r"final_sparsity=0.5 \(this pruner: 0.6\)"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="step_count"):
        other.load_state_dict({"final_sparsity": 0.6})


def test_agp_step_needs_a_model_and_checks_exclude_against_it():
    with pytest.raises(ValueError, match="pass the model to step"):
        P.AGPPruner(0.5, 10).step()
    with pytest.raises(ValueError, match="exclude names layer 'fc'"):
        P.AGPPruner(0.5, 10, exclude=["fc"], model=_lenet())


def test_load_masked_state_dict_restores_masks_into_a_fresh_model():
    model = _lenet()
    P.apply_masks(model, P.global_masks(model, 0.6))
    fresh = lc.create_model("lenet5")
    with pytest.raises(RuntimeError):
        fresh.load_state_dict(model.state_dict())     # what this function is for
    assert P.load_masked_state_dict(fresh, model.state_dict()) is fresh
    assert P.masks_of(fresh).keys() == P.masks_of(model).keys()
    assert all(torch.equal(P.masks_of(fresh)[k], P.masks_of(model)[k]) for k in P.masks_of(model))
    copy.deepcopy(fresh)                                  # refreshed weights: deep-copyable
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(fresh(x), model(x))
    plain = _lenet()
    assert P.load_masked_state_dict(lc.create_model("lenet5"), plain.state_dict())  # no masks
    with pytest.raises(TypeError, match="mapping"):
        P.load_masked_state_dict(fresh, [1, 2])
    with pytest.raises(ValueError, match="does not fit"):
        P.load_masked_state_dict(lc.create_model("lenet5", num_classes=3), plain.state_dict())
