import numpy as np
import pytest
import torch
from torch import nn

import lightcnn as lc
from lightcnn import report


def _lat(times, run=1, b=1):
    q1, median, q3 = lc.profile._quartiles(list(times))
    return lc.Latency(median, q1, q3, b, 2, len(times), tuple(times), run=run)


# eager fp32 4 ms, compiled fp32 2 ms, compiled int8 1 ms, ORT fp32 2.5 ms, ORT int8 2 ms,
# all timed in one run (run id 1), steady
LATENCY = {"fp32 eager": _lat([4.0] * 5), "fp32 compiled": _lat([2.0] * 5),
           "int8 compiled": _lat([1.0] * 5), "fp32 ORT": _lat([2.5] * 5),
           "int8 ORT": _lat([2.0] * 5)}
ENGINES = {"fp32 eager": "eager", "fp32 compiled": "inductor", "int8 compiled": "inductor",
           "fp32 ORT": "ort", "int8 ORT": "ort"}
FP32 = {"eager": "fp32 eager", "inductor": "fp32 compiled", "ort": "fp32 ORT"}


def test_engine_speedups_divide_by_eager_and_by_the_same_engine():
    rows = {r["name"]: r for r in report.engine_speedups(LATENCY, ENGINES, FP32)}
    assert list(rows) == list(LATENCY)
    expected = {"fp32 eager": (1.0, 1.0), "fp32 compiled": (2.0, 1.0), "int8 compiled": (4.0, 2.0),
                "fp32 ORT": (1.6, 1.0), "int8 ORT": (2.0, 1.25)}
    for name, (vs_eager, vs_engine) in expected.items():
        assert rows[name]["vs_eager_fp32"].value == pytest.approx(vs_eager)
        assert rows[name]["vs_engine_fp32"].value == pytest.approx(vs_engine)
        assert rows[name]["vs_eager_fp32"].paired and rows[name]["vs_eager_fp32"].stable
        assert rows[name]["engine"] == ENGINES[name] and rows[name]["batch_size"] == 1


def test_engine_speedups_flag_a_noisy_ratio():
    latency = dict(LATENCY, **{"int8 ORT": _lat([1.0, 2.0] * 3)})
    rows = {r["name"]: r for r in report.engine_speedups(latency, ENGINES, FP32)}
    # round ratios 2.5 / 1 and 2.5 / 2: median 1.875, quartiles 1.25 and 2.5
    assert not rows["int8 ORT"]["vs_engine_fp32"].stable
    assert rows["int8 ORT"]["vs_engine_fp32"].relative_iqr == pytest.approx(1.25 / 1.875)
    assert rows["int8 compiled"]["vs_engine_fp32"].stable


@pytest.mark.parametrize("engines, fp32, message", [
    ({k: v for k, v in ENGINES.items() if k != "int8 ORT"}, FP32, r"untagged \['int8 ORT'\]"),
    (dict(ENGINES, extra="eager"), FP32, r"not timed \['extra'\]"),
    (ENGINES, {k: v for k, v in FP32.items() if k != "eager"}, "with 'eager' among the engines"),
    (ENGINES, {k: v for k, v in FP32.items() if k != "ort"}, "no float32 model for engine 'ort'"),
    (ENGINES, dict(FP32, ort="fp32 compiled"), "is tagged engine 'inductor', not 'ort'"),
    (ENGINES, dict(FP32, ort="missing"), "'missing' is not among the timed models"),
])
def test_engine_speedups_need_every_engine_s_fp32_reference(engines, fp32, message):
    with pytest.raises(ValueError, match=message):
        report.engine_speedups(LATENCY, engines, fp32)


def test_engine_speedups_reject_what_is_not_a_latency():
    with pytest.raises(ValueError, match="latency must be a non-empty dict"):
        report.engine_speedups({"fp32 eager": 4.0}, {"fp32 eager": "eager"}, {"eager": "fp32 eager"})


class _Sleeper(nn.Module):
    """Takes ``ms`` milliseconds per sample on the fake clock (any batch size)."""

    def __init__(self, clock, ms):
        super().__init__()
        self.clock, self.ms = clock, ms

    def forward(self, x):
        self.clock.now += self.ms / 1000.0 * (1 if len(x) == 1 else 10)
        return x


class _Clock:
    now = 0.0

    def __call__(self):
        return self.now


