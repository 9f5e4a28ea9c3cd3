import copy
import io

import pytest
import torch
import torch.nn.utils.prune
import torchvision
from torch import nn

import lightcnn as lc
from lightcnn import channel_pruning as cp
from helpers import randomize_bn

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


# ---------------------------------------------------------------------------------------
# Split outputs merged with another layer's output (groups whose indices do not start at 0)
# ---------------------------------------------------------------------------------------

class _SplitMerge(nn.Module):
    """``conv_a`` to 8 channels, split 4 + 4, ``conv_b(y1) + y2``; ``stem`` and ``conv_c``
    around it are free to shrink, ``conv_a`` and ``conv_b`` are tied to the split."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.stem = nn.Conv2d(1, 6, 3, padding=1)
        self.conv_a = nn.Conv2d(6, 8, 3, padding=1)
        self.conv_b = nn.Conv2d(4, 4, 3, padding=1)
        self.conv_c = nn.Conv2d(4, 6, 3, padding=1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))

    def forward(self, x):
        y = self.conv_a(torch.relu(self.stem(x)))
        if self.how == "split":
            y1, y2 = torch.split(y, 4, dim=1)
        elif self.how == "split_method":
            y1, y2 = y.split([4, 4], 1)
        elif self.how == "chunk":
            y1, y2 = y.chunk(2, dim=1)
        else:
            y1, y2 = y[:, :4], y[:, 4:]
        z = torch.relu(self.conv_b(y1) + y2)
        return self.head(torch.relu(self.conv_c(z)))


SPLITS = ["split", "split_method", "chunk", "slice"]


def _zero_by_hand(model, plan):
    """Reference: a copy whose planned (uncoupled) conv filters and biases are zero."""
    silenced = copy.deepcopy(model)
    modules = dict(silenced.named_modules())
    with torch.no_grad():
        for layer, channels in plan.items():
            modules[layer].weight[channels] = 0.0
            modules[layer].bias[channels] = 0.0
    return silenced


@pytest.mark.parametrize("how", SPLITS)
def test_a_split_merged_with_another_layer_is_grouped_and_pruned(how):
    torch.manual_seed(0)
    model = _SplitMerge(how).eval()
    groups = {g.layer: g for g in cp.channel_groups(model)}
    # conv_b's outputs join the second half of conv_a's: one group, named by conv_a
    assert groups["conv_a"].producers == ["conv_a", "conv_b"]
    assert groups["conv_a"].channels == list(range(8)) and not any(groups["conv_a"].prunable)
    assert all(groups["stem"].prunable) and all(groups["conv_c"].prunable)
    plan = cp.plan_channel_pruning(model, 0.5)
    assert sorted(plan) == ["conv_c", "stem"] and all(len(v) == 3 for v in plan.values())
    smaller = cp.remove_channels(model, plan)
    assert (smaller.stem.out_channels, smaller.conv_a.in_channels) == (3, 3)
    assert (smaller.conv_c.out_channels, smaller.head[2].in_features) == (3, 3)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        y = smaller(x)
        assert y.shape == (2, 3)
        assert torch.allclose(y, _zero_by_hand(model, plan)(x), atol=1e-5)


@pytest.mark.parametrize("how", SPLITS)
def test_ratio_for_macs_and_prune_to_macs_follow_a_split(how):
    torch.manual_seed(0)
    model = _SplitMerge(how).eval()
    macs = lc.count_macs(model)
    ratio = cp.ratio_for_macs(model, share=0.75)

    def left(r):
        return lc.count_macs(cp.remove_channels(model, cp.plan_channel_pruning(model, r)))

    assert left(ratio) <= 0.75 * macs < left(round(ratio - 0.05, 6))
    smaller, same = cp.prune_to_macs(model, share=0.75)
    assert same == ratio and lc.count_macs(smaller) == left(ratio)
    with torch.no_grad():
        assert smaller(torch.randn(2, 1, 28, 28)).shape == (2, 3)


class _CatPlusConv(nn.Module):
    """``conv_a(x) + cat([conv_b(x), conv_c(x)])``: conv_a's channels 0..3 go with conv_b's,
    4..7 with conv_c's. ``order`` says which conv runs first."""

    def __init__(self, order: str = "abc"):
        super().__init__()
        self.order = order
        self.conv_a = nn.Conv2d(1, 8, 3, padding=1)
        self.conv_b = nn.Conv2d(1, 4, 3, padding=1)
        self.conv_c = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))

    def forward(self, x):
        out = {k: getattr(self, f"conv_{k}")(x) for k in self.order}
        return self.head(torch.relu(out["a"] + torch.cat([out["b"], out["c"]], 1)))


