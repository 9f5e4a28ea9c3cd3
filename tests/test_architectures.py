"""Tests for lightcnn.architectures: every registered model runs on Fashion-MNIST, and at
the ImageNet config the counts equal torchvision's models or the papers' tables."""

import math

import pytest
import torch
import torchvision.models as tvm

import lightcnn as lc
from lightcnn import architectures
from lightcnn.profile import count_macs, count_params

IMAGENET = (3, 224, 224)
FAMILIES = ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
            "shufflenet_v1", "shufflenet_v2", "squeezenet1_0", "squeezenet1_1",
            "efficientnet_b0", "ghostnet"]


def test_families_are_registered():
    assert set(FAMILIES) <= set(lc.list_models())


@pytest.mark.parametrize("name", lc.list_models())
def test_forward_shape_fashion_mnist(name):
    torch.manual_seed(0)
    model = lc.create_model(name, num_classes=10)
    with torch.no_grad():
        logits = model(torch.randn(2, 1, 28, 28))
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", FAMILIES)
def test_fashion_mnist_stem_keeps_a_spatial_map(name):
    # the fmnist config downsamples 8x: the last feature map is 3x3 or 4x4, not 1x1
    model = lc.create_model(name).eval()
    with torch.no_grad():
        features = model.features(torch.zeros(1, 1, 28, 28))
    assert features.shape[-1] >= 3 and features.shape[-2] >= 3


