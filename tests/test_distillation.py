"""lightcnn.distillation: Hinton's loss, hints and attention against explicit formulas, the
frozen teacher, cached teacher logits, bias correction, and distilled students in the zoo."""

import copy
import hashlib
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightcnn as lc
from lightcnn import distillation as D
from lightcnn import zoo

SHAPE = (1, 12, 12)   # small images keep every test here fast


def tiny_cnn(width: int, num_classes: int = 10) -> nn.Sequential:
    # names: "3" = pooled block (width, 6, 6), "5" = second block (2 * width, 6, 6)
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))


def teacher_and_student(num_classes: int = 10):
    torch.manual_seed(0)
    teacher = tiny_cnn(8, num_classes)
    # give the teacher non-trivial batch-norm statistics, which a training step must not move
    teacher.train()
    with torch.no_grad():
        teacher(torch.randn(32, *SHAPE) * 2 + 1)
    return teacher.eval(), tiny_cnn(3)


def random_loader(n: int = 48, batch_size: int = 16, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(123)
    data = TensorDataset(torch.randn(n, *SHAPE, generator=g),
                         torch.randint(0, 10, (n,), generator=g))
    return DataLoader(data, batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


# --- Hinton's loss -------------------------------------------------------------------------

def test_soft_targets_is_the_tempered_softmax():
    z = torch.randn(5, 10, dtype=torch.float64) * 3
    for t in (0.5, 1.0, 4.0):
        expected = torch.exp(z / t) / torch.exp(z / t).sum(1, keepdim=True)
        assert torch.allclose(D.soft_targets(z, t), expected)
    # a higher temperature lifts the small probabilities: the entropy grows with T
    entropy = lambda p: -(p * p.log()).sum(1)
    assert (entropy(D.soft_targets(z, 8.0)) > entropy(D.soft_targets(z, 1.0))).all()
    assert torch.allclose(D.soft_targets(z, 1e6), torch.full_like(z, 0.1), atol=1e-5)


@pytest.mark.parametrize("temperature,alpha", [(1.0, 0.5), (4.0, 0.0), (4.0, 1.0), (20.0, 0.3)])
def test_loss_matches_its_formula(temperature, alpha):
    s, t = torch.randn(8, 10, dtype=torch.float64), torch.randn(8, 10, dtype=torch.float64) * 3
    y = torch.randint(0, 10, (8,))
    p_t = torch.exp(t / temperature) / torch.exp(t / temperature).sum(1, keepdim=True)
    log_p_s = s / temperature - torch.logsumexp(s / temperature, 1, keepdim=True)
    kl = (p_t * (p_t.log() - log_p_s)).sum(1).mean()
    ce = -(s - torch.logsumexp(s, 1, keepdim=True)).gather(1, y[:, None]).mean()
    expected = alpha * ce + (1 - alpha) * temperature ** 2 * kl
    assert torch.allclose(D.distillation_loss(s, t, y, temperature, alpha), expected)


def _soft_gradient(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    s = s.clone().requires_grad_()
    D.distillation_loss(s, t, torch.zeros(len(s), dtype=torch.long), temperature,
                        alpha=0.0).backward()
    return s.grad


def test_soft_gradient_is_t_times_the_probability_difference():
    b, t_ = 6, 3.0
    s, t = torch.randn(b, 10, dtype=torch.float64), torch.randn(b, 10, dtype=torch.float64)
    expected = t_ * (D.soft_targets(s, t_) - D.soft_targets(t, t_)) / b
    assert torch.allclose(_soft_gradient(s, t, t_), expected)


def test_high_temperature_gradient_is_logit_matching():
    # Hinton et al. 2.1: for T >> |z| and zero-mean logits, d(T^2 KL)/dz_s = (z_s - z_t) / N
    # per sample, here / (N * B) with the batch mean
    b, n = 6, 10
    s, t = torch.randn(b, n, dtype=torch.float64), torch.randn(b, n, dtype=torch.float64) * 2
    s, t = s - s.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    limit = (s - t) / (n * b)
    for temperature, tolerance in ((100.0, 5e-2), (1e4, 5e-4)):
        error = (_soft_gradient(s, t, temperature) - limit).abs().max() / limit.abs().max()
        assert error < tolerance
    # logits that are not zero-mean: only the centred difference is matched
    shifted = _soft_gradient(s + 3.0, t - 1.0, 1e4)
    assert torch.allclose(shifted, limit, rtol=0, atol=5e-4 * limit.abs().max())


def test_teacher_logits_are_constants():
    s, t = torch.randn(4, 10, requires_grad=True), torch.randn(4, 10, requires_grad=True)
    D.distillation_loss(s, t, torch.arange(4), 4.0, 0.5).backward()
    assert s.grad is not None and t.grad is None


@pytest.mark.parametrize("kwargs,match", [
    (dict(temperature=0.0), "temperature must be a finite number > 0, got 0.0"),
    (dict(temperature=-2.0), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(alpha=-0.1), r"alpha must be in \[0, 1\], got -0.1"),
    (dict(alpha=1.5), "alpha"),
])
def test_loss_rejects_bad_temperature_and_alpha(kwargs, match):
    args = dict(temperature=4.0, alpha=0.5) | kwargs
    with pytest.raises(ValueError, match=match):
        D.distillation_loss(torch.randn(2, 10), torch.randn(2, 10), torch.zeros(2).long(), **args)
    if "temperature" in kwargs:
        with pytest.raises(ValueError, match="temperature"):
            D.soft_targets(torch.randn(2, 10), kwargs["temperature"])


def test_loss_rejects_different_class_counts():
    with pytest.raises(ValueError, match="student_logits has 10 classes but teacher_logits has 5"):
        D.distillation_loss(torch.randn(2, 10), torch.randn(2, 5), torch.zeros(2).long())


# --- attention transfer and hints -----------------------------------------------------------

def _at_reference(x: torch.Tensor) -> torch.Tensor:
    # szagoruyko/attention-transfer, utils.py: at(x) = normalize(x.pow(2).mean(1).view(B, -1))
    return F.normalize(x.pow(2).mean(1).view(x.size(0), -1))


def test_attention_map_matches_the_formula():
    a = torch.randn(3, 5, 4, 6, dtype=torch.float64)
    q = D.attention_map(a)
    expected = (a.abs() ** 2).mean(1).reshape(3, 24)
    assert torch.allclose(q, expected / expected.norm(dim=1, keepdim=True))
    assert torch.allclose(q.norm(dim=1), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(q, _at_reference(a))
    q3 = D.attention_map(a, p=3)
    assert torch.allclose(q3, F.normalize((a.abs() ** 3).mean(1).flatten(1)))


def test_attention_loss_is_the_authors_mean_square():
    s, t = torch.randn(4, 3, 6, 6), torch.randn(4, 16, 6, 6)       # channels may differ
    expected = (_at_reference(s) - _at_reference(t)).pow(2).mean()
    assert torch.allclose(D.attention_transfer_loss(s, t), expected)
    assert D.attention_transfer_loss(t, t).item() == pytest.approx(0.0, abs=1e-12)
    # other spatial sizes: the larger map is average-pooled to the smaller one
    big = torch.randn(4, 16, 12, 12)
    pooled = F.adaptive_avg_pool2d(big, (6, 6))
    assert torch.allclose(D.attention_transfer_loss(s, big),
                          (_at_reference(s) - _at_reference(pooled)).pow(2).mean())


def test_hint_loss_is_the_mse_of_the_regressed_features():
    s, t = torch.randn(2, 3, 12, 12), torch.randn(2, 8, 6, 6)
    regressor = nn.Conv2d(3, 8, 1)
    expected = ((regressor(F.adaptive_avg_pool2d(s, 6)) - t) ** 2).mean()
    assert torch.allclose(D.hint_loss(s, t, regressor), expected)
    with pytest.raises(ValueError, match="regressor maps"):
        D.hint_loss(s, t, nn.Conv2d(3, 4, 1))
    with pytest.raises(ValueError, match="student_features must be a"):
        D.hint_loss(torch.randn(2, 3), t, regressor)


def test_feature_hooks_capture_outputs_and_remove_themselves():
    model = tiny_cnn(4).eval()
    x = torch.randn(2, *SHAPE)
    with D.FeatureHooks(model, ["3", "5", "3"]) as hooks:
        logits = model(x)
    assert torch.equal(hooks.outputs["3"], model[:4](x))
    assert torch.equal(hooks.outputs["5"], model[:6](x))
    assert torch.equal(logits, model(x))
    assert all(not m._forward_hooks for m in model.modules())
    hooks = D.FeatureHooks(model, ["5"])
    hooks.remove()
    assert not model[5]._forward_hooks
    with pytest.raises(ValueError, match=r"names: \['features.9'\] are not submodules"):
        D.FeatureHooks(model, ["features.9"])
    with pytest.raises(ValueError, match="sequence of layer names"):
        D.FeatureHooks(model, "5")


# --- the Distiller with lc.fit --------------------------------------------------------------

def test_distiller_trains_student_and_regressors_but_not_the_teacher():
    teacher, student = teacher_and_student()
    distiller = D.Distiller(student, teacher, hints={"3": "3"}, attention={"5": "5"},
                            input_shape=SHAPE)
    # fit's optimizer sees the student and the regressor, never the teacher
    params = {id(p) for p in distiller.parameters()}
    assert params == {id(p) for p in [*student.parameters(), *distiller.regressors.parameters()]}
    assert distiller.regressors[0].weight.shape == (8, 3, 1, 1)   # student 3 -> teacher 8
    assert not any(k.startswith("teacher") for k in distiller.state_dict())
    teacher_before = copy.deepcopy(teacher.state_dict())
    student_before = copy.deepcopy(student.state_dict())
    regressor_before = distiller.regressors[0].weight.detach().clone()
    lc.fit(distiller, random_loader(), epochs=2, progress=False, loss_fn=distiller.loss_fn)
    assert not teacher.training
    after = teacher.state_dict()
    assert all(torch.equal(teacher_before[k], after[k]) for k in after)   # BN stats included
    assert not torch.equal(student_before["0.weight"], student.state_dict()["0.weight"])
    assert not torch.equal(regressor_before, distiller.regressors[0].weight)
    x = torch.randn(3, *SHAPE)
    distiller.eval()
    assert torch.equal(distiller(x), student(x))
    # fitting the bare student would leave the regressor out of the optimizer
    with pytest.raises(ValueError, match="pass the Distiller itself"):
        distiller.loss_fn(student, x, torch.zeros(3).long())


def test_distiller_loss_is_the_sum_of_its_terms():
    teacher, student = teacher_and_student()
    distiller = D.Distiller(student, teacher, temperature=3.0, alpha=0.2, hints={"5": "3"},
                            hint_weight=0.7, attention={"3": "5"}, beta=50.0,
                            input_shape=SHAPE).eval()
    x, y = torch.randn(4, *SHAPE), torch.randint(0, 10, (4,))
    expected = (D.distillation_loss(student(x), teacher(x), y, 3.0, 0.2)
                + 0.7 * D.hint_loss(student[:6](x), teacher[:4](x), distiller.regressors[0])
                + 50.0 / 2 * D.attention_transfer_loss(student[:4](x), teacher[:6](x)))
    assert torch.allclose(distiller.loss_fn(distiller, x, y), expected)
    # without hints, fitting the bare student is fine
    plain = D.Distiller(student, teacher, input_shape=SHAPE)
    assert torch.allclose(plain.loss_fn(student, x, y),
                          D.distillation_loss(student(x), teacher(x), y, 4.0, 0.5))


@pytest.mark.parametrize("kwargs,match", [
    (dict(temperature=0), "temperature must be a finite number > 0, got 0"),
    (dict(alpha=2.0), r"alpha must be in \[0, 1\], got 2.0"),
    (dict(hint_weight=-1.0), "hint_weight must be a finite number >= 0"),
    (dict(beta=float("inf")), "beta"),
    (dict(hints={"nope": "3"}), r"hints \(student layers\): \['nope'\] are not submodules"),
    (dict(hints={"3": "nope"}), r"hints \(teacher layers\): \['nope'\]"),
    (dict(attention={"nope": "3"}), r"attention \(student layers\): \['nope'\]"),
    (dict(hints=["3"]), "hints must map student layer names to teacher layer names"),
    (dict(hints={"8": "3"}), r"student layer '8''s output must be a \(B, C, H, W\)"),
])
def test_distiller_rejects_bad_settings(kwargs, match):
    teacher, student = teacher_and_student()
    with pytest.raises(ValueError, match=match):
        D.Distiller(student, teacher, input_shape=SHAPE, **kwargs)


def test_distiller_rejects_different_class_counts():
    teacher, _ = teacher_and_student(num_classes=5)
    with pytest.raises(ValueError, match="student predicts 10 classes but teacher predicts 5"):
        D.Distiller(tiny_cnn(3, 10), teacher, input_shape=SHAPE)


# --- teacher logits computed once -----------------------------------------------------------

def test_cached_teacher_logits_give_the_on_the_fly_loss():
    teacher, student = teacher_and_student()
    distiller = D.Distiller(student, teacher, input_shape=SHAPE)
    loader = random_loader()
    cached_loader = D.with_teacher_logits(loader, teacher)
    labels, logits = D.split_targets(cached_loader.dataset[5][1][None])
    x5, y5 = loader.dataset[5]
    assert labels.item() == y5 and torch.allclose(logits[0], teacher(x5[None])[0], atol=1e-6)
    # same seed, same batches in the same order, same losses
    loader.generator.manual_seed(1)
    plain = [(x, distiller.loss_fn(distiller, x, y)) for x, y in loader]
    cached_loader.generator.manual_seed(1)
    cached = [(x, distiller.loss_fn(distiller, x, y)) for x, y in cached_loader]
    assert len(plain) == len(cached) == 3
    for (x1, l1), (x2, l2) in zip(plain, cached):
        assert torch.equal(x1, x2) and torch.allclose(l1, l2, atol=1e-6)
    # and through fit: the same training, without the teacher's forward passes
    twin = copy.deepcopy(distiller)
    h1 = lc.fit(distiller, loader, 1, progress=False, loss_fn=distiller.loss_fn)
    h2 = lc.fit(twin, cached_loader, 1, progress=False, loss_fn=twin.loss_fn)
    assert h1.train_loss == pytest.approx(h2.train_loss, rel=1e-5)
    assert torch.allclose(student.state_dict()["0.weight"], twin.student.state_dict()["0.weight"],
                          atol=1e-5)


def test_augmented_data_is_not_cached(data_dir):
    teacher = lc.create_model("lenet5")
    augmented = lc.FashionMNIST(train=True, size=20, augment=True, root=data_dir)
    with pytest.raises(ValueError, match="augment"):
        D.cache_teacher_logits(teacher, augmented)
    with pytest.raises(ValueError, match="augment"):
        D.with_teacher_logits(DataLoader(augmented, batch_size=4), teacher)
    with pytest.raises(ValueError, match="augment"):     # also behind a Subset
        D.cache_teacher_logits(teacher, D.without_class(augmented, 0))
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        D.cache_teacher_logits(teacher, TensorDataset(torch.zeros(2, 1)), batch_size=0)


def test_distill_equals_fit_with_a_distiller_and_caches_the_teacher(monkeypatch):
    teacher, student = teacher_and_student()
    twin = copy.deepcopy(student)
    settings = dict(temperature=3.0, alpha=0.3)
    calls = []
    forward = teacher.forward
    monkeypatch.setattr(teacher, "forward", lambda x: calls.append(len(x)) or forward(x))
    history = D.distill(student, teacher, random_loader(), 2, random_loader(n=16), seed=3,
                        progress=False, input_shape=SHAPE, **settings)
    # the teacher saw the 48 training images once (cached logits) plus the dry run,
    # not once per epoch
    assert sum(calls) == 48 + 2
    distiller = D.Distiller(twin, teacher, input_shape=SHAPE, **settings)
    expected = lc.fit(distiller, random_loader(), 2, random_loader(n=16), seed=3,
                      progress=False, loss_fn=distiller.loss_fn)
    assert history.train_loss == pytest.approx(expected.train_loss, rel=1e-5)
    assert history.test_accuracy == expected.test_accuracy
    for k, v in student.state_dict().items():
        assert torch.allclose(v.float(), twin.state_dict()[k].float(), atol=1e-5), k


def test_distill_runs_the_teacher_on_augmented_batches(data_dir):
    teacher = lc.create_model("lenet5").eval()
    student = lc.create_model("baseline_cnn", widths=(2, 2, 2))
    augmented = DataLoader(lc.FashionMNIST(train=True, size=16, augment=True, root=data_dir),
                           batch_size=8)
    before = copy.deepcopy(teacher.state_dict())
    D.distill(student, teacher, augmented, 1, progress=False)      # cache_logits=None: no cache
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    with pytest.raises(ValueError, match="cache_logits=True but train_loader augments"):
        D.distill(student, teacher, augmented, 1, cache_logits=True, progress=False)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(temperature=0.0), ValueError, "temperature must be"),
    (dict(alpha=1.5), ValueError, "alpha must be in"),
    (dict(hints={"nope": "3"}), ValueError, "nope"),
    (dict(loss_fn=lambda m, x, y: 0), ValueError, "loss_fn is the distiller's"),
    (dict(cache_logits="yes"), TypeError, "cache_logits must be"),
])
def test_distill_rejects_bad_arguments(kwargs, error, match):
    teacher, student = teacher_and_student()
    with pytest.raises(error, match=match):
        D.distill(student, teacher, random_loader(), 1, input_shape=SHAPE, progress=False,
                  **kwargs)


def test_split_targets():
    y = torch.tensor([3, 1])
    assert D.split_targets(y)[0] is y and D.split_targets(y)[1] is None
    labels, logits = D.split_targets(torch.tensor([[3.0, 0.5, -1.0], [1.0, 2.0, 0.0]]))
    assert labels.tolist() == [3, 1] and labels.dtype == torch.long
    assert torch.equal(logits, torch.tensor([[0.5, -1.0], [2.0, 0.0]]))
    with pytest.raises(ValueError, match="y must be"):
        D.split_targets(torch.zeros(2, 3, 4))


# --- Hinton's missing class -----------------------------------------------------------------

def test_without_class_leaves_out_one_class():
    data = TensorDataset(torch.randn(30, 1), torch.arange(30) % 3)
    subset = D.without_class(data, 1)
    labels = torch.stack([subset[i][1] for i in range(len(subset))])
    assert len(subset) == 20 and (labels != 1).all()
    with pytest.raises(ValueError, match="class_index 7 does not occur"):
        D.without_class(data, 7)
    with pytest.raises(ValueError, match="class_index must be an int >= 0"):
        D.without_class(data, -1)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.37, 1.0])
