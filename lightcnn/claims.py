"""Check that every measured number in a chapter's prose was printed by the chapter's run.

The book's rule (issue 28): a number the prose states as a measurement of this book
(93.38%, 1.47x, 0.725 ms, 4,410 params, -1.15 points, a 23,160-byte file) must appear in
the chapter's stored outputs or in its results JSON (``book/results/<chapter>.json``); a
number that comes from a paper must carry its citation. What the check flags is a number
the reader is asked to trust but that no cell printed: a ratio or a difference worked out
in the head, a value left over from an earlier run, a quote from another chapter.

**Which prose numbers are claims.** Markdown cells are read with these spans blanked
out first: fenced code blocks and directives, ``$...$`` and ``$$...$$`` math, inline
code, MyST roles (``{cite}``, ``{ref}``, ``{doc}``, ...), link targets and bare URLs,
HTML tags, shapes and aspect ratios (``28x28``, ``3 x 3``, ``1:12``) and dotted
versions (``2.14.1``). Everything under an "Exercises" heading (up to the next heading
of its level or above) is skipped: exercises propose settings, they claim nothing. In
what is left, a number is *not* a claim when it is:

- part of a name: glued to a letter before it (``int8``, ``x86``, ``W4A4``, ``V2``),
  after a letter and a hyphen (``ResNet-18``, ``top-1``) or after a ``...Net`` name
  (``SqueezeNet 1.1``);
- a reference: after chapter, section, figure, table, cell, exercise, step, equation,
  appendix, issue, page, line or ``#`` (``chapters 2-8``, ``Figure 3``);
- a setting: after ``=`` (``d=4``) or after batch, seed, width, rank, opset, version or
  Python; an integer followed by ``bit``/``bits``; an integer hyphenated to a word that
  is not a unit (``32-bit``, ``16-entry``, ``3-epoch``; ``23,160-byte`` stays a claim);
- a bound or a goal, not a result: after at least, at most, within, up to, not,
  target (of/was/is), <, >, <=, >=; or followed by target, goal, limit or budget
  (``the 40% target``, ``a 2x budget``);
- a year (an integer from 1900 to 2099 with no unit), an ordinal (``99.99th``), or list
  numbering (``1.`` or ``2)`` opening a line);
- a small count: an integer below 10, without thousands separators, with no unit after
  it (units: ``%``, ``x``, ms, s, min, bytes/B/KB/MB, points/pts/pp, times, dB, MACs,
  FLOPs, params, K/M/G; the far end of a range lends its unit, as in "4 to 5 points"):
  "two branches", "3 layers", "batch 1".

Every other number is a claim. A claim is a **paper number** (reported, not required in
the outputs) when its sentence contains a ``{cite}`` role; in a table, when its cell
contains one, when its column's header names a paper (paper, papers', reported,
literature, published, original), or when its row contains one and its column is not
the book's (a header with "book", "measured", "ours" or "here" marks the book's column,
so the "this book" cells of a "paper vs this book" row are still checked). A measured
number in a sentence that also cites a paper counts as a paper number: keep the two in
separate sentences.

**When a measured claim matches.** ``output_numbers`` collects every number in the code
cells' stored outputs (stream text, ``text/plain``, ``text/markdown``, ``text/html``
with its tags stripped; dotted versions left out) and in the results JSON, thousands
separators removed and the printed decimals kept. A prose number ``p`` with ``d``
decimals matches an output number ``o`` when ``|o|`` rounds to ``|p|`` at ``d`` decimals
(``|o - p| <= 0.5 * 10**-d``) and ``o`` was not printed with fewer decimals than ``p``
(the JSON's floats are exact): the prose may round 93.384 to 93.38 or 93.4, and
"1.15 points lower" matches a printed -1.15, but neither 93.38% nor 93.40% matches a
printed 93.4%. The unit narrows what may match, so that a number does not match an
unrelated one by chance:

- a percentage matches a number printed with ``%`` (with decimals, also one printed
  plain), or a fraction printed plain or stored in the JSON (93.38% and 0.9338, or the
  JSON's 0.93379998...); a fraction with two or more decimals also matches a printed
  percentage (0.9338 and 93.38%);
- a ratio (``x``, times) matches a number printed with ``x`` (with decimals, also one
  printed plain); never the JSON, which stores no ratios;
- a bare integer with a unit (3%, 2x, 33 points, 5 minutes) needs an output printed with
  a unit of its family (% ; x ; points ; s/ms/min ; bytes), or, for points, times and
  bytes, a non-integer output that rounds to it (whole seconds from 10 up may also match
  a plain integer, as tables print them): a printed "+0.03" or "3 epochs" is not "3%";
- a number with a scale suffix also matches its expanded value at its own precision
  (21.9M and 21,903,104).

Nothing is computed from two outputs: a ratio or a difference worked out in the prose is
exactly what is flagged. A measured number that matches nothing but is a literal in the
chapter's code cells is counted as a **setting**, not flagged: a unitless number
(``lr=0.01``, ``range(20)``) or a percentage written there as a fraction (``0.3`` for
30%).

What the check cannot see: a prose number can still match an unrelated output of the same
unit family by chance (a chapter prints hundreds of numbers: in the book's chapters a
decimal a few units off a real claim matches something about one time in five), so a
pass is weaker evidence than a flag; and a number quoted from another chapter's run is
unmatched unless this chapter prints it too (the CLI then names the quoted chapter if
that one prints it).

Run it on the book: ``python -m lightcnn.claims chapters/*.ipynb`` (``--report-only``
always exits 0; ``-v`` also lists the paper numbers and the settings).
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Iterable

from ._checks import (check_bool, check_instance, check_int, check_mapping, check_path,
                      check_sequence, check_str)

__all__ = ["Claim", "Report", "prose_numbers", "output_numbers", "printed_numbers", "code_numbers",
           "match_number", "check_chapter", "format_report", "main"]


@dataclass(frozen=True)
class Claim:
    """One number quoted in a markdown cell.

    Attributes:
        cell: index of the markdown cell in the notebook.
        text: the number as written, with its unit (``"93.38%"``, ``"-1.15 points"``).
        value: the number normalized (``"93.38"``, ``"-1.15"``, ``"4410"``).
        unit: the unit or suffix after it, lower-cased (``"%"``, ``"x"``, ``""``).
        sentence: the sentence (or table cell) around it, whitespace collapsed.
        kind: ``"measured"`` or ``"paper"`` (its sentence, cell or row cites a paper).
    """

    cell: int
    text: str
    value: str
    unit: str
    sentence: str
    kind: str

    def __post_init__(self):
        check_int("cell", self.cell, 0)
        check_str("text", self.text)
        check_str("value", self.value)
        check_str("unit", self.unit, empty=True)
        check_str("sentence", self.sentence, empty=True)
        check_str("kind", self.kind, ("measured", "paper"))


@dataclass
class Report:
    """What ``check_chapter`` found in one chapter."""

    notebook: str
    results: str | None
    matched: list[Claim] = field(default_factory=list)
    settings: list[Claim] = field(default_factory=list)
    paper: list[Claim] = field(default_factory=list)
    unmatched: list[Claim] = field(default_factory=list)

    def __post_init__(self):
        check_str("notebook", self.notebook)
        check_str("results", self.results, none=True)
        for name in ("matched", "settings", "paper", "unmatched"):
            check_sequence(name, getattr(self, name), Claim)

    @property
    def measured(self) -> int:
        """Number of measured claims (matched, settings and unmatched)."""
        return len(self.matched) + len(self.settings) + len(self.unmatched)

    @property
    def ok(self) -> bool:
        return not self.unmatched


# --- reading notebooks ------------------------------------------------------------------

def _load_notebook(notebook_path: str | Path) -> dict:
    path = Path(notebook_path)
    if not path.is_file():
        raise FileNotFoundError(f"notebook_path: no such file: {path}")
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"notebook_path: {path} is not JSON ({err})") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise ValueError(f"notebook_path: {path} has no 'cells' list: not a notebook")
    return nb


def _text(source: str | list[str]) -> str:
    return source if isinstance(source, str) else "".join(source)


# --- masking the markdown -----------------------------------------------------------------

# spans whose numbers are never claims; each is blanked with spaces, newlines kept, so
# offsets into the masked text are offsets into the original.
_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[^\n]*\n.*?^[ \t]*\1[ \t]*$", re.S | re.M)
_DISPLAY_MATH = re.compile(r"\$\$.*?\$\$", re.S)
_INLINE_MATH = re.compile(r"(?<!\\)\$(?:[^$\n]|\n(?!\s*\n))+?(?<!\\)\$")
_CITE = re.compile(r"\{cite(?::\w+)?\}`[^`]*`")
_ROLE = re.compile(r"\{[\w:-]+\}`[^`]*`")
_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
_LINK_TARGET = re.compile(r"(?<=\])\([^)\s]*\)")
_IMAGE = re.compile(r"!\[[^\]]*\]\([^)]*\)")
_URL = re.compile(r"(?:https?|ftp)://\S+|www\.\S+")
_TAG = re.compile(r"<!--.*?-->|</?[A-Za-z][^>]*>", re.S)
_LABEL = re.compile(r"^\([\w.:-]+\)=[ \t]*$", re.M)       # MyST target: (my-label)=
_SHAPE = re.compile(r"(?<![\w.])\d+(?:\s?[x×]\s?\d+)+(?!\w|\.\d)|(?<![\w.:])\d+:\d+(?![\w:])")
_VERSION = re.compile(r"(?<![\w.])\d+\.\d+\.\d+(?:\.\d+)*")


def _blank(text: str, pattern: re.Pattern) -> str:
    return pattern.sub(lambda m: re.sub(r"[^\n]", " ", m.group()), text)


def _mask(source: str) -> tuple[str, list[int]]:
    """Blank the spans that hold no claims; return the masked text and the cite offsets."""
    text = _blank(source, _FENCE)
    text = _blank(text, _DISPLAY_MATH)
    text = _blank(text, _INLINE_MATH)
    cites = [m.start() for m in _CITE.finditer(text)]
    for pattern in (_ROLE, _CODE, _IMAGE, _LINK_TARGET, _URL, _TAG, _LABEL, _SHAPE,
                    _VERSION):
        text = _blank(text, pattern)
    return text, cites


# --- sentences and table cells ----------------------------------------------------------

@dataclass(frozen=True)
class _Unit:
    start: int
    end: int
    paper: bool          # cites a paper (sentence, cell, or row in a paper column)


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]*_]*\s+(?=[\"'(\[*_]*[A-Z0-9])")
_ABBREVIATION = re.compile(r"(?:\be\.g|\bi\.e|\bvs|\bcf|\bFig|\bEq|\bet al|\bapprox)\.$", re.I)
_BLOCK_START = re.compile(r"^\s*(?:#{1,6}\s|[-*+]\s|\d+[.)]\s|>\s?)")
_PAPER_HEADER = re.compile(r"paper|reported|literature|published|original", re.I)
_BOOK_HEADER = re.compile(r"book|measured|\bours\b|\bhere\b", re.I)


def _sentences(masked: str, start: int, end: int, cites: list[int]) -> list[_Unit]:
    units, begin = [], start
    for m in _SENTENCE_END.finditer(masked, start, end):
        if _ABBREVIATION.search(masked[max(start, m.start() - 8):m.start()]):
            continue
        units.append(_Unit(begin, m.start(), any(begin <= c < m.start() for c in cites)))
        begin = m.end()
    units.append(_Unit(begin, end, any(begin <= c < end for c in cites)))
    return units


def _cells(line: str, offset: int) -> list[tuple[int, int]]:
    """(start, end) offsets of a table row's cells, the outer pipes dropped."""
    bars = [offset + i for i, ch in enumerate(line) if ch == "|" and (i == 0 or line[i - 1] != "\\")]
    spans = [(a + 1, b) for a, b in zip(bars, bars[1:])]
    if line.strip() and not line.rstrip().endswith("|"):
        spans.append((bars[-1] + 1, offset + len(line)))
    if not line.lstrip().startswith("|"):
        spans.insert(0, (offset, bars[0]))
    return spans


