"""lightcnn.leaderboard: the results contract, the flattened table and its ratios."""

import pytest

import lightcnn as lc
from lightcnn import leaderboard as lb
from lightcnn.results import CONTRACT_KEYS


def _row(name, baseline=None, accuracy=0.9, size=1000, macs=100, b1=1.0, b256=10.0,
         chapter="04_pruning", technique="pruning", **extra):
    return {**dict(name=name, baseline=baseline, accuracy=accuracy, params=10, nonzero_params=10,
                   macs=macs, size_bytes=size, latency_ms_b1=b1, latency_ms_b256=b256,
                   budget="full", chapter=chapter, technique=technique, cpu="Test CPU"), **extra}


def test_every_published_results_file_keeps_the_contract():
    results = lc.load_all_results(lc.get_budget("full"))
    # every written chapter publishes results (chapter 09 may not exist yet)
    assert {c[:2] for c in results} >= {f"{n:02d}" for n in range(1, 9)}
    lb.check_contract(results, budget="full")      # raises, listing every problem


@pytest.mark.parametrize("change, message", [
    (lambda r: r.pop("cpu"), "lacks \\['cpu'\\]"),
    (lambda r: r.update(chapter="05_quantization"), "says chapter"),
    (lambda r: r.update(technique="magic"), "technique 'magic'"),
    (lambda r: r.update(cpu=" "), "no CPU name"),
    (lambda r: r.update(budget="ci"), "budget 'ci'"),
    (lambda r: r.update(accuracy=None), "no accuracy"),
])
def test_each_broken_rule_is_reported(change, message):
    row = _row("a")
    change(row)
    with pytest.raises(lb.ContractError, match=message):
        lb.check_contract({"04_pruning": [row]})


def test_all_problems_are_listed_at_once():
    rows = [_row("a", cpu=""), _row("b", technique="x")]
    problems = lb.contract_problems("04_pruning", rows)
    assert len(problems) == 2 and "'a'" in problems[0] and "'b'" in problems[1]
    assert lb.contract_problems("04_pruning", [_row("a")]) == []


def test_ratios_are_taken_against_the_rows_own_baseline():
    rows = [_row("base", technique="reference", accuracy=0.93, size=1200, macs=400, b1=2.0, b256=40.0),
            _row("small", "base", accuracy=0.925, size=100, macs=100, b1=1.0, b256=8.0)]
    other = [_row("lenet", chapter="01_cnn_basics", technique="reference", accuracy=0.9, size=50)]
    table = lb.leaderboard_rows({"04_pruning": rows, "01_cnn_basics": other})
    assert [r["name"] for r in table] == ["base", "small", "lenet"]
    small = table[1]
    assert small["drop_points"] == pytest.approx(0.5)
    assert small["size_ratio"] == pytest.approx(12.0) and small["macs_ratio"] == pytest.approx(4.0)
    assert small["speedup_b1"] == pytest.approx(2.0) and small["speedup_b256"] == pytest.approx(5.0)
    assert table[0]["drop_points"] is None and table[0]["size_ratio"] is None
    assert set(CONTRACT_KEYS) <= set(small)


def test_a_missing_latency_gives_no_ratio():
    rows = [_row("base", technique="reference"), _row("v", "base", b1=None, b256=None)]
    v = lb.leaderboard_rows({"04_pruning": rows})[1]
    assert v["speedup_b1"] is None and v["speedup_b256"] is None and v["size_ratio"] == 1.0


def test_best_by_technique_respects_the_allowed_drop():
    rows = lb.leaderboard_rows({"04_pruning": [
        _row("base", technique="reference", accuracy=0.93, size=1000),
        _row("big cut", "base", accuracy=0.90, size=50),        # 3 points: too far
        _row("small cut", "base", accuracy=0.926, size=250),    # 0.4 points
        _row("same", "base", accuracy=0.93, size=250)]})         # same ratio, no drop: wins
    best = lb.best_by_technique(rows, "size_ratio", max_drop=1.0)
    assert list(best) == ["pruning"] and best["pruning"]["name"] == "same"
    assert lb.best_by_technique(rows, "size_ratio", max_drop=5.0)["pruning"]["name"] == "big cut"
    assert lb.best_by_technique(rows, "speedup_b256") == {}     # nothing faster than 1x


def test_a_control_keeps_the_contract_and_wins_no_technique():
    # the baseline trained on as long as a compressed model: the same network, so its
    # faster median is noise, and "control" is no technique
    results = {"06_binary_networks": [
        _row("base", technique="reference", accuracy=0.93, b256=10.0,
             chapter="06_binary_networks"),
        _row("control", "base", technique="control", accuracy=0.932, b256=9.5,
             chapter="06_binary_networks"),
        _row("bnn", "base", technique="binarization", accuracy=0.925, b256=4.0, size=50,
             chapter="06_binary_networks")]}
    lb.check_contract(results)
    rows = lb.leaderboard_rows(results)
    assert rows[1]["technique"] == "control"
    best = lb.best_by_technique(rows, "speedup_b256")
    assert list(best) == ["binarization"] and best["binarization"]["name"] == "bnn"
    results["06_binary_networks"].pop()
    assert lb.best_by_technique(lb.leaderboard_rows(results), "speedup_b256") == {}


@pytest.mark.parametrize("kwargs, match", [
    (dict(ratio="speed"), "ratio must be one of"),
    (dict(max_drop=-1), "max_drop"),
    (dict(max_drop=float("nan")), "max_drop"),
])
def test_best_by_technique_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lb.best_by_technique([], **kwargs)


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="results must be a non-empty mapping"):
        lb.check_contract({})
    with pytest.raises(TypeError, match="rows must be a sequence"):
        lb.contract_problems("04_pruning", "rows")
    with pytest.raises(ValueError, match="chapter must be"):
        lb.contract_problems("", [])


def test_the_baselines_own_network_in_another_runtime_is_labelled_runtime():
    rows = [_row("base", technique="reference", accuracy=0.93, size=1000, macs=400, b256=40.0),
            _row("base compiled", "base", accuracy=0.93, size=1000, macs=400, b256=20.0),
            _row("base in ORT", "base", accuracy=0.93, size=1015, macs=400, b256=30.0),
            _row("pruned", "base", accuracy=0.93, size=500, macs=200, b256=25.0)]
    table = {r["name"]: r for r in lb.leaderboard_rows({"04_pruning": rows})}
    assert table["base compiled"]["technique"] == "runtime" == table["base in ORT"]["technique"]
    assert table["pruned"]["technique"] == "pruning"


def test_techniques_can_be_reassigned_by_name():
    rows = [_row("base", technique="reference"), _row("L1", "base", size=500, chapter="08_lowrank",
                                                      technique="low-rank")]
    rows[0]["chapter"] = "08_lowrank"
    table = lb.leaderboard_rows({"08_lowrank": rows}, techniques={"08_lowrank": {"L1": "pruning"}})
    assert table[1]["technique"] == "pruning"
    with pytest.raises(ValueError, match="does not have"):
        lb.leaderboard_rows({"08_lowrank": rows}, techniques={"08_lowrank": {"nope": "pruning"}})