def test_balancing_bias_gives_the_wanted_share_of_predictions(fraction):
    logits = torch.randn(200, 10, dtype=torch.float64)
    logits[:, 3] -= 4.0                      # the left-out class is almost never predicted
    delta = D.balancing_bias(logits, 3, fraction)
    shifted = logits.clone()
    shifted[:, 3] += delta
    assert (shifted.argmax(1) == 3).sum().item() == round(fraction * 200)
    default = D.balancing_bias(logits, 3)    # 1 / num_classes
    shifted[:, 3] = logits[:, 3] + default
    assert (shifted.argmax(1) == 3).sum().item() == 20
    with pytest.raises(ValueError, match=r"class_index must be an int in \[0, 10\)"):
        D.balancing_bias(logits, 10)
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\]"):
        D.balancing_bias(logits, 3, 1.5)


def test_raise_class_bias_shifts_one_logit():
    model = lc.create_model("baseline_cnn", widths=(4, 8, 8)).eval()
    x = torch.randn(3, 1, 28, 28)
    corrected = D.raise_class_bias(model, 3, 2.5)
    change = corrected.eval()(x) - model(x)
    expected = torch.zeros(3, 10)
    expected[:, 3] = 2.5
    assert torch.allclose(change, expected, atol=1e-5)
    assert torch.allclose(D.raise_class_bias(model, 3, 1.0, layer="classifier.2")(x)
                          - model(x), expected / 2.5, atol=1e-5)
    with pytest.raises(ValueError, match=r"class_index must be an int in \[0, 10\)"):
        D.raise_class_bias(model, 10, 1.0)
    with pytest.raises(ValueError, match="layer: "):
        D.raise_class_bias(model, 3, 1.0, layer="head")
    with pytest.raises(ValueError, match="has no bias"):
        D.raise_class_bias(nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False)), 0, 1.0)