def _units(source: str, masked: str, cites: list[int]) -> list[_Unit]:
    """Split a markdown cell into sentences (prose) and cells (tables)."""
    lines, offset = [], 0
    for line in masked.split("\n"):
        lines.append((offset, line))
        offset += len(line) + 1
    units: list[_Unit] = []
    i, para = 0, None                              # para: start offset of the open paragraph

    def close(end: int) -> None:
        nonlocal para
        if para is not None:
            units.extend(_sentences(masked, para, end, cites))
        para = None

    while i < len(lines):
        off, line = lines[i]
        if line.lstrip().startswith("|"):          # a table: header (labels, no claims), rows
            close(off)
            header_off, header = off, line
            headers = [source[a:b] for a, b in _cells(header, header_off)]
            i += 1
            while i < len(lines) and lines[i][1].lstrip().startswith("|"):
                row_off, row = lines[i]
                i += 1
                if re.fullmatch(r"[\s|:\-]+", row):
                    continue
                row_cites = any(row_off <= c < row_off + len(row) for c in cites)
                for col, (a, b) in enumerate(_cells(row, row_off)):
                    head = headers[col] if col < len(headers) else ""
                    cell_cites = any(a <= c < b for c in cites)
                    book = bool(_BOOK_HEADER.search(head))
                    paper = cell_cites or (not book and (bool(_PAPER_HEADER.search(head)) or row_cites))
                    units.append(_Unit(a, b, paper))
            continue
        if not line.strip():
            close(off)
        elif line.lstrip().startswith("#"):          # a heading is a unit of its own
            close(off)
            units.extend(_sentences(masked, off, off + len(line), cites))
        elif _BLOCK_START.match(line):
            close(off)
            para = off
        elif para is None:
            para = off
        i += 1
    close(len(masked))
    return units


