import io

import pytest
import torch
import torch.nn.utils.prune
from torch import nn

import lightcnn as lc
from lightcnn import channel_pruning as cp

# every model the pruner supports, with how many of its layers it may shrink at least
SUPPORTED = [("baseline_cnn", {}), ("lenet5", {}), ("mobilenet_v1", {"width_mult": 0.25}),
             ("mobilenet_v2", {"width_mult": 0.25}), ("mobilenet_v3_small", {"width_mult": 0.25}),
             ("shufflenet_v2", {"width_mult": 0.25}), ("squeezenet1_1", {"width_mult": 0.25}),
             ("efficientnet_b0", {"width_mult": 0.25}), ("ghostnet", {"width_mult": 0.25})]


def _random_model(name, kwargs, seed=0):
    """A model in eval mode whose batch norms are not the identity (as after training)."""
    torch.manual_seed(seed)
    model = lc.create_model(name, **kwargs).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


@pytest.mark.parametrize("name,kwargs", SUPPORTED, ids=[n for n, _ in SUPPORTED])
def test_removing_silenced_channels_keeps_outputs(name, kwargs):
    model = _random_model(name, kwargs)
    plan = cp.plan_channel_pruning(model, 0.5)
    assert plan, "the pruner found nothing to prune"
    silenced = cp.zero_channels(model, plan)
    smaller = cp.remove_channels(silenced, plan)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(smaller(x), silenced(x), atol=1e-6)
        assert not torch.allclose(silenced(x), model(x), atol=1e-3)   # the plan did something
    assert lc.count_params(smaller) < lc.count_params(model)
    assert lc.count_macs(smaller) < lc.count_macs(model)
    # the original is untouched
    assert lc.count_params(model) == lc.count_params(lc.create_model(name, **kwargs))