# --- distilled students in the zoo ----------------------------------------------------------

def test_distilled_students_are_cached_under_their_teacher_and_settings(isolated_cache,
                                                                        tiny_budget, monkeypatch):
    teacher = zoo.get_trained("lenet5", tiny_budget, progress=False)
    other_teacher = zoo.get_trained("lenet5", tiny_budget, seed=1, progress=False)
    settings = dict(temperature=4.0, alpha=0.5)
    cached_runs = []
    with_logits = D.with_teacher_logits
    monkeypatch.setattr(D, "with_teacher_logits",
                        lambda *a, **k: cached_runs.append(a) or with_logits(*a, **k))
    first = zoo.get_trained("lenet5", tiny_budget, progress=False, teacher=teacher,
                            distill=settings)
    assert len(cached_runs) == 1          # lenet5's recipe does not augment: logits once
    assert first.trained_now and first.path not in (teacher.path, other_teacher.path)
    # without a teacher the key hashes the same spec as before distillation existed
    old_spec = {"model": "lenet5", "model_kwargs": {}, "recipe": zoo.RECIPES["lenet5"],
                "budget": {k: v for k, v in tiny_budget.as_dict().items()
                           if k in zoo.TRAINING_BUDGET_FIELDS},
                "seed": 0, "code": zoo._source_hash("lenet5"),
                "torch": torch.__version__.split("+")[0]}
    old_key = hashlib.sha256(json.dumps(old_spec, sort_keys=True, default=str).encode())
    assert zoo.cache_key("lenet5", tiny_budget, distill=None) == old_key.hexdigest()[:16]
    assert teacher.path.stem.endswith(old_key.hexdigest()[:16])

    def no_training(*args, **kwargs):
        raise AssertionError("a cache hit must not train")

    with monkeypatch.context() as m:
        m.setattr(zoo, "fit", no_training)
        again = zoo.get_trained("lenet5", tiny_budget, progress=False, teacher=teacher,
                                distill=dict(settings))
        # the defaults spelled out or left out: the same student
        default = zoo.get_trained("lenet5", tiny_budget, progress=False, teacher=teacher)
    assert not again.trained_now and again.path == first.path == default.path
    assert again.accuracy == first.accuracy
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(),
                                                again.model.state_dict().values()))
    paths = {first.path}
    for kwargs in (dict(teacher=teacher, distill=dict(temperature=2.0, alpha=0.5)),
                   dict(teacher=teacher, distill=dict(temperature=4.0, alpha=0.9)),
                   dict(teacher=other_teacher, distill=settings)):
        student = zoo.get_trained("lenet5", tiny_budget, progress=False, **kwargs)
        assert student.trained_now and student.path not in paths
        paths.add(student.path)
    with pytest.raises(ValueError, match="distill needs a teacher"):
        zoo.get_trained("lenet5", tiny_budget, distill=settings)
    with pytest.raises(TypeError, match="teacher must be a TrainedModel"):
        zoo.get_trained("lenet5", tiny_budget, teacher=teacher.model)
    with pytest.raises(ValueError, match="temperature"):
        zoo.get_trained("lenet5", tiny_budget, teacher=teacher, distill=dict(temperature=-1.0))


