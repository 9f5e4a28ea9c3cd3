"""Tests for lightcnn.quantization: the arithmetic, observers, STE, QAT/PTQ, packing, sharing."""

import copy
import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lightcnn as lc
from lightcnn import quantization as Q

ALL_BITS = list(range(Q.UNIFORM_BITS[0], Q.UNIFORM_BITS[1] + 1))
MODES = [(False, False), (False, True), (True, True)]  # (symmetric, signed)


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _lenet() -> nn.Module:
    torch.manual_seed(0)
    return lc.create_model("lenet5").eval()


def _rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# ---------------------------------------------------------------- arithmetic

@pytest.mark.parametrize("bits", ALL_BITS)
def test_qrange_is_the_b_bit_integer_range(bits):
    assert Q.qrange(bits) == (0, 2**bits - 1)
    assert Q.qrange(bits, signed=True) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


@pytest.mark.parametrize("symmetric, signed", [(False, False), (True, True), (False, True)])
def test_quantize_matches_torch_fake_quantize(symmetric, signed):
    x = _randn(2000) * 3
    scale, zp = Q.qparams(x.min(), x.max(), 8, symmetric, signed)
    qmin, qmax = Q.qrange(8, signed)
    ref = torch.fake_quantize_per_tensor_affine(x, float(scale), int(zp), qmin, qmax)
    assert torch.equal(Q.fake_quantize(x, scale, zp, 8, signed), ref)
    assert torch.equal(Q.dequantize(Q.quantize(x, scale, zp, 8, signed), scale, zp), ref)


def test_per_channel_matches_torch_and_a_loop_over_channels():
    w = _randn(6, 3, 3, 3) * torch.arange(1, 7).reshape(6, 1, 1, 1)
    obs = Q.MinMaxObserver(4, symmetric=False, per_channel_axis=0)
    obs.update(w)
    scale, zp = obs.scale_zero_point()
    assert scale.shape == zp.shape == (6,)
    ref = torch.fake_quantize_per_channel_affine(w, scale, zp.int(), 0, 0, 15)
    assert torch.equal(Q.fake_quantize(w, scale, zp, 4, axis=0), ref)
    # (C,) with axis and (C, 1, 1, 1) by broadcasting are the same thing
    column = (6, 1, 1, 1)
    assert torch.equal(Q.fake_quantize(w, scale.reshape(column), zp.reshape(column), 4), ref)
    for c in range(6):
        s, z = Q.qparams(w[c].min(), w[c].max(), 4, symmetric=False)
        assert torch.equal(Q.quantize(w[c], s, z, 4), Q.quantize(w, scale, zp, 4, axis=0)[c])


@settings(max_examples=50, deadline=None)
@given(values=st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=1, max_size=64),
       bits=st.integers(*Q.UNIFORM_BITS), mode=st.sampled_from(MODES))
def test_round_trip_error_is_at_most_half_a_step(values, bits, mode):
    symmetric, signed = mode
    x = torch.tensor(values)
    scale, zp = Q.qparams(x.min(), x.max(), bits, symmetric, signed)
    qmin, qmax = Q.qrange(bits, signed)
    x_hat = Q.fake_quantize(x, scale, zp, bits, signed)
    # float32 rounding of x / scale and (q - zp) * scale adds a few ulps
    tol = scale / 2 * (1 + 1e-5) + 1e-6 * x.abs()
    # rounding zero_point shifts the grid by <= scale / 2: the data's own range stays covered
    assert ((x - x_hat).abs() <= tol).all()
    y = torch.linspace(float((qmin - zp) * scale), float((qmax - zp) * scale), 101)
    y_hat = Q.fake_quantize(y, scale, zp, bits, signed)
    assert ((y - y_hat).abs() <= scale / 2 * (1 + 1e-5) + 1e-6 * y.abs()).all()
    q = Q.quantize(x, scale, zp, bits, signed)
    assert q.dtype == torch.int64 and q.min() >= qmin and q.max() <= qmax


@settings(max_examples=50, deadline=None)
@given(lo=st.floats(-100, 100, width=32), width=st.floats(0, 100, width=32),
       bits=st.integers(*Q.UNIFORM_BITS), signed=st.booleans())
def test_zero_is_exact_and_symmetric_zero_point_is_zero(lo, width, bits, signed):
    scale, zp = Q.qparams(lo, lo + width, bits, symmetric=False, signed=signed)
    assert scale > 0 and torch.isfinite(scale)
    assert Q.fake_quantize(torch.zeros(3), scale, zp, bits, signed).eq(0).all()
    scale, zp = Q.qparams(lo, lo + width, bits, symmetric=True, signed=signed)
    assert zp == 0 and Q.fake_quantize(torch.zeros(3), scale, zp, bits, signed).eq(0).all()


def test_qparams_formulas_and_degenerate_ranges():
    scale, zp = Q.qparams(-1.0, 3.0, 8, symmetric=False)
    assert scale == pytest.approx(4 / 255) and zp == round(1 / (4 / 255))
    scale, zp = Q.qparams(-1.0, 3.0, 8, symmetric=True)  # signed by default
    assert scale == pytest.approx(3 / 127) and zp == 0
    # the range is widened to include 0: [2, 5] quantizes like [0, 5]
    assert Q.qparams(2.0, 5.0, 4, False) == Q.qparams(0.0, 5.0, 4, False)
    scale, zp = Q.qparams(torch.tensor([0.0, -2.0]), torch.tensor([0.0, 2.0]), 8, symmetric=True)
    assert scale.shape == (2,) and scale[1] == 2 / 127
    assert scale[0] == torch.finfo(torch.float32).eps  # zero width: tiny, not 0 or NaN