# --- numbers in prose -------------------------------------------------------------------

_NUMBER = re.compile(r"(?P<sign>[-−+]?)(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?P<frac>\.\d+)?"
                     r"(?P<exp>[eE][-−+]?\d+(?!\w|\.\d))?")
_UNIT = re.compile(
    r"\s?(?P<unit>%|×|x(?![A-Za-z0-9])|percentage points?|points?\b|pts?\b|pp\b|ms\b|µs\b|us\b|ns\b"
    r"|(?<=\s)s\b|sec\b|seconds?\b|min\b|minutes?\b|(?<=\s)h\b|hours?\b|bytes?\b|[kKMG]i?B\b|B\b|times\b"
    r"|dB\b|MACs?\b|FLOPs?\b|params\b|parameters\b|thousand\b|million\b|billion\b|[kKMG]\b)",
)
_SCALE = {"k": 3, "thousand": 3, "m": 6, "million": 6, "g": 9, "billion": 9, "kb": 3, "mb": 6, "gb": 9}
_MEASURE_WORD = re.compile(r"bytes?|points?|ms|fold")
_REFERENCE = re.compile(
    r"(?:\bchapters?|\bsections?|§|\bfigures?|\bfigs?\.|\btables?|\bcells?|\bexercises?|\bsteps?"
    r"|\bequations?|\beqs?\.|\bappendix|\bappendices|\bissues?|\bpages?|\blines?|#"
    r"|\bbatch(?:es)?(?: sizes?)?|\bseeds?|\bwidth|\branks?|\bopset|\bversion|\bpython|\bPEP"
    r"|\bat least|\bat most|\bwithin|\bup to|\bnot|\btargets?(?: of| was| is)?|<=?|>=?|≤|≥|=)"
    r"\s*(?:[-−+]?\d[\d,.]*\s*(?:-|–|,|and|or|to|through)\s*)*$",
    re.I,
)


