"""Tests for lightcnn.fusion: folding batch norm keeps the eval-mode function."""

import pytest
import torch
from torch import nn

import lightcnn as lc
from lightcnn.fusion import fuse_conv_bn
from lightcnn.profile import count_params


def _trained_bn(model: nn.Module) -> nn.Module:
    """Give every batch norm non-trivial statistics and affine parameters."""
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        for _ in range(2):  # running mean/var from real activations
            model(torch.randn(4, 1, 28, 28))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return model.eval()


def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("name", ["baseline_cnn", "mobilenet_v2", "shufflenet_v2", "ghostnet",
                                  "mobilenet_v3_small"])
def test_fused_model_equals_original_in_eval(name):
    model = _trained_bn(lc.create_model(name))
    fused = fuse_conv_bn(model)
    assert _count(fused, nn.BatchNorm2d) == 0
    assert _count(model, nn.BatchNorm2d) > 0  # the input model is left alone
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-5, atol=1e-5)
    # each fold: -2 per channel (gamma, beta), +1 per channel (bias) where the conv had none
    assert count_params(fused) < count_params(model)
    assert not fused.training


def test_fold_follows_formula():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4)
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
    fused = fuse_conv_bn(nn.Sequential(conv, bn))
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(fused[0].weight, conv.weight * scale.view(-1, 1, 1, 1))
    torch.testing.assert_close(fused[0].bias, bn.bias + (conv.bias - bn.running_mean) * scale)
    assert isinstance(fused[1], nn.Identity)


def test_fuse_rejects_bad_input():
    with pytest.raises(TypeError, match="nn.Module"):
        fuse_conv_bn("not a model")
    no_stats = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False))
    with pytest.raises(ValueError, match="running statistics"):
        fuse_conv_bn(no_stats)


def test_measure_fusion_reports_equality_counts_and_times():
    model = _trained_bn(lc.create_model("baseline_cnn"))
    x = torch.randn(8, 1, 28, 28)
    report = lc.measure_fusion(model, x, batch_sizes=(1, 4), warmup=1, repeats=3)
    assert report.max_diff < 1e-4
    assert report.batch_norms_before == _count(model, nn.BatchNorm2d) > 0
    assert report.batch_norms_after == 0
    assert set(report.ms_before) == set(report.ms_after) == {1, 4}
    assert all(t > 0 for t in [*report.ms_before.values(), *report.ms_after.values()])
    assert report.speedup(4) == pytest.approx(report.ms_before[4] / report.ms_after[4])
    assert f"BN {report.batch_norms_before} -> 0" in str(report)


def test_measure_fusion_refuses_to_time_a_changed_function(monkeypatch):
    model = _trained_bn(lc.create_model("baseline_cnn"))

    def broken_fold(m: nn.Module) -> nn.Module:   # a fold that changes the function
        fused = lc.fuse_conv_bn(m)
        with torch.no_grad():
            fused.classifier[-1].bias += 1.0
        return fused

    monkeypatch.setattr(lc.fusion, "fuse_conv_bn", broken_fold)
    with pytest.raises(ValueError, match="differs from the original"):
        lc.measure_fusion(model, torch.randn(2, 1, 28, 28))


def test_measure_fusion_rejects_bad_arguments():
    model = lc.create_model("lenet5")
    x = torch.randn(2, 1, 28, 28)
    for kwargs, match in [(dict(atol=-1.0), "atol must be"), (dict(x="x"), "x must be"),
                          (dict(batch_sizes=()), "batch_sizes must be"),
                          (dict(repeats=0), "repeats must be")]:
        with pytest.raises((TypeError, ValueError), match=match):
            lc.measure_fusion(**{"model": model, "x": x, **kwargs})


def test_a_batch_norm_called_twice_is_not_folded_into_one_of_its_convs():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.a(x)) + self.bn(self.b(x))

    torch.manual_seed(0)
    model = Shared().eval()
    model.bn.running_var.uniform_(0.5, 2.0)
    fused = lc.fuse_conv_bn(model)
    assert isinstance(fused.bn, nn.BatchNorm2d)   # one fold would be wrong for the other call
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(fused(x), model(x), atol=1e-6)
