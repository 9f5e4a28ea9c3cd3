import pytest
import torch
import torchvision
from torch import nn
from torch.nn.utils import prune

import lightcnn as lc


def conv_macs(k, c_in, c_out, h_out, w_out, groups=1):
    return k * k * (c_in // groups) * c_out * h_out * w_out


@pytest.mark.parametrize("c_in,c_out,k,stride,padding,groups,size", [
    (3, 16, 3, 1, 1, 1, 32),
    (16, 32, 5, 2, 2, 1, 28),
    (32, 32, 3, 1, 1, 32, 14),   # depthwise
    (12, 24, 1, 1, 0, 3, 7),     # grouped 1x1
])
def test_conv_macs_follow_the_formula(c_in, c_out, k, stride, padding, groups, size):
    conv = nn.Conv2d(c_in, c_out, k, stride, padding, groups=groups, bias=False)
    out = (size + 2 * padding - k) // stride + 1
    assert lc.count_macs(conv, (c_in, size, size)) == conv_macs(k, c_in, c_out, out, out, groups)
    assert lc.count_params(conv) == k * k * (c_in // groups) * c_out


def test_linear_macs_and_params():
    fc = nn.Sequential(nn.Flatten(), nn.Linear(784, 100))
    assert lc.count_macs(fc, (1, 28, 28)) == 784 * 100
    assert lc.count_params(fc) == 784 * 100 + 100


def test_mobilenet_v2_matches_torchvision_published_counts():
    model = torchvision.models.mobilenet_v2()
    assert lc.count_params(model) == 3_504_872
    assert 300e6 <= lc.count_macs(model, (3, 224, 224)) <= 301e6


def test_thop_agrees_on_conv_and_linear_only_models():
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Flatten(), nn.Linear(8 * 26 * 26, 10))
    assert lc.count_macs_thop(model) == lc.count_macs(model)


def test_thop_counts_more_than_flop_counter_when_bn_is_present():
    model = lc.create_model("baseline_cnn")
    assert lc.count_macs_thop(model) > lc.count_macs(model)


def test_nonzero_params_see_zeros_and_pruning_masks():
    model = nn.Sequential(nn.Linear(10, 10, bias=False))
    assert lc.count_nonzero_params(model) == 100
    with torch.no_grad():
        model[0].weight[:5] = 0
    assert lc.count_nonzero_params(model) == 50
    model = nn.Sequential(nn.Linear(10, 10, bias=False))
    prune.l1_unstructured(model[0], "weight", amount=0.3)
    assert lc.count_params(model) == 100  # weight_orig counted once, mask not at all
    assert lc.count_nonzero_params(model) == 70


def test_size_bytes_is_about_four_bytes_a_parameter():
    model = lc.create_model("baseline_cnn")
    size = lc.model_size_bytes(model)
    assert 4 * lc.count_params(model) < size < 4 * lc.count_params(model) + 50_000
    zero = nn.Linear(1000, 1000)
    nn.init.zeros_(zero.weight)
    # zeros compress to almost nothing; random floats barely compress
    assert lc.model_size_bytes(zero, compressed=True) < lc.model_size_bytes(zero) / 50


def test_latency_reports_median_inside_its_quartiles():
    model = lc.create_model("lenet5")
    before = torch.get_num_threads()
    lat = lc.measure_latency(model, batch_size=4, warmup=1, repeats=7, threads=2)
    assert lat.q1_ms <= lat.median_ms <= lat.q3_ms and lat.iqr_ms >= 0
    assert lat.batch_size == 4 and lat.threads == 2 and lat.repeats == 7
    assert len(lat.times_ms) == 7 and min(lat.times_ms) <= lat.median_ms <= max(lat.times_ms)
    assert torch.get_num_threads() == before  # restored
    assert model.training  # mode restored


def test_bad_arguments_are_rejected():
    model = lc.create_model("lenet5")
    with pytest.raises(ValueError, match="batch_size"):
        lc.measure_latency(model, batch_size=0)
    with pytest.raises(ValueError, match="repeats"):
        lc.measure_latency(model, repeats=0)
    with pytest.raises(ValueError, match="input_shape"):
        lc.count_macs(model, (28, 28))
    with pytest.raises(TypeError, match="model"):
        lc.count_params("not a model")


def test_compare_computes_ratios_against_the_baseline():
    base = {"name": "base", "baseline": None, "accuracy": 0.9, "params": 100, "nonzero_params": 100,
            "macs": 1000, "size_bytes": 400, "latency_ms_b1": 2.0, "latency_ms_b256": 10.0}
    small = dict(base, name="small", baseline="base", accuracy=0.89, nonzero_params=25,
                 macs=250, size_bytes=100, latency_ms_b1=1.0, latency_ms_b256=4.0)
    table = lc.compare([base, small])
    row = table.rows[1]
    assert row["d_acc"] == pytest.approx(-1.0)
    assert row["x_macs"] == 4 and row["x_latency_ms_b256"] == 2.5
    assert "small" in str(table) and "<table>" in table._repr_html_()
    with pytest.raises(ValueError, match="baseline"):
        lc.compare([dict(small, baseline="missing")])


def test_profile_model_has_the_result_keys():
    row = lc.profile_model(lc.create_model("lenet5"), "lenet5", accuracy=0.5, budget="ci",
                           warmup=1, repeats=3)
    for key in lc.results.REQUIRED_KEYS:
        assert key in row
    assert row["params"] == 61_706 and row["macs"] == lc.count_macs(lc.create_model("lenet5"))


from hypothesis import given, settings, strategies as st


@settings(max_examples=40, deadline=None)
@given(groups=st.integers(1, 4), c_in_per_group=st.integers(1, 4), c_out_per_group=st.integers(1, 4),
       k=st.integers(1, 5), stride=st.integers(1, 3), padding=st.integers(0, 2), size=st.integers(5, 20))
def test_conv_macs_formula_holds_for_any_geometry(groups, c_in_per_group, c_out_per_group, k,
                                                  stride, padding, size):
    c_in, c_out = groups * c_in_per_group, groups * c_out_per_group
    conv = nn.Conv2d(c_in, c_out, k, stride, padding, groups=groups)
    out = (size + 2 * padding - k) // stride + 1
    assert conv(torch.zeros(1, c_in, size, size)).shape[-1] == out
    assert lc.count_macs(conv, (c_in, size, size)) == conv_macs(k, c_in, c_out, out, out, groups)
    assert lc.count_params(conv) == k * k * c_in_per_group * c_out + c_out


def test_pareto_front_keeps_only_undominated_rows():
    rows = [dict(name="a", macs=10, accuracy=0.90), dict(name="b", macs=20, accuracy=0.85),
            dict(name="c", macs=30, accuracy=0.95), dict(name="d", macs=5, accuracy=0.80),
            dict(name="e", macs=10, accuracy=0.88)]
    assert [r["name"] for r in lc.pareto_front(rows)] == ["d", "a", "c"]
    # brute force: a row is on the front iff no other row dominates it
    def dominated(r):
        return any(o is not r and o["macs"] <= r["macs"] and o["accuracy"] >= r["accuracy"]
                   and (o["macs"] < r["macs"] or o["accuracy"] > r["accuracy"]) for o in rows)
    assert {r["name"] for r in rows if not dominated(r)} == {"d", "a", "c"}


def test_pareto_front_rejects_rows_without_the_keys():
    with pytest.raises(ValueError, match="latency_ms_b1"):
        lc.pareto_front([dict(name="a", accuracy=0.9)], cost="latency_ms_b1")


def test_time_by_op_category_sees_convs_norms_and_activations():
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    times = lc.time_by_op_category(model, batch_size=4, threads=1, warmup=1, repeats=2)
    for category in ("convolution", "batch norm", "activation", "linear"):
        assert times[category] > 0, category
    assert all(v >= 0 for v in times.values())
    assert model.training  # the mode is restored


@pytest.mark.parametrize("op, category", [("aten::mkldnn_convolution", "convolution"),
                                          ("aten::addmm", "linear"),
                                          ("aten::native_batch_norm", "batch norm"),
                                          ("aten::hardswish", "activation"),
                                          ("aten::add_", "add / multiply"),
                                          ("aten::cat", "memory (copy, cat, split, shuffle)"),
                                          ("aten::empty", "other"),
                                          # what an Inductor-compiled graph calls
                                          ("mkldnn::_convolution_pointwise", "convolution"),
                                          ("mkl::_mkl_linear", "linear"),
                                          ("## Call CompiledFxGraph None ##",
                                           lc.profile.COMPILED_KERNELS)])
def test_op_categories(op, category):
    from lightcnn.profile import _category
    assert _category(op) == category


def test_time_by_op_category_sees_a_compiled_models_convolutions_and_kernels():
    """Compiled with freezing, the convolution (batch norm folded, ReLU fused) is one oneDNN
    operator and the max pooling lives in Inductor's generated kernels: both are counted,
    and no batch norm or activation is left to count."""
    from lightcnn import int8
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 14 * 14, 10)).eval()
    compiled = int8.compile_cpu(model)
    with torch.inference_mode():
        compiled(torch.randn(4, 1, 28, 28))              # compile the profiled shape first
    times = lc.time_by_op_category(compiled, batch_size=4, threads=1, warmup=1, repeats=2)
    assert times["convolution"] > 0 and times[lc.profile.COMPILED_KERNELS] > 0
    assert "batch norm" not in times and "activation" not in times
    assert lc.time_by_op_category(model, batch_size=4, threads=1, warmup=1, repeats=2).keys() \
        >= {"convolution", "batch norm", "activation", "pooling"}   # eager: every operator