def _decimal(text: str) -> Decimal | None:
    try:
        value = Decimal(text.replace(",", "").replace("−", "-"))
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def _is_claim(masked: str, m: re.Match, unit: str, text_end: int) -> bool:
    start, end = m.start(), m.end()
    sign, integer, frac = m.group("sign"), m.group("int"), m.group("frac") or ""
    before = masked[max(0, start - 60):start]
    after = masked[end:end + 20]
    if before[-1:].isalpha() or before[-1:] == "_":
        return False                                   # int8, x86, W4A4, mobilenet_v2
    if sign == "" and re.search(r"[A-Za-z]-$", before):
        return False                                   # ResNet-18, top-1
    if re.search(r"[a-z]Net\s$", before):
        return False                                   # SqueezeNet 1.1: a version
    if _REFERENCE.search(before):
        return False                                   # chapter 4, batch 256, at most 0.3
    if re.match(r"\s*(?:target|goal|limit|budget)\b", masked[text_end:]):
        return False                                   # the 40% target, a 2x budget
    if re.match(r"(?:st|nd|rd|th)\b", after):
        return False                                   # 99.99th percentile
    if re.match(r"\s?bits?\b", after) and not frac:
        return False                                   # 8 bits: a bit width
    compound = re.match(r"-([A-Za-z]+)", after)
    if (compound and not frac and "," not in integer
            and not _MEASURE_WORD.fullmatch(compound.group(1).lower())):
        return False                                   # 32-bit, 16-entry, 3-epoch
    line_start = masked.rfind("\n", 0, start) + 1
    if re.fullmatch(r"\s*", masked[line_start:start]) and re.match(r"[.)]\s", after):
        return False                                   # list numbering
    if not frac and "," not in integer and not unit:
        n = int(integer)
        if n < 10 or 1900 <= n <= 2099:
            return False                               # small counts, years
    return True


