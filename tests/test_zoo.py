import copy
import dataclasses
import json
import subprocess
import sys
import time
from typing import Callable

import pytest
import torch

import lightcnn as lc
from lightcnn import zoo


def test_cache_hit_does_not_retrain(isolated_cache, tiny_budget, monkeypatch):
    first = zoo.get_trained("lenet5", budget=tiny_budget, progress=False)
    assert first.trained_now and first.path.is_file()
    assert first.path.is_relative_to(isolated_cache)

    def no_training(*args, **kwargs):
        raise AssertionError("a cache hit must not train")

    monkeypatch.setattr(zoo, "fit", no_training)
    second = zoo.get_trained("lenet5", budget=tiny_budget, progress=False)
    assert not second.trained_now and second.accuracy == first.accuracy
    s1, s2 = first.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert second.history.train_loss == first.history.train_loss


def test_training_is_deterministic(isolated_cache, tiny_budget, tmp_path, monkeypatch):
    first = zoo.get_trained("lenet5", budget=tiny_budget, progress=False)
    monkeypatch.setenv("LIGHTCNN_CACHE", str(tmp_path / "other"))
    second = zoo.get_trained("lenet5", budget=tiny_budget, progress=False)
    assert second.trained_now
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(),
                                                second.model.state_dict().values()))