def test_time_by_op_category_rejects_bad_repeats():
    with pytest.raises(ValueError, match="repeats"):
        lc.time_by_op_category(nn.Linear(2, 2), repeats=0)


def test_latency_is_measured_outside_deterministic_mode_and_restores_it():
    seen = []
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 4))
    model.register_forward_hook(lambda *_: seen.append(torch.are_deterministic_algorithms_enabled()))
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        lc.measure_latency(model, 1, input_shape=(1, 2, 2), warmup=1, repeats=2)
        assert seen and not any(seen)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(previous)


def test_profile_model_takes_the_stored_size_from_the_caller():
    model = lc.create_model("lenet5")
    row = lc.profile_model(model, "sparse file", size_bytes=1234, warmup=1, repeats=2,
                           batch_sizes=(1,))
    assert row["size_bytes"] == 1234 and row["size_gzip_bytes"] is None
    dense = lc.profile_model(model, "dense", warmup=1, repeats=2, batch_sizes=(1,))
    assert dense["size_bytes"] == lc.model_size_bytes(model)


def test_simulated_row_counts_the_model_stores_the_given_size_and_times_nothing():
    model = lc.create_model("lenet5")
    row = lc.simulated_row(model, "W4A4 simulated", 0.9, 1234, baseline="fp32", budget="ci")
    counted = lc.profile_model(model, "W4A4 simulated", accuracy=0.9, baseline="fp32",
                               budget="ci", batch_sizes=(), size_bytes=1234)
    assert row == dict(counted, latency_ms_b1=None, latency_ms_b256=None)
    # a valid results row: the leaderboard keys are all there, latency shown as "-"
    base = lc.profile_model(model, "fp32", accuracy=0.9, budget="ci", batch_sizes=())
    base.update(latency_ms_b1=1.0, latency_ms_b256=10.0)
    lc.results._validate([base, row])
    assert "-" in str(lc.compare([base, row])).splitlines()[-1]
    with pytest.raises(TypeError, match="size_bytes must be a number"):
        lc.simulated_row(model, "no size", 0.9, None)


