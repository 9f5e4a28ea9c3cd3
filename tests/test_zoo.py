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
    from lightcnn import architectures, blocks, data, models, train
    assert zoo._code_modules("mobilenet_v2") == [architectures, models, data, train, blocks]
    # the baseline is built from models.py alone: its key does not move when a block changes
    assert set(zoo._code_modules("baseline_cnn")) == {models, data, train}


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