def test_values_outside_the_range_clamp_to_qmin_and_qmax():
    scale, zp = 0.5, 3  # representable range [(0 - 3) * 0.5, (15 - 3) * 0.5] = [-1.5, 6]
    x = torch.tensor([-50.0, -1.5, -1.0, 6.0, 50.0])
    assert Q.quantize(x, scale, zp, 4).tolist() == [0, 0, 1, 15, 15]
    assert Q.fake_quantize(x, scale, zp, 4).tolist() == [-1.5, -1.5, -1.0, 6.0, 6.0]
    q = Q.quantize(torch.tensor([-9.0, 9.0]), 0.5, 0, 3, signed=True)
    assert q.tolist() == [-4, 3]


def test_ste_gradient_is_one_inside_and_zero_outside():
    scale, zp, bits = torch.tensor(0.1), torch.tensor(3), 4
    lo, hi = (0 - zp) * scale, (15 - zp) * scale
    x = torch.cat([torch.linspace(-1, 2, 301), torch.stack([lo, hi])]).requires_grad_()
    (grad,) = torch.autograd.grad(Q.fake_quantize(x, scale, zp, bits).sum(), x)
    expected = ((x >= lo) & (x <= hi)).float()
    assert torch.equal(grad, expected) and grad[-2:].eq(1).all() and 0 < grad.sum() < len(x)


def test_ste_gradient_per_channel():
    w = (_randn(4, 5) * 2).requires_grad_()
    scale, zp = torch.tensor([0.01, 0.1, 0.5, 1.0]), torch.zeros(4, dtype=torch.int64)
    (grad,) = torch.autograd.grad(Q.fake_quantize(w, scale, zp, 4, signed=True, axis=0).sum(), w)
    s = scale[:, None]
    assert torch.equal(grad, ((w >= -8 * s) & (w <= 7 * s)).float())


@pytest.mark.parametrize("symmetric, axis", [(True, None), (True, 0), (False, None)])
def test_quantization_mse_is_the_round_trip_error_at_the_observers_scale(symmetric, axis):
    w = _randn(8, 4, 3, 3) * torch.linspace(0.1, 2, 8).reshape(-1, 1, 1, 1)
    mse, scale = Q.quantization_mse(w, 4, symmetric, axis=axis)
    # the reference: torch's fake quantization at the min-max scale, computed by hand
    qmin, qmax = Q.qrange(4, signed=symmetric)
    if axis is None:
        s, z = Q.qparams(w.min(), w.max(), 4, symmetric)
        ref = torch.fake_quantize_per_tensor_affine(w, float(s), int(z), qmin, qmax)
    else:
        rows = w.reshape(8, -1)
        s, z = Q.qparams(rows.min(1).values, rows.max(1).values, 4, symmetric)
        ref = torch.fake_quantize_per_channel_affine(w, s, z.int(), 0, qmin, qmax)
    assert torch.equal(scale, s.reshape(scale.shape))
    assert mse == pytest.approx((w - ref).pow(2).mean().item(), rel=1e-6)


def test_quantization_mse_of_spread_values_is_a_twelfth_of_the_squared_step():
    # uniform rounding error on [-s/2, s/2]: variance s^2 / 12
    x = torch.rand(200_000, generator=torch.Generator().manual_seed(0)) * 10 - 5
    for bits in (4, 6, 8):
        mse, scale = Q.quantization_mse(x, bits, symmetric=True)
        assert mse == pytest.approx(scale.item() ** 2 / 12, rel=0.03)
    # the MSE observer never does worse than min/max on the data it saw
    heavy = torch.cat([_randn(5000), torch.tensor([40.0])])
    assert Q.quantization_mse(heavy, 4, False, observer="mse")[0] \
        <= Q.quantization_mse(heavy, 4, False)[0]
    with pytest.raises(ValueError, match="observer must be one of"):
        Q.quantization_mse(x, 4, True, observer="max")


# ---------------------------------------------------------------- observers

def test_minmax_observer_tracks_the_running_range_and_the_ema():
    a, b = _randn(3, 10), _randn(3, 10, seed=1) * 3
    obs = Q.MinMaxObserver()
    obs.update(a)
    obs.update(b)
    both = torch.cat([a, b])
    assert obs.min == both.min() and obs.max == both.max()
    assert torch.equal(torch.stack(obs.scale_zero_point()),
                       torch.stack(Q.qparams(both.min(), both.max(), 8, False)))
    per_channel = Q.MinMaxObserver(per_channel_axis=1)
    per_channel.update(a)
    assert torch.equal(per_channel.min, a.amin(0))
    assert per_channel.scale_zero_point()[0].shape == (10,)
    ema = Q.MinMaxObserver(averaging_constant=0.25)
    ema.update(a)
    ema.update(b)
    assert torch.allclose(ema.max, a.max() + 0.25 * (b.max() - a.max()))


