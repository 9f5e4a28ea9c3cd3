import pytest
import torch
from torch import nn

import lightcnn as lc
from lightcnn import design


def test_default_design_is_the_baseline():
    ours, baseline = design.DesignCNN(), lc.create_model("baseline_cnn")
    assert lc.count_params(ours) == lc.count_params(baseline) == 278_890
    assert lc.count_macs(ours) == lc.count_macs(baseline)
    # same layers in the same order: the baseline's weights load into it one to one
    ours.load_state_dict(dict(zip(ours.state_dict(), baseline.state_dict().values())))
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(ours.eval()(x), baseline.eval()(x))


@pytest.mark.parametrize("activation", sorted(design.ACTIVATIONS))
@pytest.mark.parametrize("block", design.BLOCKS)
def test_every_block_and_activation_builds(activation, block):
    model = lc.create_model("design_cnn", widths=(8, 16), depths=(2, 2), activation=activation,
                            block=block)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert any(isinstance(m, design.ACTIVATIONS[activation]) for m in model.modules())


def test_depth_adds_layers_and_stages_halve_resolution():
    shallow = design.DesignCNN(widths=(8, 16, 32), depths=(1, 1, 1))
    deep = design.DesignCNN(widths=(8, 16, 32), depths=(2, 3, 3))
    convs = lambda m: sum(isinstance(l, nn.Conv2d) for l in m.modules())
    assert (convs(shallow), convs(deep)) == (3, 8)
    out = deep.features[:-1](torch.zeros(1, 1, 28, 28))  # before global pooling
    assert out.shape == (1, 32, 7, 7)


def test_dwsep_block_costs_what_its_formula_says():
    dense = design.DesignCNN(widths=(16, 32), depths=(1, 2), block="conv")
    dwsep = design.DesignCNN(widths=(16, 32), depths=(1, 2), block="dwsep")
    # stage 1 at 14x14: 16->32 and 32->32; dense 9*Ci*Co, separable 9*Ci + Ci*Co per pixel
    dense_stage = 196 * 9 * (16 * 32 + 32 * 32)
    sep_stage = 196 * (9 * 16 + 16 * 32 + 9 * 32 + 32 * 32)
    assert lc.count_macs(dense) - lc.count_macs(dwsep) == dense_stage - sep_stage


def test_fit_widths_to_macs_is_the_widest_within_budget():
    target = 5_000_000
    for depths in ((1, 1, 1), (2, 3, 3)):
        widths = design.fit_widths_to_macs(target, depths)
        assert lc.count_macs(design.DesignCNN(widths=widths, depths=depths)) <= target
        wider = [w + r for w, r in zip(widths, (1, 2, 4))]
        assert lc.count_macs(design.DesignCNN(widths=wider, depths=depths)) > target
    # at the same MACs, a deeper network must be narrower
    assert design.fit_widths_to_macs(target, (2, 3, 3))[0] < design.fit_widths_to_macs(target, (1, 1, 1))[0]


@pytest.mark.parametrize("kwargs, match", [
    (dict(activation="gelu"), "activation must be one of"),
    (dict(block="resnet"), "block must be one of"),
    (dict(widths=(8, 16), depths=(1,)), "one entry per stage"),
    (dict(widths=(0, 16), depths=(1, 1)), "widths"),
    (dict(kernel_size=4), "kernel_size"),
    (dict(dropout=1.0), "dropout"),
])
def test_bad_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        design.DesignCNN(**kwargs)


def test_impossible_macs_budget_is_reported():
    with pytest.raises(ValueError, match="target_macs"):
        design.fit_widths_to_macs(10, (1, 1, 1))
