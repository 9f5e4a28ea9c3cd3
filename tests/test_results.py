import json
from pathlib import Path

import pytest

import lightcnn as lc

ROW = {"name": "base", "baseline": None, "accuracy": 0.93, "params": 10, "nonzero_params": 10,
       "macs": 100, "size_bytes": 40, "latency_ms_b1": 1.0, "latency_ms_b256": 9.0,
       "budget": "ci"}


def test_ci_results_go_to_a_temporary_folder_not_the_book(monkeypatch):
    monkeypatch.delenv("LIGHTCNN_RESULTS_DIR", raising=False)
    folder = lc.results_dir(lc.get_budget("ci"))
    assert "book" not in folder.parts
    assert lc.results_dir(lc.get_budget("full")).parts[-2:] == ("book", "results")


def test_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTCNN_RESULTS_DIR", str(tmp_path))
    rows = [ROW, dict(ROW, name="small", baseline="base", macs=10)]
    path = lc.save_results("99_test", rows)
    assert path == tmp_path / "99_test.json"
    assert json.loads(path.read_text()) == rows
    assert lc.load_results("99_test") == rows
    assert lc.load_all_results() == {"99_test": rows}


@pytest.mark.parametrize("bad,match", [
    ([], "non-empty"),
    ([{k: v for k, v in ROW.items() if k != "macs"}], "lacks"),
    ([dict(ROW, baseline="ghost")], "baseline"),
    ([dict(ROW, accuracy=93.0)], "fraction"),
    ([ROW, ROW], "unique"),
    ([dict(ROW, macs=-1)], "macs"),
])
def test_invalid_rows_are_rejected(tmp_path, monkeypatch, bad, match):
    monkeypatch.setenv("LIGHTCNN_RESULTS_DIR", str(tmp_path))
    with pytest.raises(ValueError, match=match):
        lc.save_results("99_test", bad)
    assert not list(Path(tmp_path).iterdir())


def test_published_results_are_valid():
    folder = lc.results_dir(lc.get_budget("full"))
    for path in folder.glob("*.json"):
        rows = lc.load_results(path.stem, lc.get_budget("full"))
        assert all(r["budget"] == "full" for r in rows), path
