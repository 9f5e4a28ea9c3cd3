"""Each chapter's final comparison table, saved as JSON for the leaderboard.

At the ``full`` budget a chapter writes ``book/results/<chapter>.json`` (committed: the
numbers the book publishes). At any other budget the file goes to a temporary folder, so
running the tests never dirties the tree. Chapter 09 reads every file back.

A file is a JSON list of rows, one per model variant, each with at least
``REQUIRED_KEYS``; ``baseline`` names the row a variant is compared with (``None`` on the
baseline row itself).

Taught in chapters/09_putting_it_together.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from .budget import Budget, get_budget

__all__ = ["REQUIRED_KEYS", "results_dir", "save_results", "load_results", "load_all_results"]

REQUIRED_KEYS = ("name", "baseline", "accuracy", "params", "nonzero_params", "macs",
                 "size_bytes", "latency_ms_b1", "latency_ms_b256", "budget")


def _repo_results_dir() -> Path:
    # Chapters run from chapters/, tests from the root: look upwards for the book.
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "_toc.yml").is_file() and (folder / "book").is_dir():
            return folder / "book" / "results"
    # Installed package used elsewhere: fall back to the source tree next to the package.
    return Path(__file__).resolve().parents[1] / "book" / "results"


def results_dir(budget: Budget | None = None) -> Path:
    """``book/results`` at the full budget; a temporary folder at any other budget.

    ``LIGHTCNN_RESULTS_DIR`` overrides both.
    """
    if os.environ.get("LIGHTCNN_RESULTS_DIR"):
        return Path(os.environ["LIGHTCNN_RESULTS_DIR"])
    budget = budget or get_budget()
    if budget.name == "full":
        return _repo_results_dir()
    return Path(tempfile.gettempdir()) / "lightcnn-results" / budget.name


def _validate(rows: list[dict]) -> None:
    if not isinstance(rows, list) or not rows:
        raise ValueError("rows must be a non-empty list of dicts")
    names = [r.get("name") for r in rows]
    if len(set(names)) != len(names):
        raise ValueError(f"row names must be unique, got {names}")
    for row in rows:
        missing = [k for k in REQUIRED_KEYS if k not in row]
        if missing:
            raise ValueError(f"row {row.get('name')!r} lacks {missing}")
        if row["baseline"] is not None and row["baseline"] not in names:
            raise ValueError(f"row {row['name']!r} names baseline {row['baseline']!r}, "
                             f"which is not among {names}")
        acc = row["accuracy"]
        if acc is not None and not (0.0 <= acc <= 1.0):
            raise ValueError(f"row {row['name']!r}: accuracy must be a fraction in [0, 1], "
                             f"got {acc}")
        for key in REQUIRED_KEYS[3:9]:
            value = row[key]
            if value is not None and (not isinstance(value, (int, float)) or math.isnan(value)
                                      or value < 0):
                raise ValueError(f"row {row['name']!r}: {key} must be a number >= 0, got {value!r}")


def save_results(chapter: str, rows: list[dict], budget: Budget | None = None) -> Path:
    """Validate ``rows`` and write them to ``<results_dir>/<chapter>.json``; return the path."""
    if not chapter or "/" in chapter or chapter.endswith(".json"):
        raise ValueError(f"chapter must be a bare name like '01_cnn_basics', got {chapter!r}")
    budget = budget or get_budget()
    _validate(rows)
    folder = results_dir(budget)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{chapter}.json"
    # Write then rename: an interrupted run never leaves half a file.
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rows, indent=1) + "\n")
    tmp.replace(path)
    return path


def load_results(chapter: str, budget: Budget | None = None) -> list[dict]:
    """Rows of one chapter's results file (validated)."""
    path = results_dir(budget) / f"{chapter}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no results for {chapter!r} at {path}; run the chapter first")
    rows = json.loads(path.read_text())
    _validate(rows)
    return rows


def load_all_results(budget: Budget | None = None) -> dict[str, list[dict]]:
    """Every chapter's rows, keyed by chapter name, in file-name order."""
    folder = results_dir(budget)
    return {p.stem: load_results(p.stem, budget) for p in sorted(folder.glob("*.json"))}