def test_channels_coupled_to_parts_of_a_layer_form_one_group_per_first_layer():
    torch.manual_seed(0)
    logits = ("head.2", ["head.2"], [0, 1, 2])
    groups = cp.channel_groups(_CatPlusConv("abc"))
    assert [(g.layer, g.producers, g.channels) for g in groups] == \
        [("conv_a", ["conv_a", "conv_b", "conv_c"], list(range(8))), logits]
    # conv_b runs first: its group holds conv_a's 0..3 (named by conv_b's 0..3); conv_a's
    # own group holds its channels 4..7, tied to conv_c's
    groups = cp.channel_groups(_CatPlusConv("bac"))
    assert [(g.layer, g.producers, g.channels) for g in groups] == \
        [("conv_b", ["conv_b", "conv_a"], [0, 1, 2, 3]),
         ("conv_a", ["conv_a", "conv_c"], [4, 5, 6, 7]), logits]
    assert groups[1].modules[0] == [("conv_a", 4), ("conv_c", 0)]
    assert all(all(g.prunable) and g.size == len(g.modules) == 4 for g in groups[:2])


@pytest.mark.parametrize("order", ["abc", "bac"])
def test_coupled_parts_are_removed_as_torch_pruning_removes_them(order):
    tp = pytest.importorskip("torch_pruning")
    torch.manual_seed(0)
    model = _CatPlusConv(order).eval()
    plan = cp.plan_channel_pruning(model, 0.5)
    removed_from_a = sorted(j for layer, js in plan.items() for j in js) if order == "abc" else \
        sorted(plan["conv_b"] + plan["conv_a"])          # conv_b's j is conv_a's j
    assert len(removed_from_a) == 4
    ours = cp.remove_channels(model, plan)
    # Torch-Pruning's dependency graph, asked to remove the same channels of conv_a
    theirs = copy.deepcopy(model)
    graph = tp.DependencyGraph().build_dependency(theirs, example_inputs=torch.randn(1, 1, 28, 28))
    group = graph.get_pruning_group(theirs.conv_a, tp.prune_conv_out_channels, idxs=removed_from_a)
    group.prune()
    for name in ("conv_a", "conv_b", "conv_c"):
        assert getattr(ours, name).weight.shape == getattr(theirs, name).weight.shape
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)
    assert cp.prune_to_macs(model, share=0.6)[0](x).shape == (2, 3)


def test_global_scope_never_empties_a_layer_tied_to_part_of_a_group():
    model = _CatPlusConv("abc").eval()
    with torch.no_grad():
        model.conv_a.weight[:4] = 0.0                    # channels 0..3 score low
        model.conv_b.weight.mul_(1e-3)
    plan = cp.plan_channel_pruning(model, 0.6, scope="global")
    smaller = cp.remove_channels(model, plan)            # raises if conv_b were emptied
    assert smaller.conv_b.out_channels >= 1


# ---------------------------------------------------------------------------------------
# .shape / .size() idioms, and operations that must still be refused
# ---------------------------------------------------------------------------------------