_HEADING = re.compile(r"^[ \t]*(#{1,6})[ \t]+(.*)$", re.M)


def _range_unit(masked: str, end: int) -> str:
    """The unit after the far end of a range that starts here: '4-5 points', '2 to 4x'."""
    m = re.match(r"\s*(?:-|–|to|and|or)\s*\d[\d,]*(?:\.\d+)?", masked[end:])
    if not m:
        return ""
    u = _UNIT.match(masked, end + m.end())
    return u.group("unit") if u else ""


def prose_numbers(notebook_path: str | Path) -> list[Claim]:
    """Every number quoted in the notebook's markdown cells, as the module docstring defines.

    Args:
        notebook_path: an ``.ipynb`` file.

    Returns:
        The claims in reading order, each measured or paper (see ``Claim.kind``).
    """
    check_path("notebook_path", notebook_path)
    nb = _load_notebook(notebook_path)
    claims: list[Claim] = []
    exercises: int | None = None        # level of the open "Exercises" heading, if any
    for index, cell in enumerate(nb["cells"]):
        if cell.get("cell_type") != "markdown":
            continue
        source = _text(cell.get("source", ""))
        masked, cites = _mask(source)
        headings = [(h.start(), len(h.group(1)), bool(re.match(r"exercises?\b", h.group(2), re.I)))
                    for h in _HEADING.finditer(masked)]
        at_start = exercises

        def exercise_level(pos: int) -> int | None:
            """Level of the "Exercises" heading still open at offset pos, or None."""
            level = at_start
            for offset, depth, is_exercise in headings:
                if offset > pos:
                    break
                if is_exercise:
                    level = depth
                elif level is not None and depth <= level:
                    level = None                       # a sibling or parent heading closes it
            return level

        for unit_span in _units(source, masked, cites):
            for m in _NUMBER.finditer(masked, unit_span.start, unit_span.end):
                prev = masked[m.start() - 1] if m.start() else " "
                if m.group("sign") and not (prev.isspace() or prev in "([{/"):
                    if prev.isalpha() or prev == "_":
                        continue                       # ResNet-18, top-1: a name
                    m = _NUMBER.match(masked, m.start() + 1)   # 4-5, 87.94-89.56: a range
                elif prev.isdigit() or prev in ".,":
                    continue                           # the tail of 1.2.3 or 1,2
                if exercise_level(m.start()) is not None:
                    continue
                u = _UNIT.match(masked, m.end())
                unit = u.group("unit") if u else _range_unit(masked, m.end())
                text_end = u.end() if u else m.end()
                if not _is_claim(masked, m, unit, text_end):
                    continue
                value = _decimal(m.group())
                sentence = " ".join(source[unit_span.start:unit_span.end].split()).strip(" |")
                claims.append(Claim(cell=index, text=" ".join(source[m.start():text_end].split()),
                                    value=_normal(value), unit=unit.lower(),
                                    sentence=sentence, kind="paper" if unit_span.paper else "measured"))
        exercises = exercise_level(len(masked))
    return claims


# --- numbers in outputs -------------------------------------------------------------------

_OUTPUT_NUMBER = re.compile(r"[-−+]?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")
# Units, grouped into the families that matching compares. An output number's family is
# the unit printed after it ('' when none); the results JSON's numbers are kept apart as
# 'json' (it stores accuracies as fractions, times in ms, sizes in bytes: no ratios).
_PRINTED_AS = re.compile(r"\s?(%|[x×](?![A-Za-z0-9])|ms\b|µs\b|us\b|ns\b|s\b|sec\b|min\b|minutes?\b"
                         r"|h\b|bytes?\b|[kKMG]i?B\b|B\b|points?\b|pts?\b|pp\b)")
_FAMILIES = {"%": "%", "x": "x", "×": "x", "times": "x", "point": "pt", "points": "pt", "pt": "pt",
             "pts": "pt", "pp": "pt", "percentage point": "pt", "percentage points": "pt",
             "ms": "time", "µs": "time", "us": "time", "ns": "time", "s": "time", "sec": "time",
             "second": "time", "seconds": "time", "min": "time", "minute": "time",
             "minutes": "time", "h": "time", "hour": "time", "hours": "time", "byte": "bytes",
             "bytes": "bytes", "b": "bytes", "kb": "bytes", "mb": "bytes", "gb": "bytes",
             "kib": "bytes", "mib": "bytes", "gib": "bytes"}
