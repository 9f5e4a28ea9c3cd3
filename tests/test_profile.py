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
                                          ("aten::empty", "other")])
def test_op_categories(op, category):
    from lightcnn.profile import _category
    assert _category(op) == category


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