class _MitVgg(nn.Module):
    """A small VGG as MIT's efficient-ML lab writes it: ``x.view(x.shape[0], -1)``."""

    def __init__(self, flatten: str = "shape"):
        super().__init__()
        self.flatten = flatten
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(True),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(True),
            nn.MaxPool2d(2))
        self.classifier = nn.Linear(16 if flatten == "keep_channels" else 16 * 4 * 4, 10)

    def forward(self, x):
        x = self.backbone(x)
        if self.flatten == "shape":
            x = x.view(x.shape[0], -1)
        elif self.flatten == "size":
            x = x.view(x.size(0), -1)
        elif self.flatten == "size_index":
            x = x.reshape(x.size()[0], -1)
        elif self.flatten == "shape_slice":
            x = x.reshape(x.shape[:1] + (-1,))
        else:                                            # (B, C, H*W), averaged to (B, C)
            x = x.view(x.shape[0], x.shape[1], -1).mean(2)
        return self.classifier(x)


@pytest.mark.parametrize("flatten", ["shape", "size", "size_index", "shape_slice", "keep_channels"])
def test_shape_and_size_idioms_are_followed(flatten):
    torch.manual_seed(0)
    model = _MitVgg(flatten).eval()
    plan = cp.plan_channel_pruning(model, 0.25, input_shape=(3, 16, 16))
    assert sorted(plan) == ["backbone.0", "backbone.4"]
    smaller = cp.remove_channels(model, plan, input_shape=(3, 16, 16))
    assert smaller.backbone[4].out_channels == 12
    features = 12 if flatten == "keep_channels" else 12 * 4 * 4
    assert smaller.classifier.in_features == features
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(smaller(x), cp.zero_channels(model, plan, (3, 16, 16))(x), atol=1e-5)


class _Unfollowable(nn.Module):
    def __init__(self, op: str):
        super().__init__()
        self.op = op
        self.conv = nn.Conv2d(1, 8, 3, padding=1)

    def forward(self, x):
        x = self.conv(x)
        if self.op == "mT":
            x = x.mT                                     # swaps H and W: fine, but unknown
        elif self.op == "permute":
            x = x.permute(0, 2, 3, 1)                    # moves channels last
        elif self.op == "transpose":
            x = torch.transpose(x, 1, 3)
        elif self.op == "roll":
            x = torch.roll(x, 1, dims=1)                 # shifts channels
        return x


@pytest.mark.parametrize("op,named", [("mT", "getattr.*mT"), ("permute", "permute"),
                                      ("transpose", "transpose"), ("roll", "roll")])
def test_operations_the_pruner_cannot_follow_are_refused_by_name(op, named):
    with pytest.raises(ValueError, match=f"does not support the operation '{named}"):
        cp.plan_channel_pruning(_Unfollowable(op), 0.5)


# ---------------------------------------------------------------------------------------
# Plain MLPs: (features,) inputs, and Linear after Flatten
# ---------------------------------------------------------------------------------------

def _mlp(batch_norm: bool = False, flatten: bool = False):
    """20 -> 16 -> 12 -> 3 (or 1x28x28 flattened -> 16 -> 12 -> 10)."""
    d_in, d_out = (784, 10) if flatten else (20, 3)
    norm = (lambda n: nn.BatchNorm1d(n)) if batch_norm else (lambda n: nn.Identity())
    layers = [nn.Flatten()] if flatten else []
    layers += [nn.Linear(d_in, 16), norm(16), nn.ReLU(), nn.Linear(16, 12), norm(12), nn.ReLU(),
               nn.Linear(12, d_out)]
    return nn.Sequential(*layers).eval()