@pytest.mark.parametrize("damage", ["flip", "truncate", "digest"])
def test_corrupted_cache_is_retrained(isolated_cache, tiny_budget, damage):
    first = zoo.get_trained("lenet5", budget=tiny_budget, progress=False)
    blob = bytearray(first.path.read_bytes())
    if damage == "flip":
        blob[len(blob) // 2] ^= 0xFF
        first.path.write_bytes(bytes(blob))
    elif damage == "truncate":
        first.path.write_bytes(bytes(blob[:100]))
    else:
        first.path.with_suffix(".sha256").write_text("0" * 64)
    with pytest.warns(UserWarning, match="corrupted"):
        again = zoo.get_trained("lenet5", budget=tiny_budget, progress=False)
    assert again.trained_now and again.accuracy == first.accuracy
    # The retrained entry is stored again and is now a clean hit.
    assert not zoo.get_trained("lenet5", budget=tiny_budget, progress=False).trained_now


def test_key_changes_with_recipe_budget_and_seed(tiny_budget):
    base = zoo.cache_key("lenet5", tiny_budget)
    assert zoo.cache_key("lenet5", tiny_budget) == base
    assert zoo.cache_key("lenet5", tiny_budget, seed=1) != base
    assert zoo.cache_key("lenet5", lc.get_budget("full")) != base
    recipe = dict(zoo.RECIPES["lenet5"], lr=0.01)
    assert zoo.cache_key("lenet5", tiny_budget, recipe=recipe) != base


def test_key_ignores_budget_fields_that_do_not_change_training(tiny_budget):
    import dataclasses

    base = zoo.cache_key("lenet5", tiny_budget)
    more_repeats = dataclasses.replace(tiny_budget, latency_repeats=tiny_budget.latency_repeats + 7)
    assert zoo.cache_key("lenet5", more_repeats) == base
    more_epochs = dataclasses.replace(tiny_budget, epochs=tiny_budget.epochs + 1)
    assert zoo.cache_key("lenet5", more_epochs) != base


def test_epochs_override_is_part_of_the_key(isolated_cache, tiny_budget):
    one = zoo.get_trained("lenet5", budget=tiny_budget, progress=False)
    two = zoo.get_trained("lenet5", budget=tiny_budget, progress=False, epochs=2)
    assert two.trained_now and len(two.history.train_loss) == 2
    assert one.path != two.path
    assert not zoo.get_trained("lenet5", budget=tiny_budget, progress=False, epochs=2).trained_now
    with pytest.raises(ValueError, match="epochs"):
        zoo.get_trained("lenet5", budget=tiny_budget, epochs=0)


def test_unknown_model_lists_known_ones(isolated_cache, tiny_budget):
    with pytest.raises(ValueError, match="baseline_cnn"):
        zoo.get_trained("no_such_model", budget=tiny_budget)


def test_key_covers_the_modules_a_model_is_built_from():
    from lightcnn import _checks, architectures, blocks, data, models, train
    # _checks: the argument checks the model constructors call
    assert zoo._code_modules("mobilenet_v2") == [architectures, models, data, train, _checks,
                                                 blocks]
    # the baseline is built from models.py alone: its key does not move when a block changes
    assert set(zoo._code_modules("baseline_cnn")) == {models, data, train, _checks}


def test_channels_last_training_is_its_own_entry(isolated_cache, tiny_budget):
    plain = zoo.get_trained("lenet5", budget=tiny_budget, progress=False)
    nhwc = zoo.get_trained("lenet5", budget=tiny_budget, progress=False, channels_last=True)
    assert nhwc.trained_now and nhwc.path != plain.path
    # returned in the default format, so it is measured like every other model
    assert all(p.is_contiguous() for p in nhwc.model.parameters())
    # same data, same seed, other kernels: accuracy within rounding of the NCHW run
    assert abs(nhwc.accuracy - plain.accuracy) < 0.05
    assert not zoo.get_trained("lenet5", budget=tiny_budget, progress=False,
                               channels_last=True).trained_now
    with pytest.raises(TypeError, match="channels_last"):
        zoo.get_trained("lenet5", budget=tiny_budget, channels_last="yes")


def test_init_from_starts_from_another_cached_model(tiny_budget, isolated_cache):
    base = lc.zoo.get_trained("baseline_cnn", tiny_budget, progress=False)
    still = dict(lc.zoo.RECIPES["binary_cnn"], lr=1e-12)   # training barely moves weights
    warm = lc.zoo.get_trained("binary_cnn", tiny_budget, progress=False, recipe=still,
                              init_from=base, scheme="bwn")
    cold = lc.zoo.get_trained("binary_cnn", tiny_budget, progress=False, recipe=still,
                              scheme="bwn")
    assert warm.path != cold.path                  # the starting point is part of the key
    w_base = base.model.features[3][0].weight
    assert torch.allclose(warm.model.features[3][0].weight, w_base.clamp(-1, 1), atol=1e-6)
    assert not torch.allclose(cold.model.features[3][0].weight, w_base, atol=1e-3)
    again = lc.zoo.get_trained("binary_cnn", tiny_budget, progress=False, recipe=still,
                               init_from=base, scheme="bwn")
    assert not again.trained_now and again.path == warm.path
    with pytest.raises(TypeError, match="init_from must be a TrainedModel"):
        lc.zoo.get_trained("binary_cnn", tiny_budget, init_from=base.model)
    lenet = lc.zoo.get_trained("lenet5", tiny_budget, progress=False)
    with pytest.raises(ValueError, match="init_from: the weights of lenet5"):
        lc.zoo.get_trained("baseline_cnn", tiny_budget, progress=False, init_from=lenet)


def test_the_device_kind_is_part_of_the_key_and_cpu_keeps_old_keys(tiny_budget):
    cpu = zoo.cache_key("lenet5", tiny_budget)
    assert zoo.cache_key("lenet5", tiny_budget, device="cpu") == cpu
    assert zoo.cache_key("lenet5", tiny_budget, device="cuda") not in (cpu, zoo.cache_key(
        "lenet5", tiny_budget, device="mps"))


def test_get_trained_on_auto_without_a_gpu_is_the_cpu_entry(isolated_cache, tiny_budget, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    first = zoo.get_trained("lenet5", budget=tiny_budget, progress=False)
    auto = zoo.get_trained("lenet5", budget=tiny_budget, progress=False, device="auto")
    assert not auto.trained_now and auto.path == first.path
    with pytest.raises(ValueError, match="no CUDA GPU"):
        zoo.get_trained("lenet5", budget=tiny_budget, progress=False, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_get_trained_on_a_gpu_returns_a_cpu_model(isolated_cache, tiny_budget):
    trained = zoo.get_trained("lenet5", budget=tiny_budget, progress=False, device="cuda")
    assert trained.trained_now and not next(trained.model.parameters()).is_cuda
    assert trained.path != zoo.get_trained("lenet5", budget=tiny_budget, progress=False).path


# ---------------------------------------------------------------- get_pruned (chapter 04)

@pytest.fixture(scope="module")
def _tiny_base_once(tmp_path_factory, tiny_budget, data_dir):
    # Trained once for the module's twenty-odd tests instead of once each, in a cache and
    # an empty zoo of its own, with what the autouse fixtures (which run after a
    # module-scoped one) and isolated_cache would have set.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIGHTCNN_CACHE", str(tmp_path_factory.mktemp("base-cache")))
        mp.setenv("LIGHTCNN_ZOO", str(tmp_path_factory.mktemp("empty-zoo")))
        mp.delenv("LIGHTCNN_DATA", raising=False)
        mp.setattr(lc.data, "DEBIAN_DIR", data_dir)
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        lc.seed_everything(0)
        try:
            return lc.zoo.get_trained("baseline_cnn", tiny_budget, progress=False)
        finally:
            torch.set_num_threads(previous)


@pytest.fixture
def tiny_base(_tiny_base_once, isolated_cache):
    # a copy per test: what one test does to the model (eval(), a bug in get_pruned) must
    # not reach the next
    return dataclasses.replace(_tiny_base_once, model=copy.deepcopy(_tiny_base_once.model))


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_get_pruned_l1_equals_the_steps_done_by_hand_and_is_cached(tiny_base, tiny_budget,
                                                                    monkeypatch):
    from lightcnn import channel_pruning as cp
    pruned = lc.zoo.get_pruned(tiny_base, "l1", epochs=1, budget=tiny_budget, macs_share=0.5,
                               progress=False)
    assert pruned.trained_now and pruned.path.name.startswith("baseline_cnn+l1-ci-")
    # by hand: the same ratio, the same channels, the same fine-tuning
    ratio = cp.ratio_for_macs(tiny_base.model, cp.l1_importance, share=0.5)
    model = cp.remove_channels(tiny_base.model,
                               cp.plan_channel_pruning(tiny_base.model, ratio, cp.l1_importance))
    train_loader, test_loader = lc.get_dataloaders(128, tiny_budget, augment=True, seed=0)
    oneshot = lc.evaluate(model, test_loader)["accuracy"]
    history = lc.fit(model, train_loader, 1, test_loader, lr=0.01, schedule="cosine", seed=0,
                     progress=False)
    assert pruned.info == {"method": "l1", "ratio": ratio, "oneshot_accuracy": oneshot}
    assert _same_state(pruned.model, model) and pruned.accuracy == history.test_accuracy[-1]
    assert lc.count_macs(pruned.model) <= 0.5 * lc.count_macs(tiny_base.model)

    def no_training(*args, **kwargs):
        raise AssertionError("a cache hit must not train")

    monkeypatch.setattr(zoo, "fit", no_training)
    again = lc.zoo.get_pruned(tiny_base, "l1", epochs=1, budget=tiny_budget, macs_share=0.5,
                              progress=False)
    assert not again.trained_now and again.info == pruned.info   # info survives the cache
    assert _same_state(again.model, pruned.model)          # resized to the stored shapes
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(again.model(x), pruned.model.eval()(x))
    assert tiny_base.model.features[0][0].out_channels == 32   # the base is untouched


def test_get_pruned_agp_reaches_the_sparsity_and_slimming_the_macs(tiny_base, tiny_budget):
    from lightcnn import pruning
    agp = lc.zoo.get_pruned(tiny_base, "agp", epochs=1, budget=tiny_budget, sparsity=0.9,
                            progress=False)
    weights = sum(l.weight.numel() for l in pruning.prunable_layers(agp.model).values())
    assert abs(pruning.sparsity(agp.model) - 0.9) <= 1 / weights + 1e-9
    assert agp.info["sparsity"] == pruning.sparsity(agp.model)
    assert not pruning.masks_of(agp.model)                  # zeros permanent, no hooks
    assert set(agp.model.state_dict()) == set(tiny_base.model.state_dict())
    slim = lc.zoo.get_pruned(tiny_base, "slimming", epochs=1, budget=tiny_budget,
                             macs_share=0.5, penalty_epochs=1, progress=False)
    assert lc.count_macs(slim.model) <= 0.5 * lc.count_macs(tiny_base.model)
    assert slim.info["method"] == "slimming" and 0 < slim.info["ratio"] < 1
    assert len(slim.info["penalty_history"]["train_loss"]) == 1
    assert 0 <= slim.info["penalty_accuracy"] <= 1
    bns = [m for m in tiny_base.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert slim.info["bn_scales"].shape == (sum(m.num_features for m in bns),)
    # other settings, other entries
    paths = {agp.path, slim.path,
             lc.zoo.get_pruned(tiny_base, "agp", epochs=1, budget=tiny_budget, sparsity=0.8,
                               progress=False).path}
    assert len(paths) == 3


def test_get_pruned_retrains_a_corrupted_entry(tiny_base, tiny_budget):
    first = lc.zoo.get_pruned(tiny_base, "l1", epochs=1, budget=tiny_budget, macs_share=0.5,
                              progress=False)
    blob = bytearray(first.path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    first.path.write_bytes(bytes(blob))
    with pytest.warns(UserWarning, match="corrupted"):
        second = lc.zoo.get_pruned(tiny_base, "l1", epochs=1, budget=tiny_budget,
                                   macs_share=0.5, progress=False)
    assert second.trained_now and _same_state(second.model, first.model)


def test_finetune_control_trains_the_same_schedule_and_removes_nothing(tiny_base, tiny_budget):
    control = lc.zoo.get_pruned(tiny_base, "finetune", epochs=1, budget=tiny_budget,
                                progress=False)
    base_state, state = tiny_base.model.state_dict(), control.model.state_dict()
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in base_state.items()}
    assert not _same_state(control.model, tiny_base.model)       # it did train
    assert control.info == {"method": "finetune"} and len(control.history.test_accuracy) == 1
    agp = lc.zoo.get_pruned(tiny_base, "agp", epochs=1, sparsity=0.5, budget=tiny_budget,
                            progress=False)
    assert control.history.lr == agp.history.lr                   # the same schedule


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(method="agp"), ValueError, r"'agp' needs sparsity in \(0, 1\)"),
    (dict(method="agp", sparsity=1.0), ValueError, "needs sparsity"),
    (dict(method="agp", sparsity=0.9, macs_share=0.5), ValueError, "does not take macs_share"),
    (dict(method="l1", sparsity=0.9), ValueError, r"'l1' needs macs_share"),
    (dict(method="l1", macs_share=0.5, penalty_epochs=2), ValueError, "does not take penalty_epochs"),
    (dict(method="slimming", macs_share=0.5), ValueError, "penalty_epochs"),
    (dict(method="slimming", macs_share=0.5, penalty_epochs=1, penalty=0), ValueError, "penalty must be"),
    (dict(method="taylor", macs_share=0.5), ValueError, "method must be one of"),
    (dict(method="finetune", sparsity=0.5), ValueError, "'finetune' does not take sparsity"),
    (dict(method="finetune", macs_share=0.5), ValueError, "does not take macs_share"),
    (dict(method="finetune", penalty_epochs=1), ValueError, "does not take penalty_epochs"),
    (dict(method="l1", macs_share=0.5, epochs=0), ValueError, "epochs must be an int >= 1"),
    (dict(method="l1", macs_share=0.5, lr=-1), ValueError, "lr must be"),
    (dict(method="l1", macs_share=0.5, round_to=0), ValueError, "round_to must be"),
    (dict(method="agp", sparsity=0.9, round_to=8), ValueError, "'agp' does not take round_to"),
])
def test_get_pruned_rejects_bad_settings(tiny_base, tiny_budget, kwargs, error, match):
    kwargs = {"epochs": 1, **kwargs}
    with pytest.raises(error, match=match):
        lc.zoo.get_pruned(tiny_base, budget=tiny_budget, progress=False, **kwargs)


def test_get_pruned_l1_rounds_widths_as_prune_to_macs_does(tiny_base, tiny_budget):
    from lightcnn import channel_pruning as cp
    pruned = lc.zoo.get_pruned(tiny_base, "l1", epochs=1, budget=tiny_budget, macs_share=0.5,
                               round_to=16, progress=False)
    widths = lambda m: [c.out_channels for c in m.modules() if isinstance(c, torch.nn.Conv2d)]
    by_hand, _ = cp.prune_to_macs(tiny_base.model, cp.l1_importance, share=0.5, round_to=16)
    assert widths(pruned.model) == widths(by_hand) and all(w % 16 == 0 for w in widths(by_hand))
    # another cache entry than the unrounded one
    plain = lc.zoo.get_pruned(tiny_base, "l1", epochs=1, budget=tiny_budget, macs_share=0.5,
                              progress=False)
    assert plain.path != pruned.path and widths(plain.model) != widths(pruned.model)


def test_get_pruned_needs_a_trained_model(tiny_base, tiny_budget):
    with pytest.raises(TypeError, match="base must be a TrainedModel"):
        lc.zoo.get_pruned(tiny_base.model, "l1", epochs=1, macs_share=0.5, budget=tiny_budget)


def test_get_pruned_iterative_equals_han_et_als_loop_by_hand(tiny_base, tiny_budget):
    from lightcnn import pruning
    got = lc.zoo.get_pruned(tiny_base, "iterative", epochs=3, budget=tiny_budget, sparsity=0.8,
                            rounds=(0.4, 0.6), progress=False)
    assert got.trained_now and got.path.name.startswith("baseline_cnn+iterative-ci-")
    # by hand, as chapter 04 did it: prune, fine-tune one cosine run per round, prune more
    model = copy.deepcopy(tiny_base.model)
    train_loader, test_loader = lc.get_dataloaders(128, tiny_budget, augment=True, seed=0)
    histories = []
    achieved = pruning.iterative_prune(model, [0.4, 0.6, 0.8], lambda m: histories.append(
        lc.fit(m, train_loader, 1, test_loader, lr=0.01, schedule="cosine", seed=0,
               progress=False)))
    pruning.remove_masks(model)
    assert _same_state(got.model, model) and not pruning.masks_of(got.model)
    rounds = [h.test_accuracy[-1] for h in histories]
    assert got.info == {"method": "iterative", "sparsity": pruning.sparsity(model),
                        "round_sparsity": achieved, "round_accuracy": rounds}
    assert got.history.test_accuracy == rounds and got.accuracy == rounds[-1]
    # the epochs split over the rounds, the later ones longer
    assert [zoo._round_epochs(e, 3) for e in (3, 6, 10, 20)] == [[1, 1, 1], [2, 2, 2], [3, 3, 4],
                                                                  [6, 7, 7]]


def test_get_pruned_lottery_ticket_and_control_equal_the_steps_done_by_hand(tiny_zoo, tiny_budget):
    from lightcnn import pruning
    zoo.build(["lenet5"], progress=False)
    lenet = zoo.load("lenet5")
    ticket = zoo.get_pruned(lenet, "lottery", epochs=2, budget=tiny_budget, sparsity=0.9,
                            progress=False)
    control = zoo.get_pruned(lenet, "lottery", epochs=2, budget=tiny_budget, sparsity=0.9,
                             reinit_seed=1, progress=False)
    # by hand, as chapter 04 did it: the mask of the trained weights, the weights LeNet-5
    # started from (get_trained seeds torch with the entry's seed, then builds it), its recipe
    torch.manual_seed(0)
    initial = lc.create_model("lenet5").state_dict()
    masks = pruning.global_masks(lenet.model, 0.9)
    recipe = zoo.RECIPES["lenet5"]
    loader, test_loader = lc.get_dataloaders(128, tiny_budget, augment=False, seed=0)
    for got, start in ((ticket, pruning.rewind(lenet.model, initial, masks)),
                       (control, pruning.random_reinit(lenet.model, masks, seed=1))):
        history = lc.fit(start, loader, 2, test_loader, lr=recipe["lr"],
                         weight_decay=recipe["weight_decay"], schedule=recipe["schedule"],
                         seed=0, progress=False)
        pruning.remove_masks(start)
        assert _same_state(got.model, start) and got.accuracy == history.test_accuracy[-1]
        assert got.info == {"method": "lottery", "sparsity": pruning.sparsity(start)}
    assert abs(ticket.info["sparsity"] - 0.9) < 0.01 and not _same_state(ticket.model, control.model)
    with pytest.raises(ValueError, match="base must come from the zoo"):
        zoo.get_pruned(dataclasses.replace(lenet, zoo_name=None), "lottery", 2, tiny_budget,
                       sparsity=0.9)
    with pytest.raises(ValueError, match="needs a base trained from scratch"):
        zoo.get_pruned(dataclasses.replace(lenet, zoo_name="lenet5_more"), "lottery", 2,
                       tiny_budget, sparsity=0.9)


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="iterative", sparsity=0.9), "'iterative' needs rounds"),
    (dict(method="iterative", sparsity=0.9, rounds=(0.95,)), "rounds must be non-decreasing"),
    (dict(method="iterative", sparsity=0.9, rounds=(0.8, 0.6)), "rounds must be non-decreasing"),
    (dict(method="iterative", sparsity=0.9, rounds=(0.5, 0.8), epochs=2), "one per round"),
    (dict(method="iterative", macs_share=0.5, rounds=(0.5,)), r"'iterative' needs sparsity"),
    (dict(method="agp", sparsity=0.9, rounds=(0.5,)), "'agp' does not take rounds"),
    (dict(method="lottery"), r"'lottery' needs sparsity"),
    (dict(method="lottery", sparsity=0.9, lr=0.1), "'lottery' does not take lr"),
    (dict(method="lottery", sparsity=0.9, reinit_seed=-1), "reinit_seed must be an int"),
    (dict(method="finetune", reinit_seed=1), "'finetune' does not take reinit_seed"),
])
def test_get_pruned_rejects_bad_iterative_and_lottery_settings(tiny_base, tiny_budget, kwargs,
                                                               match):
    kwargs = {"epochs": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        lc.zoo.get_pruned(tiny_base, budget=tiny_budget, progress=False, **kwargs)
    with pytest.raises(TypeError, match="rounds must be a list or tuple"):
        lc.zoo.get_pruned(tiny_base, "iterative", 3, tiny_budget, sparsity=0.9, rounds=0.5)


def _stub(name: str, arch: str = "baseline_cnn") -> "zoo.TrainedModel":
    """A model that says it came from zoo entry ``name`` (nothing is loaded or trained)."""
    return zoo.TrainedModel(lc.create_model(arch), 0.9, lc.train.History(),
                            Path(f"{name}.safetensors"), False, zoo_name=name)


def _resolved(monkeypatch, call: Callable[[], object]) -> list:
    """The entry ``call`` asks the zoo for (``_from_zoo`` stops it before any work)."""
    seen = []

    def stop(entry):
        seen.append(None if entry is None else entry.name)
        raise _Matched

    monkeypatch.setattr(zoo, "_from_zoo", stop)
    with pytest.raises(_Matched):
        call()
    return seen


@pytest.mark.parametrize("base, call, expected", [
    # chapter 04: pruned to 12x (gradual and iterative), channels to half the MACs (L1 and
    # network slimming), 10 epochs and twice that, beside the fine-tuning control (which
    # chapter 05's QAT shares)
    ("baseline_cnn", dict(method="agp", epochs=10, sparsity=zoo.SPARSITY_12X),
     "baseline_cnn+agp12x_e10"),
    ("baseline_cnn", dict(method="agp", epochs=20, sparsity=zoo.SPARSITY_12X),
     "baseline_cnn+agp12x_e20"),
    ("baseline_cnn", dict(method="iterative", epochs=10, sparsity=zoo.SPARSITY_12X,
                          rounds=(0.6, 0.85)), "baseline_cnn+iterative12x_e10"),
    ("baseline_cnn", dict(method="iterative", epochs=20, sparsity=zoo.SPARSITY_12X,
                          rounds=[0.6, 0.85]), "baseline_cnn+iterative12x_e20"),
    ("baseline_cnn", dict(method="l1", epochs=10, macs_share=0.5), "baseline_cnn+l1_half_macs_e10"),
    ("baseline_cnn", dict(method="l1", epochs=20, macs_share=0.5), "baseline_cnn+l1_half_macs_e20"),
    ("baseline_cnn", dict(method="slimming", epochs=10, macs_share=0.5, penalty=2e-2,
                          penalty_epochs=3), "baseline_cnn+slimming_half_macs_e10"),
    ("baseline_cnn", dict(method="slimming", epochs=20, macs_share=0.5, penalty=2e-2,
                          penalty_epochs=3), "baseline_cnn+slimming_half_macs_e20"),
    ("baseline_cnn", dict(method="finetune", epochs=10), "baseline_cnn+finetune_e10"),
    ("baseline_cnn", dict(method="finetune", epochs=13), "baseline_cnn+finetune_e13"),
    ("baseline_cnn", dict(method="finetune", epochs=20), "baseline_cnn+finetune_e20"),
    # chapter 04 on LeNet-5: 12x by the same loop, its control, the lottery ticket at 10%
    # of the weights and its re-initialised control
    ("lenet5", dict(method="iterative", epochs=10, sparsity=zoo.LENET5_SPARSITY_12X,
                    rounds=(0.6, 0.85)), "lenet5+iterative12x_e10"),
    ("lenet5", dict(method="finetune", epochs=10), "lenet5+finetune_e10"),
    ("lenet5", dict(method="lottery", epochs=20, sparsity=0.9), "lenet5+ticket_keep10_e20"),
    ("lenet5", dict(method="lottery", epochs=20, sparsity=0.9, reinit_seed=1),
     "lenet5+reinit_keep10_e20"),
    ("lenet5", dict(method="lottery", epochs=20, sparsity=0.9, seed=2),
     "lenet5+ticket_keep10_e20_s2"),
    ("lenet5", dict(method="lottery", epochs=20, sparsity=0.9, reinit_seed=2, seed=1),
     "lenet5+reinit_keep10_e20_s1"),
    # chapter 09: L1 with rounded widths; unrounded is another entry
    ("baseline_cnn", dict(method="l1", epochs=10, macs_share=0.5, round_to=16),
     "baseline_cnn+l1_half_macs_r16_e10"),
    ("baseline_cnn", dict(method="l1", epochs=10, macs_share=0.5, round_to=8), None),
    # the chapter's old schedules, another round, penalty or seed: no entry
    ("baseline_cnn", dict(method="agp", epochs=6, sparsity=zoo.SPARSITY_12X), None),
    ("baseline_cnn", dict(method="l1", epochs=3, macs_share=0.5), None),
    ("baseline_cnn", dict(method="iterative", epochs=10, sparsity=zoo.SPARSITY_12X,
                          rounds=(0.5, 0.85)), None),
    ("baseline_cnn", dict(method="slimming", epochs=10, macs_share=0.5, penalty_epochs=2), None),
    ("lenet5", dict(method="lottery", epochs=20, sparsity=0.9, reinit_seed=2), None),
    ("lenet5", dict(method="lottery", epochs=1, sparsity=0.9), None),
])
def test_chapter_04s_calls_resolve_to_their_zoo_entries(base, call, expected, monkeypatch):
    """get_pruned called as chapter 04 calls it finds the entry that ships it, at ci as at
    full (the chapter asserts at full that it got it)."""
    for budget in ("ci", "full"):
        seen = _resolved(monkeypatch, lambda: zoo.get_pruned(
            _stub(base, base), budget=lc.get_budget(budget), progress=False, **call))
        assert seen == [expected]


def test_every_pruned_entry_is_a_call_of_get_pruned():
    """Each entry's settings are what get_pruned builds for the same call, so a call can
    match it; and the 12x sparsities are what chapter 04 computes."""
    assert zoo.LENET5_SPARSITY_12X == lc.pruning.sparsity_for_ratio(lc.create_model("lenet5"), 12)
    for entry in zoo.ENTRIES.values():
        if entry.prune is not None:
            assert entry.prune == zoo._pruning_settings(**entry.prune), entry.name
        if entry.prune is not None and entry.prune["method"] == "lottery":
            assert not zoo.ENTRIES[entry.pruned_from].dependencies()      # from scratch


def test_chapter_04s_new_kinds_build_load_and_answer_get_pruned(tiny_zoo, monkeypatch):
    """Iterative pruning and the lottery ticket (and its control) built into a zoo of their
    own, loaded back checked, and served to get_pruned; another seed is not served."""
    base = zoo.ENTRIES["lenet5"]
    entries = [base,
               zoo._pruned("lenet5+iterative", base, "iterative", epochs=2, sparsity=0.9,
                           rounds=[0.5]),
               zoo._pruned("lenet5+ticket", base, "lottery", epochs=1, sparsity=0.8,
                           reinit_seed=None),
               zoo._pruned("lenet5+reinit", base, "lottery", epochs=1, sparsity=0.8,
                           reinit_seed=1)]
    monkeypatch.setattr(zoo, "ENTRIES", zoo._entries(*entries))
    assert zoo.build(progress=False) == [e.name for e in entries]
    manifest = weights.read_manifest(tiny_zoo)
    for entry in entries[1:]:
        meta = manifest[entry.name]
        assert meta["kind"] == "pruned" and meta["prune"] == entry.prune
        assert zoo.subset_correct(zoo.load(entry.name).model) == meta["subset_correct"]
    assert manifest["lenet5+iterative"]["info"]["round_sparsity"][0] == pytest.approx(0.5, abs=1e-3)

    def no_training(*args, **kwargs):
        raise AssertionError("a shipped model must not be trained")

    monkeypatch.setattr(zoo, "fit", no_training)
    lenet, ci = zoo.load("lenet5"), lc.get_budget("ci")
    got = zoo.get_pruned(lenet, "lottery", 1, ci, sparsity=0.8, progress=False)
    assert got.zoo_name == "lenet5+ticket" and _same_state(got.model, zoo.load("lenet5+ticket").model)
    assert zoo.get_pruned(lenet, "lottery", 1, ci, sparsity=0.8, reinit_seed=1,
                          progress=False).zoo_name == "lenet5+reinit"
    assert zoo.get_pruned(lenet, "iterative", 2, ci, sparsity=0.9, rounds=(0.5,),
                          progress=False).zoo_name == "lenet5+iterative"
    with pytest.raises(AssertionError, match="must not be trained"):
        zoo.get_pruned(lenet, "lottery", 1, ci, sparsity=0.8, reinit_seed=2, progress=False)


# ------------------------------------------------------------- get_decomposed (chapter 08)

def test_get_decomposed_equals_the_steps_done_by_hand_and_is_cached(tiny_base, tiny_budget,
                                                                   monkeypatch):
    from lightcnn import lowrank
    settings = dict(macs_ratio=2.0, round_to=8, skip=("features.0.0",), lr=0.003,
                    keep_best=True)
    got = lc.zoo.get_decomposed(tiny_base, "tucker2", epochs=2, budget=tiny_budget,
                                progress=False, **settings)
    assert got.trained_now and got.path.name.startswith("baseline_cnn+lowrank_tucker2-ci-")
    # by hand: the same plan, the same held-out images, the same fine-tuning
    model, plan = lowrank.decompose_model(tiny_base.model, "tucker2", macs_ratio=2.0,
                                          round_to=8, skip=("features.0.0",))
    train_loader, val_loader, test_loader = lc.get_dataloaders_with_val(
        128, tiny_budget, augment=True, seed=0, val_seed=lc.zoo.VAL_SEED)
    oneshot = lc.evaluate(model, test_loader)["accuracy"]
    history = lc.fit(model, train_loader, 2, test_loader, lr=0.003, schedule="cosine", seed=0,
                     progress=False, val_loader=val_loader, keep_best=True)
    assert got.info == {"method": "tucker2", "ranks": plan, "oneshot_accuracy": oneshot,
                        "val_size": tiny_budget.val_size, "val_seed": lc.zoo.VAL_SEED}
    assert _same_state(got.model, model)
    timeless = lambda h: {k: v for k, v in h.as_dict().items() if k != "seconds"}  # noqa: E731
    assert timeless(got.history) == timeless(history)
    assert got.accuracy == history.test_accuracy[history.best_epoch]
    assert got.accuracy == lc.evaluate(got.model, test_loader)["accuracy"]
    assert lc.count_macs(got.model) <= 0.5 * lc.count_macs(tiny_base.model)
    assert all(r % 8 == 0 for ranks in plan.values() for r in ranks)

    def no_training(*args, **kwargs):
        raise AssertionError("a cache hit must not train")

    monkeypatch.setattr(zoo, "fit", no_training)
    again = lc.zoo.get_decomposed(tiny_base, "tucker2", epochs=2, budget=tiny_budget,
                                  progress=False, **settings)
    assert not again.trained_now and again.info == got.info and again.accuracy == got.accuracy
    assert _same_state(again.model, got.model)      # rebuilt from the stored plan
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(again.model(x), got.model.eval()(x))
    assert isinstance(tiny_base.model.features[2][0], torch.nn.Conv2d)   # the base is untouched


def test_get_decomposed_cp_and_its_control_share_the_schedule(tiny_base, tiny_budget):
    cp = lc.zoo.get_decomposed(tiny_base, "cp", epochs=1, budget=tiny_budget, macs_ratio=2.0,
                               skip=("features.0.0",), n_iter_max=2, progress=False)
    assert cp.info["method"] == "cp" and set(cp.info["ranks"]) == {
        "features.2.0", "features.3.0", "features.5.0", "features.6.0"}
    assert cp.history.best_epoch is None and cp.accuracy == cp.history.test_accuracy[-1]
    control = lc.zoo.get_decomposed(tiny_base, "finetune", epochs=1, budget=tiny_budget,
                                    progress=False)
    shapes = {k: v.shape for k, v in tiny_base.model.state_dict().items()}
    assert {k: v.shape for k, v in control.model.state_dict().items()} == shapes
    assert not _same_state(control.model, tiny_base.model)          # it did train
    assert control.info == {"method": "finetune"} and control.history.lr == cp.history.lr


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(method="tucker2"), ValueError, "'tucker2' needs macs_ratio"),
    (dict(method="tucker2", macs_ratio=1.0), ValueError, "macs_ratio must be a finite number > 1"),
    (dict(method="svd", macs_ratio=2.0), ValueError, "method must be one of"),
    (dict(method="finetune", macs_ratio=2.0), ValueError, "'finetune' does not take macs_ratio"),
    (dict(method="finetune", skip=["features.0.0"]), ValueError, "does not take skip"),
    (dict(method="spatial", macs_ratio=2.0, n_iter_max=5), ValueError, "does not take n_iter_max"),
    (dict(method="cp", macs_ratio=2.0, round_to=0), ValueError, "round_to must be an int"),
    (dict(method="cp", macs_ratio=2.0, lr=0), ValueError, "lr must be"),
    (dict(method="cp", macs_ratio=2.0, keep_best="yes"), TypeError, "keep_best must be"),
    (dict(method="tucker2", macs_ratio=2.0, epochs=0), ValueError, "epochs must be an int >= 1"),
    (dict(method="tucker2", macs_ratio=2.0, skip=["nope"]), ValueError, "skip: 'nope' is not a module"),
])
def test_get_decomposed_rejects_bad_settings(tiny_base, tiny_budget, kwargs, error, match):
    kwargs = {"epochs": 1, **kwargs}
    with pytest.raises(error, match=match):
        lc.zoo.get_decomposed(tiny_base, budget=tiny_budget, progress=False, **kwargs)
    with pytest.raises(TypeError, match="base must be a TrainedModel"):
        lc.zoo.get_decomposed(tiny_base.model, "finetune", epochs=1, budget=tiny_budget)