KINDS = ("%", "x", "pt", "time", "bytes", "", "json")


def _family(unit: str) -> str:
    return _FAMILIES.get(unit.lower(), "")


def _normal(value: Decimal) -> str:
    """Plain notation keeping the printed decimals: 93.38, -1.15, 4410, 0.0000161."""
    return format(value, "f") if value.adjusted() > -30 else str(value)


def _numbers_in(text: str, found: dict[str, set[str]]) -> None:
    text = _blank(text, _VERSION)                       # torch 2.14.1 is not 2.14
    for m in _OUTPUT_NUMBER.finditer(text):
        value = _decimal(m.group())
        if value is not None:
            unit = _PRINTED_AS.match(text, m.end())
            found[_family(unit.group(1)) if unit else ""].add(_normal(value))


def _output_texts(nb: dict) -> list[str]:
    texts = []
    for cell in nb["cells"]:
        if cell.get("cell_type") != "code":
            continue
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                texts.append(_text(out.get("text", "")))
                continue
            data = out.get("data", {})
            for mime in ("text/plain", "text/markdown"):
                if mime in data:
                    texts.append(_text(data[mime]))
            if "text/html" in data:
                texts.append(html.unescape(re.sub(r"<[^>]+>", " ", _text(data["text/html"]))))
    return texts


def _json_numbers(obj: object, found: dict[str, set[str]]) -> None:
    if isinstance(obj, bool) or obj is None:
        return
    if isinstance(obj, (int, float)):
        value = _decimal(repr(obj))
        if value is not None:
            found["json"].add(_normal(value))
    elif isinstance(obj, str):
        _numbers_in(obj, found)
    elif isinstance(obj, dict):
        for v in obj.values():
            _json_numbers(v, found)
    elif isinstance(obj, list):
        for v in obj:
            _json_numbers(v, found)


def printed_numbers(notebook_path: str | Path,
                    results_json_path: str | Path | None = None) -> dict[str, set[str]]:
    """``output_numbers`` sorted by how each was printed: ``"%"``, ``"x"``, ``""`` or ``"json"``."""
    check_path("notebook_path", notebook_path)
    check_path("results_json_path", results_json_path, none=True)
    nb = _load_notebook(notebook_path)
    found: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for text in _output_texts(nb):
        _numbers_in(text, found)
    if results_json_path is not None:
        path = Path(results_json_path)
        if not path.is_file():
            raise FileNotFoundError(f"results_json_path: no such file: {path}")
        _json_numbers(json.loads(path.read_text(encoding="utf-8")), found)
    return found


def output_numbers(notebook_path: str | Path, results_json_path: str | Path | None = None) -> set[str]:
    """The numbers a chapter's run printed: its code cells' stored outputs and its results JSON.

    Args:
        notebook_path: an ``.ipynb`` file.
        results_json_path: the chapter's ``book/results/<chapter>.json``, or None for the
            outputs alone.

    Returns:
        Normalized numbers as strings: thousands separators stripped, the printed decimals
        kept (``"1129347"``, ``"93.38"``, ``"0.9337999820709229"``).
    """
    check_path("notebook_path", notebook_path)
    check_path("results_json_path", results_json_path, none=True)
    return set().union(*printed_numbers(notebook_path, results_json_path).values())


def code_numbers(notebook_path: str | Path) -> set[str]:
    """Numeric literals in the code cells' sources (settings such as ``lr=0.01``).

    Returned without trailing zeros (``0.70`` and ``0.7`` are one setting).
    """
    check_path("notebook_path", notebook_path)
    nb = _load_notebook(notebook_path)
    found: set[str] = set()
    for cell in nb["cells"]:
        if cell.get("cell_type") == "code":
            for literal in re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?:e-?\d+)?", _text(cell.get("source", ""))):
                value = _decimal(literal)
                if value is not None:
                    found.add(_plain(value))
    return found


def _plain(value: Decimal) -> str:
    """A value without trailing zeros, in plain notation: 0.70 -> 0.7, 1E+2 -> 100."""
    return _normal(value.normalize() if value != value.to_integral_value() else value.quantize(Decimal(1)))


# --- matching -----------------------------------------------------------------------------