def _mlp_params(d_in, widths, d_out, batch_norm):
    """Parameters of Linear(d_in, h1) [BN] Linear(h1, h2) [BN] Linear(h2, d_out)."""
    sizes = [d_in, *widths, d_out]
    count = sum(i * o + o for i, o in zip(sizes, sizes[1:]))
    return count + (2 * sum(widths) if batch_norm else 0)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_a_plain_mlp_is_pruned(batch_norm):
    torch.manual_seed(0)
    model = _mlp(batch_norm)
    first, second = ("0", "3")
    plan = cp.plan_channel_pruning(model, 0.25, input_shape=(20,))
    assert {k: len(v) for k, v in plan.items()} == {first: 4, second: 3}
    smaller = cp.remove_channels(model, plan, input_shape=(20,))
    assert [m.out_features for m in smaller if isinstance(m, nn.Linear)] == [12, 9, 3]
    assert lc.count_params(smaller) == _mlp_params(20, [12, 9], 3, batch_norm)
    x = torch.randn(5, 20)
    with torch.no_grad():
        assert smaller(x).shape == (5, 3)
        assert torch.allclose(smaller(x), cp.zero_channels(model, plan, (20,))(x), atol=1e-5)
    # MACs of a linear layer: in * out
    ratio = cp.ratio_for_macs(model, share=0.5, input_shape=(20,))
    pruned, same = cp.prune_to_macs(model, share=0.5, input_shape=(20,))
    assert same == ratio
    widths = [m.out_features for m in pruned if isinstance(m, nn.Linear)][:2]
    assert widths == [16 - round(ratio * 16), 12 - round(ratio * 12)]
    assert lc.count_params(pruned) == _mlp_params(20, widths, 3, batch_norm)
    macs = 20 * widths[0] + widths[0] * widths[1] + widths[1] * 3
    assert macs <= 0.5 * (20 * 16 + 16 * 12 + 12 * 3)
    with torch.no_grad():
        assert pruned(x).shape == (5, 3)


