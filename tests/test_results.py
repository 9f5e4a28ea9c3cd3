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
    stamp = {"chapter": "99_test", "cpu": lc.runtime.cpu_name()}
    stamped = [dict(ROW, **stamp, technique="reference"),
               dict(rows[1], **stamp, technique="99_test")]   # no technique for chapter 99
    assert json.loads(path.read_text()) == stamped
    assert "chapter" not in rows[0]                           # the caller's rows untouched
    assert lc.load_results("99_test") == stamped
    assert lc.load_all_results() == {"99_test": stamped}


def test_rows_are_stamped_with_the_chapter_technique_and_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTCNN_RESULTS_DIR", str(tmp_path))
    rows = [ROW, dict(ROW, name="pruned", baseline="base"),
            dict(ROW, name="own", baseline="base", technique="distillation")]
    saved = lc.results.load_results_file(lc.save_results("04_pruning", rows))
    assert [r["technique"] for r in saved] == ["reference", "pruning", "distillation"]
    assert all(set(lc.results.CONTRACT_KEYS) <= set(r) for r in saved)
    assert {r["chapter"] for r in saved} == {"04_pruning"}


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


def test_summary_picks_the_smallest_and_fastest_within_the_allowed_drop():
    rows = [ROW,
            dict(ROW, name="tiny but bad", baseline="base", accuracy=0.90, size_bytes=1,
                 latency_ms_b256=0.5),                                   # 3 points down
            dict(ROW, name="half size", baseline="base", accuracy=0.925, size_bytes=20,
                 latency_ms_b256=6.0),
            dict(ROW, name="quarter size", baseline="base", accuracy=0.921, size_bytes=10,
                 latency_ms_b256=None),
            dict(ROW, name="slower", baseline="base", accuracy=0.95, size_bytes=40,
                 latency_ms_b256=12.0)]
    (row,) = lc.results.summary_rows({"99_test": rows})
    assert row["smallest"]["name"] == "quarter size" and row["smallest"]["ratio"] == 4.0
    assert row["fastest"]["name"] == "half size" and row["fastest"]["ratio"] == 1.5
    assert abs(row["fastest"]["drop"] - 0.005) < 1e-12
    (strict,) = lc.results.summary_rows({"99_test": rows}, max_drop=0.0)
    assert strict["smallest"] is None and strict["fastest"] is None
    text = lc.results.summary_markdown({"99_test": rows})
    assert "| 99 test | quarter size: **4.00x** fewer bytes (-0.90 points vs base) " \
           "| half size: **1.50x** faster (-0.50 points vs base) |" in text
    # a tie in bytes and time (a student alone and distilled) goes to the more accurate
    twins = [ROW, dict(ROW, name="alone", baseline="base", accuracy=0.921, size_bytes=10,
                       latency_ms_b256=6.0),
             dict(ROW, name="distilled", baseline="base", accuracy=0.925, size_bytes=10,
                  latency_ms_b256=6.0)]
    for order in (twins, [twins[0], twins[2], twins[1]]):
        (row,) = lc.results.summary_rows({"99_test": order})
        assert row["smallest"]["name"] == row["fastest"]["name"] == "distilled"


def test_controls_and_references_compete_for_no_column():
    # a control (the baseline trained on as long) is the baseline's network: a faster
    # median is timing noise, and it is not a technique's result
    rows = [ROW, dict(ROW, name="control", baseline="base", accuracy=0.935, size_bytes=10,
                      latency_ms_b256=1.0, technique="control"),
            dict(ROW, name="again", baseline="base", size_bytes=10, latency_ms_b256=1.0,
                 technique="reference"),
            dict(ROW, name="pruned", baseline="base", accuracy=0.925, size_bytes=20,
                 latency_ms_b256=6.0)]
    (row,) = lc.results.summary_rows({"99_test": rows})
    assert row["smallest"]["name"] == row["fastest"]["name"] == "pruned"
    (row,) = lc.results.summary_rows({"99_test": rows[:3]})
    assert row["smallest"] is None and row["fastest"] is None


def test_an_unstable_speedup_is_not_the_fastest():
    # a ratio whose per-round spread is above 20% of its median is flagged, not a result
    rows = [ROW, dict(ROW, name="noisy", baseline="base", accuracy=0.93, size_bytes=20,
                      latency_ms_b256=3.0, speedup_relative_iqr_b256=0.25),
            dict(ROW, name="steady", baseline="base", accuracy=0.93, size_bytes=30,
                 latency_ms_b256=6.0, speedup_relative_iqr_b256=0.05)]
    (row,) = lc.results.summary_rows({"99_test": rows})
    assert row["fastest"]["name"] == "steady" and row["fastest"]["ratio"] == 1.5
    assert row["smallest"]["name"] == "noisy"       # its bytes are not a timing
    (row,) = lc.results.summary_rows({"99_test": rows[:2]})
    assert row["fastest"] is None