# ------------------------------------------------------------- get_quantized (chapter 05)

def test_get_quantized_qat_kmeans_and_control_equal_the_steps_done_by_hand(tiny_base, tiny_budget,
                                                                           monkeypatch):
    from lightcnn import quantization as Q
    from lightcnn import weight_sharing as ws
    train_loader, test_loader = lc.get_dataloaders(128, tiny_budget, augment=True, seed=0)
    adamw = dict(lr=1e-4, optimizer="adamw", schedule="cosine", seed=0, progress=False)
    qat = lc.zoo.get_quantized(tiny_base, "qat", epochs=1, budget=tiny_budget, bits=4,
                               progress=False)
    assert qat.trained_now and qat.path.name.startswith("baseline_cnn+quant_qat-ci-")
    model = Q.prepare_qat(tiny_base.model, 4, 4)        # by hand, as chapter 05 did it
    history = lc.fit(model, train_loader, 1, test_loader, lr=0.01, schedule="cosine", seed=0,
                     progress=False)
    assert _same_state(qat.model, model) and qat.accuracy == history.test_accuracy[-1]
    assert qat.info == {"method": "qat"}
    kmeans = lc.zoo.get_quantized(tiny_base, "kmeans", epochs=1, budget=tiny_budget, bits=2,
                                  lr=1e-4, optimizer="adamw", progress=False)
    shared = ws.share_weights(tiny_base.model, 2)
    oneshot = lc.evaluate(shared, test_loader)["accuracy"]
    history = lc.fit(shared, train_loader, 1, test_loader, **adamw)
    # stored plain: the shared weights themselves, at most 4 values per layer
    assert _same_state(kmeans.model, ws.unshare(shared)) and not ws.shared_layers(kmeans.model)
    assert kmeans.info == {"method": "kmeans", "oneshot_accuracy": oneshot}
    assert kmeans.accuracy == history.test_accuracy[-1]
    assert all(layer.weight.unique().numel() <= 4
               for layer in lc.pruning.prunable_layers(kmeans.model).values())
    control = lc.zoo.get_quantized(tiny_base, "finetune", epochs=1, budget=tiny_budget, lr=1e-4,
                                   optimizer="adamw", progress=False)
    plain = copy.deepcopy(tiny_base.model)
    lc.fit(plain, train_loader, 1, test_loader, **adamw)
    assert _same_state(control.model, plain) and control.history.lr == kmeans.history.lr

    def no_training(*args, **kwargs):
        raise AssertionError("a cache hit must not train")

    monkeypatch.setattr(zoo, "fit", no_training)
    again = lc.zoo.get_quantized(tiny_base, "qat", epochs=1, budget=tiny_budget, bits=4,
                                 progress=False)
    assert not again.trained_now and _same_state(again.model, qat.model)   # wrappers rebuilt
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(again.model(x), qat.model.eval()(x))
    assert not lc.zoo.get_quantized(tiny_base, "kmeans", epochs=1, budget=tiny_budget, bits=2,
                                    lr=1e-4, optimizer="adamw", progress=False).trained_now


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(method="qat"), ValueError, r"'qat' needs bits, an int in \[2, 8\]"),
    (dict(method="qat", bits=1), ValueError, "bits must be an int in"),
    (dict(method="kmeans", bits=9), ValueError, "bits must be an int in"),
    (dict(method="int8_qat", bits=8), ValueError, "'int8_qat' does not take bits"),
    (dict(method="finetune", bits=4), ValueError, "'finetune' does not take bits"),
    (dict(method="ptq"), ValueError, "method must be one of"),
    (dict(method="qat", bits=4, optimizer="adam"), ValueError, "optimizer must be one of"),
    (dict(method="qat", bits=4, lr=0), ValueError, "lr must be"),
    (dict(method="qat", bits=4, epochs=0), ValueError, "epochs must be an int >= 1"),
    (dict(method="qat", bits=4.0), TypeError, "bits must be an int"),
    (dict(method="kmeans", bits=4, edge_bits=8), ValueError, "edge_bits is a setting of"),
    (dict(method="qat", bits=2, edge_bits=9), ValueError, "edge_bits must be an int in"),
])
def test_get_quantized_rejects_bad_settings(tiny_base, tiny_budget, kwargs, error, match):
    kwargs = {"epochs": 1, **kwargs}
    with pytest.raises(error, match=match):
        lc.zoo.get_quantized(tiny_base, budget=tiny_budget, progress=False, **kwargs)
    with pytest.raises(TypeError, match="base must be a TrainedModel"):
        lc.zoo.get_quantized(tiny_base.model, "finetune", epochs=1, budget=tiny_budget)


