import pytest
import torch

import lightcnn as lc


def test_baseline_is_under_half_a_million_params():
    model = lc.create_model("baseline_cnn")
    assert lc.count_params(model) <= 500_000
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_lenet5_has_its_classic_parameter_count():
    # conv1 6*(25+1) + conv2 16*(150+1) + fc 400*120+120 + 120*84+84 + 84*10+10
    expected = 156 + 2416 + 48120 + 10164 + 850
    assert lc.count_params(lc.create_model("lenet5")) == expected == 61_706


def test_registry():
    assert {"baseline_cnn", "lenet5"} <= set(lc.list_models())
    assert lc.create_model("lenet5", num_classes=3)(torch.zeros(1, 1, 28, 28)).shape == (1, 3)
    with pytest.raises(ValueError, match="known models: .*baseline_cnn"):
        lc.create_model("resnet9000")
    with pytest.raises(ValueError, match="num_classes"):
        lc.create_model("lenet5", num_classes=0)
    with pytest.raises(ValueError, match="widths"):
        lc.create_model("baseline_cnn", widths=(32, 0, 64))
    with pytest.raises(ValueError, match="already registered"):
        lc.register_model(lc.models.baseline_cnn)