def test_zoo_runs_a_teacher_once_per_training_set(isolated_cache, tiny_budget, monkeypatch):
    teacher = zoo.get_trained("lenet5", tiny_budget, progress=False)
    monkeypatch.setattr(zoo, "_TEACHER_LOGITS", {})
    passes = []
    cache = D.cache_teacher_logits
    monkeypatch.setattr(D, "cache_teacher_logits",
                        lambda t, dataset, *a: passes.append(len(dataset)) or cache(t, dataset, *a))
    for temperature in (2.0, 4.0):      # other settings, same images: one teacher pass
        zoo.get_trained("lenet5", tiny_budget, progress=False, teacher=teacher,
                        distill=dict(temperature=temperature))
    assert passes == [tiny_budget.train_size]
    # a subset's images depend on the seed: another seed, another pass
    zoo.get_trained("lenet5", tiny_budget, seed=1, progress=False, teacher=teacher)
    assert len(passes) == 2
    # the remembered logits are the teacher's on those images
    (key, logits), = zoo._TEACHER_LOGITS.items()
    loader, _ = lc.get_dataloaders(128, tiny_budget, augment=False, seed=1)
    assert torch.allclose(logits, cache(teacher.model, loader.dataset), atol=1e-6)
    # and a given set of logits must fit the loader's images
    with pytest.raises(ValueError, match="logits must be"):
        D.with_teacher_logits(loader, teacher.model, logits=logits[:-1])
    augmented, _ = lc.get_dataloaders(128, tiny_budget, augment=True, seed=1)
    with pytest.raises(ValueError, match="augment"):
        D.with_teacher_logits(augmented, teacher.model, logits=logits)