@pytest.mark.parametrize("call, expected", [
    # chapter 05: QAT at 4 and 2 bits and int8 QAT at chapter 04's fine-tuning rate (its
    # control is chapter 04's baseline_cnn+finetune_e10), k-means at 4 and 2 bits with
    # AdamW at 1e-4 beside its own control; 2 bits also at twice the schedule
    (dict(method="qat", epochs=10, bits=4, edge_bits=8), "baseline_cnn+qat_w4a4_e10"),
    (dict(method="qat", epochs=10, bits=2, edge_bits=8), "baseline_cnn+qat_w2a2_e10"),
    (dict(method="qat", epochs=20, bits=2, edge_bits=8), "baseline_cnn+qat_w2a2_e20"),
    (dict(method="qat", epochs=10, bits=2), None),   # every layer at 2 bits: no entry
    (dict(method="int8_qat", epochs=10), "baseline_cnn+int8_qat_e10"),
    (dict(method="kmeans", epochs=10, bits=4, lr=1e-4, optimizer="adamw"), "baseline_cnn+kmeans4_e10"),
    (dict(method="kmeans", epochs=10, bits=2, lr=1e-4, optimizer="adamw"), "baseline_cnn+kmeans2_e10"),
    (dict(method="kmeans", epochs=20, bits=2, lr=1e-4, optimizer="adamw"), "baseline_cnn+kmeans2_e20"),
    (dict(method="finetune", epochs=10, lr=1e-4, optimizer="adamw"),
     "baseline_cnn+adamw_finetune_e10"),
    # the chapter's old schedule, another optimizer or rate: no entry; the SGD control is
    # get_pruned's, not get_quantized's
    (dict(method="qat", epochs=3, bits=4), None),
    (dict(method="kmeans", epochs=10, bits=4, lr=1e-4), None),
    (dict(method="int8_qat", epochs=10, lr=1e-3), None),
    (dict(method="finetune", epochs=10), None),
])
def test_chapter_05s_calls_resolve_to_their_zoo_entries(call, expected, monkeypatch):
    """get_quantized called as chapter 05 calls it finds the entry that ships it."""
    for budget in ("ci", "full"):
        seen = _resolved(monkeypatch, lambda: zoo.get_quantized(
            _stub("baseline_cnn"), budget=lc.get_budget(budget), progress=False, **call))
        assert seen == [expected]


def test_every_quantized_entry_is_a_call_of_get_quantized():
    for entry in zoo.ENTRIES.values():
        if entry.quantize is not None:
            assert entry.quantize == zoo._quantization_settings(**entry.quantize), entry.name
            assert entry.quantize["epochs"] == entry.epochs
            assert entry.quantize["method"] in zoo.QUANTIZATION_METHODS


def test_get_trained_never_answers_with_a_derived_entry(monkeypatch):
    """The baseline trained on for 10 epochs is no pruned, decomposed or quantized entry,
    though those record the baseline's architecture and recipe."""
    assert _resolved(monkeypatch, lambda: zoo.get_trained(
        "baseline_cnn", lc.get_budget("ci"), epochs=10, progress=False)) == [None]


def test_quantized_entries_build_load_and_answer_get_quantized(tiny_zoo, monkeypatch):
    """Chapter 05's kinds of entry: QAT (its quantizers' scales in the state dict), int8
    QAT (the export graph captured again on load, the same keys) and k-means (stored
    plain), built into a zoo of their own, loaded back checked, served to get_quantized."""
    from lightcnn import int8
    base = zoo.ZooEntry("base", "baseline_cnn", zoo.RECIPES["baseline_cnn"], version=1,
                        epochs=1, kwargs=dict(widths=[8, 16, 24]))
    entries = [base, zoo._quantized("base+qat", base, "qat", epochs=1, bits=4),
               zoo._quantized("base+int8_qat", base, "int8_qat", epochs=1),
               zoo._quantized("base+kmeans", base, "kmeans", epochs=1, bits=2, lr=1e-4,
                              optimizer="adamw")]
    monkeypatch.setattr(zoo, "ENTRIES", zoo._entries(*entries))
    assert zoo.build(progress=False) == [e.name for e in entries]
    manifest = weights.read_manifest(tiny_zoo)
    loaded = {}
    for entry in entries[1:]:
        meta = manifest[entry.name]
        assert meta["kind"] == "quantized" and meta["quantized_from"] == "base"
        loaded[entry.name] = zoo.load(entry.name)
        assert zoo.subset_correct(loaded[entry.name].model) == meta["subset_correct"], entry.name
    assert any(isinstance(m, lc.quantization.QuantWrapper) for m in loaded["base+qat"].model.modules())
    x = torch.randn(4, 1, 28, 28)
    assert int8.convert_int8_qat(loaded["base+int8_qat"].model)(x).shape == (4, 10)

    def no_training(*args, **kwargs):
        raise AssertionError("a shipped model must not be trained")

    monkeypatch.setattr(zoo, "fit", no_training)
    ci = lc.get_budget("ci")
    got = zoo.get_quantized(zoo.load("base"), "qat", 1, ci, bits=4, progress=False)
    assert got.zoo_name == "base+qat"
    assert zoo.get_quantized(zoo.load("base"), "kmeans", 1, ci, bits=2, lr=1e-4,
                             optimizer="adamw", progress=False).zoo_name == "base+kmeans"
    with pytest.raises(AssertionError, match="must not be trained"):
        zoo.get_quantized(zoo.load("base"), "qat", 1, ci, bits=3, progress=False)
    text = zoo.table()
    assert "| `base+qat` | base quantized by qat (lr=0.01, optimizer=sgd, bits=4), fine-tuned | 1 |" in text