def test_macs_after_removal_equal_the_formula():
    model = _random_model("baseline_cnn", {})
    plan = cp.plan_channel_pruning(model, 0.25)
    smaller = cp.remove_channels(model, plan)
    widths = [32 - 8, 64 - 16, 64 - 16, 128 - 32, 128 - 32]   # round(0.25 * n) removed each
    convs = [m for m in smaller.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == widths
    sizes = [28, 14, 14, 7, 7]                                # output map of each conv
    inputs = [1] + widths[:-1]
    expected = sum(9 * cin * cout * s * s for cin, cout, s in zip(inputs, widths, sizes))
    expected += widths[-1] * 10                               # the linear classifier
    assert lc.count_macs(smaller) == expected


def test_residual_chain_is_pruned_as_one_group():
    model = _random_model("mobilenet_v2", {"width_mult": 0.25})
    groups = cp.channel_groups(model)
    coupled = [g for g in groups if len(g.producers) > 1]
    # each stage with n > 1 blocks chains its projections by additions
    assert coupled and all(len(g.producers) <= 4 for g in coupled)
    g = coupled[0]
    plan = {g.layer: [0, 1]}
    smaller = cp.remove_channels(model, plan)
    widths = {n: m.out_channels for n, m in smaller.named_modules() if isinstance(m, nn.Conv2d)}
    original = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    for producer in g.producers:                              # every coupled projection shrank
        assert widths[producer] == original[producer] - 2


def test_depthwise_conv_stays_depthwise():
    model = _random_model("mobilenet_v2", {"width_mult": 0.25})
    smaller = cp.remove_channels(model, cp.plan_channel_pruning(model, 0.3))
    for m in smaller.modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            assert m.groups == m.in_channels == m.out_channels == m.weight.shape[0]


def test_shuffle_and_split_channels_are_kept():
    model = _random_model("shufflenet_v2", {"width_mult": 0.25})
    groups = cp.channel_groups(model)
    # channels that pass through a split or a shuffle are not prunable; branch internals are
    assert any(not all(g.prunable) for g in groups)
    assert any(all(g.prunable) for g in groups)
    stuck = next(g for g in groups if not any(g.prunable))
    with pytest.raises(ValueError, match="cannot be removed"):
        cp.remove_channels(model, {stuck.layer: [0]})


def test_flatten_to_linear_removes_every_feature_of_a_channel():
    model = _random_model("lenet5", {})
    smaller = cp.remove_channels(model, {"features.3": [0, 5]})   # conv2: 16 -> 14 channels
    assert smaller.features[3].out_channels == 14
    assert smaller.classifier[1].in_features == 14 * 5 * 5


@pytest.mark.parametrize("rule", [cp.l1_importance, cp.l2_importance, cp.bn_scale_importance,
                                  cp.RandomImportance(0)])
def test_importance_rules_give_one_score_per_output_channel(rule):
    model = _random_model("baseline_cnn", {})
    scored = {n: rule(m) for n, m in model.named_modules()}
    scored = {n: s for n, s in scored.items() if s is not None}
    assert scored
    modules = dict(model.named_modules())
    for n, s in scored.items():
        assert s.shape == (modules[n].weight.shape[0],)


def test_l1_rule_removes_the_smallest_filters():
    model = _random_model("baseline_cnn", {})
    conv = model.features[0][0]
    norms = conv.weight.abs().sum((1, 2, 3))
    plan = cp.plan_channel_pruning(model, 0.25, cp.l1_importance)
    assert plan["features.0.0"] == sorted(norms.argsort()[:8].tolist())
    assert torch.equal(cp.l1_importance(conv), norms.detach())


def test_random_rule_is_seeded():
    model = _random_model("baseline_cnn", {})
    assert cp.plan_channel_pruning(model, 0.3, cp.RandomImportance(1)) == \
        cp.plan_channel_pruning(model, 0.3, cp.RandomImportance(1))
    assert cp.plan_channel_pruning(model, 0.3, cp.RandomImportance(1)) != \
        cp.plan_channel_pruning(model, 0.3, cp.RandomImportance(2))


def test_global_scope_removes_the_requested_total_and_keeps_every_layer():
    model = _random_model("baseline_cnn", {})
    with torch.no_grad():
        model.features[0][1].weight.mul_(0.01)    # one layer's scales all tiny
    plan = cp.plan_channel_pruning(model, 0.4, cp.bn_scale_importance, scope="global")
    total = sum(len(g.prunable) for g in cp.channel_groups(model) if any(g.prunable))
    assert sum(len(v) for v in plan.values()) == round(0.4 * total)
    assert len(plan["features.0.0"]) == 31        # emptied down to one channel, not zero


def test_pruned_model_saves_and_loads_into_a_fresh_architecture():
    model = _random_model("mobilenet_v2", {"width_mult": 0.25})
    smaller = cp.remove_channels(model, cp.plan_channel_pruning(model, 0.4))
    buffer = io.BytesIO()
    torch.save(smaller.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    fresh = lc.create_model("mobilenet_v2", width_mult=0.25)
    with pytest.raises(RuntimeError, match="size mismatch"):
        fresh.load_state_dict(state)              # what users of pruning libraries hit
    loaded = cp.resize_to_state_dict(lc.create_model("mobilenet_v2", width_mult=0.25), state).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), smaller(x))
    assert lc.count_macs(loaded) == lc.count_macs(smaller)


def test_pruned_model_still_trains():
    model = _random_model("baseline_cnn", {})
    smaller = cp.remove_channels(model, cp.plan_channel_pruning(model, 0.5)).train()
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    loss = nn.functional.cross_entropy(smaller(x), y)
    loss.backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in smaller.parameters())


def test_slimming_loss_adds_the_bn_penalty():
    model = _random_model("baseline_cnn", {})
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    gammas = sum(m.weight.abs().sum() for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert torch.allclose(cp.bn_l1_penalty(model), gammas)
    plain = nn.functional.cross_entropy(model(x), y)
    assert torch.allclose(cp.slimming_loss(1e-3)(model, x, y), plain + 1e-3 * gammas)
    with pytest.raises(ValueError, match="strength"):
        cp.slimming_loss(-1.0)
    with pytest.raises(ValueError, match="batch norm"):
        cp.bn_l1_penalty(lc.create_model("lenet5"))


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_ratio_is_rejected(ratio):
    with pytest.raises(ValueError, match="ratio"):
        cp.plan_channel_pruning(lc.create_model("baseline_cnn"), ratio)


def test_ratio_that_empties_a_layer_is_rejected():
    # LeNet's first conv has 6 channels: 0.95 of 6 rounds to all of them
    with pytest.raises(ValueError, match="every channel"):
        cp.plan_channel_pruning(lc.create_model("lenet5"), 0.95)
    with pytest.raises(ValueError, match="every channel"):
        cp.remove_channels(lc.create_model("lenet5"), {"features.0": list(range(6))})


def test_bad_plans_are_rejected():
    model = lc.create_model("baseline_cnn")
    with pytest.raises(ValueError, match="not a prunable"):
        cp.remove_channels(model, {"features.0.1": [0]})          # a batch norm
    with pytest.raises(ValueError, match="does not exist"):
        cp.remove_channels(model, {"features.0.0": [32]})
    with pytest.raises(ValueError, match="cannot be removed"):
        cp.remove_channels(model, {"classifier.2": [0]})          # the logits
    with pytest.raises(ValueError, match="unknown layers"):
        cp.plan_channel_pruning(model, 0.5, exclude=["nope"])
    with pytest.raises(TypeError, match="plan"):
        cp.remove_channels(model, [("features.0.0", 0)])


def test_unsupported_layers_are_named():
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.GroupNorm(2, 8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 26 * 26, 10))
    with pytest.raises(ValueError, match="GroupNorm"):
        cp.channel_groups(model)