def test_zoo_distills_with_hints_on_augmented_data(isolated_cache, tiny_budget, monkeypatch):
    teacher = zoo.get_trained("lenet5", tiny_budget, progress=False)

    def no_cache(*args, **kwargs):
        raise AssertionError("augmented batches need the teacher on each batch")

    monkeypatch.setattr(D, "with_teacher_logits", no_cache)
    hints = dict(hints={"features.3": "features.4"}, alpha=0.3)   # 8x14x14 -> 16x10x10
    student = zoo.get_trained("baseline_cnn", tiny_budget, progress=False, teacher=teacher,
                              distill=hints, widths=(4, 8, 8))     # its recipe augments
    assert student.trained_now and 0.0 <= student.accuracy <= 1.0
    assert set(student.model.state_dict()) == set(
        lc.create_model("baseline_cnn", widths=(4, 8, 8)).state_dict())   # no regressor
    other = zoo.get_trained("baseline_cnn", tiny_budget, progress=False, teacher=teacher,
                            distill=dict(hints, hint_weight=2.0), widths=(4, 8, 8))
    assert other.path != student.path
    assert not zoo.get_trained("baseline_cnn", tiny_budget, progress=False, teacher=teacher,
                               distill=hints, widths=(4, 8, 8)).trained_now


# --- the Distiller and DistillationLoss as loss modules in a loop of one's own ------------