# --- the shipped zoo ------------------------------------------------------------------------

import os

from lightcnn import weights
from pathlib import Path
from lightcnn.weights import ZooError


@pytest.fixture
def tiny_zoo(tmp_path, monkeypatch, isolated_cache, tiny_budget):
    """A zoo folder of its own, entries of 1-epoch LeNet-5s, and a 'full' budget that trains
    them on 200 images, so build runs in seconds."""
    folder = tmp_path / "zoo"
    monkeypatch.setenv("LIGHTCNN_ZOO", str(folder))
    entries = {
        "lenet5": zoo.ZooEntry("lenet5", "lenet5", zoo.RECIPES["lenet5"], version=1, epochs=1),
        "lenet5_seed1": zoo.ZooEntry("lenet5_seed1", "lenet5", zoo.RECIPES["lenet5"],
                                     version=1, epochs=1, seed=1),
        "lenet5_more": zoo.ZooEntry("lenet5_more", "lenet5", zoo.RECIPES["lenet5"], version=1,
                                    epochs=1, seed=2, init_from="lenet5"),
    }
    monkeypatch.setattr(zoo, "ENTRIES", entries)
    monkeypatch.setitem(lc.budget.BUDGETS, "full", dataclasses.replace(tiny_budget, name="full"))
    return folder


def test_build_ships_models_and_get_trained_loads_them_at_both_budgets(tiny_zoo, monkeypatch):
    written = zoo.build(["lenet5_more"], progress=False)
    assert written == ["lenet5", "lenet5_more"]       # its dependency first
    manifest = weights.read_manifest(tiny_zoo)
    for name in written:
        meta = manifest[name]
        assert meta["recipe_version"] == 1 and meta["epochs"] == 1 and meta["torch"]
        assert meta["sha256"] == weights.sha256_file(tiny_zoo / meta["file"])
        assert (tiny_zoo / meta["history"]).is_file() and "(cpu)" in meta["trained_on"]
        assert 0 <= meta["subset_correct"] <= 1000
    assert manifest["lenet5_more"]["init_from"] == "lenet5"

    def no_training(*args, **kwargs):
        raise AssertionError("a shipped model must not be trained")

    monkeypatch.setattr(zoo, "fit", no_training)
    every_image = dataclasses.replace(lc.budget.BUDGETS["ci"], name="full", train_size=None)
    for budget in (lc.get_budget("ci"), every_image):
        got = zoo.get_trained("lenet5", budget=budget, progress=False)
        assert got.zoo_name == "lenet5" and not got.trained_now
        assert got.accuracy == manifest["lenet5"]["test_accuracy"]
        assert got.path == tiny_zoo / "lenet5.safetensors"
    # a model started from a shipped one is matched through the entry it came from
    more = zoo.get_trained("lenet5", budget=lc.get_budget("ci"), seed=2, init_from=got,
                           progress=False)
    assert more.zoo_name == "lenet5_more"
    assert zoo.subset_correct(more.model) == manifest["lenet5_more"]["subset_correct"]
    # resumable: only what is not shipped is trained
    monkeypatch.setattr(zoo, "fit", lc.train.fit)
    assert zoo.build(progress=False) == ["lenet5_seed1"]
    assert zoo.build(progress=False) == []


