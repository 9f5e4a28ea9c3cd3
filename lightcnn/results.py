"""Each chapter's final comparison table, saved as JSON for the leaderboard.

At the ``full`` budget a chapter writes ``book/results/<chapter>.json`` (committed: the
numbers the book publishes). At any other budget the file goes to a temporary folder, so
running the tests never dirties the tree. Chapter 09 reads every file back.

A file is a JSON list of rows, one per model variant, each with at least
``REQUIRED_KEYS``; ``baseline`` names the row a variant is compared with (``None`` on the
baseline row itself). ``save_results`` also stamps every row with ``CONTRACT_KEYS``: the
chapter, the technique (the chapter's, or ``"reference"`` on a row compared with nothing)
and the name of the CPU that measured it, so the leaderboard can say where each number
comes from.

Taught in chapters/09_putting_it_together.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from ._io import atomic_write
from ._checks import check_float, check_instance, check_mapping, check_path
from .budget import Budget, get_budget
from .profile import STABLE_RELATIVE_IQR
from .runtime import cpu_name

__all__ = ["REQUIRED_KEYS", "CONTRACT_KEYS", "TECHNIQUES", "results_dir", "save_results", "load_results", "load_all_results",
           "summary_rows", "summary_markdown", "write_summary", "SUMMARY_FILE"]

# The front page's table (book/intro.md includes it), rewritten from the JSON files by
# every full-budget save_results; tests/test_results.py checks it matches them.
SUMMARY_FILE = "summary.md"

REQUIRED_KEYS = ("name", "baseline", "accuracy", "params", "nonzero_params", "macs",
                 "size_bytes", "latency_ms_b1", "latency_ms_b256", "budget")


# stamped on every row by save_results (see the module docstring)
CONTRACT_KEYS = REQUIRED_KEYS + ("chapter", "technique", "cpu")

# rows that are not a technique's result: the front page's summary skips them
NOT_COMPETING = ("reference", "control")

# each chapter's technique, by chapter number
TECHNIQUES = {"01": "baseline", "02": "design", "03": "architecture", "04": "pruning",
              "05": "quantization", "06": "binarization", "07": "distillation",
              "08": "low-rank", "09": "pipeline"}


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
    check_instance("budget", budget, Budget, none=True)
    if os.environ.get("LIGHTCNN_RESULTS_DIR"):
        return Path(os.environ["LIGHTCNN_RESULTS_DIR"])
    budget = budget or get_budget()
    if budget.name == "full":
        return _repo_results_dir()
    return Path(tempfile.gettempdir()) / "lightcnn-results" / budget.name


def _check_chapter(chapter: str) -> None:
    if not isinstance(chapter, str) or not chapter or "/" in chapter \
            or chapter.endswith(".json"):
        raise ValueError(f"chapter must be a bare name like '01_cnn_basics', got {chapter!r}")


def _check_results(results: dict[str, list[dict]], max_drop: float) -> None:
    check_mapping("results", results, what="a dict of chapter -> rows")
    for chapter, rows in results.items():
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise TypeError(f"results[{chapter!r}] must be a list of dicts (rows), got "
                            f"{type(rows).__name__}")
    check_float("max_drop", max_drop, 0)


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
    """Validate ``rows``, stamp them with the chapter, technique and CPU (a row's own
    ``technique`` is kept), and write them to ``<results_dir>/<chapter>.json``; return the
    path. The caller's rows are not modified."""
    _check_chapter(chapter)
    check_instance("budget", budget, Budget, none=True)
    budget = budget or get_budget()
    _validate(rows)
    cpu = cpu_name()
    technique = TECHNIQUES.get(chapter[:2], chapter)
    rows = [{**row, "chapter": chapter, "cpu": cpu,
             "technique": row.get("technique") or ("reference" if row["baseline"] is None
                                                   else technique)} for row in rows]
    folder = results_dir(budget)
    path = folder / f"{chapter}.json"
    # write then rename (creating the folder): an interrupted run never leaves half a file
    atomic_write(path, (json.dumps(rows, indent=1) + "\n").encode())
    if budget.name == "full" and not os.environ.get("LIGHTCNN_RESULTS_DIR"):
        write_summary(folder)
    return path


def load_results(chapter: str, budget: Budget | None = None) -> list[dict]:
    """Rows of one chapter's results file (validated)."""
    _check_chapter(chapter)
    check_instance("budget", budget, Budget, none=True)
    path = results_dir(budget) / f"{chapter}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no results for {chapter!r} at {path}; run the chapter first")
    return load_results_file(path)


def load_all_results(budget: Budget | None = None) -> dict[str, list[dict]]:
    """Every chapter's rows, keyed by chapter name, in file-name order."""
    check_instance("budget", budget, Budget, none=True)
    folder = results_dir(budget)
    return {p.stem: load_results(p.stem, budget) for p in sorted(folder.glob("*.json"))}


def _chapter_title(chapter: str) -> str:
    number, _, words = chapter.partition("_")
    return f"{int(number)} {words.replace('_', ' ')}" if number.isdigit() else chapter