def test_time_interleaved_runs_round_robin_with_a_rotating_order():
    calls = []
    fns = {n: (lambda n=n: calls.append(n)) for n in "abc"}
    result = lc.time_interleaved(fns, threads=1, warmup=1, repeats=3)
    assert calls[:3] == ["a", "b", "c"]                        # warm-up round
    assert calls[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert set(result) == {"a", "b", "c"} and all(r.repeats == 3 for r in result.values())


def test_compare_latency_ranks_a_slower_model_slower():
    import time as _time

    class Sleepy(torch.nn.Module):
        def forward(self, x):
            _time.sleep(0.003)
            return x

    fast = torch.nn.Identity()
    lat = lc.compare_latency({"fast": fast, "slow": Sleepy()}, batch_size=2, warmup=1,
                             repeats=5, threads=1)
    assert lat["slow"].median_ms >= 3.0 > lat["fast"].median_ms
    assert lat["fast"].batch_size == 2 and lat["fast"].threads == 1
    assert torch.get_num_threads() == 1  # restored (the test fixture set 1)
    with pytest.raises(ValueError, match="repeats must be an int >= 1"):
        lc.compare_latency({"fast": fast}, repeats=0)
    with pytest.raises(ValueError, match="non-empty dict"):
        lc.compare_latency({})
    with pytest.raises(ValueError, match="non-empty dict of name -> callable"):
        lc.time_interleaved({"x": 3})


class _Sleepy(torch.nn.Module):
    """A LeNet-5 that also sleeps 3 ms per call: slower by construction."""

    def __init__(self):
        super().__init__()
        self.net = lc.create_model("lenet5")

    def forward(self, x):
        import time as _time
        _time.sleep(0.003)
        return self.net(x)


def test_profile_models_times_side_by_side_and_counts_like_profile_model():
    torch.manual_seed(0)
    fast, slow = lc.create_model("lenet5"), _Sleepy()
    rows = lc.profile_models({"fast": fast, "slow": slow}, accuracy={"slow": 0.5},
                             baseline="fast", budget="ci", batch_sizes=(1, 2), threads=1,
                             warmup=1, repeats=5, size_bytes={"slow": 77})
    assert [r["name"] for r in rows] == ["fast", "slow"]
    one = lc.profile_model(fast, "fast", budget="ci", batch_sizes=(1, 2), threads=1, warmup=1,
                           repeats=5)
    assert list(rows[0]) == list(one)                      # same fields, same order
    for key in ("params", "nonzero_params", "macs", "size_bytes", "size_gzip_bytes"):
        assert rows[0][key] == one[key]
    assert rows[0]["baseline"] is None and rows[1]["baseline"] == "fast"
    assert rows[0]["accuracy"] is None and rows[1]["accuracy"] == 0.5
    assert rows[1]["size_bytes"] == 77 and rows[1]["size_gzip_bytes"] is None
    assert rows[1]["params"] == lc.count_params(fast)       # same network inside
    for b in (1, 2):
        assert rows[1][f"latency_ms_b{b}"] >= 3.0 > rows[0][f"latency_ms_b{b}"]
        assert rows[0][f"latency_iqr_ms_b{b}"] >= 0
    assert rows[0]["threads"] == 1 and rows[1]["budget"] == "ci"


def test_profile_models_with_an_outside_baseline_and_bad_arguments():
    model = lc.create_model("lenet5")
    rows = lc.profile_models({"a": model}, baseline="measured elsewhere", batch_sizes=(),
                             threads=1)
    assert rows[0]["baseline"] == "measured elsewhere" and "latency_ms_b1" not in rows[0]
    with pytest.raises(ValueError, match="models must be a non-empty dict"):
        lc.profile_models({})
    with pytest.raises(ValueError, match=r"accuracy names rows that are not in models: \['b'\]"):
        lc.profile_models({"a": model}, accuracy={"b": 0.9}, batch_sizes=())
    with pytest.raises(TypeError, match="macs must be a dict"):
        lc.profile_models({"a": model}, macs=[1], batch_sizes=())
    with pytest.raises(ValueError, match="repeats must be an int >= 1"):
        lc.profile_models({"a": model}, repeats=0)


# --- stability: fake clocks ------------------------------------------------------------

class FakeClock:
    """A clock that moves only when a fake call says how long it took."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def call(self, ms: float) -> None:
        self.now += ms / 1000.0


def _cycling(clock: FakeClock, durations_ms: list[float]):
    """A call whose k-th run takes durations_ms[k % len] on the fake clock."""
    state = {"k": 0}

    def fn():
        clock.call(durations_ms[state["k"] % len(durations_ms)])
        state["k"] += 1
    return fn


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(lc.profile, "_clock", fake)
    return fake


def test_steady_calls_are_stable_and_their_ratio_is_exact(clock):
    lat = lc.time_interleaved({"slow": _cycling(clock, [4.0]), "fast": _cycling(clock, [2.0])},
                              threads=1, warmup=1, repeats=9)
    assert lat["slow"].median_ms == pytest.approx(4.0) and lat["slow"].iqr_ms == pytest.approx(0)
    assert lat["slow"].stable and lat["slow"].relative_iqr == pytest.approx(0)
    assert lat["slow"].outcome == "once" and lat["slow"].number == 1
    ratio = lc.profile.speedup(lat["slow"], lat["fast"])
    assert ratio.value == pytest.approx(2.0) and ratio.paired and ratio.stable
    assert str(ratio) == "2.00x" and float(ratio) == pytest.approx(2.0)
    assert "UNSTABLE" not in str(lat["slow"]) and "?" not in str(lat["slow"])


def test_a_spread_above_a_fifth_of_the_median_is_flagged(clock):
    # samples alternate 1 ms and 2 ms: quartiles 1 and 2 around a 1.5 ms median
    lat = lc.time_interleaved({"jittery": _cycling(clock, [1.0, 2.0])}, threads=1, warmup=0,
                              repeats=20)["jittery"]
    assert lat.median_ms == pytest.approx(1.5)
    assert lat.relative_iqr == pytest.approx(1.0 / 1.5) and not lat.stable
    assert "UNSTABLE: IQR 67% of the median" in str(lat) and "ms?" in str(lat)
    # exactly at the threshold is still stable; just above is not
    edge = lc.Latency(1.25, 1.0, 1.25, 1, 1, 3, (1.0, 1.25, 1.25))      # IQR 0.25 = 20% of 1.25
    assert edge.relative_iqr == lc.profile.STABLE_RELATIVE_IQR and edge.stable
    assert not lc.Latency(1.25, 1.0, 1.2501, 1, 1, 3).stable


def test_an_unstable_ratio_is_flagged_even_when_one_side_is_steady(clock):
    lat = lc.time_interleaved({"base": _cycling(clock, [3.0]), "model": _cycling(clock, [1.0, 2.0])},
                              threads=1, warmup=0, repeats=20)
    ratio = lc.profile.speedups(lat, "base")
    assert ratio["base"].value == 1 and ratio["base"].stable
    # per-round ratios 3 and 1.5: median 2.25, IQR 1.5 -> 67%
    assert ratio["model"].paired and not ratio["model"].stable
    assert ratio["model"].relative_iqr == pytest.approx(1.5 / 2.25)
    assert str(ratio["model"]).endswith("?")


def test_a_ratio_pairs_samples_only_when_timed_together(clock):
    a = lc.time_interleaved({"a": _cycling(clock, [2.0, 4.0])}, threads=1, warmup=0, repeats=4)["a"]
    b = lc.time_interleaved({"b": _cycling(clock, [1.0, 2.0])}, threads=1, warmup=0, repeats=4)["b"]
    assert a.run != b.run
    ratio = lc.profile.speedup(a, b)
    assert not ratio.paired            # every pair: 2/1, 2/2, 4/1, 4/2 (each 4 times)
    assert ratio.median == pytest.approx(2.0) and ratio.value == pytest.approx(3.0 / 1.5)
    assert (ratio.q1, ratio.q3) == (pytest.approx(1.75), pytest.approx(2.5))


def test_until_stable_lengthens_the_sample_of_a_jittery_call(clock):
    # one pass alternates 1 ms and 2 ms: two passes per sample always take 3 ms
    lat = lc.time_interleaved({"jittery": _cycling(clock, [1.0, 2.0]), "steady": _cycling(clock, [5.0])},
                              threads=1, warmup=2, repeats=10, until_stable=True)
    assert lat["jittery"].number == 2 and lat["jittery"].median_ms == pytest.approx(1.5)
    assert lat["jittery"].stable and lat["jittery"].outcome == "stable"
    assert lat["steady"].number == 1 and lat["steady"].outcome == "stable"
    assert lat["jittery"].run == lat["steady"].run     # retaken together: still paired
    assert "2 passes per sample" in str(lat["jittery"])


def test_until_stable_stops_at_the_cap_and_says_so(clock):
    # four passes of 1 ms, then four of 3 ms: samples of 1, 2 or 4 passes are 1 or 3 ms
    slow_phase = [1.0] * 4 + [3.0] * 4
    lat = lc.time_interleaved({"bursty": _cycling(clock, slow_phase)}, threads=1, warmup=0,
                              repeats=16, until_stable=True, max_number=4)["bursty"]
    assert lat.number == 4 and lat.outcome == "cap" and not lat.stable
    with_room = lc.time_interleaved({"bursty": _cycling(clock, slow_phase)}, threads=1,
                                    warmup=0, repeats=16, until_stable=True, max_number=8)["bursty"]
    assert with_room.number == 8 and with_room.outcome == "stable" and with_room.median_ms == pytest.approx(2.0)


def test_until_stable_retakes_only_within_its_time_budget(clock):
    # the jittery call is stable at 2 passes per sample (see above); the steady one makes
    # each take last 10 rounds x (1.5 + 50) ms = 0.515 s, a retake with 2 passes 0.53 s
    fns = lambda: {"jittery": _cycling(clock, [1.0, 2.0]), "steady": _cycling(clock, [50.0])}
    tight = lc.time_interleaved(fns(), threads=1, warmup=0, repeats=10, until_stable=True,
                                max_seconds=1.0)
    assert tight["jittery"].number == 1 and tight["jittery"].outcome == "cap"
    assert not tight["jittery"].stable and tight["steady"].outcome == "stable"
    roomy = lc.time_interleaved(fns(), threads=1, warmup=0, repeats=10, until_stable=True,
                                max_seconds=1.1)
    assert roomy["jittery"].number == 2 and roomy["jittery"].outcome == "stable"
    with pytest.raises(ValueError, match="max_seconds"):
        lc.time_interleaved(fns(), max_seconds=0)


def test_number_none_times_enough_passes_to_fill_a_millisecond(clock):
    lat = lc.time_interleaved({"tiny": _cycling(clock, [0.3]), "big": _cycling(clock, [5.0])},
                              threads=1, warmup=2, repeats=3, number=None)
    assert lat["tiny"].number == 4 and lat["tiny"].median_ms == pytest.approx(0.3)
    assert lat["big"].number == 1
    calls = []
    lc.time_interleaved({"c": lambda: (calls.append(1), clock.call(0.5))}, threads=1, warmup=0,
                        repeats=2, number=None)
    assert len(calls) == 1 + 2 * 2         # one calibration call, then 2 samples of 2 passes


def test_stability_arguments_are_checked():
    fns = {"x": lambda: None}
    with pytest.raises(ValueError, match="number must be None or an int >= 1, got 0"):
        lc.time_interleaved(fns, number=0)
    with pytest.raises(ValueError, match="until_stable must be True or False"):
        lc.time_interleaved(fns, until_stable="yes")
    with pytest.raises(ValueError, match="max_number must be an int >= 1"):
        lc.time_interleaved(fns, max_number=0)
    with pytest.raises(TypeError, match="baseline must be a Latency"):
        lc.profile.speedup(2.0, lc.Latency(1, 1, 1, 1, 1, 1, (1.0,)))
    with pytest.raises(ValueError, match="model must carry its sample times"):
        lc.profile.speedup(lc.Latency(1, 1, 1, 1, 1, 1, (1.0,)), lc.Latency(1, 1, 1, 1, 1, 1))
    with pytest.raises(ValueError, match="baseline 'z' is not among"):
        lc.profile.speedups({"a": lc.Latency(1, 1, 1, 1, 1, 1, (1.0,))}, "z")


def _row(name, baseline, ms1, iqr1, ms256=10.0, iqr256=0.1, **extra):
    return dict(name=name, baseline=baseline, accuracy=0.9, params=1, nonzero_params=1, macs=1,
                size_bytes=1, latency_ms_b1=ms1, latency_iqr_ms_b1=iqr1, latency_ms_b256=ms256,
                latency_iqr_ms_b256=iqr256, **extra)


def test_compare_marks_unstable_latencies_and_speedups_with_a_footnote():
    rows = [_row("base", None, 1.0, 0.05),
            _row("noisy", "base", 0.5, 0.2),                      # 40% of its median
            _row("paired", "base", 0.5, 0.01, speedup_relative_iqr_b1=0.3),
            _row("steady", "base", 0.5, 0.01, speedup_relative_iqr_b1=0.05)]
    table = lc.compare(rows)
    text = str(table).splitlines()
    line = {r[0]: r for r in (t.split() for t in text[2:6])}
    assert "0.500?" in line["noisy"] and "2.00x?" in line["noisy"]      # both from its own IQR
    assert "0.500" in line["paired"] and "2.00x?" in line["paired"]     # the paired ratio's spread
    assert not any(c.endswith("?") for c in line["steady"] + line["base"])
    assert text[-1] == lc.profile.UNSTABLE_NOTE and "?" in text[-1]
    assert lc.profile.UNSTABLE_NOTE.replace("%", "") in table._repr_html_().replace("%", "")
    clean = str(lc.compare([rows[0], rows[3]]))
    assert "?" not in clean and lc.profile.UNSTABLE_NOTE not in clean


def _timed_module(clock):
    """A module class whose forward advances the fake clock by the given ms, in turn."""
    class Fake(torch.nn.Module):
        def __init__(self, ms):
            super().__init__()
            self.net, self.step = torch.nn.Linear(1, 1), _cycling(clock, ms)

        def forward(self, x):
            self.step()
            return x
    return Fake


def test_profile_models_stores_each_speedups_spread(clock):
    Fake = _timed_module(clock)
    rows = lc.profile_models({"base": Fake([2.0]), "jittery": Fake([1.0, 0.5])}, baseline="base",
                             batch_sizes=(1,), threads=1, warmup=0, repeats=8)
    assert rows[0]["speedup_relative_iqr_b1"] is None and rows[0]["latency_passes_b1"] == 1
    assert rows[1]["speedup_relative_iqr_b1"] == pytest.approx((4 - 2) / 3)
    assert "x?" in str(lc.compare(rows))


def test_profile_models_gives_each_row_its_ratio_against_its_control(clock):
    # int8 compiled against float32 compiled, from the same round-robin run as the
    # ratios against the eager baseline
    Fake = _timed_module(clock)
    models = {"eager": Fake([4.0]), "compiled": Fake([2.0]), "int8": Fake([1.0, 0.5])}
    rows = lc.profile_models(models, baseline="eager", batch_sizes=(1, 2), threads=1, warmup=0,
                             repeats=8, controls={"int8": "compiled"})
    by_name = {r["name"]: r for r in rows}
    int8 = by_name["int8"]
    assert int8["control"] == "compiled" and "control" not in by_name["compiled"]
    for b in (1, 2):
        assert int8[f"control_speedup_b{b}"] == pytest.approx(
            by_name["compiled"][f"latency_ms_b{b}"] / int8[f"latency_ms_b{b}"])
        # round by round 2/1 and 2/0.5: ratios 2 and 4, spread (4 - 2) / 3
        assert int8[f"control_speedup_relative_iqr_b{b}"] == pytest.approx((4 - 2) / 3)
    assert int8["speedup_relative_iqr_b1"] == pytest.approx((8 - 4) / 6)
    for b in (1, 2):   # the ratio against the baseline, from the same run, as each row's field
        assert by_name["eager"][f"speedup_b{b}"] is None
        for name in ("compiled", "int8"):
            assert by_name[name][f"speedup_b{b}"] == pytest.approx(
                by_name["eager"][f"latency_ms_b{b}"] / by_name[name][f"latency_ms_b{b}"])
    for bad in ({"int8": "missing"}, {"missing": "eager"}, {"int8": "int8"}):
        with pytest.raises(ValueError, match="controls must map"):
            lc.profile_models(models, baseline="eager", batch_sizes=(1,), threads=1, warmup=0,
                              repeats=2, controls=bad)
    with pytest.raises((TypeError, ValueError), match="controls"):
        lc.profile_models(models, baseline="eager", batch_sizes=(1,), threads=1, warmup=0,
                          repeats=2, controls=["int8"])