def test_a_call_that_differs_from_every_entry_trains_as_before(tiny_zoo, tiny_budget):
    zoo.build(["lenet5"], progress=False)
    other_recipe = dict(zoo.RECIPES["lenet5"], lr=0.01)
    for kwargs in ({"seed": 5}, {"recipe": other_recipe}, {"epochs": 2}):
        got = zoo.get_trained("lenet5", budget=lc.get_budget("ci"), progress=False, **kwargs)
        assert got.zoo_name is None and got.trained_now
    # a budget on a training subset other than ci's never gets the zoo's models
    assert zoo.get_trained("lenet5", budget=tiny_budget, progress=False).zoo_name is None


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_shipped_model_is_refused_never_retrained(tiny_zoo, damage):
    zoo.build(["lenet5"], progress=False)
    path = tiny_zoo / "lenet5.safetensors"
    if damage == "delete":
        path.unlink()
    else:
        blob = bytearray(path.read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        path.write_bytes(bytes(blob if damage == "flip" else blob[:50]))
    before = path.read_bytes() if path.exists() else None
    with pytest.raises(ZooError, match="lenet5.safetensors") as err:
        zoo.get_trained("lenet5", budget=lc.get_budget("ci"), progress=False)
    assert "python -m lightcnn.zoo build lenet5" in str(err.value)
    assert (path.read_bytes() if path.exists() else None) == before


def test_a_version_bump_rebuilds_and_a_silent_change_is_refused(tiny_zoo, monkeypatch):
    zoo.build(["lenet5"], progress=False)
    first_sha = weights.read_manifest(tiny_zoo)["lenet5"]["sha256"]
    changed = dataclasses.replace(zoo.ENTRIES["lenet5"], recipe=dict(zoo.RECIPES["lenet5"], lr=0.02))
    monkeypatch.setitem(zoo.ENTRIES, "lenet5", changed)
    with pytest.raises(ZooError, match="bump ZooEntry.version"):
        zoo.load("lenet5")
    assert zoo.build(["lenet5"], progress=False) == []     # same version: not rebuilt
    monkeypatch.setitem(zoo.ENTRIES, "lenet5", dataclasses.replace(changed, version=2))
    with pytest.raises(ZooError, match="recipe version 1"):
        zoo.load("lenet5")
    assert zoo.build(["lenet5"], progress=False) == ["lenet5"]
    meta = weights.read_manifest(tiny_zoo)["lenet5"]
    assert meta["recipe_version"] == 2 and meta["sha256"] != first_sha
    assert zoo.load("lenet5").zoo_name == "lenet5"


def test_parallel_build_equals_serial_build(tiny_zoo, tmp_path, monkeypatch):
    serial = zoo.build(["lenet5", "lenet5_seed1"], progress=False)
    first = weights.read_manifest(tiny_zoo)
    monkeypatch.setenv("LIGHTCNN_ZOO", str(tmp_path / "zoo2"))
    monkeypatch.setenv("LIGHTCNN_CACHE", str(tmp_path / "cache2"))
    parallel = zoo.build(["lenet5", "lenet5_seed1"], jobs=2, progress=False)
    assert sorted(parallel) == sorted(serial)
    manifest = weights.read_manifest(tmp_path / "zoo2")
    for name in parallel:   # the same models (bitwise equality is not promised: see check)
        assert manifest[name]["seed"] == first[name]["seed"]
        assert abs(manifest[name]["test_accuracy"] - first[name]["test_accuracy"]) <= 0.02
        threads = max(1, (os.cpu_count() or 1) // 2)        # the cores shared by 2 jobs
        assert f"{threads} threads" in manifest[name]["trained_on"]


def test_check_reproduces_on_the_same_machine(tiny_zoo):
    zoo.build(["lenet5"], progress=False)
    report = zoo.check("lenet5", progress=False)
    assert report["same_machine"] and report["reproduced"]
    # a file of the current encoding has one layout per set of weights: equal bytes iff
    # equal weights (oneDNN may or may not reproduce them bit for bit: see check)
    assert report["sha256_equal"] == report["weights_equal"]
    assert abs(report["accuracy"] - report["manifest_accuracy"]) <= 0.002


def test_zoo_bad_arguments(tiny_zoo):
    with pytest.raises(ValueError, match="unknown zoo entry 'nope'"):
        zoo.load("nope")
    with pytest.raises(TypeError, match="name must be a str"):
        zoo.load(3)
    with pytest.raises(ValueError, match="jobs"):
        zoo.build(jobs=0)
    with pytest.raises(ValueError, match="unknown zoo entry"):
        zoo.build(["nope"])
    with pytest.raises(ZooError, match="not shipped"):
        zoo.check("lenet5")
    assert zoo.main(["build", "nope"]) == 2


def test_cli_lists_entries(tiny_zoo, capsys):
    assert zoo.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "lenet5" in out and "not built" in out


def test_every_shipped_model_loads_checked_and_scores_its_manifest(shipped_zoo):
    """The zoo the chapters load: files and manifest agree, every SHA-256 matches, every
    entry in the code describes what trained its file, and each model gets exactly the
    manifest's count right on the fixed 1,000-image test subset."""
    weights.check_store(shipped_zoo)
    manifest = weights.read_manifest(shipped_zoo)
    assert set(manifest) <= set(zoo.ENTRIES), "shipped files the code has no entry for"
    for name, meta in manifest.items():
        model = zoo.load(name)      # checks the SHA-256 and the entry against the manifest
        assert zoo.subset_correct(model.model) == meta["subset_correct"], name
        # the epoch whose weights were kept: the last, or the best on validation data
        assert model.history.test_accuracy[model.history.kept_epoch] == meta["test_accuracy"], name


def test_shipped_zoo_size_is_bounded(shipped_zoo):
    total = sum(p.stat().st_size for p in shipped_zoo.glob("*") if p.is_file())
    assert total <= 40 * 2**20, f"the zoo is {total / 2**20:.1f} MiB, over the 40 MiB budget"


def test_entries_are_consistent():
    model = lc.create_model("baseline_cnn")
    assert zoo.SPARSITY_12X == lc.pruning.sparsity_for_ratio(model, 12)   # what chapter 04 asks
    for entry in zoo.ENTRIES.values():
        assert entry.model in lc.list_models()
        assert all(d in zoo.ENTRIES for d in entry.dependencies())
        assert (entry.prune is None) == (entry.pruned_from is None)
        if entry.prune is not None:
            assert entry.prune["method"] in zoo.PRUNING_METHODS
            assert entry.prune["epochs"] == entry.epochs
        assert (entry.decompose is None) == (entry.decomposed_from is None)
        if entry.decompose is not None:
            assert entry.decompose["method"] in zoo.LOWRANK_METHODS
            assert entry.decompose["epochs"] == entry.epochs and entry.pruned_from is None
            # the settings get_decomposed builds for the same call: the entry can match
            assert entry.decompose == zoo._lowrank_settings(**{
                k: entry.decompose.get(k) for k in ("method", "epochs", "lr", "seed",
                                                    "keep_best", "macs_ratio", "round_to",
                                                    "n_iter_max")},
                skip=entry.decompose.get("skip", ()))
    one = zoo.ZooEntry("a", "lenet5", zoo.RECIPES["lenet5"], version=1, epochs=1)
    with pytest.raises(ValueError, match="defined twice"):
        zoo._entries(one, one)
    with pytest.raises(ValueError, match="needs 'b', defined later"):
        zoo._entries(dataclasses.replace(one, init_from="b"))
    with pytest.raises(ValueError, match="decomposed_from and decompose go together"):
        dataclasses.replace(one, decomposed_from="a")
    with pytest.raises(ValueError, match="pruned, decomposed or quantized, one of them"):
        dataclasses.replace(one, decomposed_from="a", decompose={"method": "cp"},
                            pruned_from="a", prune={"method": "l1"})
    with pytest.raises(ValueError, match="quantized_from and quantize go together"):
        dataclasses.replace(one, quantize={"method": "qat"})


def test_the_books_zoo_table_matches_the_manifest(shipped_zoo):
    """book/results/zoo.md is what `python -m lightcnn.zoo table` writes from the shipped
    manifest (make zoo rewrites it): a model shipped without it fails here."""
    book_copy = shipped_zoo.parent / "book" / "results" / "zoo.md"
    assert book_copy.read_text() == zoo.table(), (
        "book/results/zoo.md is stale: run python -m lightcnn.zoo table --write book/results/zoo.md")


def test_table_lists_every_entry_built_or_not(tiny_zoo):
    zoo.build(["lenet5"], progress=False)
    text = zoo.table()
    assert "| `lenet5` | lenet5(), sgd lr 0.05 | 1 | 0 |" in text
    assert "| `lenet5_seed1` |" in text and "not built" in text
    assert "| `lenet5_more` | lenet5() from lenet5, sgd lr 0.05 |" in text
    assert "1 of 3 entries shipped" in text


def test_a_decomposed_entry_builds_loads_and_answers_get_decomposed(tiny_zoo, monkeypatch):
    """Chapter 08's kind of entry: the baseline decomposed and fine-tuned with a
    validation split, built into a zoo of its own, loaded back in its factored shapes
    (rebuilt from the plan the manifest stores), and served to get_decomposed."""
    base = zoo.ZooEntry("base", "baseline_cnn", zoo.RECIPES["baseline_cnn"], version=1,
                        epochs=1, kwargs=dict(widths=[8, 16, 24]))
    tucker = zoo._decomposed("base+tucker2", base, "tucker2", epochs=2, lr=0.003,
                             macs_ratio=2.0, round_to=4, skip=["features.0.0"])
    control = zoo._decomposed("base+finetune", base, "finetune", epochs=2, lr=0.003)
    monkeypatch.setattr(zoo, "ENTRIES", zoo._entries(base, tucker, control))
    assert zoo.build(progress=False) == ["base", "base+tucker2", "base+finetune"]
    manifest = weights.read_manifest(tiny_zoo)
    meta = manifest["base+tucker2"]
    assert meta["kind"] == "decomposed" and meta["decomposed_from"] == "base"
    assert meta["info"]["val_size"] == lc.budget.BUDGETS["full"].val_size
    loaded = zoo.load("base+tucker2")
    assert isinstance(loaded.model.features[2][0], torch.nn.Sequential)     # factored
    assert zoo.subset_correct(loaded.model) == meta["subset_correct"]
    history = loaded.history
    assert len(history.val_accuracy) == 2 and history.best_epoch is not None
    assert history.test_accuracy[history.kept_epoch] == meta["test_accuracy"]
    assert zoo.subset_correct(zoo.load("base+finetune").model) == \
        manifest["base+finetune"]["subset_correct"]

    def no_training(*args, **kwargs):
        raise AssertionError("a shipped model must not be trained")

    monkeypatch.setattr(zoo, "fit", no_training)
    got = zoo.get_decomposed(zoo.load("base"), "tucker2", epochs=2, lr=0.003, macs_ratio=2.0,
                             round_to=4, skip=("features.0.0",), keep_best=True,
                             budget=lc.get_budget("ci"), progress=False)
    assert got.zoo_name == "base+tucker2" and _same_state(got.model, loaded.model)
    text = zoo.table()
    assert "| `base+tucker2` | base decomposed by tucker2 (lr=0.003, keep_best=True, " \
           "macs_ratio=2.0, round_to=4, skip=['features.0.0']), fine-tuned | 2 | 0 |" in text
    assert "| `base+finetune` | base fine-tuned without decomposing (lr=0.003, " \
           "keep_best=True): the control |" in text


def test_label_smoothing_recipe_trains_with_smoothed_targets(isolated_cache, tiny_budget, monkeypatch):
    """A recipe's label_smoothing reaches the loss: the first batch's loss equals
    F.cross_entropy(..., label_smoothing=eps) of the untrained model, and the key changes."""
    import torch.nn.functional as F

    recipe = dict(zoo.RECIPES["lenet5"], label_smoothing=0.1)
    assert zoo.cache_key("lenet5", tiny_budget, recipe=recipe) != zoo.cache_key("lenet5", tiny_budget)
    seen = {}
    real_fit = zoo.fit

    def spy(model, loader, epochs, *args, loss_fn=None, **kwargs):
        x, y = next(iter(loader))
        seen["got"] = loss_fn(model, x, y).item()
        seen["want"] = F.cross_entropy(model(x), y, label_smoothing=0.1).item()
        seen["plain"] = F.cross_entropy(model(x), y).item()
        return real_fit(model, loader, epochs, *args, loss_fn=loss_fn, **kwargs)

    monkeypatch.setattr(zoo, "fit", spy)
    zoo.get_trained("lenet5", tiny_budget, progress=False, recipe=recipe)
    assert seen["got"] == pytest.approx(seen["want"]) and seen["got"] != pytest.approx(seen["plain"])
    with pytest.raises(ValueError, match="label_smoothing"):
        zoo.get_trained("lenet5", tiny_budget, recipe=dict(recipe, label_smoothing=1.5))


class _Matched(Exception):
    pass


@pytest.mark.parametrize("call, expected", [
    # chapter 06: a binary network fine-tuned from the shipped baseline
    (dict(name="binary_cnn", epochs=10, init="baseline_cnn", scheme="xnor", keep_first_last=True),
     "binary_cnn+xnor_e10"),
    (dict(name="binary_cnn", epochs=20, init="baseline_cnn", scheme="xnor", keep_first_last=True),
     "binary_cnn+xnor_e20"),
    (dict(name="binary_cnn", epochs=10, init="baseline_cnn", scheme="xnor", keep_first_last=False),
     "binary_cnn+xnor_all_binary_e10"),
    # chapter 07: students alone, distilled, smoothed (widths as the chapter writes them)
    (dict(name="baseline_cnn", epochs=20, seed=1, recipe="student", widths=(8, 16, 32)),
     "cnn_x0.25+alone_s1"),
    (dict(name="squeezenet1_1", epochs=20, seed=2, recipe="student", width_mult=0.25,
          teacher="baseline_cnn", distill=dict(temperature=4.0, alpha=0.1)),
     "squeezenet1_1_x0.25+kd_s2"),
    (dict(name="baseline_cnn", epochs=20, seed=0, recipe="smooth", widths=(16, 32, 64)),
     "cnn_x0.5+smooth_s0"),
    # chapter 08: the thinner dense network at half the MACs, the baseline's recipe and
    # schedule (the chapter passes no epochs: the budget's, which the zoo serves at both)
    (dict(name="baseline_cnn", epochs=None, widths=(24, 48, 80)), "cnn_half_macs"),
    (dict(name="baseline_cnn", epochs=20, widths=(24, 48, 80)), "cnn_half_macs"),
    # another schedule or setting matches no entry; nor does a decomposed entry's schedule
    (dict(name="baseline_cnn", epochs=2, seed=0, recipe="student", widths=(8, 16, 32)), None),
    (dict(name="baseline_cnn", epochs=10, init="baseline_cnn"), None),
    (dict(name="squeezenet1_1", epochs=20, seed=0, recipe="student", width_mult=0.25,
          teacher="baseline_cnn", distill=dict(temperature=2.0, alpha=0.1)), None),
])
def test_the_chapters_calls_match_their_zoo_entries(call, expected, monkeypatch, tiny_budget):
    """get_trained called as chapters 06, 07 and 08 call it finds the entry that ships it."""
    call = dict(call)
    name, epochs, seed = call.pop("name"), call.pop("epochs"), call.pop("seed", 0)
    recipe = {"student": zoo.STUDENT_RECIPE, "smooth": dict(zoo.STUDENT_RECIPE, label_smoothing=0.1),
              None: None}[call.pop("recipe", None)]
    init = call.pop("init", None)
    teacher = call.pop("teacher", None)
    seen = _resolved(monkeypatch, lambda: zoo.get_trained(
        name, lc.get_budget("ci"), seed=seed, epochs=epochs, recipe=recipe,
        init_from=None if init is None else _stub(init),
        teacher=None if teacher is None else _stub(teacher), progress=False, **call))
    assert seen == [expected]


def _chapter_07_fetch_cell() -> str:
    """The code cell of chapter 07 that defines its students (STUDENTS, KINDS, SEEDS) and
    ``fetch(student, kind, seed)``, the one call through which it loads every student."""
    import json

    notebook = Path(__file__).resolve().parents[1] / "chapters" / "07_distillation.ipynb"
    cells = ["".join(cell["source"]) for cell in json.loads(notebook.read_text())["cells"]
             if cell["cell_type"] == "code" and "def fetch(" in "".join(cell["source"])]
    assert len(cells) == 1, "chapter 07 must define fetch in exactly one code cell"
    return cells[0]


@pytest.mark.parametrize("budget_name", ["ci", "full"])
def test_chapter_07s_students_resolve_to_their_zoo_entries(budget_name, monkeypatch, capsys):
    """Chapter 07's own fetch cell, run as the chapter runs it: every (student, kind, seed)
    it fetches resolves to the zoo entry f"{student}+{kind}_s{seed}" at both budgets, so
    with the entries shipped the chapter trains none of them; and it fetches every one of
    the zoo's chapter-07 entries (the students' recipe, plain or smoothed)."""
    seen = []

    def stop(entry):
        seen.append(None if entry is None else entry.name)
        raise _Matched

    monkeypatch.setattr(zoo, "_from_zoo", stop)
    teacher = zoo.TrainedModel(lc.create_model("baseline_cnn"), 0.9, lc.train.History(),
                               Path("baseline_cnn.safetensors"), False, zoo_name="baseline_cnn")
    chapter = {"lc": lc, "budget": lc.get_budget(budget_name), "teacher": teacher}
    exec(_chapter_07_fetch_cell(), chapter)     # defines the students; prints their counts
    fetched = []
    for student in chapter["STUDENTS"]:
        for kind in chapter["KINDS"][student]:
            for seed in chapter["SEEDS"]:
                with pytest.raises(_Matched):
                    chapter["fetch"](student, kind, seed)
                fetched.append(f"{student}+{kind}_s{seed}")
    assert seen == fetched
    students_recipe = [name for name, entry in zoo.ENTRIES.items()
                       if {k: v for k, v in entry.recipe.items() if k != "label_smoothing"}
                       == zoo.STUDENT_RECIPE]
    assert sorted(fetched) == sorted(students_recipe) and len(fetched) == 33


_HALF = dict(macs_ratio=2.0, round_to=8, skip=("features.0.0",))


@pytest.mark.parametrize("call, expected", [
    # chapter 08: the baseline decomposed to half its MACs, fine-tuned at the zoo's rate
    (dict(method="tucker2", epochs=10, **_HALF), "baseline_cnn+tucker2_half_macs_e10"),
    (dict(method="spatial", epochs=10, **_HALF), "baseline_cnn+spatial_half_macs_e10"),
    (dict(method="cp", epochs=10, n_iter_max=25, **_HALF), "baseline_cnn+cp_half_macs_e10"),
    (dict(method="cp", epochs=20, n_iter_max=25, **_HALF), "baseline_cnn+cp_half_macs_e20"),
    (dict(method="finetune", epochs=10), "baseline_cnn+lowrank_finetune_e10"),
    # another rate, rounding, schedule or selection matches no entry
    (dict(method="tucker2", epochs=10, **dict(_HALF, round_to=None)), None),
    (dict(method="tucker2", epochs=3, **_HALF), None),
    (dict(method="cp", epochs=10, n_iter_max=25, lr=0.01, **_HALF), None),
    (dict(method="finetune", epochs=10, keep_best=False), None),
])
def test_chapter_08s_calls_match_their_zoo_entries(call, expected, monkeypatch):
    """get_decomposed called as chapter 08 should call it finds the entry that ships it."""
    call = {"lr": zoo.LOWRANK_LR, "keep_best": True, **call}
    seen = _resolved(monkeypatch, lambda: zoo.get_decomposed(
        _stub("baseline_cnn"), budget=lc.get_budget("ci"), progress=False, **call))
    assert seen == [expected]


def test_chapter_08s_pruned_comparator_is_chapter_04s_zoo_model(monkeypatch):
    """Chapter 08 sets chapter 04's L1-pruned model at half the MACs beside its
    decompositions: get_pruned called as chapter 08 calls it finds that entry."""
    seen = _resolved(monkeypatch, lambda: zoo.get_pruned(
        _stub("baseline_cnn"), "l1", 10, lc.get_budget("ci"), macs_share=0.5, progress=False))
    assert seen == ["baseline_cnn+l1_half_macs_e10"]


def test_the_thinner_dense_network_has_half_the_baselines_macs():
    """chapter 08's same-MACs comparison: cnn_half_macs against the 2x decompositions."""
    from lightcnn import lowrank
    entry = zoo.ENTRIES["cnn_half_macs"]
    baseline = lc.create_model("baseline_cnn")
    thin = lc.create_model(entry.model, **entry.kwargs)
    ratio = lc.count_macs(baseline) / lc.count_macs(thin)
    assert 2.0 <= ratio <= 2.05 and all(w % 8 == 0 for w in entry.kwargs["widths"])
    for method in ("spatial", "tucker2"):
        small, _ = lowrank.decompose_model(baseline, method, **_HALF)
        assert abs(lc.count_macs(small) - lc.count_macs(thin)) <= 0.02 * lc.count_macs(baseline)


def _resolves_to(monkeypatch, name, **kwargs):
    """The zoo entry get_trained(name, **kwargs) finds at the ci budget (None: no entry)."""
    return _resolved(monkeypatch, lambda: zoo.get_trained(name, lc.get_budget("ci"),
                                                          progress=False, **kwargs))[0]


def _chapter_02_calls() -> list[tuple[str, dict]]:
    """Chapter 02's design_cnn calls, with the widths the chapter computes, and the zoo
    entry each must load."""
    from lightcnn import design
    base_macs = lc.count_macs(lc.create_model("baseline_cnn"))
    targets = {"eighth": base_macs // 8, "half": base_macs // 2}   # the chapter's "1/8", "1/2"
    calls = []
    for size, target in targets.items():                          # depth against width
        for depths in ((1, 1, 1), (1, 2, 2), (2, 3, 3)):
            widths = design.fit_widths_to_macs(target, depths)
            calls.append((f"design_cnn_{size}_d{''.join(map(str, depths))}",
                          dict(widths=widths, depths=depths)))
    half = design.fit_widths_to_macs(targets["half"], (1, 2, 2))
    for activation in design.ACTIVATIONS:                         # relu: design_cnn_half_d122
        if activation != "relu":
            calls.append((f"design_cnn_half_d122_{activation}",
                          dict(widths=half, depths=(1, 2, 2), activation=activation)))
    for block in design.BLOCKS:                                   # conv: design_cnn_eighth_d122
        if block != "conv":
            widths = design.fit_widths_to_macs(targets["eighth"], (1, 2, 2), block=block)
            calls.append((f"design_cnn_eighth_d122_{block}",
                          dict(widths=widths, depths=(1, 2, 2), block=block, channels_last=True)))
    return calls


def test_chapter_02s_calls_match_their_zoo_entries(monkeypatch):
    """Every design_cnn call of chapter 02 whose accuracy the chapter compares finds its
    entry, with the widths fit_widths_to_macs computes; the old one-epoch call and the
    other memory format find none."""
    from lightcnn import design
    assert set(design.ACTIVATIONS) == {"relu", "leaky_relu", "silu", "hardswish"}
    assert design.BLOCKS == ("conv", "dwsep", "mbconv")
    calls = _chapter_02_calls()
    for expected, kwargs in calls:
        assert _resolves_to(monkeypatch, "design_cnn", **kwargs) == expected, expected
    assert len({expected for expected, _ in calls}) == 11
    (_, first), (_, mbconv) = calls[0], calls[-1]
    assert _resolves_to(monkeypatch, "design_cnn", epochs=1, **first) is None
    assert _resolves_to(monkeypatch, "design_cnn", **dict(mbconv, channels_last=False)) is None


def test_chapter_02s_searched_network_is_a_draw_of_its_search(monkeypatch):
    """searched_cnn_eighth pins the architecture chapter 02's search (seed 0, 6 draws
    under an eighth of the baseline's MACs) ranked first on the book's CPU: a draw of that
    search (the draws do not depend on the scores), within the space and the budget; the
    chapter's call finds it, another architecture finds nothing."""
    from lightcnn import search
    entry = zoo.ENTRIES["searched_cnn_eighth"]
    architecture = entry.kwargs["architecture"]
    eighth = lc.count_macs(lc.create_model("baseline_cnn")) // 8
    space = search.SearchSpace()
    draws = [t.architecture for t in search.random_search(space, lambda a: 0.0, eighth, 6, seed=0)]
    assert architecture in draws
    assert lc.count_macs(search.build_searched(architecture)) <= eighth
    assert _resolves_to(monkeypatch, "searched_cnn", architecture=architecture,
                        channels_last=True) == "searched_cnn_eighth"
    assert _resolves_to(monkeypatch, "searched_cnn", architecture=draws[0],
                        channels_last=True) is None


# chapter 03's survey, and the families it trains in channels-last (its CHANNELS_LAST)
_SURVEY = ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
           "shufflenet_v1", "shufflenet_v2", "squeezenet1_0", "squeezenet1_1",
           "efficientnet_b0", "ghostnet"]
_CHANNELS_LAST = {"mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
                  "shufflenet_v1", "squeezenet1_0", "squeezenet1_1", "efficientnet_b0"}


@pytest.mark.parametrize("name", _SURVEY)
def test_chapter_03s_survey_calls_match_their_zoo_entries(name, monkeypatch):
    """The survey's call (epochs omitted) finds the family's 20-epoch entry; the longer-run
    section's SqueezeNet is the same entry; the old one-epoch call finds none."""
    call = dict(width_mult=0.25, channels_last=name in _CHANNELS_LAST)
    assert _resolves_to(monkeypatch, name, **call) == f"{name}_x0.25"
    assert _resolves_to(monkeypatch, name, epochs=20, **call) == f"{name}_x0.25"
    assert _resolves_to(monkeypatch, name, epochs=1, **call) is None


def test_chapter_03s_reference_is_the_shipped_baseline(monkeypatch):
    assert _resolves_to(monkeypatch, "baseline_cnn") == "baseline_cnn"
    assert _resolves_to(monkeypatch, "baseline_cnn", epochs=1) is None   # the old reference


def test_chapters_02_and_03_entries_are_converged_and_estimated():
    """Issue 26: from scratch on the baseline's recipe and schedule. Their minutes per
    epoch are the chapters' 2-thread seconds scaled to make zoo -j 2 (one thread each)."""
    names = [e for e, _ in _chapter_02_calls()] + ["design_cnn_eighth_d122", "design_cnn_half_d122",
                                                 "searched_cnn_eighth"]
    names += [f"{name}_x0.25" for name in _SURVEY]
    baseline = zoo.ENTRIES["baseline_cnn"]
    for name in set(names):
        entry = zoo.ENTRIES[name]
        assert entry.recipe == zoo.RECIPES["baseline_cnn"] and entry.epochs == baseline.epochs
        assert entry.seed == 0 and not entry.dependencies()
        assert 0.3 <= entry.minutes_per_epoch <= 6
        assert entry.estimated_minutes() == entry.minutes_per_epoch * 20
    for name, channels_last, seconds in zoo._SURVEY:
        entry = zoo.ENTRIES[f"{name}_x0.25"]
        assert entry.channels_last == (name in _CHANNELS_LAST) == channels_last
        assert entry.minutes_per_epoch == round(seconds * 1.5 / 60, 2)
    assert [name for name, _, _ in zoo._SURVEY] == _SURVEY


def test_no_two_entries_train_the_same_model():
    """get_trained serves a call the first entry that matches it: two entries with one
    spec would ship one model twice, and the second would never be loaded."""
    specs = [json.dumps(e.spec(), sort_keys=True) for e in zoo.ENTRIES.values()]
    assert len(set(specs)) == len(specs)


def test_expect_entry_insists_on_the_zoo_where_it_must(monkeypatch):
    shipped = {"baseline_cnn"}
    monkeypatch.setattr(zoo, "shipped", lambda name: name in shipped)
    loaded = _stub("baseline_cnn")
    assert zoo.expect_entry(loaded, "baseline_cnn", "full") is loaded
    trained_here = zoo.TrainedModel(lc.create_model("lenet5"), 0.9, lc.train.History(),
                                    Path("lenet5-abc.pt"), True)
    # a shipped entry must come from the zoo at any budget
    with pytest.raises(ZooError, match="expected entry 'baseline_cnn' at the ci budget, got "
                                       "a model trained in this process"):
        zoo.expect_entry(trained_here, "baseline_cnn", "ci")
    # an entry not built yet: trained small at ci, refused at full (with the build command)
    assert zoo.expect_entry(trained_here, "lenet5", "ci") is trained_here
    with pytest.raises(ZooError, match="not built yet.*lightcnn.zoo build lenet5"):
        zoo.expect_entry(trained_here, "lenet5", "full")
    with pytest.raises(ZooError, match="got zoo entry 'baseline_cnn'"):
        zoo.expect_entry(loaded, "lenet5", lc.get_budget("full"))
    with pytest.raises(ValueError, match="unknown zoo entry"):
        zoo.expect_entry(loaded, "nope", "ci")
    with pytest.raises(TypeError, match="trained"):
        zoo.expect_entry(lc.create_model("lenet5"), "lenet5", "ci")


def test_accuracy_is_evaluate_s_accuracy(tiny_budget):
    model = lc.create_model("lenet5").eval()
    _, test_loader = lc.get_dataloaders(64, tiny_budget)
    assert lc.accuracy(model, test_loader) == lc.evaluate(model, test_loader)["accuracy"]


def test_get_quantized_keeps_the_edge_layers_at_edge_bits(tiny_base, tiny_budget, monkeypatch):
    from lightcnn import quantization as Q
    qat = lc.zoo.get_quantized(tiny_base, "qat", epochs=1, budget=tiny_budget, bits=2,
                               edge_bits=8, progress=False)
    bits = [m.weight_fake_quant.observer.bits for m in qat.model.modules()
            if isinstance(m, Q.QuantWrapper)]
    assert bits[0] == bits[-1] == 8 and set(bits[1:-1]) == {2}
    monkeypatch.setattr(zoo, "fit", lambda *a, **k: pytest.fail("a cache hit must not train"))
    again = lc.zoo.get_quantized(tiny_base, "qat", epochs=1, budget=tiny_budget, bits=2,
                                 edge_bits=8, progress=False)     # rebuilt with the same widths
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(again.model(x), qat.model.eval()(x))


def test_estimate_pace_is_the_median_ratio_of_recorded_to_estimated_minutes():
    names = list(zoo.ENTRIES)[:4]
    estimated = [zoo.ENTRIES[n].estimated_minutes() for n in names]
    manifest = {n: {"train_minutes": e * r} for n, e, r in zip(names, estimated, (1, 2, 4, 8))}
    pace, count = zoo.estimate_pace(manifest)
    assert count == 4 and pace == pytest.approx(3.0)        # median of 1, 2, 4, 8
    del manifest[names[3]]
    assert zoo.estimate_pace(manifest) == (pytest.approx(2.0), 3)
    manifest["not an entry"] = {"train_minutes": 99.0}     # an unknown name counts for nothing
    assert zoo.estimate_pace(manifest)[1] == 3
    assert zoo.estimate_pace({}) == (1.0, 0)
    with pytest.raises((TypeError, ValueError), match="manifest"):
        zoo.estimate_pace([1, 2])


def test_a_build_keeps_each_scratch_models_progress_in_the_zoo_folder(shipped_zoo, monkeypatch):
    # a model longer than a session resumes from its last epoch: get_trained gets a
    # checkpoint under zoo/partial/ (named by entry and version); a distilled one does not
    entry = zoo.ENTRIES["efficientnet_b0_x0.25"]
    assert zoo.partial_checkpoint(entry) == (weights.zoo_dir() / "partial"
                                             / f"efficientnet_b0_x0.25.v{entry.version}.ckpt")
    seen = {}

    class Stop(Exception):
        pass

    def fake_get_trained(name, **kwargs):
        seen[name] = kwargs.get("checkpoint")
        raise Stop
    monkeypatch.setattr(zoo, "get_trained", fake_get_trained)
    full = lc.get_budget("full")
    for name in ("efficientnet_b0_x0.25", "cnn_x0.25+kd_s0"):
        with pytest.raises(Stop):
            zoo._train_entry(zoo.ENTRIES[name], full, progress=False)
    assert seen[entry.model] == zoo.partial_checkpoint(entry)
    assert seen[zoo.ENTRIES["cnn_x0.25+kd_s0"].model] is None   # the teacher's logits are not saved
    # derived models too (their phases are named from the same file; simulated QAT's
    # observers keep their statistics in the model's state dict), except AGP, whose
    # pruner's schedule is not in the file
    for getter, name in (("get_pruned", "baseline_cnn+slimming_half_macs_e20"),
                         ("get_quantized", "baseline_cnn+kmeans2_e20"),
                         ("get_decomposed", "baseline_cnn+tucker2_half_macs_e10"),
                         ("get_pruned", "baseline_cnn+agp12x_e20"),
                         ("get_quantized", "baseline_cnn+qat_w2a2_e20")):
        def fake_derived(base, name=name, **kwargs):
            seen[name] = kwargs.get("checkpoint")
            raise Stop
        monkeypatch.setattr(zoo, getter, fake_derived)
        with pytest.raises(Stop):
            zoo._train_entry(zoo.ENTRIES[name], full, progress=False)
    for name in ("baseline_cnn+slimming_half_macs_e20", "baseline_cnn+kmeans2_e20",
                 "baseline_cnn+tucker2_half_macs_e10", "baseline_cnn+qat_w2a2_e20"):
        assert seen[name] == zoo.partial_checkpoint(zoo.ENTRIES[name])
    assert seen["baseline_cnn+agp12x_e20"] is None
    with pytest.raises(TypeError, match="entry must be a ZooEntry"):
        zoo.partial_checkpoint("efficientnet_b0_x0.25")


def test_get_trained_trains_through_a_checkpoint_and_removes_it(tiny_budget, tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTCNN_CACHE", str(tmp_path / "cache"))     # nothing cached: it trains
    path = tmp_path / "partial" / "lenet5.ckpt"
    trained = zoo.get_trained("lenet5", budget=tiny_budget, seed=5, progress=False, checkpoint=path)
    assert trained.trained_now and not path.exists()
    with pytest.raises(TypeError, match="checkpoint"):
        zoo.get_trained("lenet5", budget=tiny_budget, seed=6, progress=False, checkpoint=1)
    with pytest.raises(ValueError, match="checkpoint .* teacher"):
        zoo.get_trained("lenet5", budget=tiny_budget, seed=6, progress=False, checkpoint=path,
                        teacher=trained)


class _Stop(Exception):
    pass


@pytest.mark.parametrize("getter,settings", [
    ("get_pruned", dict(method="slimming", epochs=2, macs_share=0.5, penalty_epochs=2)),
    ("get_pruned", dict(method="iterative", epochs=3, sparsity=0.8, rounds=(0.5,))),
    ("get_pruned", dict(method="finetune", epochs=2)),
    ("get_quantized", dict(method="int8_qat", epochs=2)),
    ("get_quantized", dict(method="kmeans", epochs=2, bits=2, lr=1e-4, optimizer="adamw")),
    ("get_quantized", dict(method="qat", epochs=2, bits=2, edge_bits=8)),
])
def test_derived_models_resume_from_their_checkpoint_bit_for_bit(tiny_base, tiny_budget, tmp_path,
                                                                 monkeypatch, getter, settings):
    # a zoo build of a pruned or quantized model, stopped in the middle of its last training
    # phase (a session that ends), resumes: finished phases replay from their files, the
    # interrupted one from its last epoch, and the model equals one uninterrupted run
    get = getattr(lc.zoo, getter)
    straight = get(tiny_base, budget=tiny_budget, progress=False, **settings)
    monkeypatch.setenv("LIGHTCNN_CACHE", str(tmp_path / "second"))   # nothing cached
    checkpoint = tmp_path / "partial" / "model.v1.ckpt"
    real_fit, calls = zoo.fit, []

    def fit_stopping_in_the_last_phase(model, loader, epochs, *args, **kwargs):
        calls.append(kwargs["checkpoint"])
        if len(calls) == phases:         # the last phase: stop after one epoch and a step
            inner = kwargs.get("after_step")

            def after_step(m):
                if inner is not None:
                    inner(m)
                after_step.n += 1
                if after_step.n == len(loader) + 1:
                    raise _Stop
            after_step.n = 0
            kwargs["after_step"] = after_step
        return real_fit(model, loader, epochs, *args, **kwargs)

    phases = {"slimming": 2, "iterative": 2}.get(settings["method"], 1)
    monkeypatch.setattr(zoo, "fit", fit_stopping_in_the_last_phase)
    with pytest.raises(_Stop):
        get(tiny_base, budget=tiny_budget, progress=False, checkpoint=checkpoint, **settings)
    files = sorted(p.name for p in checkpoint.parent.iterdir())
    assert files == [f"model.v1.phase{i}.ckpt" for i in range(phases)]
    monkeypatch.setattr(zoo, "fit", real_fit)
    resumed = get(tiny_base, budget=tiny_budget, progress=False, checkpoint=checkpoint, **settings)
    assert resumed.trained_now and _same_state(resumed.model, straight.model)
    assert resumed.history.as_dict() | {"seconds": []} == straight.history.as_dict() | {"seconds": []}
    assert resumed.accuracy == straight.accuracy
    assert not any(checkpoint.parent.iterdir())          # done: every phase's file removed
    with pytest.raises(TypeError, match="checkpoint"):
        get(tiny_base, budget=tiny_budget, progress=False, checkpoint=3, **settings)


def test_agp_takes_no_checkpoint(tiny_base, tiny_budget, tmp_path):
    # the pruner's schedule is not in fit's file: refused rather than resumed wrong (QAT's
    # observers are in the model's state dict: it resumes, as the test above shows)
    with pytest.raises(ValueError, match="checkpoint .* .agp"):
        lc.zoo.get_pruned(tiny_base, "agp", epochs=1, budget=tiny_budget, sparsity=0.9,
                          progress=False, checkpoint=tmp_path / "agp.ckpt")


def test_fetch_entry_calls_get_and_checks_the_entry(monkeypatch):
    """The helper chapters 04 and 05 share: the get call's result, checked against the
    entry; None for an optional entry the zoo does not ship, without calling get."""
    shipped = {"baseline_cnn+finetune_e10"}
    monkeypatch.setattr(zoo, "shipped", lambda name: name in shipped)
    base = _stub("baseline_cnn")
    loaded = _stub("baseline_cnn+finetune_e10")
    calls = []

    def get(b, budget=None, progress=True, **settings):
        calls.append((b, budget, progress, settings))
        return loaded

    got = zoo.fetch_entry("baseline_cnn+finetune_e10", get, base, "ci", method="finetune", epochs=10)
    assert got is loaded
    assert calls == [(base, "ci", False, dict(method="finetune", epochs=10))]
    # an optional entry not shipped: None, and nothing trained
    assert zoo.fetch_entry("baseline_cnn+finetune_e20", get, base, "full", optional=True,
                           method="finetune", epochs=20) is None
    assert len(calls) == 1
    # not optional and not shipped: at full the zoo is required (expect_entry's error)
    with pytest.raises(ZooError, match="expected entry 'baseline_cnn\\+finetune_e20'"):
        zoo.fetch_entry("baseline_cnn+finetune_e20", get, base, "full", method="finetune", epochs=20)
    with pytest.raises(ValueError, match="unknown zoo entry"):
        zoo.fetch_entry("nope", get, base, "ci", optional=True)
    with pytest.raises(TypeError, match="get"):
        zoo.fetch_entry("baseline_cnn+finetune_e10", "get_pruned", base, "ci")


def test_build_workers_end_with_the_build(tmp_path):
    """A -j build killed mid-run must not leave its workers training: a process that
    starts a pool as build does and dies without shutting it down takes its worker with it."""
    pid_file = tmp_path / "worker.pid"
    script = tmp_path / "parent.py"
    script.write_text(f"""
import concurrent.futures, multiprocessing, os, time
from lightcnn import zoo
if __name__ == "__main__":
    pool = concurrent.futures.ProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context("spawn"),
        initializer=zoo._exit_with_parent, initargs=(os.getpid(), 0.2))
    pool.submit(time.sleep, 120)
    while not pool._processes:
        time.sleep(0.05)
    time.sleep(1.0)
    open({str(pid_file)!r}, "w").write(str(next(iter(pool._processes))))
    os._exit(0)          # killed: no shutdown, no cleanup
""")
    subprocess.run([sys.executable, str(script)], check=True, timeout=120)
    worker = int(pid_file.read_text())

    def alive() -> bool:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return False
        stat = Path(f"/proc/{worker}/stat")       # a zombie has ended too
        return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))

    deadline = time.monotonic() + 30
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive():
        os.kill(worker, 9)
        pytest.fail("the worker outlived the process that started it")