@pytest.mark.parametrize("name", ["mobilenet_v2", "shufflenet_v1", "ghostnet", "squeezenet1_1"])
def test_width_mult_shrinks_the_model(name):
    small = lc.create_model(name, width_mult=0.5)
    full = lc.create_model(name, width_mult=1.0)
    assert count_params(small) < count_params(full)
    with torch.no_grad():
        assert small(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("width_mult", [0.35, 1.3])
@pytest.mark.parametrize("name", FAMILIES)
def test_odd_widths_still_build(name, width_mult):
    # rounding (make_divisible, multiples of 4*g for ShuffleNetV1) keeps every group valid
    model = lc.create_model(name, width_mult=width_mult)
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


# ---- fidelity at the ImageNet config ---------------------------------------------------

@pytest.mark.parametrize("name,reference", [
    ("mobilenet_v2", tvm.mobilenet_v2),
    ("mobilenet_v3_small", tvm.mobilenet_v3_small),
    ("mobilenet_v3_large", tvm.mobilenet_v3_large),
    ("shufflenet_v2", tvm.shufflenet_v2_x1_0),
    ("squeezenet1_0", tvm.squeezenet1_0),
    ("squeezenet1_1", tvm.squeezenet1_1),
    ("efficientnet_b0", tvm.efficientnet_b0),
])
def test_imagenet_counts_equal_torchvision(name, reference):
    ours = lc.create_model(name, num_classes=1000, config="imagenet")
    theirs = reference()  # random weights: no download
    assert count_params(ours) == count_params(theirs)
    assert count_macs(ours, IMAGENET) == count_macs(theirs, IMAGENET)


# The papers' tables (REFERENCES.md), which torchvision has no builder for. Rounded to two
# significant digits there, so 3% tolerance; ShuffleNetV1's 1.87M / 137M matches the
# authors' released code (megvii-model/ShuffleNet-Series: 1.9M, 138M) more closely.
@pytest.mark.parametrize("name,params,macs", [
    ("mobilenet_v1", 4.2e6, 569e6),
    ("shufflenet_v1", 1.9e6, 140e6),
    ("ghostnet", 5.2e6, 141e6),
])
def test_imagenet_counts_match_papers(name, params, macs):
    model = lc.create_model(name, num_classes=1000, config="imagenet")
    assert count_params(model) == pytest.approx(params, rel=0.03)
    assert count_macs(model, IMAGENET) == pytest.approx(macs, rel=0.03)


def test_imagenet_forward_shape():
    model = lc.create_model("mobilenet_v3_small", num_classes=1000, config="imagenet").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
        # the ImageNet stem reduces 224 -> 7 (32x)
        assert model.features(torch.zeros(1, 3, 224, 224)).shape[-2:] == (7, 7)


# ---- compound scaling ----------------------------------------------------------------

def test_compound_scaling():
    assert architectures.compound_scaling(0) == (1.0, 1.0, 224)
    d, w, r = architectures.compound_scaling(1)
    assert (d, w, r) == (pytest.approx(1.2), pytest.approx(1.1), round(224 * 1.15))
    # alpha * beta**2 * gamma**2 ~ 2: each step of phi about doubles the MACs
    assert 1.2 * 1.1 ** 2 * 1.15 ** 2 == pytest.approx(2, abs=0.1)
    d2, w2, _ = architectures.compound_scaling(2)
    assert d2 == pytest.approx(1.2 ** 2) and w2 == pytest.approx(1.1 ** 2)
    with pytest.raises(ValueError, match="phi"):
        architectures.compound_scaling(math.nan)


def test_depth_mult_adds_blocks():
    b0 = lc.create_model("efficientnet_b0")
    deeper = lc.create_model("efficientnet_b0", depth_mult=1.2)
    assert len(deeper.features) > len(b0.features)
    with pytest.raises(ValueError, match="depth_mult"):
        lc.create_model("efficientnet_b0", depth_mult=0)


# ---- bad inputs ----------------------------------------------------------------------

@pytest.mark.parametrize("width_mult", [0, -0.5, math.nan, math.inf, "1"])
@pytest.mark.parametrize("name", ["mobilenet_v2", "shufflenet_v2", "ghostnet"])
def test_nonpositive_width_is_rejected(name, width_mult):
    with pytest.raises(ValueError, match="width_mult must be a finite number > 0"):
        lc.create_model(name, width_mult=width_mult)


def test_unknown_config_is_rejected():
    with pytest.raises(ValueError, match=r"config must be one of \['fmnist', 'imagenet'\]"):
        lc.create_model("mobilenet_v2", config="cifar")


def test_unknown_model_lists_known_ones():
    with pytest.raises(ValueError, match="unknown model 'mobilenet_v9'") as err:
        lc.create_model("mobilenet_v9")
    for name in FAMILIES:
        assert name in str(err.value)


def test_bad_shufflenet_groups_is_rejected():
    with pytest.raises(ValueError, match="groups must be one of"):
        lc.create_model("shufflenet_v1", groups=5)


@pytest.mark.parametrize("name", ["squeezenet1_0", "squeezenet1_1"])
def test_squeezenet_has_batch_norm_only_in_the_fashion_mnist_config(name):
    def norms(model):
        return sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())

    small = lc.create_model(name, width_mult=0.25)
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in small.modules())
    assert norms(small) == convs - 1          # every conv but the classifier
    assert norms(lc.create_model(name, num_classes=1000, config="imagenet")) == 0


@pytest.mark.parametrize("name", ["squeezenet1_0", "squeezenet1_1"])
def test_squeezenet_without_its_relu_head_gives_the_classifier_conv_output_itself(name):
    torch.manual_seed(0)
    relu = lc.create_model(name, width_mult=0.25).eval()
    linear = lc.create_model(name, width_mult=0.25, relu_head=False).eval()
    linear.load_state_dict(relu.state_dict())        # same parameters, same names
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        scores = linear(x)
        # the head by hand: the classifier conv, then global average pooling
        conv = relu.classifier[1][0]
        maps = conv(relu.features(x))
        assert torch.allclose(scores, maps.mean((2, 3)), atol=1e-5)
        assert torch.allclose(relu(x), maps.relu().mean((2, 3)), atol=1e-5)   # ReLU, then pool
    assert (scores < 0).any() and (relu(x) >= 0).all()
    with pytest.raises(TypeError, match="relu_head"):
        lc.create_model(name, relu_head="no")
