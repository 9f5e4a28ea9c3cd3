"""The package's model-level tools on the models readers bring: torchvision's families.

Each family at a small input (3x64x64, 10 classes), random weights, randomized batch-norm
statistics (so batch norm is not the identity and folding it is really tested).
"""

import copy

import pytest
import torch
import torchvision
from torch import nn

import lightcnn as lc
from lightcnn import binary as B
from lightcnn import channel_pruning as cp
from lightcnn import pruning
from helpers import randomize_bn

SHAPE = (3, 64, 64)
FAMILIES = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2_x0_5",
            "squeezenet1_1", "efficientnet_b0", "regnet_x_400mf"]


def _model(name: str, seed: int = 0, registry: bool = False) -> nn.Module:
    """torchvision's ``name``, or with ``registry`` the book's own (lc.create_model)."""
    torch.manual_seed(seed)
    if not registry:
        model = getattr(torchvision.models, name)(num_classes=10)
    else:
        model = lc.create_model(name, num_classes=10)
    return randomize_bn(model, seed)


def _formula_macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    """MACs by the papers' formula, from each layer's output shape (forward hooks)."""
    total = 0

    def conv_hook(m, args, out):
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1]
        total += k * (m.in_channels // m.groups) * m.out_channels * out.shape[2] * out.shape[3]

    def linear_hook(m, args, out):
        nonlocal total
        total += m.in_features * m.out_features * (out.numel() // out.shape[-1])

    hooks = [m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    for h in hooks:
        h.remove()
    return total


def _input(batch: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, *SHAPE, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", FAMILIES)
def test_macs_equal_the_formula(name):
    model = _model(name)
    assert lc.count_macs(model, SHAPE) == _formula_macs(model, SHAPE)


@pytest.mark.parametrize("name", FAMILIES)
def test_folding_batch_norm_keeps_outputs_and_removes_every_foldable_one(name):
    model = _model(name)
    fused = lc.fuse_conv_bn(model)
    x = _input()
    with torch.no_grad():
        ref, out = model(x), fused(x)
    assert torch.allclose(out, ref, atol=1e-4 * max(1.0, ref.abs().max().item()))
    # every batch norm of these families follows a conv: all are folded
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())


@pytest.mark.parametrize("name", FAMILIES)
def test_channel_removal_equals_zeroing_and_lowers_macs(name):
    model = _model(name)
    plan = cp.plan_channel_pruning(model, 0.3, input_shape=SHAPE)
    assert plan
    small = cp.remove_channels(model, plan, input_shape=SHAPE)
    zeroed = cp.zero_channels(model, plan, input_shape=SHAPE)
    x = _input()
    with torch.no_grad():
        a, b = small(x), zeroed(x)
    assert torch.allclose(a, b, atol=1e-4 * max(1.0, b.abs().max().item()))
    assert lc.count_macs(small, SHAPE) < lc.count_macs(model, SHAPE)
    assert lc.count_params(small) < lc.count_params(model)


@pytest.mark.parametrize("name", FAMILIES)
def test_unstructured_pruning_reaches_its_exact_sparsity(name):
    model = _model(name)
    masked = pruning.apply_masks(model, pruning.global_masks(model, 0.7))
    layers = pruning.prunable_layers(model)
    total = sum(m.weight.numel() for m in layers.values())
    assert pruning.sparsity(masked) == pytest.approx(round(0.7 * total) / total, abs=1e-12)


@pytest.mark.parametrize("name", FAMILIES)
def test_int8_pt2e_runs_and_keeps_most_predictions(name):
    from lightcnn import int8

    model = _model(name)
    calibration = [_input(8, seed=s) for s in range(4)]
    q8 = int8.quantize_int8(model, calibration)
    x = _input(64, seed=9)
    with torch.no_grad():
        agree = (q8(x).argmax(1) == model(x).argmax(1)).float().mean().item()
    assert agree >= 0.8


def test_binarize_and_pack_resnet18():
    from lightcnn import binary_kernels as BK

    model = _model("resnet18")
    bnn = B.binarize(model, "bnn", pointwise=False)
    layers = B.binary_layers(bnn)
    # every 3x3 conv but the stem is binary; the stem, the 1x1 downsamples and fc are not
    assert len(layers) == 16 and "conv1" not in layers and "fc" not in layers
    assert all(m.kernel_size == (3, 3) for m in layers.values())
    x = _input()
    with torch.no_grad():
        sim = bnn.eval()(x)
        packed = BK.pack_model(bnn)(x)
    assert torch.allclose(sim, packed, atol=1e-4 * max(1.0, sim.abs().max().item()))


@pytest.mark.parametrize("name", ["baseline_cnn", "mobilenet_v2", "shufflenet_v2", "ghostnet"])
def test_the_books_own_registry_models_too(name):
    model = _model(name, registry=True)
    shape = (1, 28, 28)
    assert lc.count_macs(model, shape) == _formula_macs(model, shape)
    plan = cp.plan_channel_pruning(model, 0.3, input_shape=shape)
    small = cp.remove_channels(model, plan, input_shape=shape)
    assert lc.count_macs(small, shape) < lc.count_macs(model, shape)


# ---- side by side with Torch-Pruning (a test-only dependency) ------------------------

tp = pytest.importorskip("torch_pruning")


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_same_l1_plan_as_torch_pruning(name):
    """Both libraries remove a quarter of every prunable group's channels, ranked by the L1
    norm of filters (Torch-Pruning: the group's first conv; lightcnn: summed over the
    group's convs), with channels tied by residual adds and depthwise convs grouped. A quarter of every width of these two families is a whole
    number, so both round alike (book/pruning_tools.ipynb: at 30% they do not), and the
    pruned models must have the same widths, parameters and MACs; in groups of one conv
    (no residual add), the same channels."""
    model = _model(name)
    plan = cp.plan_channel_pruning(model, 0.25, input_shape=SHAPE)
    ours = cp.remove_channels(model, plan, input_shape=SHAPE)
    theirs = copy.deepcopy(model)
    ignored = [m for m in theirs.modules() if isinstance(m, nn.Linear)]  # the classifier
    pruner = tp.pruner.MagnitudePruner(
        theirs, torch.zeros(1, *SHAPE), pruning_ratio=0.25, ignored_layers=ignored,
        importance=tp.importance.MagnitudeImportance(p=1, normalizer=None, group_reduction="first"))
    names = {m: n for n, m in theirs.named_modules()}
    chosen = {}
    for group in pruner.step(interactive=True):
        root = group[0].dep.target.module
        chosen[names[root]] = sorted(int(i) for i in group[0].idxs)
        group.prune()
    widths = lambda m: [(n, l.weight.shape) for n, l in m.named_modules()
                        if isinstance(l, (nn.Conv2d, nn.Linear))]
    assert widths(ours) == widths(theirs)
    assert lc.count_params(ours) == lc.count_params(theirs)
    assert lc.count_macs(ours, SHAPE) == lc.count_macs(theirs, SHAPE) < lc.count_macs(model, SHAPE)
    if name == "resnet18":
        # the first conv of each block is a group of its own (no residual add): the same
        # channels (residual groups differ: book/pruning_tools.ipynb says why)
        block_conv1 = [n for n in plan if n.startswith("layer") and n.endswith(".conv1")]
        assert len(block_conv1) == 8
        assert all(sorted(plan[n]) == chosen[n] for n in block_conv1)