def _decimals(value: Decimal) -> int:
    return max(0, -value.as_tuple().exponent)


def _candidates(claim: Claim) -> list[tuple[Decimal, Decimal, tuple[str, ...], bool]]:
    """The forms a claim may be printed in: (absolute value, tolerance, kinds, integers ok)."""
    value = abs(Decimal(claim.value))
    tolerance = Decimal(5).scaleb(-_decimals(value) - 1)   # half a unit in the last place
    family = _family(claim.unit)
    weak = _decimals(value) == 0 and "," not in claim.text   # a bare integer: 3%, 2x, 33 points
    if family == "%":
        forms = [(value, tolerance, ("%",) if weak else ("%", ""), True)]
        if not weak:
            forms.append((value.scaleb(-2), tolerance.scaleb(-2), ("", "json"), True))
    elif family == "x":
        forms = [(value, tolerance, ("x",) if weak else ("x", ""), True)]
    elif family:                       # points, times, bytes: often printed without a unit
        # a bare integer needs a non-integer output that rounds to it, except whole
        # seconds from 10 up, which tables print as integers ("s per run: 24")
        integers_ok = not weak or (family == "time" and value >= 10)
        forms = [(value, tolerance, (family,), True), (value, tolerance, ("", "json"), integers_ok)]
    else:
        forms = [(value, tolerance, KINDS, True)]
        if value < 1 and _decimals(value) >= 2:
            forms.append((value.scaleb(2), tolerance.scaleb(2), ("%",), True))
    if claim.unit in _SCALE:
        forms.append((value.scaleb(_SCALE[claim.unit]), tolerance.scaleb(_SCALE[claim.unit]),
                      ("", "bytes", "json"), True))
    return forms


def match_number(claim: Claim, outputs: set[str] | dict[str, set[str]]) -> bool:
    """Whether an output number, rounded to the claim's decimals, equals it (sign ignored).

    The unit narrows what may match (see the module docstring): a percentage needs a
    number printed with ``%`` or a fraction, a ratio one printed with ``x``; a bare
    integer with a unit (3%, 2x, 33 points, 5 minutes) needs an output printed with that
    unit, or a non-integer output that rounds to it.

    Args:
        claim: a prose number.
        outputs: ``printed_numbers``' dict, or a set of numbers all taken as printed
            without a unit.
    """
    check_instance("claim", claim, Claim)
    check_instance("outputs", outputs, (set, frozenset, dict),
                   "a set of numbers or printed_numbers' dict")
    if isinstance(outputs, (set, frozenset)):
        outputs = {"": outputs}
    parsed = {kind: [abs(Decimal(v)) for v in values] for kind, values in outputs.items()}
    for target, tolerance, kinds, integers_ok in _candidates(claim):
        exponent = target.as_tuple().exponent
        for kind in kinds:
            for value in parsed.get(kind, ()):
                if kind != "json" and value.as_tuple().exponent > exponent:
                    continue                   # printed coarser than the prose (the JSON is exact)
                if not integers_ok and value == value.to_integral_value():
                    continue                               # an integer output: a count, not this
                if abs(value - target) <= tolerance:
                    return True
    return False


def _default_results(notebook_path: Path) -> Path:
    return notebook_path.resolve().parent.parent / "book" / "results" / f"{notebook_path.stem}.json"


def _in_code(claim: Claim, code: set[str]) -> bool:
    """A setting: a unitless number written in the code, or a percentage written as a fraction."""
    value = abs(Decimal(claim.value))
    if claim.unit == "%":
        return value < 100 and _plain(value.scaleb(-2)) in code
    return not _family(claim.unit) and _plain(value) in code


def check_chapter(notebook_path: str | Path, results_json_path: str | Path | None = None) -> Report:
    """Sort a chapter's prose numbers into matched, settings, paper and unmatched.

    Args:
        notebook_path: the chapter's ``.ipynb``.
        results_json_path: its results JSON; by default ``book/results/<stem>.json`` beside
            the notebook's folder, used when it exists.
    """
    check_path("notebook_path", notebook_path)
    check_path("results_json_path", results_json_path, none=True)
    notebook_path = Path(notebook_path)
    if results_json_path is None:
        default = _default_results(notebook_path)
        results_json_path = default if default.is_file() else None
    printed = printed_numbers(notebook_path, results_json_path)
    code = code_numbers(notebook_path)
    report = Report(str(notebook_path), None if results_json_path is None else str(results_json_path))
    for claim in prose_numbers(notebook_path):
        if claim.kind == "paper":
            report.paper.append(claim)
        elif match_number(claim, printed):
            report.matched.append(claim)
        elif _in_code(claim, code):
            report.settings.append(claim)
        else:
            report.unmatched.append(claim)
    return report