def test_the_front_page_summary_matches_the_published_results(tmp_path):
    book = Path(__file__).resolve().parents[1] / "book" / "results"
    for f in book.glob("*.json"):
        (tmp_path / f.name).write_text(f.read_text())
    fresh = lc.results.write_summary(tmp_path).read_text()
    assert (book / lc.results.SUMMARY_FILE).read_text() == fresh, \
        "book/results/summary.md is stale: run lc.results.write_summary()"
    assert "{include} results/summary.md" in (book.parent / "intro.md").read_text()


def test_a_full_budget_save_rewrites_the_summary(tmp_path, monkeypatch):
    monkeypatch.delenv("LIGHTCNN_RESULTS_DIR", raising=False)
    monkeypatch.setattr(lc.results, "_repo_results_dir", lambda: tmp_path)
    lc.save_results("98_test", [dict(ROW, budget="full")], lc.get_budget("full"))
    assert "| 98 test | none smaller | none measured faster |" in (tmp_path / "summary.md").read_text()


def test_a_row_naming_its_control_is_measured_against_it():
    # a distilled student: the student alone has its bytes and speed, so distillation made
    # nothing smaller or faster; the architecture did
    student = dict(ROW, baseline="base", accuracy=0.925, size_bytes=10, latency_ms_b256=2.0)
    rows = [ROW, dict(student, name="alone", technique="control"),
            dict(student, name="distilled", control="alone")]
    (row,) = lc.results.summary_rows({"99_test": rows})
    assert row["smallest"] is None and row["fastest"] is None
    # a pruned network against the baseline fine-tuned as long (a control of the same size
    # as the baseline): the ratio is against the control, named in the summary
    rows = [ROW, dict(ROW, name="finetuned", baseline="base", size_bytes=30, latency_ms_b256=8.0,
                      technique="control"),
            dict(student, name="pruned", control="finetuned")]
    (row,) = lc.results.summary_rows({"99_test": rows})
    assert row["smallest"]["ratio"] == 3.0 and row["smallest"]["control"] == "finetuned"
    assert row["fastest"]["ratio"] == 4.0
    text = lc.results.summary_markdown({"99_test": rows})
    assert "pruned: **3.00x** fewer bytes than its control finetuned (-0.50 points vs base)" in text
    named = [dict(r, name="control (fine-tuned)") if r["name"] == "finetuned" else
             dict(r, control="control (fine-tuned)") if r.get("control") == "finetuned" else r
             for r in rows]
    assert "fewer bytes than control (fine-tuned) (" in lc.results.summary_markdown({"99_test": named})
    # a control name that is not a row of the chapter: the baseline, as before
    (row,) = lc.results.summary_rows({"99_test": [ROW, dict(student, name="x", control="nope")]})
    assert row["smallest"]["control"] is None and row["smallest"]["ratio"] == ROW["size_bytes"] / 10


def test_a_ratio_against_a_control_is_judged_by_its_own_spread():
    # the quoted ratio is control / row, so its stability is that ratio's spread, not the
    # spread of the row's ratio to the baseline (chapter 5: int8 QAT's ratio to compiled
    # float32 was flagged while its ratio to eager float32 was not, and PTQ's the reverse)
    rows = [ROW, dict(ROW, name="compiled", baseline="base", size_bytes=40, latency_ms_b256=6.0,
                      technique="reference"),
            dict(ROW, name="qat", baseline="base", accuracy=0.93, size_bytes=10, latency_ms_b256=2.0,
                 control="compiled", speedup_relative_iqr_b256=0.05,
                 control_speedup_relative_iqr_b256=0.25),
            dict(ROW, name="ptq", baseline="base", accuracy=0.93, size_bytes=10, latency_ms_b256=3.0,
                 control="compiled", speedup_relative_iqr_b256=0.25,
                 control_speedup_relative_iqr_b256=0.05)]
    (row,) = lc.results.summary_rows({"99_test": rows})
    assert row["fastest"]["name"] == "ptq" and row["fastest"]["ratio"] == 2.0
    assert row["fastest"]["control"] == "compiled"
    # without a spread of its own against the control, the row's spread decides
    (row,) = lc.results.summary_rows({"99_test": [dict(r, control_speedup_relative_iqr_b256=None)
                                                  for r in rows]})
    assert row["fastest"]["name"] == "qat"