def test_percentile_and_mse_observers_stay_inside_minmax():
    x = _randn(4000)
    ranges = {}
    for name, cls in Q.OBSERVERS.items():
        obs = cls(bits=4)
        obs.update(x)
        ranges[name] = obs.clip_range()
    mm_lo, mm_hi = ranges["minmax"]
    assert mm_lo == x.min() and mm_hi == x.max()
    for name in ("percentile", "mse"):
        lo, hi = ranges[name]
        assert mm_lo <= lo <= hi <= mm_hi
    p100 = Q.PercentileObserver(percentile=100.0)
    p100.update(x)
    assert torch.equal(torch.stack(p100.clip_range()), torch.stack(ranges["minmax"]))


def _mse_of(obs: Q.Observer, x: torch.Tensor) -> float:
    obs.update(x)
    scale, zp = obs.scale_zero_point()
    return float((Q.fake_quantize(x, scale, zp, obs.bits, obs.signed) - x).pow(2).mean())


@pytest.mark.parametrize("symmetric", [False, True])
def test_mse_observer_beats_minmax_on_data_with_outliers(symmetric):
    x = torch.cat([_randn(2000), torch.tensor([40.0, -25.0])])
    mse = _mse_of(Q.MSEObserver(4, symmetric), x)
    assert mse < 0.8 * _mse_of(Q.MinMaxObserver(4, symmetric), x)
    x = _randn(50)  # no outliers: never worse than min/max either
    assert _mse_of(Q.MSEObserver(4, symmetric), x) <= _mse_of(Q.MinMaxObserver(4, symmetric), x)


def test_sample_observers_keep_a_bounded_sample():
    obs = Q.PercentileObserver(max_samples=1000, per_channel_axis=0)
    for seed in range(5):
        obs.update(_randn(4, 700, seed=seed))
    assert obs.sample.shape[0] == 4 and 0 < obs.sample.shape[1] <= 250
    assert obs.min.shape == (4,)


@pytest.mark.parametrize("cls", list(Q.OBSERVERS.values()))
def test_observers_reject_bad_input(cls):
    obs = cls()
    for fn in (obs.scale_zero_point, obs.clip_range):
        with pytest.raises(ValueError, match="calibration without data"):
            fn()
    for bad in (torch.empty(0), torch.tensor([1.0, math.nan]), torch.tensor([math.inf])):
        with pytest.raises(ValueError, match="x must"):
            obs.update(bad)
    with pytest.raises(ValueError, match="bits must be an int in \\[2, 8\\], got 9"):
        cls(bits=9)
    per_channel = cls(per_channel_axis=2)
    with pytest.raises(ValueError, match="per_channel_axis must be an int in \\[-2, 1\\]"):
        per_channel.update(torch.ones(3, 4))
    per_channel = cls(per_channel_axis=0)
    per_channel.update(torch.ones(3, 4))
    with pytest.raises(ValueError, match="channels"):
        per_channel.update(torch.ones(5, 4))
    with pytest.raises(ValueError):
        cls(per_channel_axis=1.5)


def test_observer_options_are_checked():
    with pytest.raises(ValueError, match="percentile"):
        Q.PercentileObserver(percentile=40)
    with pytest.raises(ValueError, match="averaging_constant"):
        Q.MinMaxObserver(averaging_constant=0.0)
    with pytest.raises(ValueError, match="grid"):
        Q.MSEObserver(grid=0)
    with pytest.raises(ValueError, match="max_samples"):
        Q.PercentileObserver(max_samples=0)


# ---------------------------------------------------------------- QAT and PTQ

def test_fake_quantize_module_observes_in_train_mode_only():
    fq = Q.FakeQuantize(4, observer_cls=Q.MinMaxObserver)
    with pytest.raises(ValueError, match="calibration without data"):
        fq.eval()(torch.ones(3))
    fq.train()(torch.tensor([-1.0, 1.0]))
    scale = fq.scale.clone()
    fq.eval()(torch.tensor([-10.0, 10.0]))
    assert torch.equal(fq.scale, scale)
    fq.train()
    fq.freeze()
    out = fq(torch.tensor([-10.0, 10.0]))  # clipped to the frozen range
    zp = fq.zero_point
    assert torch.equal(fq.scale, scale)
    assert out.tolist() == [float(-zp * scale), float((15 - zp) * scale)]
    with pytest.raises(TypeError, match="observer_cls"):
        Q.FakeQuantize(observer_cls=nn.ReLU)


def test_prepare_qat_wraps_every_layer_and_trains():
    model = _lenet()
    qat = Q.prepare_qat(model, weight_bits=8, activation_bits=8).train()
    wrapped = [m for m in qat.modules() if isinstance(m, Q.QuantWrapper)]
    assert len(wrapped) == 5 and not any(isinstance(m, Q.QuantWrapper) for m in model.modules())
    x = _randn(4, 1, 28, 28)
    qat(x).sum().backward()
    conv = wrapped[0]
    assert conv.module.weight.grad is not None and conv.weight_fake_quant.scale.shape == (6,)
    assert Q.prepare_qat(model, per_channel=False).train()(x).shape == (4, 10)