def test_masked_layers_must_be_made_permanent_first():
    model = lc.create_model("baseline_cnn")
    torch.nn.utils.prune.l1_unstructured(model.features[0][0], "weight", 0.5)
    with pytest.raises(ValueError, match="prune.remove"):
        cp.plan_channel_pruning(model, 0.3)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_ratio_for_macs_is_the_smallest_step_that_reaches_the_share(scope):
    torch.manual_seed(0)
    model = lc.create_model("baseline_cnn")
    macs = lc.count_macs(model)
    ratio = cp.ratio_for_macs(model, cp.l1_importance, share=0.5, scope=scope)

    def left(r):
        plan = cp.plan_channel_pruning(model, r, cp.l1_importance, scope=scope)
        return lc.count_macs(cp.remove_channels(model, plan))

    assert left(ratio) <= 0.5 * macs < left(round(ratio - 0.05, 6))
    # a plain CNN's MACs fall with the square of the kept fraction: 1 - sqrt(0.5) = 0.29
    assert 0.25 <= ratio <= 0.35


def test_ratio_for_macs_rejects_bad_arguments_and_unreachable_shares():
    model = lc.create_model("baseline_cnn")
    for share in (0, 1, 1.5, True):
        with pytest.raises(ValueError, match="share"):
            cp.ratio_for_macs(model, share=share)
    with pytest.raises(ValueError, match="step"):
        cp.ratio_for_macs(model, step=0)
    # the classifier's inputs cannot all go: some MACs always stay
    with pytest.raises(ValueError, match="no pruning ratio"):
        cp.ratio_for_macs(model, share=1e-6, step=0.3)


class _ReusedRelu(nn.Module):
    """One ReLU module called after both convs, as torchvision's ResNet blocks do."""

    def __init__(self, reuse_conv: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.reuse_conv = reuse_conv
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))

    def forward(self, x):
        x = self.relu(self.conv1(x))
        x = self.relu(self.conv2(x))
        if self.reuse_conv:
            x = self.conv2(x)
        return self.head(x)


def test_a_stateless_module_may_be_called_twice_but_a_layer_with_weights_may_not():
    torch.manual_seed(0)
    model = _ReusedRelu().eval()
    plan = cp.plan_channel_pruning(model, 0.5)
    assert sorted(plan) == ["conv1", "conv2"] and all(len(v) == 4 for v in plan.values())
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(cp.remove_channels(model, plan)(x), cp.zero_channels(model, plan)(x),
                              atol=1e-5)
    with pytest.raises(ValueError, match="'conv2' is called twice in forward"):
        cp.plan_channel_pruning(_ReusedRelu(reuse_conv=True), 0.5)


def test_prune_to_macs_removes_the_channels_of_ratio_for_macs():
    torch.manual_seed(0)
    model = lc.create_model("baseline_cnn")
    smaller, ratio = cp.prune_to_macs(model, cp.l1_importance, share=0.5)
    assert ratio == cp.ratio_for_macs(model, cp.l1_importance, share=0.5)
    by_hand = cp.remove_channels(model, cp.plan_channel_pruning(model, ratio, cp.l1_importance))
    assert all(torch.equal(a, b) for a, b in zip(smaller.state_dict().values(),
                                                by_hand.state_dict().values()))
    assert lc.count_macs(smaller) <= 0.5 * lc.count_macs(model)