def test_compare_engines_times_once_per_batch_size_and_tables_both_ratios(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(lc.profile, "_clock", clock)
    models = {name: (_Sleeper(clock, LATENCY[name].median_ms), ENGINES[name]) for name in LATENCY}
    rows = report.compare_engines(models, FP32, batch_sizes=(1, 4), threads=1, warmup=1, repeats=5,
                                  example=torch.zeros(4, 1, 28, 28))
    by_name = {r["name"]: r for r in rows}
    for b in (1, 4):
        assert by_name["int8 compiled"][f"vs_eager_fp32_b{b}"].value == pytest.approx(4.0)
        assert by_name["int8 compiled"][f"vs_engine_fp32_b{b}"].value == pytest.approx(2.0)
        assert by_name["int8 ORT"][f"vs_engine_fp32_b{b}"].value == pytest.approx(1.25)
        assert by_name["int8 ORT"][f"latency_b{b}"].batch_size == b
    assert by_name["fp32 ORT"]["latency_b4"].median_ms == pytest.approx(25.0)
    text = str(report.engine_table(rows))
    assert "vs eager fp32 b=1" in text and "vs same engine fp32 b=4" in text
    line = next(l for l in text.splitlines() if l.startswith("int8 compiled")).split()
    assert line[2:] == ["inductor", "1.000", "4.00x", "2.00x", "10.000", "4.00x", "2.00x"]
    assert "?" not in text
    with pytest.raises(ValueError, match="example must be a tensor of at least 4 inputs"):
        report.compare_engines(models, FP32, batch_sizes=(1, 4), example=torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match=r"models must be a non-empty dict of name -> \(model, engine tag\)"):
        report.compare_engines({"a": nn.Identity()}, FP32)


def test_engine_table_marks_unstable_cells_and_adds_the_footnote():
    latency = dict(LATENCY, **{"int8 ORT": _lat([1.0, 2.0] * 3)})
    rows = [{"name": r["name"], "engine": r["engine"], "latency_b1": r["latency"],
             "vs_eager_fp32_b1": r["vs_eager_fp32"], "vs_engine_fp32_b1": r["vs_engine_fp32"]}
            for r in report.engine_speedups(latency, ENGINES, FP32)]
    table = report.engine_table(rows)
    lines = str(table).splitlines()
    noisy = next(l for l in lines if l.startswith("int8 ORT")).split()
    assert noisy[2:] == ["ort", "1.500?", "2.67x?", "1.67x?"]
    assert lines[-1] == lc.profile.UNSTABLE_NOTE
    with pytest.raises(ValueError, match="rows must be a non-empty list"):
        report.engine_table([])


def test_verdict_says_met_or_not_met():
    # the helper chapters 04 to 09 each defined as `def verdict(ok)`
    assert report.verdict(True) == "met" and report.verdict(3 <= 2) == "NOT met"
    assert report.verdict(np.float64(1.0) > 0.5) == "met"
    with pytest.raises(TypeError, match="ok must be a bool"):
        report.verdict(0.9)


def test_relative_error_is_the_frobenius_ratio():
    reference = torch.tensor([[3.0, 0.0], [0.0, 4.0]])        # norm 5
    approx = reference + torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    assert report.relative_error(approx, reference) == pytest.approx(0.2)
    w = torch.randn(8, 4, 3, 3, dtype=torch.float64)
    low_rank = torch.randn(8, 4, 3, 3, dtype=torch.float64)
    # chapter 06's `err` and chapter 08's `relative`, written out
    assert report.relative_error(low_rank, w) == ((w - low_rank).norm() / w.norm()).item()
    assert report.relative_error(w, w) == 0.0
    with pytest.raises(ValueError, match="one shape"):
        report.relative_error(w, w[0])
    with pytest.raises(ValueError, match="all zeros"):
        report.relative_error(w, torch.zeros_like(w))
    with pytest.raises(TypeError, match="tensors"):
        report.relative_error(w.numpy(), w)


# --- seeds: mean ± std, the paired difference and its t interval -------------------------

def test_mean_std_formats_the_sample_mean_and_standard_deviation():
    import statistics
    values = [93.1, 92.8, 93.4]
    assert report.mean_std(values) == (f"{statistics.mean(values):.2f} ± "
                                       f"{statistics.stdev(values):.2f}")
    assert report.mean_std([0.25, 0.5, 0.1], sign="+") == "+0.28 ± 0.20"
    assert report.mean_std([-1.0, -2.0, -3.0], digits=1) == "-2.0 ± 1.0"
    for bad in ([], [1.0], "abc", [1.0, "x"], [1.0, float("nan")]):
        with pytest.raises((TypeError, ValueError), match="values"):
            report.mean_std(bad)
    with pytest.raises(ValueError, match="sign"):
        report.mean_std([1.0, 2.0], sign="-")


@pytest.mark.parametrize("values", [[0.1, 0.3, 0.2], [1.0, -0.5, 0.2, 0.9, 0.4], [2.0, 2.5]])
@pytest.mark.parametrize("confidence", [0.95, 0.9, 0.99])
def test_t_interval_matches_scipy(values, confidence):
    scipy_stats = pytest.importorskip("scipy.stats")
    import numpy as np
    low, high = report.t_interval(values, confidence)
    expected = scipy_stats.t.interval(confidence, len(values) - 1, loc=np.mean(values),
                                      scale=scipy_stats.sem(values))
    assert low == pytest.approx(expected[0], rel=1e-9)
    assert high == pytest.approx(expected[1], rel=1e-9)


def test_t_interval_of_three_seeds_uses_t_with_two_degrees_of_freedom():
    low, high = report.t_interval([1.0, 2.0, 3.0])
    assert (low + high) / 2 == pytest.approx(2.0)
    assert (high - low) / 2 == pytest.approx(4.302652729749462 * 1.0 / 3 ** 0.5)
    for bad in ({"values": [1.0]}, {"values": [1.0, 2.0], "confidence": 1.0},
                {"values": [1.0, 2.0], "confidence": 0.0}, {"values": "12"}):
        with pytest.raises((TypeError, ValueError), match="values|confidence"):
            report.t_interval(**bad)


def test_paired_verdict_reads_the_interval():
    above, below, neither = "a beats b", "b beats a", "no difference"
    assert report.paired_verdict([0.5, 0.6, 0.55], above, below, neither) == above
    assert report.paired_verdict([-0.5, -0.6, -0.55], above, below, neither) == below
    assert report.paired_verdict([0.5, -0.6, 0.1], above, below, neither) == neither
    with pytest.raises(TypeError, match="above"):
        report.paired_verdict([0.5, 0.6], 1, below, neither)