def test_a_trained_qat_model_loads_into_a_fresh_copy():
    """What the zoo stores of a QAT model: its state dict, scales and zero points included,
    loads into a prepare_qat copy that has observed nothing and computes the same outputs."""
    model = _lenet()
    qat = Q.prepare_qat(model, 4, 4).train()
    x = _randn(8, 1, 28, 28)
    qat(x)
    qat(2 * x)                       # moving-average activation ranges, the last weights'
    state = qat.state_dict()
    assert any(k.endswith("input_fake_quant.scale") for k in state)
    fresh = Q.prepare_qat(_lenet(), 4, 4)
    fresh.load_state_dict(state)     # strict: every stored key has a place
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), qat.eval()(x))
    fresh.train()(x)                 # new statistics replace the loaded pair
    with pytest.raises(RuntimeError, match="size mismatch"):
        Q.prepare_qat(_lenet(), 4, 4, per_channel=False).load_state_dict(state)


# the observers a FakeQuantize can hold, with settings that make them keep state: a moving
# average (QAT's activations), the latest tensor (QAT's weights), and sample observers whose
# sample outgrows max_samples (so their stride doubles)
QUANTIZER_OBSERVERS = [
    (Q.MinMaxObserver, {}), (Q.MinMaxObserver, dict(averaging_constant=0.01)),
    (Q.MinMaxObserver, dict(averaging_constant=1.0)),
    (Q.PercentileObserver, dict(percentile=99.0, max_samples=64)),
    (Q.MSEObserver, dict(grid=10, max_samples=64)),
]


def _observer_state_equal(a: Q.Observer, b: Q.Observer) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


def _train_a_little(qat: nn.Module, steps: int = 3) -> None:
    """A few SGD steps on fixed random batches: weights move, observers accumulate."""
    opt = torch.optim.SGD(qat.parameters(), lr=0.05)
    qat.train()
    for step in range(steps):
        x = _randn(8, 1, 28, 28, seed=10 + step) * (1 + step)
        opt.zero_grad()
        qat(x).square().mean().backward()
        opt.step()


@pytest.mark.parametrize("axis", [None, 0])
@pytest.mark.parametrize("cls, kwargs", QUANTIZER_OBSERVERS)
def test_fake_quantize_state_dict_holds_the_observers_running_state(cls, kwargs, axis):
    fq = Q.FakeQuantize(4, False, axis, cls, **kwargs).train()
    for seed in range(4):
        fq(_randn(3, 50, seed=seed) * (seed + 1))
    state = fq.state_dict()
    fresh = Q.FakeQuantize(4, False, axis, cls, **kwargs)
    fresh.load_state_dict(state)                   # strict: every stored key has a place
    assert _observer_state_equal(fresh.observer, fq.observer) and fresh.observer.min is not None
    assert (fresh.observer_enabled, fresh.fake_quant_enabled, fresh._stale) == (
        fq.observer_enabled, fq.fake_quant_enabled, fq._stale)
    x = _randn(3, 50, seed=9) * 3
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), fq.eval()(x))
        assert torch.equal(fresh.train()(x), fq.train()(x))   # the next batch, same statistics
    assert _observer_state_equal(fresh.observer, fq.observer)
    assert torch.equal(fresh.scale, fq.scale) and torch.equal(fresh.zero_point, fq.zero_point)
    # the flags travel too: a frozen quantizer loads frozen, without its observer (it no
    # longer observes; a calibrated PTQ model would otherwise carry every kept sample)
    fq.freeze()
    assert not any(k.startswith("observer.") for k in fq.state_dict())
    fresh = Q.FakeQuantize(4, False, axis, cls, **kwargs)
    fresh.load_state_dict(fq.state_dict())
    assert not fresh.observer_enabled and not fresh._stale and fresh.observer.min is None
    with torch.no_grad():
        assert torch.equal(fresh.train()(x * 10), fq.train()(x * 10))


def test_a_qat_model_resumes_from_its_state_dict_bit_for_bit():
    """What a fit checkpoint holds of a QAT model (its state dict) restores it exactly: a
    prepare_qat copy that has observed nothing takes the next training step and evaluates
    as the original does. Without the observers' statistics it would not: the moving
    average of the activation ranges would start again from one batch."""
    qat = Q.prepare_qat(_lenet(), 4, 4, edge_bits=8)
    _train_a_little(qat)
    state = torch.load(_saved(qat.state_dict()), weights_only=True)   # as fit's checkpoint
    fresh = Q.prepare_qat(_lenet(), 4, 4, edge_bits=8)
    fresh.load_state_dict(state)
    pairs = [(a, b) for a, b in zip(qat.modules(), fresh.modules()) if isinstance(a, Q.FakeQuantize)]
    assert len(pairs) == 10
    assert all(_observer_state_equal(a.observer, b.observer) for a, b in pairs)
    x = _randn(8, 1, 28, 28, seed=20) * 2
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), qat.eval()(x))
    _train_a_little(qat, 2)
    _train_a_little(fresh, 2)
    assert all(torch.equal(a, b) for a, b in zip(qat.state_dict().values(),
                                                 fresh.state_dict().values()))
    with torch.no_grad():
        assert torch.equal(fresh.train()(x), qat.train()(x))
        assert torch.equal(fresh.eval()(x), qat.eval()(x))
    # the control: the same weights and scales without the observers' statistics
    forgetful = Q.prepare_qat(_lenet(), 4, 4, edge_bits=8)
    forgetful.load_state_dict(_first_format(qat.state_dict()))
    with torch.no_grad():
        assert not torch.equal(forgetful.train()(x), qat.train()(x))