def test_distiller_called_with_labels_is_its_loss():
    teacher, student = teacher_and_student()
    distiller = D.Distiller(student, teacher, temperature=3.0, alpha=0.2, hints={"5": "3"},
                            attention={"3": "5"}, input_shape=SHAPE).eval()
    x, y = torch.randn(4, *SHAPE), torch.randint(0, 10, (4,))
    assert torch.equal(distiller(x, y), distiller.loss_fn(distiller, x, y))
    assert torch.equal(distiller(x), student(x))          # without labels: the logits
    cached = torch.cat([y[:, None].float(), teacher(x)], 1)   # with_teacher_logits' targets
    assert torch.allclose(distiller(x, cached), distiller(x, y))


def test_distiller_trains_in_a_plain_loop():
    teacher, student = teacher_and_student()
    distiller = D.Distiller(student, teacher, hints={"3": "3"}, input_shape=SHAPE)
    optimizer = torch.optim.SGD(distiller.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(32, *SHAPE), torch.randint(0, 10, (32,))
    losses = []
    for _ in range(10):
        loss = distiller(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert distiller.regressors[0].weight.grad is not None


@pytest.mark.parametrize("temperature,alpha", [(1.0, 0.0), (4.0, 0.5), (10.0, 1.0)])
def test_distillation_loss_module_is_the_function(temperature, alpha):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 10, generator=g), torch.randn(5, 10, generator=g)
    y = torch.randint(0, 10, (5,), generator=g)
    criterion = D.DistillationLoss(temperature, alpha)
    assert torch.equal(criterion(s, t, y), D.distillation_loss(s, t, y, temperature, alpha))
    assert f"temperature={float(temperature)}" in repr(criterion)
    assert not list(criterion.parameters())


def test_distillation_loss_module_rejects_bad_settings():
    with pytest.raises(ValueError, match="temperature"):
        D.DistillationLoss(temperature=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        D.DistillationLoss(alpha=1.5)