def _excerpt(claim: Claim, width: int = 220) -> str:
    s = claim.sentence
    if len(s) <= width:
        return s
    at = max(0, s.find(claim.text) - width // 3)
    return ("..." if at else "") + s[at:at + width] + "..."


def format_report(report: Report, verbose: bool = False,
                  elsewhere: dict[Claim, list[str]] | None = None) -> str:
    """The CLI's text for one chapter: counts, then each unmatched claim.

    Args:
        report: from ``check_chapter``.
        verbose: also list the paper numbers and the settings.
        elsewhere: for an unmatched claim, the chapters its sentence names that print it
            (a hint: the prose quotes another chapter's run, which this one does not show).
    """
    check_instance("report", report, Report)
    check_bool("verbose", verbose)
    check_mapping("elsewhere", elsewhere, none=True)
    name = Path(report.notebook).stem
    lines = [f"{name}: {report.measured} measured claims, {len(report.matched)} matched, "
             f"{len(report.settings)} settings in code, {len(report.unmatched)} unmatched; "
             f"{len(report.paper)} paper numbers with a citation"
             + ("" if report.results else " (no results JSON)")]
    for claim in report.unmatched:
        hint = (elsewhere or {}).get(claim)
        lines.append(f"  UNMATCHED cell {claim.cell}: {claim.text!r} in: {_excerpt(claim)}"
                     + (f" [printed by {', '.join(hint)}]" if hint else ""))
    if verbose:
        for label, claims in (("paper", report.paper), ("setting", report.settings)):
            for claim in claims:
                lines.append(f"  {label} cell {claim.cell}: {claim.text!r} in: {_excerpt(claim)}")
    return "\n".join(lines)


def _chapters_named(sentence: str, stems: Iterable[str]) -> list[str]:
    """The chapters a sentence names ("chapter 4's", "chapters 2 and 3"), as notebook stems."""
    numbers = set()
    for m in re.finditer(r"\bchapters?\s+(\d+(?:\s*(?:-|–|,|and|or)\s*\d+)*)", sentence, re.I):
        numbers |= {int(n) for n in re.findall(r"\d+", m.group(1))}
    named = []
    for stem in stems:
        prefix = re.match(r"\d+", stem)
        if prefix and int(prefix.group()) in numbers:
            named.append(stem)
    return named


def main(argv: list[str] | None = None) -> int:
    """``python -m lightcnn.claims [NOTEBOOKS]``: report per chapter; 1 if any claim is unmatched."""
    check_sequence("argv", argv, str, none=True)
    parser = argparse.ArgumentParser(prog="python -m lightcnn.claims", description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="*", help="chapters to check (default: chapters/*.ipynb)")
    parser.add_argument("--results-dir", help="folder of <chapter>.json (default: book/results "
                        "beside the notebooks' folder)")
    parser.add_argument("--report-only", action="store_true", help="always exit 0")
    parser.add_argument("-v", "--verbose", action="store_true", help="also list paper numbers and settings")
    args = parser.parse_args(argv)
    notebooks = [Path(p) for p in args.notebooks] or sorted(Path("chapters").glob("*.ipynb"))
    if not notebooks:
        parser.error("no notebooks given and none in chapters/")
    reports, printed = [], {}
    for nb in notebooks:
        results = None
        if args.results_dir:
            results = Path(args.results_dir) / f"{nb.stem}.json"
            if not results.is_file():
                parser.error(f"--results-dir: no {results.name} in {args.results_dir}")
        reports.append(check_chapter(nb, results))
        printed[nb.stem] = printed_numbers(nb, reports[-1].results)
    total = unmatched = 0
    for report in reports:
        stem = Path(report.notebook).stem
        elsewhere = {claim: [other for other in _chapters_named(claim.sentence, printed)
                             if other != stem and match_number(claim, printed[other])]
                     for claim in report.unmatched}
        total += report.measured
        unmatched += len(report.unmatched)
        print(format_report(report, args.verbose, elsewhere))
    print(f"total: {total} measured claims, {unmatched} unmatched in {len(notebooks)} notebooks")
    return 0 if args.report_only or unmatched == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