def _saved(state: dict) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def _first_format(state: dict) -> dict:
    """A QAT state dict as the first versions stored it: weights, buffers, scales and zero
    points, no flags and no observer statistics."""
    extra = (".observer_enabled", ".fake_quant_enabled", ".stale")
    return {k: v for k, v in state.items() if not k.endswith(extra) and ".observer." not in k}


def test_a_qat_state_dict_of_the_first_format_still_loads():
    qat = Q.prepare_qat(_lenet(), 4, 4)
    _train_a_little(qat)
    old = _first_format(qat.state_dict())
    assert len(old) < len(qat.state_dict())
    x = _randn(8, 1, 28, 28, seed=20)
    for target in (Q.prepare_qat(_lenet(), 4, 4), copy.deepcopy(qat)):   # fresh, or trained
        target.load_state_dict(old)                # strict: the missing state is no error
        with torch.no_grad():
            assert torch.equal(target.eval()(x), qat.eval()(x))
    fresh = Q.prepare_qat(_lenet(), 4, 4)
    fresh.load_state_dict(old)
    # as before: the loaded scales are used until new statistics arrive, which start anew
    assert all(not m._stale and m.observer.min is None
               for m in fresh.modules() if isinstance(m, Q.FakeQuantize))
    fresh.train()(x)


def test_a_quantizer_that_has_observed_nothing_round_trips():
    qat = Q.prepare_qat(_lenet(), 4, 4)
    state = qat.state_dict()
    assert not any(".observer." in k or k.endswith("scale") for k in state)
    fresh = Q.prepare_qat(_lenet(), 4, 4)
    fresh.load_state_dict(torch.load(_saved(state), weights_only=True))
    assert all(m.observer.min is None and m._stale
               for m in fresh.modules() if isinstance(m, Q.FakeQuantize))
    x = _randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(fresh.train()(x), qat.train()(x))
    # and an empty observer's state forgets what a trained one had seen
    obs = Q.PercentileObserver(max_samples=8)
    obs.update(_randn(100))
    obs.load_state_dict(Q.PercentileObserver().state_dict())
    assert obs.min is None and obs.sample is None and obs.state_dict() == {}
    obs.update(_randn(100))
    again = Q.PercentileObserver(max_samples=8)
    again.update(_randn(100))
    assert _observer_state_equal(obs, again)


