"""lightcnn.binary: the STE, the binary layers against explicit formulas, binarize, bytes."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightcnn as lc
from lightcnn import binary as B


def _signs(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t >= 0, 1.0, -1.0)


def test_sign_is_plus_or_minus_one_with_sign_of_zero_plus_one():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.3, 7.0])
    assert torch.equal(B.sign_ste(x), torch.tensor([-1.0, -1.0, 1.0, 1.0, 1.0]))


def test_ste_gradient_is_the_gradient_of_hardtanh():
    x = torch.randn(1000) * 2
    x = x[(x.abs() - 1).abs() > 1e-3]          # away from the kinks, where both are defined
    upstream = torch.randn_like(x)
    a = x.clone().requires_grad_()
    (B.sign_ste(a) * upstream).sum().backward()
    h = x.clone().requires_grad_()
    (F.hardtanh(h) * upstream).sum().backward()
    assert torch.equal(a.grad, h.grad)
    assert (a.grad[x.abs() > 1] == 0).all() and (a.grad[x.abs() < 1] != 0).any()


def _approx_sign_derivative(x: torch.Tensor) -> torch.Tensor:
    """Bi-Real Net's ApproxSign derivative (Liu et al. 2018, eq. 7): 2 + 2x on [-1, 0),
    2 - 2x on [0, 1), 0 elsewhere."""
    return torch.where((x >= -1) & (x < 0), 2 + 2 * x,
                       torch.where((x >= 0) & (x < 1), 2 - 2 * x, torch.zeros_like(x)))


def _approx_sign_polynomial(x: torch.Tensor) -> torch.Tensor:
    """The piecewise polynomial ApproxSign whose derivative the estimator uses: -1 below -1,
    2x + x^2 on [-1, 0), 2x - x^2 on [0, 1), +1 from 1 on."""
    return torch.where(x < -1, -torch.ones_like(x),
                       torch.where(x < 0, 2 * x + x * x,
                                   torch.where(x < 1, 2 * x - x * x, torch.ones_like(x))))


def test_approx_sign_is_sign_forward_and_the_polynomial_s_derivative_backward():
    x = torch.arange(-200, 201, dtype=torch.float64) / 100    # includes -1, 0 and 1 exactly
    assert {-1.0, 0.0, 1.0} <= set(x.tolist())
    upstream = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a = x.clone().requires_grad_()
    y = B.approx_sign(a)
    assert torch.equal(y, _signs(x).double())
    (y * upstream).sum().backward()
    assert torch.allclose(a.grad, upstream * _approx_sign_derivative(x), atol=1e-12)
    # the same as autograd through the polynomial itself
    p = x.clone().requires_grad_()
    (_approx_sign_polynomial(p) * upstream).sum().backward()
    assert torch.allclose(a.grad, p.grad, atol=1e-12)
    # a triangle of area 2 (the jump of sign), peaked at 0, where the clipped STE is flat
    ones = torch.ones_like(x)
    assert torch.autograd.grad(B.approx_sign(a), a, ones)[0].sum().item() * 0.01 == \
        pytest.approx(2.0, abs=1e-9)
    assert B.ESTIMATORS["approxsign"] is B.approx_sign and B.ESTIMATORS["ste"] is B.sign_ste
    with pytest.raises(TypeError):
        B.approx_sign(torch.tensor([1, -1]))


@pytest.mark.parametrize("estimator", ["ste", "approxsign"])
def test_binary_layers_pass_the_chosen_estimator_s_gradient_to_their_input(estimator):
    torch.manual_seed(0)
    layer = B.BinaryLinear(12, 5, bias=False, scheme="bnn", estimator=estimator)
    x = (torch.randn(3, 12) * 1.2).requires_grad_()
    upstream = torch.randn(3, 5)
    (layer(x) * upstream).sum().backward()
    derivative = _approx_sign_derivative(x.detach()) if estimator == "approxsign" \
        else (x.detach().abs() <= 1).float()
    expected = (upstream @ _signs(layer.weight.detach())) * derivative
    assert torch.allclose(x.grad, expected, atol=1e-6)
    conv = B.BinaryConv2d(4, 6, 3, padding=1, scheme="bnn", estimator=estimator)
    z = (torch.randn(2, 4, 7, 7) * 1.2).requires_grad_()
    upstream = torch.randn(2, 6, 7, 7)
    (conv(z) * upstream).sum().backward()
    # reference: the gradient reaching sign(x) (a leaf here), times the estimator's slope
    signs = _signs(z.detach()).requires_grad_()
    y = F.conv2d(F.pad(signs, (1, 1, 1, 1), value=1.0), _signs(conv.weight.detach()))
    (y * upstream).sum().backward()
    derivative = _approx_sign_derivative(z.detach()) if estimator == "approxsign" \
        else (z.detach().abs() <= 1).float()
    assert torch.allclose(z.grad, signs.grad * derivative, atol=1e-5)


def test_bireal_scheme_uses_approx_sign_and_binarize_can_choose_either_estimator():
    assert B.SCHEMES["bireal"].estimator == "approxsign"
    assert B.SCHEMES["bireal"].binary_activations and B.SCHEMES["bireal"].weight_scale
    assert all(s.estimator == "ste" for n, s in B.SCHEMES.items() if n != "bireal")
    model = lc.create_model("baseline_cnn")
    for scheme, estimator, expected in [("bireal", None, "approxsign"), ("bnn", None, "ste"),
                                        ("bnn", "approxsign", "approxsign"),
                                        ("bireal", "ste", "ste")]:
        layers = B.binary_layers(B.binarize(model, scheme, estimator=estimator))
        assert layers and all(m.estimator == expected for m in layers.values())
    assert "estimator=approxsign" in repr(B.BinaryConv2d(2, 2, 3, scheme="bireal"))
    net = lc.create_model("binary_cnn", scheme="bnn", estimator="approxsign")
    assert all(m.estimator == "approxsign" for m in B.binary_layers(net).values())
    with pytest.raises(ValueError, match="estimator must be one of"):
        B.binarize(model, "bnn", estimator="swish")
    with pytest.raises(ValueError, match="estimator must be one of"):
        B.BinaryConv2d(2, 2, 3, scheme="bnn", estimator="tanh")


def test_stochastic_sign_has_the_hard_sigmoid_probability():
    torch.manual_seed(0)
    x = torch.tensor([-1.5, -0.5, 0.0, 0.6, 1.2]).repeat(20000, 1)
    p_plus = (B.stochastic_sign_ste(x) > 0).float().mean(0)
    expected = ((x[0] + 1) / 2).clamp(0, 1)
    assert torch.allclose(p_plus, expected, atol=0.015)


def test_alpha_is_the_least_squares_scale_of_the_signs():
    conv = B.BinaryConv2d(8, 16, 3, scheme="bwn")
    w = conv.weight.detach()
    alpha = conv.weight_alpha().detach()
    # argmin_a ||W_o - a sign(W_o)||^2 = <W_o, sign W_o> / n = mean |W_o|
    optimum = (w * _signs(w)).flatten(1).sum(1) / w[0].numel()
    assert torch.allclose(alpha, optimum)
    error = lambda a: ((w - a.view(-1, 1, 1, 1) * _signs(w)) ** 2).sum()
    assert error(alpha) < error(alpha * 1.01) and error(alpha) < error(alpha * 0.99)


@pytest.mark.parametrize("scheme", sorted(B.SCHEMES))
def test_binary_conv_matches_its_formula(scheme):
    torch.manual_seed(1)
    conv = B.BinaryConv2d(5, 7, 3, stride=2, padding=1, bias=True, scheme=scheme).eval()
    x = torch.randn(2, 5, 9, 9)
    w = conv.weight.detach()
    s = B.SCHEMES[scheme]
    if s.binary_activations:
        ref = F.conv2d(F.pad(_signs(x), (1, 1, 1, 1), value=1.0), _signs(w), stride=2)
    else:
        ref = F.conv2d(x, _signs(w), stride=2, padding=1)
    if s.weight_scale:
        ref = ref * w.abs().mean((1, 2, 3)).view(1, -1, 1, 1)
    if s.activation_scale:
        # XNOR-Net's K: mean over channels of |x|, convolved with a k x k box of 1/k^2
        box = torch.full((1, 1, 3, 3), 1 / 9)
        ref = ref * F.conv2d(x.abs().mean(1, keepdim=True), box, stride=2, padding=1)
    ref = ref + conv.bias.detach().view(1, -1, 1, 1)
    with torch.no_grad():
        assert torch.allclose(conv(x), ref, atol=1e-5)


@pytest.mark.parametrize("scheme", ["bwn", "bnn", "xnor", "bireal"])
def test_binary_linear_matches_its_formula(scheme):
    layer = B.BinaryLinear(20, 6, scheme=scheme).eval()
    x = torch.randn(4, 20)
    w = layer.weight.detach()
    s = B.SCHEMES[scheme]
    ref = (_signs(x) if s.binary_activations else x) @ _signs(w).T
    if s.weight_scale:
        ref = ref * w.abs().mean(1)
    if s.activation_scale:
        ref = ref * x.abs().mean(1, keepdim=True)
    with torch.no_grad():
        assert torch.allclose(layer(x), ref + layer.bias.detach(), atol=1e-5)


def test_binarize_keeps_first_and_last_layer_and_swaps_relu_for_binary_activations():
    model = lc.create_model("baseline_cnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bnn = B.binarize(model, "bnn")
    kinds = [type(m) for m in bnn.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert kinds == [nn.Conv2d] + [B.BinaryConv2d] * 4 + [nn.Linear]
    assert not any(isinstance(m, nn.ReLU) for m in bnn.modules())
    assert sum(isinstance(m, nn.Hardtanh) for m in bnn.modules()) == 5
    # the latent weights start from the model's own; the model itself is untouched
    assert torch.equal(bnn.features[2][0].weight, model.features[2][0].weight.clamp(-1, 1))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert isinstance(model.features[2][0], nn.Conv2d) and type(model.features[2][0]) is nn.Conv2d
    bwn = B.binarize(model, "bwn")
    assert sum(isinstance(m, nn.ReLU) for m in bwn.modules()) == 5  # real activations stay
    every = B.binarize(model, "xnor", keep_first_last=False)
    assert len(B.binary_layers(every)) == 6
    assert isinstance(every.classifier[2], B.BinaryLinear)


def test_binarize_pointwise_and_skip():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    out = B.binarize(model, "bnn", pointwise=False)
    assert sorted(B.binary_layers(out)) == ["2"]
    out = B.binarize(model, "bnn", skip=["2"])
    assert sorted(B.binary_layers(out)) == ["1"]


def test_binarize_rejects_what_it_cannot_handle_by_name():
    with pytest.raises(ValueError, match="scheme must be one of"):
        B.binarize(lc.create_model("baseline_cnn"), "ternary")
    dw = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 4, 1))
    with pytest.raises(ValueError, match="layer '1' is a grouped conv"):
        B.binarize(dw, "bnn")
    assert "1" not in B.binary_layers(B.binarize(dw, "bnn", skip=["1"]))
    odd = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv1d(8, 8, 3), nn.Conv2d(8, 4, 3))
    with pytest.raises(ValueError, match=r"layer '1' \(Conv1d\)"):
        B.binarize(odd, "bwn")
    with pytest.raises(ValueError, match="skip names layers"):
        B.binarize(dw, "bnn", skip=["nope"])
    reflect = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, padding=1,
                                                           padding_mode="reflect"),
                            nn.Conv2d(8, 4, 3))
    with pytest.raises(ValueError, match="layer '1': padding"):
        B.binarize(reflect, "bnn")
    with pytest.raises(TypeError):
        B.sign_ste(torch.tensor([1, -1]))
    masked = lc.pruning.apply_masks(lc.create_model("baseline_cnn"),
                                    lc.pruning.global_masks(lc.create_model("baseline_cnn"), 0.5))
    with pytest.raises(ValueError, match="'features.2.0' carries a pruning mask"):
        B.binarize(masked, "bnn")


def test_training_moves_latent_weights_and_clipping_keeps_them_in_range():
    torch.manual_seed(0)
    model = B.binarize(lc.create_model("baseline_cnn"), "xnor")
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    layer = model.features[3][0]
    start = layer.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=5.0)  # large: forces some weights past 1
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        assert layer.weight.grad.abs().sum() > 0   # the STE lets the gradient through
        opt.step()
        B.clip_latent_weights(model)
    assert layer.weight.abs().max() <= 1.0 and not torch.equal(layer.weight, start)


def test_weight_bytes_follow_the_packed_layout():
    model = B.binarize(lc.create_model("baseline_cnn"), "xnor")
    report = B.binary_weight_bytes(model)
    # by hand: (O, fan_in) of the four binary convs; words of 64 signs per output row
    shapes = [(64, 32 * 9), (64, 64 * 9), (128, 64 * 9), (128, 128 * 9)]
    assert report["fp32_bytes"] == sum(4 * o * k for o, k in shapes)
    assert report["packed_bytes"] == sum(o * -(-k // 64) * 8 for o, k in shapes)
    assert report["scale_bytes"] == sum(4 * o for o, _ in shapes)
    assert report["ratio"] == pytest.approx(report["fp32_bytes"] / report["binary_bytes"])
    bnn = B.binary_weight_bytes(B.binarize(lc.create_model("baseline_cnn"), "bnn"))
    assert bnn["scale_bytes"] == 0 and bnn["ratio"] == bnn["ratio_without_scales"]
    with pytest.raises(ValueError, match="no binary layers"):
        B.binary_weight_bytes(lc.create_model("baseline_cnn"))
    with pytest.raises(ValueError, match="fan_in"):
        B.packed_weight_bytes(3, 0)


def test_binary_and_real_macs_add_up_to_all_macs():
    fp = lc.create_model("baseline_cnn")
    bnn = B.binarize(fp, "bnn")
    macs = B.count_binary_macs(bnn)
    assert macs["binary"] + macs["real"] == lc.count_macs(fp)
    first, last = fp.features[0][0], fp.classifier[2]
    assert macs["real"] == 9 * first.out_channels * 28 * 28 + last.in_features * last.out_features
    assert B.count_binary_macs(B.binarize(fp, "bwn"))["binary"] == 0


def test_xnor_speedup_formula_gives_the_papers_number():
    # XNOR-Net section 3.2: c = 256 channels, a 3x3 kernel -> 62.27x
    assert B.xnor_speedup(256, 9) == pytest.approx(62.27, abs=0.005)
    assert B.xnor_speedup(1, 1) < 1.0 < B.xnor_speedup(8, 9)
    with pytest.raises(ValueError, match="channels"):
        B.xnor_speedup(0, 9)


def test_binary_cnn_is_registered_and_trains_through_the_zoo(tiny_budget, isolated_cache):
    model = lc.create_model("binary_cnn", scheme="xnor", keep_first_last=False)
    assert len(B.binary_layers(model)) == 6
    # the zoo's recipe clips the latent weights after every step (its after_step)
    recipe = dict(lc.zoo.RECIPES["binary_cnn"], lr=50.0)  # large enough to push past 1
    trained = lc.zoo.get_trained("binary_cnn", tiny_budget, recipe=recipe, progress=False,
                                 scheme="bnn")
    latent = [m.weight for m in B.binary_layers(trained.model).values()]
    assert max(w.abs().max().item() for w in latent) <= 1.0
    assert any((w.abs() == 1.0).any() for w in latent)   # clipping did something
    with pytest.raises(ValueError, match="after_step 'lightcnn.nope.f'"):
        lc.zoo.get_trained("binary_cnn", tiny_budget, progress=False,
                           recipe=dict(recipe, after_step="lightcnn.nope.f"))


def test_register_clipping_clips_after_every_optimizer_step():
    def steps(model, opt, n, clip_by_hand=False):
        g = torch.Generator().manual_seed(1)
        for _ in range(n):
            for p in model.parameters():   # large steps: many latent weights pass +-1
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
            if clip_by_hand:
                B.clip_latent_weights(model)

    def largest(model):
        return max(m.weight.abs().max().item() for m in B.binary_layers(model).values())

    runs = []
    for hooked in (True, False):
        torch.manual_seed(0)
        model = B.binarize(lc.create_model("baseline_cnn", widths=(8, 16, 16)), "bnn")
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        if hooked:
            handle = B.register_clipping(opt, model)
        steps(model, opt, 3, clip_by_hand=not hooked)
        assert largest(model) == 1.0
        runs.append(model.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    handle.remove()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    B.register_clipping(opt, model).remove()               # removed: steps go unclipped
    steps(model, opt, 3)
    assert largest(model) > 1.0


def test_register_clipping_rejects_bad_arguments():
    model = B.binarize(lc.create_model("baseline_cnn", widths=(8, 16, 16)), "bnn")
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        B.register_clipping(lambda: None, model)
    float_model = lc.create_model("lenet5")
    opt = torch.optim.SGD(float_model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="no BinaryConv2d or BinaryLinear"):
        B.register_clipping(opt, float_model)
