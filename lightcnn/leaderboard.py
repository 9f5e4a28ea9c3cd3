"""One leaderboard of every technique, built only from the chapters' results files.

Every chapter saves its final comparison with :func:`lightcnn.results.save_results`
(``book/results/<chapter>.json``). This module checks those files against one contract
(:data:`lightcnn.results.CONTRACT_KEYS`: name, chapter, technique, accuracy, params,
nonzero params, MACs, bytes, latency at batch 1 and 256, CPU, budget) and flattens them
into one table where each variant is also expressed against the baseline it names:

    drop (points)   = 100 * (accuracy_baseline - accuracy)
    size ratio      = bytes_baseline / bytes
    MACs ratio      = MACs_baseline / MACs
    speedup at b    = latency_baseline(b) / latency(b)      (both medians, same run)

A speedup is only ever a ratio of two latencies that the same chapter measured side by
side; the leaderboard never divides numbers taken in different runs. Rows of different
chapters are still not comparable with each other by latency (each chapter timed its own
run), which is why chapters/09_putting_it_together times every chapter's final model
again in one run and draws its fronts from that run only; this module remains the way to
see every chapter's published rows in one table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ._checks import check_mapping, check_str
from .results import CONTRACT_KEYS, NOT_COMPETING, TECHNIQUES

__all__ = ["ContractError", "contract_problems", "check_contract", "leaderboard_rows",
           "best_by_technique", "RATIO_KEYS"]

# the derived columns leaderboard_rows adds, and the cost each one divides
RATIO_KEYS = {"size_ratio": "size_bytes", "macs_ratio": "macs",
              "speedup_b1": "latency_ms_b1", "speedup_b256": "latency_ms_b256"}


class ContractError(ValueError):
    """A results file breaks the contract; the message lists every problem found."""


def contract_problems(chapter: str, rows: Sequence[Mapping], budget: str | None = "full") -> list[str]:
    """Everything wrong with one chapter's rows, as sentences (empty when they are fine).

    A row must carry every key of ``CONTRACT_KEYS``; its ``chapter`` must be the file's
    name, its ``technique`` one of the chapters' techniques, ``"reference"`` or
    ``"control"`` (the baseline trained on as long as a compressed model), its ``cpu`` a
    non-empty name, and (unless ``budget`` is None) its ``budget`` the one given.
    """
    if not isinstance(chapter, str) or not chapter:
        raise ValueError(f"chapter must be a non-empty string, got {chapter!r}")
    if not isinstance(rows, Sequence) or isinstance(rows, (str, bytes)):
        raise TypeError(f"rows must be a sequence of dicts, got {type(rows).__name__}")
    _check_rows(rows)
    check_str("budget", budget, none=True)
    techniques = set(TECHNIQUES.values()) | {"reference", "control", "runtime"}
    problems = []
    if not rows:
        problems.append(f"{chapter}: no rows")
    for row in rows:
        name = row.get("name", "?")
        missing = [k for k in CONTRACT_KEYS if k not in row]
        if missing:
            problems.append(f"{chapter}: row {name!r} lacks {missing}")
            continue
        if row["chapter"] != chapter:
            problems.append(f"{chapter}: row {name!r} says chapter {row['chapter']!r}")
        if row["technique"] not in techniques:
            problems.append(f"{chapter}: row {name!r} has technique {row['technique']!r}, "
                            f"not one of {sorted(techniques)}")
        if not isinstance(row["cpu"], str) or not row["cpu"].strip():
            problems.append(f"{chapter}: row {name!r} has no CPU name")
        if budget is not None and row["budget"] != budget:
            problems.append(f"{chapter}: row {name!r} is from budget {row['budget']!r}, "
                            f"expected {budget!r}")
        if row["accuracy"] is None:
            problems.append(f"{chapter}: row {name!r} has no accuracy")
    return problems


def _check_rows(rows: Sequence[Mapping]) -> None:
    if not isinstance(rows, Sequence) or isinstance(rows, (str, bytes)) \
            or not all(isinstance(row, Mapping) for row in rows):
        raise TypeError(f"rows must be a sequence of dicts, got {type(rows).__name__}")


def check_contract(results: Mapping[str, Sequence[Mapping]], budget: str | None = "full") -> None:
    """Raise :class:`ContractError` listing every problem of every chapter (see
    :func:`contract_problems`); return None when all files keep the contract."""
    if not isinstance(results, Mapping) or not results:
        raise ValueError("results must be a non-empty mapping of chapter -> rows "
                         "(as from lc.load_all_results)")
    check_str("budget", budget, none=True)
    problems = [p for chapter, rows in results.items()
                for p in contract_problems(chapter, rows, budget)]
    if problems:
        raise ContractError(f"{len(problems)} contract problem(s):\n" + "\n".join(problems))


def _ratio(numerator, denominator) -> float | None:
    if not numerator or not denominator:
        return None
    return numerator / denominator


def _same_model(row: Mapping, base: Mapping) -> bool:
    # the baseline's own network run another way (compiled, another engine): the same
    # accuracy and MACs, and bytes within 2% (a container's own records)
    return (row["accuracy"] == base["accuracy"] and row["macs"] == base["macs"]
            and row["size_bytes"] is not None and base["size_bytes"] is not None
            and abs(row["size_bytes"] - base["size_bytes"]) <= 0.02 * base["size_bytes"])


def leaderboard_rows(results: Mapping[str, Sequence[Mapping]],
                     techniques: Mapping[str, Mapping[str, str]] | None = None) -> list[dict]:
    """Every row of every chapter, in chapter order, with the ratios of the module
    docstring against the row's own baseline (``None`` on a row without a baseline, or
    where either value is missing). The contract is checked first (any budget).

    A row that is its baseline's network run another way (same accuracy and MACs, bytes
    within 2%: compiled, or in another engine) gets the technique ``"runtime"``: its
    speed-up belongs to the engine, not to the chapter's technique.

    Args:
        techniques: ``{chapter: {row name: technique}}`` for rows a chapter compared with
            its own technique but that belong to another (e.g. a pruned network in the
            low-rank chapter's table); each name must exist.
    """
    check_contract(results, budget=None)
    check_mapping("techniques", techniques, none=True)
    techniques = techniques or {}
    for chapter, names in techniques.items():
        known = {r["name"] for r in results.get(chapter, ())}
        unknown = sorted(set(names) - known)
        if unknown:
            raise ValueError(f"techniques names rows that {chapter!r} does not have: {unknown}")
    out = []
    for chapter, rows in results.items():
        by_name = {r["name"]: r for r in rows}
        for row in rows:
            entry = {k: row[k] for k in CONTRACT_KEYS}
            base = by_name.get(row["baseline"]) if row["baseline"] is not None else None
            if base is not None and _same_model(row, base):
                entry["technique"] = "runtime"
            entry["technique"] = techniques.get(chapter, {}).get(row["name"], entry["technique"])
            entry["drop_points"] = (None if base is None or base["accuracy"] is None
                                    else 100 * (base["accuracy"] - row["accuracy"]))
            for key, cost in RATIO_KEYS.items():
                entry[key] = None if base is None else _ratio(base[cost], row[cost])
            out.append(entry)
    return out


def best_by_technique(rows: Sequence[Mapping], ratio: str = "size_ratio",
                      max_drop: float = 1.0) -> dict[str, dict]:
    """Per technique, the leaderboard row with the largest ``ratio`` among those at most
    ``max_drop`` points below their baseline (ties go to the smaller drop). Techniques
    with no such row (or no row above 1x) are left out, and so are references and controls
    (:data:`lightcnn.results.NOT_COMPETING`: the baseline's own network, no technique).

    Args:
        rows: as from :func:`leaderboard_rows`.
        ratio: one of ``RATIO_KEYS``.
        max_drop: allowed accuracy drop in points (>= 0).
    """
    _check_rows(rows)
    check_str("ratio", ratio, RATIO_KEYS)
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) \
            or math.isnan(max_drop) or max_drop < 0:
        raise ValueError(f"max_drop must be a number of points >= 0, got {max_drop!r}")
    best: dict[str, dict] = {}
    for row in rows:
        value, drop = row.get(ratio), row.get("drop_points")
        if value is None or drop is None or drop > max_drop or value <= 1 \
                or row["technique"] in NOT_COMPETING:
            continue
        current = best.get(row["technique"])
        if current is None or (value, -drop) > (current[ratio], -current["drop_points"]):
            best[row["technique"]] = dict(row)
    return best