@pytest.mark.parametrize("cls, kwargs", QUANTIZER_OBSERVERS)
def test_observer_state_dict_round_trips_and_rejects_others(cls, kwargs):
    obs = cls(4, per_channel_axis=0, **kwargs)
    for seed in range(3):
        obs.update(_randn(3, 40, seed=seed))
    state = obs.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    other = cls(4, per_channel_axis=0, **kwargs)
    other.load_state_dict(state)
    assert _observer_state_equal(other, obs)
    assert torch.equal(torch.stack(other.scale_zero_point()), torch.stack(obs.scale_zero_point()))
    with pytest.raises(ValueError, match="state_dict must hold"):
        other.load_state_dict({"min": state["min"]})
    with pytest.raises(ValueError, match="state_dict must hold"):
        other.load_state_dict(dict(state, extra=torch.ones(1)))
    with pytest.raises(TypeError, match=r"state_dict\['max'\] must be a torch.Tensor"):
        other.load_state_dict(dict(state, max=[1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="per_channel_axis=None"):
        cls(4, **kwargs).load_state_dict(state)    # 3 channels into a per-tensor observer
    with pytest.raises(TypeError, match="state_dict must be a mapping"):
        other.load_state_dict([("min", state["min"])])
    # inside a model's load_state_dict, the same mistakes are load errors
    fq = Q.FakeQuantize(4, observer_cls=cls, **kwargs).train()
    fq(_randn(40))
    bad = fq.state_dict() | {f"observer.{k}": v for k, v in state.items()}   # 3 channels
    with pytest.raises(RuntimeError, match="observer: .*per_channel_axis=None"):
        Q.FakeQuantize(4, observer_cls=cls, **kwargs).load_state_dict(bad)


def test_the_observers_statistics_move_with_the_module():
    fq = Q.FakeQuantize(4, per_channel_axis=0, observer_cls=Q.PercentileObserver).train()
    fq(_randn(3, 40))
    fq.to("meta")       # .to() moves buffers and the observer's statistics alike
    o = fq.observer
    assert fq.scale.is_meta and o.min.is_meta and o.max.is_meta and o.sample.is_meta


def test_ptq_and_qat_at_8_bits_are_close_to_float_and_lower_bits_are_worse():
    model = _lenet()
    x = _randn(16, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
        errors = {}
        for bits in (8, 4, 2):
            ptq = Q.ptq_simulate(model, [x[:8], (x[8:], None)], bits, bits)
            errors[bits] = _rel_error(ptq(x), ref)
            qat = Q.prepare_qat(model, bits, bits).train()
            qat(x)
            assert abs(_rel_error(qat.eval()(x), ref) - errors[bits]) < 0.5 * errors[bits] + 0.02
    assert errors[8] < 0.02 and errors[8] < errors[4] < errors[2]
    for name in ("percentile", "mse"):
        with torch.no_grad():
            assert _rel_error(Q.ptq_simulate(model, [x], 8, 8, observer=name)(x), ref) < 0.03


def test_ptq_quantizers_are_frozen_and_batchnorm_untouched():
    torch.manual_seed(0)
    model = lc.create_model("baseline_cnn", widths=(4, 8, 8))
    x = _randn(8, 1, 28, 28)
    ptq = Q.ptq_simulate(model, [x], 8, 8)
    bn = [m for m in ptq.modules() if isinstance(m, nn.BatchNorm2d)][0]
    assert bn.num_batches_tracked == 0 and not ptq.training
    fq = [m for m in ptq.modules() if isinstance(m, Q.FakeQuantize)][1]
    scale = fq.scale.clone()
    ptq.train()(x * 100)
    assert torch.equal(fq.scale, scale)


def test_prepare_and_ptq_reject_bad_input():
    model = _lenet()
    with pytest.raises(ValueError, match="calibration without data"):
        Q.ptq_simulate(model, [], 8, 8)
    with pytest.raises(ValueError, match="observer must be one of"):
        Q.ptq_simulate(model, [torch.ones(1, 1, 28, 28)], observer="histogram")
    with pytest.raises(ValueError, match="weight_bits must be an int in \\[2, 8\\], got 1"):
        Q.prepare_qat(model, weight_bits=1)
    with pytest.raises(ValueError, match="activation_bits"):
        Q.ptq_simulate(model, [torch.ones(1, 1, 28, 28)], activation_bits=16)
    with pytest.raises(TypeError, match="model"):
        Q.prepare_qat("lenet5")
    with pytest.raises(TypeError, match="module"):
        Q.QuantWrapper(nn.ReLU(), Q.FakeQuantize(), Q.FakeQuantize())


@pytest.mark.parametrize("bits", [0, 1, 9, 2.0, True])
def test_uniform_functions_reject_bad_bits(bits):
    x = torch.ones(2)
    for fn in (lambda: Q.quantize(x, 1.0, 0, bits), lambda: Q.qparams(0.0, 1.0, bits, False),
               lambda: Q.fake_quantize(x, 1.0, 0, bits), lambda: Q.uniform_bytes(10, bits),
               lambda: Q.MinMaxObserver(bits), lambda: Q.FakeQuantize(bits)):
        with pytest.raises(ValueError, match="bits must be an int in \\[2, 8\\]"):
            fn()


def test_uniform_functions_reject_bad_input():
    x, ints, nan = torch.ones(2, 3), torch.ones(2, dtype=torch.long), torch.tensor([math.nan])
    cases = [
        (ValueError, "scale must be positive", lambda: Q.quantize(x, 0.0, 0, 8)),
        (ValueError, "scale must be positive", lambda: Q.fake_quantize(x, -1.0, 0, 8)),
        (ValueError, "scale must be positive", lambda: Q.dequantize(ints, math.nan, 0)),
        (ValueError, "zero_point must hold integers in \\[0, 255\\]",
         lambda: Q.quantize(x, 1.0, 256, 8)),
        (ValueError, "zero_point", lambda: Q.quantize(x, 1.0, 0.5, 8)),
        (ValueError, "x must have at least one", lambda: Q.quantize(torch.empty(0), 1.0, 0, 8)),
        (ValueError, "x must be finite", lambda: Q.fake_quantize(nan, 1.0, 0, 8)),
        (ValueError, "does not broadcast", lambda: Q.quantize(x, torch.ones(4), 0, 8)),
        (ValueError, "3 entries", lambda: Q.quantize(x, torch.ones(2), 0, 8, axis=1)),
        (ValueError, "axis must be", lambda: Q.quantize(x, torch.ones(2), 0, 8, axis=2)),
        (ValueError, "x_min must be <= x_max", lambda: Q.qparams(1.0, 0.0, 8, False)),
        (ValueError, "finite", lambda: Q.qparams(0.0, math.inf, 8, False)),
        (TypeError, "floating-point", lambda: Q.quantize(ints, 1.0, 0, 8)),
        (TypeError, "q must be an integer", lambda: Q.dequantize(x, 1.0, 0)),
        (TypeError, "scale must be a number", lambda: Q.quantize(x, "1", 0, 8)),
    ]
    for error, message, fn in cases:
        with pytest.raises(error, match=message):
            fn()


# ---------------------------------------------------------------- bit packing

@settings(max_examples=50, deadline=None)
@given(bits=st.integers(1, 8), data=st.data())
def test_pack_unpack_round_trip_is_lossless(bits, data):
    values = data.draw(st.lists(st.integers(0, 2**bits - 1), max_size=100))
    q = torch.tensor(values, dtype=torch.int64)
    blob = Q.pack_bits(q, bits)
    assert len(blob) == math.ceil(len(values) * bits / 8)
    assert torch.equal(Q.unpack_bits(blob, bits, len(values)), q)


def test_pack_bits_order_is_little_endian():
    assert Q.pack_bits(torch.tensor([1, 2]), 4) == bytes([0x21])
    assert Q.pack_bits(torch.tensor([1, 0, 0, 0, 0, 0, 0, 1, 1]), 1) == bytes([0x81, 0x01])
    assert Q.pack_bits(torch.tensor([5, 3]), 3) == bytes([0b00011101])
    assert Q.pack_bits(torch.tensor([255, 7], dtype=torch.uint8), 8) == bytes([255, 7])


def test_pack_bits_rejects_bad_input():
    with pytest.raises(ValueError, match="codes in \\[0, 15\\]"):
        Q.pack_bits(torch.tensor([16]), 4)
    with pytest.raises(ValueError, match="codes in"):
        Q.pack_bits(torch.tensor([-1]), 4)
    with pytest.raises(TypeError, match="integer"):
        Q.pack_bits(torch.tensor([1.0]), 4)
    with pytest.raises(ValueError, match="bits must be an int in \\[1, 8\\], got 0"):
        Q.pack_bits(torch.tensor([0]), 0)
    with pytest.raises(ValueError, match="blob must have"):
        Q.unpack_bits(b"\x00\x00", 4, 5)
    with pytest.raises(ValueError, match="numel"):
        Q.unpack_bits(b"", 4, -1)
    with pytest.raises(TypeError, match="blob"):
        Q.unpack_bits([0], 8, 1)


# ---------------------------------------------------------------- weight sharing

@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_kmeans_codebook_shapes_and_nearest_assignment(bits):
    w = _randn(20, 30)
    codebook, indices = Q.kmeans_codebook(w, bits)
    assert codebook.shape == (2**bits,) and indices.shape == w.shape
    assert indices.dtype == torch.int64
    assert indices.min() >= 0 and indices.max() < 2**bits
    distance = (w[..., None] - codebook).abs()
    chosen = distance.gather(-1, indices[..., None]).squeeze(-1)
    assert torch.allclose(chosen, distance.min(-1).values)  # each index is a nearest centroid
    again = Q.kmeans_codebook(w, bits)
    assert torch.equal(codebook, again[0]) and torch.equal(indices, again[1])
    assert torch.equal(Q.kmeans_quantize(w, bits), codebook[indices])


def test_kmeans_linear_init_and_lloyd_fixed_point():
    w = _randn(500)
    codebook, _ = Q.kmeans_codebook(w, 3, iters=0)
    assert torch.allclose(codebook, torch.linspace(float(w.min()), float(w.max()), 8))
    codebook, indices = Q.kmeans_codebook(w, 3, iters=200)
    for k in range(8):  # converged: every centroid is the mean of its cluster
        if (indices == k).any():
            assert codebook[k] == pytest.approx(float(w[indices == k].double().mean()), abs=1e-6)
    density, _ = Q.kmeans_codebook(w, 3, iters=0, init="density")
    assert density[0] == w.min() and density[-1] == w.max()


def test_kmeans_error_does_not_increase_with_bits():
    w = _randn(32, 16, 3, 3)
    errors = [float((Q.kmeans_quantize(w, bits) - w).pow(2).mean()) for bits in range(1, 9)]
    assert all(a >= b for a, b in zip(errors, errors[1:])) and errors[-1] < 1e-3 * errors[0]
    uniform = Q.fake_quantize(w, *Q.qparams(w.min(), w.max(), 3, False), 3)
    assert errors[2] < float((uniform - w).pow(2).mean())  # non-uniform levels fit a bell curve


def test_centroid_gradient_is_the_per_cluster_sum():
    grad = _randn(6, 7, seed=3)
    _, indices = Q.kmeans_codebook(_randn(6, 7), 2)
    expected = torch.zeros(4)
    for g, i in zip(grad.flatten().tolist(), indices.flatten().tolist()):
        expected[i] += g
    assert torch.allclose(Q.finetune_centroids_grad(grad, indices, 4), expected)


def test_weight_sharing_rejects_bad_input():
    w, idx, cb = torch.ones(3, 3), torch.zeros(3, 3, dtype=torch.long), torch.ones(3, 4, 1)
    cases = [
        (ValueError, "bits must be an int in \\[1, 8\\], got 9", lambda: Q.kmeans_codebook(w, 9)),
        (ValueError, "weight must have at least one", lambda: Q.kmeans_codebook(torch.empty(0), 2)),
        (ValueError, "weight must be finite", lambda: Q.kmeans_quantize(w * math.inf, 2)),
        (ValueError, "init", lambda: Q.kmeans_codebook(w, 2, init="random")),
        (ValueError, "iters", lambda: Q.kmeans_codebook(w, 2, iters=-1)),
        (ValueError, "differs", lambda: Q.finetune_centroids_grad(w, idx[:2], 4)),
        (ValueError, "indices must be in \\[0, 3\\]",
         lambda: Q.finetune_centroids_grad(w, idx - 1, 4)),
        (ValueError, "weight_grad must be finite",
         lambda: Q.finetune_centroids_grad(w * math.nan, idx, 4)),
        (TypeError, "indices must be an integer", lambda: Q.finetune_centroids_grad(w, w, 4)),
        (ValueError, "subvector_dim must divide", lambda: Q.product_quantize(w, 2, 2)),
        (ValueError, "at least 2-D", lambda: Q.product_quantize(torch.ones(9), 3, 2)),
        (ValueError, "subvector_dim must be an int >= 1", lambda: Q.product_quantize(w, 0, 2)),
        (ValueError, "shape", lambda: Q.product_dequantize(cb, idx, (4, 4))),
        (ValueError, "codes must be", lambda: Q.product_dequantize(cb, idx + 4, (3, 3))),
        (ValueError, "subvector_dim must divide", lambda: Q.product_bytes(4, 9, 2, 2)),
    ]
    for error, message, fn in cases:
        with pytest.raises(error, match=message):
            fn()


def test_product_quantization_shapes_and_error():
    w = _randn(16, 8, 3, 3)
    codebooks, codes = Q.product_quantize(w, subvector_dim=9, bits=2)
    assert codebooks.shape == (8, 4, 9) and codes.shape == (16, 8) and codes.max() < 4
    w_hat = Q.product_dequantize(codebooks, codes, w.shape)
    assert w_hat.shape == w.shape
    # naive bound: each sub-vector replaced by its block's mean (one codeword per block)
    blocks = w.reshape(16, 8, 9)
    naive = (blocks - blocks.mean(0, keepdim=True)).pow(2).mean()
    assert (w_hat - w).pow(2).mean() < 0.8 * naive
    # as many codewords as rows: every row is its own codeword, exactly
    codebooks, codes = Q.product_quantize(w, subvector_dim=36, bits=4)
    assert torch.equal(Q.product_dequantize(codebooks, codes, w.shape), w)


# ---------------------------------------------------------------- stored sizes

@pytest.mark.parametrize("bits", [1, 3, 4, 7, 8])
def test_kmeans_and_product_bytes_match_packed_sizes(bits):
    w = _randn(10, 6, 3, 3)
    codebook, indices = Q.kmeans_codebook(w, bits)
    assert Q.kmeans_bytes(w.numel(), bits) == len(Q.pack_bits(indices, bits)) + 4 * codebook.numel()
    codebooks, codes = Q.product_quantize(w, 6, bits, iters=2)
    assert Q.product_bytes(10, 54, 6, bits) == len(Q.pack_bits(codes, bits)) + 4 * codebooks.numel()


@pytest.mark.parametrize("bits", [2, 5, 8])
def test_uniform_bytes_match_packed_codes_and_parameters(bits):
    w = _randn(7, 3, 3, 3)
    obs = Q.MinMaxObserver(bits, symmetric=True, per_channel_axis=0)
    obs.update(w)
    scale, zp = obs.scale_zero_point()
    qmin, _ = Q.qrange(bits, signed=True)
    packed = Q.pack_bits(Q.quantize(w, scale, zp, bits, signed=True, axis=0) - qmin, bits)
    # symmetric: codes + one float32 scale per channel; asymmetric adds a 1-byte zero point each
    assert Q.uniform_bytes(w.numel(), bits, 7, symmetric=True) == len(packed) + 4 * scale.numel()
    assert Q.uniform_bytes(w.numel(), bits, 7) == len(packed) + 4 * 7 + 7
    assert Q.uniform_bytes(1000, 4) == 500 + 5


def test_uniform_model_bytes_counts_quantized_weights_and_float_rest():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    # conv weight: 36 codes of 8 bits + 4 float32 scales; conv bias: 4 floats; batch norm:
    # weight, bias, mean, var (4 floats each; the int step counter is not stored);
    # linear weight: 8 codes + 2 scales; linear bias: 2 floats
    expected = (36 + 4 * 4) + 4 * 4 + 4 * 16 + (8 + 2 * 4) + 4 * 2
    assert Q.uniform_model_bytes(model, 8) == expected
    # 4 bits pack two codes a byte
    assert Q.uniform_model_bytes(model, 4) == expected - 18 - 4
    # the same count as the per-layer formula over the baseline
    baseline = lc.create_model("baseline_cnn")
    layers = [m for m in baseline.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    rest = sum(4 * t.numel() for n, t in [*baseline.named_parameters(), *baseline.named_buffers()]
               if t.is_floating_point() and not any(t is m.weight for m in layers))
    assert Q.uniform_model_bytes(baseline, 6) == rest + sum(
        Q.uniform_bytes(m.weight.numel(), 6, m.weight.shape[0], symmetric=True) for m in layers)


def test_uniform_model_bytes_rejects_bad_arguments():
    with pytest.raises(TypeError, match="model"):
        Q.uniform_model_bytes("model", 8)
    with pytest.raises(ValueError, match="bits"):
        Q.uniform_model_bytes(nn.Linear(2, 2), 1)


def test_prepare_qat_keeps_the_first_and_last_layers_at_edge_bits():
    model = _lenet()
    qat = Q.prepare_qat(model, 2, 2, edge_bits=8)
    wrapped = [(n, m) for n, m in qat.named_modules() if isinstance(m, Q.QuantWrapper)]
    bits = [(m.weight_fake_quant.observer.bits, m.input_fake_quant.observer.bits)
            for _, m in wrapped]
    assert bits == [(8, 8)] + [(2, 2)] * (len(wrapped) - 2) + [(8, 8)]
    assert wrapped[0][0] == next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    # a symmetric 2-bit weight grid is ternary: three levels per channel
    x = _randn(4, 1, 28, 28)
    qat.train()(x)
    inner = wrapped[1][1]
    levels = inner.weight_fake_quant(inner.module.weight).detach()
    per_channel = levels.flatten(1) / inner.weight_fake_quant.scale.view(-1, 1)
    assert set(per_channel.round().unique().tolist()) <= {-1.0, 0.0, 1.0}
    with pytest.raises(ValueError, match="edge_bits"):
        Q.prepare_qat(model, 2, 2, edge_bits=1)
