"""lightcnn.claims: prose numbers against stored outputs, on small notebooks built here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightcnn import claims as C


def _notebook(tmp_path: Path, markdown: list[str], outputs: list[str] = (), code: str = "x = 1",
              html: str | None = None, results: list[dict] | None = None, name: str = "01_demo") -> Path:
    """A notebook: markdown cells, then one code cell whose stream outputs are `outputs`."""
    cells = [{"cell_type": "markdown", "metadata": {}, "source": text} for text in markdown]
    code_outputs = [{"output_type": "stream", "name": "stdout", "text": text} for text in outputs]
    if html is not None:
        code_outputs.append({"output_type": "display_data", "metadata": {},
                             "data": {"text/html": html, "text/plain": "<table>"}})
    cells.append({"cell_type": "code", "metadata": {}, "execution_count": 1, "source": code,
                  "outputs": code_outputs})
    (tmp_path / "chapters").mkdir(exist_ok=True)
    path = tmp_path / "chapters" / f"{name}.ipynb"
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    if results is not None:
        (tmp_path / "book" / "results").mkdir(parents=True, exist_ok=True)
        (tmp_path / "book" / "results" / f"{name}.json").write_text(json.dumps(results))
    return path


def _texts(claims: list[C.Claim]) -> list[str]:
    return [c.text for c in claims]


def _check(tmp_path: Path, prose: str, *outputs: str, **kwargs) -> C.Report:
    return C.check_chapter(_notebook(tmp_path, [prose], list(outputs), **kwargs))


# --- what counts as a claim ----------------------------------------------------------------

def test_prose_numbers_finds_measurements_with_units_cell_and_sentence(tmp_path):
    nb = _notebook(tmp_path, ["# Title\n\nIntro without numbers.",
                              "The int8 model reaches 93.38% and is 1.47x faster. It takes 0.725 ms "
                              "at batch 1, has 4,410 params, loses -1.15 points and\nfits in 23,160 B."])
    claims = C.prose_numbers(nb)
    assert _texts(claims) == ["93.38%", "1.47x", "0.725 ms", "4,410 params", "-1.15 points", "23,160 B"]
    assert {c.cell for c in claims} == {1}
    assert claims[0].sentence == "The int8 model reaches 93.38% and is 1.47x faster."
    assert claims[-1].sentence == ("It takes 0.725 ms at batch 1, has 4,410 params, loses -1.15 points "
                                   "and fits in 23,160 B.")
    assert [c.value for c in claims] == ["93.38", "1.47", "0.725", "4410", "-1.15", "23160"]
    assert [c.unit for c in claims] == ["%", "x", "ms", "params", "points", "b"]
    assert all(c.kind == "measured" for c in claims)


def test_math_is_skipped(tmp_path):
    nb = _notebook(tmp_path, ["Every error stays within $s/2 = 0.14$ and\n"
                              "$$\\hat{x} = 12.5 \\cdot q + 3.75$$\nso nothing is claimed."])
    assert C.prose_numbers(nb) == []


def test_code_is_skipped(tmp_path):
    nb = _notebook(tmp_path, ["Call `fit(lr=0.37, epochs=12)`.\n\n```python\nmodel(93.38)\n```\n",
                              "```{literalinclude} ../lightcnn/x.py\n:lines: 10-42\n```"])
    assert C.prose_numbers(nb) == []


def test_references_names_settings_and_small_counts_are_skipped(tmp_path):
    nb = _notebook(tmp_path, [
        "As chapter 4 and chapters 2-8 show (section 3, Figure 12, table 2), ResNet-18 "
        "and MobileNetV2 in int8 on x86, published in 2016, take 28x28 images at batch 256 "
        "with d=16. Two branches of 3 layers, 8 bits, a 32-bit float and the 99.99th "
        "percentile; see [the docs](https://example.org/v2/page-123) and {ref}`fig-42`.",
        "1. first item with no number\n2. second item",
        "Targets: at least 3.9x, at most 0.3 points, within 1.5 points; the 40% target.",
    ])
    assert C.prose_numbers(nb) == []


def test_small_integers_with_a_unit_are_claims(tmp_path):
    nb = _notebook(tmp_path, ["It is 4x smaller, loses 3% and 2 points, in 7 ms, over 4 to 5 points."])
    assert _texts(C.prose_numbers(nb)) == ["4x", "3%", "2 points", "7 ms", "4", "5 points"]


def test_exercises_section_is_skipped(tmp_path):
    nb = _notebook(tmp_path, ["## Summary\n\nInt8 is 4.92x faster.\n\n## Exercises\n\n"
                              "1. Prune to 95% and 98.5% sparsity and time it at 1.5x.",
                              "More exercise text at 12.5%.", "## Next\n\nBack to prose: 3.16x."])
    assert _texts(C.prose_numbers(nb)) == ["4.92x", "3.16x"]


# --- paper numbers ------------------------------------------------------------------------

def test_cited_sentence_is_a_paper_number(tmp_path):
    report = _check(tmp_path, "MobileNetV2 reaches 72.0% on ImageNet {cite}`sandler2018mobilenetv2`. "
                              "Here it reaches 86.53%.", "accuracy 86.53%")
    assert _texts(report.paper) == ["72.0%"]
    assert _texts(report.matched) == ["86.53%"]
    assert report.unmatched == []


def test_paper_table_paper_column_cited_this_book_column_checked(tmp_path):
    table = ("| | paper | this book |\n|---|---|---|\n"
             "| int8 speed {cite}`jacob2018` | 2-4x faster | 4.92x vs eager, 3.33x vs compiled |\n"
             "| size | 4x smaller | 3.87x smaller |")
    report = _check(tmp_path, table, "4.92x faster, 3.87x smaller")
    assert _texts(report.paper) == ["2", "4x", "4x"]
    assert _texts(report.matched) == ["4.92x", "3.87x"]
    assert _texts(report.unmatched) == ["3.33x"]


# --- matching rules -----------------------------------------------------------------------

def test_exact_match(tmp_path):
    report = _check(tmp_path, "The baseline reaches 93.38%.", "baseline: 93.38% test accuracy")
    assert _texts(report.matched) == ["93.38%"] and report.ok


def test_prose_may_round_an_output_but_not_claim_more_precision(tmp_path):
    report = _check(tmp_path, "It took 0.73 ms, about 0.7 ms, or 0.72 ms; the other one 1.2 ms.",
                    "latency 0.7269 ms", "other: 1.23")
    assert _texts(report.matched) == ["0.73 ms", "0.7 ms", "1.2 ms"]
    assert _texts(report.unmatched) == ["0.72 ms"]
    coarse = _check(tmp_path, "It reaches 93.38% (93.40%, 93.4%) and 4.00x.", "accuracy 93.4%", "4x")
    assert _texts(coarse.unmatched) == ["93.38%", "93.40%", "4.00x"]


def test_thousands_separators_either_side(tmp_path):
    report = _check(tmp_path, "It has 4,410 params and 23160 bytes.", "params 4410, file 23,160 bytes")
    assert _texts(report.matched) == ["4,410 params", "23160 bytes"]
    assert C.output_numbers(_notebook(tmp_path, [], ["1,129,347 -> 291,867"])) >= {"1129347", "291867"}


def test_scientific_notation_is_one_number(tmp_path):
    report = _check(tmp_path, "The two agree to 4.3e-15, and to 3.9e-15 with HOOI; the third to 2.0e-15.",
                    "relative difference 4.3e-15", "HOOI: 3.9e-15")
    assert _texts(report.matched) == ["4.3e-15", "3.9e-15"]
    assert _texts(report.unmatched) == ["2.0e-15"]


def test_percent_matches_a_fraction_and_a_fraction_matches_a_percent(tmp_path):
    results = [{"name": "baseline", "accuracy": 0.9337999820709229, "macs": 21903104}]
    nb = _notebook(tmp_path, ["The baseline reaches 93.38% (93.4%) with 21.9M MACs; "
                              "the student keeps 0.8653 of it."], ["student: 86.53%"],
                   results=results)
    report = C.check_chapter(nb)
    assert report.results is not None and report.results.endswith("01_demo.json")
    assert _texts(report.matched) == ["93.38%", "93.4%", "21.9M", "0.8653"]
    assert "0.9337999820709229" in C.output_numbers(nb, report.results)


def test_negative_and_absolute_values_match(tmp_path):
    report = _check(tmp_path, "Pruning costs 1.15 points; AGP -1.48 points.",
                    "iterative: 92.23% (-1.15)", "agp: 1.48 below")
    assert _texts(report.matched) == ["1.15 points", "-1.48 points"] and report.ok


def test_html_tables_count_as_outputs(tmp_path):
    html = "<table><tr><th>model</th><th>ms b=256</th></tr><tr><td>int8</td><td>15.763</td></tr></table>"
    report = _check(tmp_path, "At batch 256 it takes 15.8 ms.", html=html)
    assert _texts(report.matched) == ["15.8 ms"]


def test_a_number_absent_from_the_outputs_is_flagged(tmp_path):
    # 77.48 / 15.76 = 4.92: a ratio worked out in the prose is exactly what is flagged
    report = _check(tmp_path, "Eager takes 77.48 ms, int8 15.76 ms: 4.92x faster.",
                    "eager 77.48 ms", "int8 15.76 ms")
    assert _texts(report.unmatched) == ["4.92x"]
    assert report.unmatched[0].sentence == "Eager takes 77.48 ms, int8 15.76 ms: 4.92x faster."
    assert not report.ok


def test_bare_integer_percent_or_ratio_needs_its_unit_printed(tmp_path):
    # 3% must not match a Δacc of 0.03 or an epoch count of 3; 2x must not match "2 epochs"
    report = _check(tmp_path, "It took 3% longer and was 2x slower.", "Δacc +0.03 after 3 epochs",
                    "2 epochs")
    assert _texts(report.unmatched) == ["3%", "2x"]
    printed = _check(tmp_path, "It took 3% longer and was 2x slower.", "+3% time, 2.04x slower")
    assert _texts(printed.matched) == ["3%", "2x"]


def test_number_written_in_code_is_a_setting(tmp_path):
    report = _check(tmp_path, "Fine-tuning uses a rate of 0.01 and removes 30% of the channels.",
                    "done", code="finetune(model, lr=0.01, ratio=0.3)")
    assert _texts(report.settings) == ["0.01", "30%"]
    assert report.ok


def test_match_number_accepts_a_plain_set():
    claim = C.Claim(cell=0, text="93.4%", value="93.4", unit="%", sentence="", kind="measured")
    assert C.match_number(claim, {"93.38"})
    assert C.match_number(claim, {"0.93379998"})
    assert not C.match_number(claim, {"93.5", "0.9"})


# --- CLI and bad inputs -------------------------------------------------------------------

def test_cli_reports_counts_and_unmatched_and_sets_the_exit_code(tmp_path, capsys):
    nb = _notebook(tmp_path, ["It reaches 93.38%. Papers say 1.47x {cite}`x2020`. Here 2.5x."],
                   ["93.38%"])
    assert C.main([str(nb)]) == 1
    out = capsys.readouterr().out
    assert "01_demo: 2 measured claims, 1 matched" in out
    assert "1 paper numbers with a citation" in out
    assert "UNMATCHED cell 0: '2.5x'" in out
    assert C.main([str(nb), "--report-only"]) == 0
    clean = _notebook(tmp_path, ["It reaches 93.38%."], ["93.38%"], name="02_clean")
    assert C.main([str(clean)]) == 0


def test_cli_hints_at_the_chapter_a_sentence_quotes(tmp_path, capsys):
    three = _notebook(tmp_path, ["Prose."], ["squeezenet: 91.88%"], name="03_survey")
    seven = _notebook(tmp_path, ["Chapter 3's SqueezeNet reached 91.88% there."], ["nothing"],
                      name="07_distill")
    assert C.main([str(three), str(seven)]) == 1
    assert "[printed by 03_survey]" in capsys.readouterr().out


def test_bad_inputs_are_rejected_with_the_argument_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="notebook_path"):
        C.prose_numbers(tmp_path / "missing.ipynb")
    bad = tmp_path / "bad.ipynb"
    bad.write_text(json.dumps({"not": "a notebook"}))
    with pytest.raises(ValueError, match="not a notebook"):
        C.output_numbers(bad)
    bad.write_text("{")
    with pytest.raises(ValueError, match="not JSON"):
        C.check_chapter(bad)
    nb = _notebook(tmp_path, ["1.5x"])
    with pytest.raises(FileNotFoundError, match="results_json_path"):
        C.output_numbers(nb, tmp_path / "none.json")


def test_scaled_numbers_match_their_expanded_value(tmp_path):
    results = [{"name": "baseline", "size_bytes": 1129347, "macs": 21903104}]
    nb = _notebook(tmp_path, ["A 1.13 MB file and 21.9 million MACs; the other file 1.2 MB."], ["done"],
                   results=results)
    report = C.check_chapter(nb)
    assert _texts(report.matched) == ["1.13 MB", "21.9 million"]
    assert _texts(report.unmatched) == ["1.2 MB"]


def test_whole_seconds_match_a_table_column_but_versions_do_not_count(tmp_path):
    report = _check(tmp_path, "A run takes 24 s, the baseline 2.14 ms.",
                    "torch 2.14.1", "student  s per run\nalone           24")
    assert _texts(report.matched) == ["24 s"]
    assert _texts(report.unmatched) == ["2.14 ms"]