def summary_rows(results: dict[str, list[dict]], max_drop: float = 0.01) -> list[dict]:
    """Per chapter, the variant with the fewest stored bytes and the one with the lowest
    batch-256 latency among those within ``max_drop`` (a fraction: 0.01 = 1 point) of the
    accuracy of the baseline they name, each as ratios to that baseline:
    ``size_ratio = bytes_baseline / bytes``, ``speedup = latency_baseline / latency``.

    A chapter with no such variant (or no latency measured) gets ``None`` in that column.
    Ties (e.g. a student trained alone and distilled: same bytes, same latency) go to the
    more accurate variant. A row may name its ``control``, another row of its chapter: the
    same network without the technique (a student trained alone, the baseline fine-tuned as
    long); its ratios are then taken against the control, so a distilled student is not
    credited with the bytes and speed of its smaller architecture, while its accuracy is
    still held to the baseline's. Rows whose ``technique`` is ``"control"`` (the baseline trained
    on as long as a compressed model, to separate the technique from the extra epochs) or
    ``"reference"`` compete for neither column: they are the same network as the baseline,
    and their speed-up, if any, is timing noise. A row whose quoted ratio is flagged does not
    compete for the fastest: its ``control_speedup_relative_iqr_b256`` when the ratio is
    taken against its control (else ``speedup_relative_iqr_b256``) is above
    :data:`lightcnn.profile.STABLE_RELATIVE_IQR`.
    """
    _check_results(results, max_drop)
    out = []
    for chapter, rows in results.items():
        by_name = {r["name"]: r for r in rows}
        smallest = fastest = None
        for row in rows:
            base = by_name.get(row["baseline"]) if row["baseline"] else None
            if base is None or row["accuracy"] is None or base["accuracy"] is None \
                    or row.get("technique") in NOT_COMPETING:
                continue
            drop = base["accuracy"] - row["accuracy"]
            if drop > max_drop:
                continue
            # the ratios against the row's control when it names one (the same network
            # without the technique), so a technique is not credited with its architecture
            ref = by_name.get(row.get("control")) or base
            size_ratio = ref["size_bytes"] / row["size_bytes"]
            candidate = dict(name=row["name"], baseline=base["name"], drop=drop, ratio=size_ratio,
                             control=ref["name"] if ref is not base else None)
            if size_ratio > 1 and (smallest is None or (size_ratio, -drop)
                                   > (smallest["ratio"], -smallest["drop"])):
                smallest = candidate
            # a speed-up whose per-round spread is above STABLE_RELATIVE_IQR of its median
            # is flagged by the chapter's table and is not a result (lightcnn.profile.Ratio);
            # the spread is that of the ratio quoted: against the control when it is one
            # (and the row has that spread), else against the baseline
            spread = row.get("control_speedup_relative_iqr_b256") if ref is not base else None
            if spread is None:
                spread = row.get("speedup_relative_iqr_b256")
            stable = spread is None or spread <= STABLE_RELATIVE_IQR
            if stable and row["latency_ms_b256"] and ref["latency_ms_b256"]:
                speedup = ref["latency_ms_b256"] / row["latency_ms_b256"]
                if speedup > 1 and (fastest is None or (speedup, -drop)
                                    > (fastest["ratio"], -fastest["drop"])):
                    fastest = dict(candidate, ratio=speedup)
        out.append(dict(chapter=chapter, smallest=smallest, fastest=fastest))
    return out


def summary_markdown(results: dict[str, list[dict]], max_drop: float = 0.01) -> str:
    """:func:`summary_rows` as a Markdown table (what the book's front page shows)."""
    _check_results(results, max_drop)
    def cell(entry: dict | None, unit: str) -> str:
        if entry is None:
            return "none smaller" if unit == "fewer bytes" else "none measured faster"
        points = -100 * entry["drop"]
        points = 0.0 if abs(points) < 0.005 else points   # no "-0.00" for an equal accuracy
        control = entry.get("control")
        # "than its control X", unless X's name already says it is the control
        against = "" if not control else f" than {control}" if control.startswith("control") \
            else f" than its control {control}"
        return (f"{entry['name']}: **{entry['ratio']:.2f}x** {unit}{against} "
                f"({points:+.2f} points vs {entry['baseline']})")

    points = f"{100 * max_drop:g} point{'s' if max_drop != 0.01 else ''}"
    lines = [f"| chapter | smallest within {points} of its baseline | fastest at batch 256 "
             f"within {points} |", "|---|---|---|"]
    for row in summary_rows(results, max_drop):
        lines.append(f"| {_chapter_title(row['chapter'])} | {cell(row['smallest'], 'fewer bytes')} "
                     f"| {cell(row['fastest'], 'faster')} |")
    return "\n".join(lines) + "\n"


def write_summary(folder: Path | None = None) -> Path:
    """Rewrite ``<folder>/summary.md`` from every results file in ``folder`` (default:
    the book's ``book/results``)."""
    check_path("folder", folder, none=True)
    folder = Path(folder) if folder is not None else _repo_results_dir()
    results = {p.stem: load_results_file(p) for p in sorted(folder.glob("*.json"))}
    path = folder / SUMMARY_FILE
    path.write_text("<!-- written by lightcnn.results.write_summary from the JSON files here; "
                    "do not edit -->\n" + summary_markdown(results))
    return path


def load_results_file(path: Path) -> list[dict]:
    """Rows of one results file at ``path`` (validated)."""
    rows = json.loads(Path(path).read_text())
    _validate(rows)
    return rows
