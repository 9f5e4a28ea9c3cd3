import pytest

import lightcnn as lc


def test_default_is_full_and_env_selects(monkeypatch):
    monkeypatch.delenv("LIGHTCNN_BUDGET", raising=False)
    assert lc.get_budget().name == "full"
    monkeypatch.setenv("LIGHTCNN_BUDGET", "ci")
    assert lc.get_budget().name == "ci"


def test_ci_is_smaller_than_full():
    full, ci = lc.get_budget("full"), lc.get_budget("ci")
    assert full.train_size is None and ci.train_size < 60000
    assert ci.epochs <= full.epochs and ci.latency_repeats < full.latency_repeats
    # the shorter schedules are shorter than a full training, at both budgets
    for b in (full, ci):
        assert b.survey_epochs <= b.search_final_epochs <= b.epochs


def test_unknown_budget_is_rejected(monkeypatch):
    monkeypatch.setenv("LIGHTCNN_BUDGET", "huge")
    with pytest.raises(ValueError, match="full.*ci|ci.*full"):
        lc.get_budget()