def test_linear_after_flatten_is_pruned():
    torch.manual_seed(0)
    model = _mlp(flatten=True)
    plan = cp.plan_channel_pruning(model, 0.5)
    assert {k: len(v) for k, v in plan.items()} == {"1": 8, "4": 6}
    smaller = cp.remove_channels(model, plan)
    assert lc.count_params(smaller) == _mlp_params(784, [8, 6], 10, False)
    smaller, ratio = cp.prune_to_macs(model, share=0.5)
    h1 = 16 - round(ratio * 16)
    assert smaller[1].out_features == h1 and lc.count_macs(smaller) <= 0.5 * lc.count_macs(model)
    with torch.no_grad():
        assert smaller(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("shape", [(), (0,), (20.0,), "20", (20, -1)])
def test_bad_input_shapes_are_rejected(shape):
    with pytest.raises(ValueError, match="input_shape"):
        cp.plan_channel_pruning(_mlp(), 0.25, input_shape=shape)


# ---------------------------------------------------------------------------------------
# round_to: widths in multiples of 8 or 16 (Torch-Pruning's option of that name)
# ---------------------------------------------------------------------------------------

def _nearest_multiple(kept, width, r):
    """The documented rule, written out: nearest multiple of r (a tie to the larger), at
    least r, the original width if that exceeds it."""
    below, above = kept // r * r, -(-kept // r) * r
    rounded = above if above - kept <= kept - below else below
    rounded = max(rounded, r)
    return width if rounded > width else rounded


def _conv_widths(model):
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("round_to,widths", [(8, [24, 48, 48, 88, 88]), (16, [16, 48, 48, 96, 96]),
                                             (48, [32, 48, 48, 96, 96])])
def test_round_to_keeps_multiples_on_the_baseline(round_to, widths):
    model = _random_model("baseline_cnn", {})
    plan = cp.plan_channel_pruning(model, 0.3, round_to=round_to)
    smaller = cp.remove_channels(model, plan)
    # unrounded: 22/45/45/90/90 kept (round(0.3 n) removed); 32 is no multiple of 48 and
    # rounding 22 up to 48 would exceed it, so that layer stays whole
    assert _conv_widths(smaller) == widths
    original = (32, 64, 64, 128, 128)
    assert widths == [_nearest_multiple(n - round(0.3 * n), n, round_to) for n in original]
    assert all(w % round_to == 0 or w == n for w, n in zip(widths, original))
    # the rounded layers lose their lowest-scored channels, and the result computes what
    # silencing those channels computes
    conv = model.features[2][0]
    lowest = cp.l1_importance(conv).argsort()[:64 - widths[1]]
    assert plan["features.2.0"] == sorted(lowest.tolist())
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(smaller(x), cp.zero_channels(model, plan)(x), atol=1e-5)


def test_round_to_rounds_to_the_nearest_multiple_and_never_widens():
    model = _mlp()                                        # 20 -> 16 -> 12 -> 3
    # ratio 0.25 keeps 12 of 16 (a tie between 8 and 16: the larger, the whole layer) and
    # 9 of 12 (nearest: 8)
    plan = cp.plan_channel_pruning(model, 0.25, input_shape=(20,), round_to=8)
    assert list(plan) == ["3"] and len(plan["3"]) == 4
    # at 16: 9 of 12 would round to 16 > 12, so both layers stay whole
    assert cp.plan_channel_pruning(model, 0.25, input_shape=(20,), round_to=16) == {}
    assert cp.plan_channel_pruning(model, 0.25, input_shape=(20,), round_to=1) == \
        cp.plan_channel_pruning(model, 0.25, input_shape=(20,))
    for kept, width, r, expected in [(22, 32, 8, 24), (20, 32, 8, 24), (19, 32, 8, 16),
                                     (3, 32, 8, 8), (9, 12, 16, 12), (45, 64, 24, 48),
                                     (179, 256, 24, 168)]:
        assert cp._rounded_width(kept, width, r) == _nearest_multiple(kept, width, r) == expected


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_round_to_on_a_residual_network(scope):
    torch.manual_seed(0)
    model = randomize_bn(torchvision.models.resnet18(num_classes=10))
    shape = (3, 64, 64)
    # 24 divides none of 64/128/256/512: every pruned residual stage must still land on it
    plan = cp.plan_channel_pruning(model, 0.3, input_shape=shape, scope=scope, round_to=24)
    smaller = cp.remove_channels(model, plan, input_shape=shape)
    groups = cp.channel_groups(model, shape)
    widths = {n: m.out_channels for n, m in smaller.named_modules() if isinstance(m, nn.Conv2d)}
    coupled = [g for g in groups if len(g.producers) > 1]
    assert coupled                                       # the residual chains
    for g in groups:
        if g.layer not in plan:
            continue
        kept = g.size - len(plan[g.layer])
        assert kept % 24 == 0
        for producer in g.producers:                     # every conv of a chain shrank alike
            if producer in widths:
                assert widths[producer] == kept
        if scope == "layer":
            assert kept == _nearest_multiple(g.size - round(0.3 * g.size), g.size, 24)
    # a conv is a multiple of 24 or, in a group the plan left whole, as wide as before
    original = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert all(w % 24 == 0 or w == original[n] for n, w in widths.items())
    assert len(plan) >= 5
    x = torch.randn(2, *shape)
    with torch.no_grad():
        a, b = smaller(x), cp.zero_channels(model, plan, shape)(x)
    assert torch.allclose(a, b, atol=1e-4 * max(1.0, b.abs().max().item()))
    assert lc.count_macs(smaller, shape) < lc.count_macs(model, shape)


@pytest.mark.parametrize("how", ["split", "slice"])
def test_round_to_follows_a_split(how):
    torch.manual_seed(0)
    model = _SplitMerge(how).eval()
    plan = cp.plan_channel_pruning(model, 0.5, round_to=4)   # 6 -> 3 -> 4 in stem and conv_c
    assert {k: len(v) for k, v in plan.items()} == {"stem": 2, "conv_c": 2}
    smaller = cp.remove_channels(model, plan)
    assert (smaller.stem.out_channels, smaller.conv_c.out_channels) == (4, 4)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(smaller(x), cp.zero_channels(model, plan)(x), atol=1e-5)


def test_round_to_against_torch_pruning():
    tp = pytest.importorskip("torch_pruning")
    model = _random_model("baseline_cnn", {})

    def theirs(round_to):
        copy_ = copy.deepcopy(model)
        pruner = tp.pruner.MetaPruner(copy_, torch.randn(1, 1, 28, 28),
                                      importance=tp.importance.MagnitudeImportance(p=1),
                                      pruning_ratio=0.3, ignored_layers=[copy_.classifier[2]],
                                      round_to=round_to)
        pruner.step()
        return _conv_widths(copy_)

    ours_plain = _conv_widths(cp.remove_channels(model, cp.plan_channel_pruning(model, 0.3)))
    theirs_plain = theirs(None)
    # unrounded, Torch-Pruning keeps int(n * 0.7) (22/44/44/89/89), we keep n - round(0.3 n)
    assert theirs_plain == [int(n * 0.7) for n in (32, 64, 64, 128, 128)]
    assert ours_plain == [22, 45, 45, 90, 90]
    for r in (8, 16):
        plan = cp.plan_channel_pruning(model, 0.3, round_to=r)
        ours = _conv_widths(cp.remove_channels(model, plan))
        other = theirs(r)
        assert all(w % r == 0 for w in ours + other)
        # Torch-Pruning rounds the kept width down, we round it to the nearest multiple:
        # the two differ by at most one multiple, ours never the narrower
        assert other == [w - w % r for w in theirs_plain]
        assert ours == [_nearest_multiple(w, n, r)
                        for w, n in zip(ours_plain, (32, 64, 64, 128, 128))]
        assert all(0 <= a - b <= r for a, b in zip(ours, other))


@pytest.mark.parametrize("round_to,widths,ratio", [(8, [24, 48, 48, 88, 88], 0.3),
                                                   (16, [16, 48, 48, 96, 96], 0.3)])
def test_prune_to_macs_with_round_to_lands_nearest_the_target(round_to, widths, ratio):
    torch.manual_seed(0)
    model = lc.create_model("baseline_cnn").eval()
    macs = lc.count_macs(model)
    smaller, found = cp.prune_to_macs(model, share=0.5, round_to=round_to)
    assert found == ratio and _conv_widths(smaller) == widths
    assert smaller(torch.randn(2, 1, 28, 28)).shape == (2, 10)

    def left(r):
        plan = cp.plan_channel_pruning(model, r, round_to=round_to)
        return lc.count_macs(cp.remove_channels(model, plan)) / macs

    share = lc.count_macs(smaller) / macs
    assert share == left(found)
    # the documented tolerance: half the step rounding makes around the target, where r
    # is the first ratio at or below it (here the next step, which overshoots further)
    first_below = found if share <= 0.5 else round(found + 0.05, 6)
    step = left(round(first_below - 0.05, 6)) - left(first_below)
    assert abs(share - 0.5) <= step / 2
    assert abs(share - 0.5) < 0.05                      # 0.527 and 0.531 of the MACs


@pytest.mark.parametrize("bad,error", [(0, ValueError), (-8, ValueError), (8.0, TypeError),
                                       ("8", TypeError), (True, TypeError)])
def test_bad_round_to_is_rejected(bad, error):
    model = lc.create_model("baseline_cnn")
    with pytest.raises(error, match="round_to must be an int >= 1 or None"):
        cp.plan_channel_pruning(model, 0.3, round_to=bad)
    with pytest.raises(error, match="round_to"):
        cp.ratio_for_macs(model, round_to=bad)
    with pytest.raises(error, match="round_to"):
        cp.prune_to_macs(model, round_to=bad)
