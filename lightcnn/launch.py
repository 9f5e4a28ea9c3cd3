"""Colab and Binder: the first cell of every notebook, which makes ``import lightcnn`` work.

The book's launch buttons (``_config.yml``: ``launch_buttons`` and ``repository``) open a
notebook on Google Colab, which has no lightcnn, or on Binder, which builds its image from
``binder/`` (the chapters' requirements, then ``pip install -e .`` in ``postBuild``) and
starts the kernel in the notebook's folder, ``chapters/``. So every notebook opens with one
cell, removed from the rendered book (tag ``remove-cell``), that does:

- lightcnn is importable (this repository's venv, Binder): nothing, and prints nothing;
- a checkout of the repository is the kernel's folder or its parent (Jupyter started in
  ``chapters/`` or ``book/`` with another Python): pip installs the chapters' requirements
  and the package, editable, and the kernel imports it from the checkout;
- neither (Colab): the same, after cloning the repository's branch into
  ``lightcnn-book/`` in the kernel's folder.

The cell runs before lightcnn can be imported, so it holds the code of
:func:`install_commands` and :func:`ensure_lightcnn` itself: :func:`render_cell` copies
their source from this file, ``python -m lightcnn.launch`` writes the cell at the top of
every notebook (``--check`` only compares), and tests/test_launch.py checks that every
notebook's first cell is exactly that text. Edit the code here, never in a notebook.

Taught in book/setup (Colab and Binder).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import inspect
import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

from ._checks import check_bool, check_path, check_sequence, check_str

__all__ = [
    "CLONE_DIR", "CELL_ID", "CELL_TAGS", "install_commands", "ensure_lightcnn",
    "render_cell", "first_cell", "notebook_paths", "read_repository", "write_first_cell",
    "main",
]

REPO_ROOT = Path(__file__).resolve().parents[1]

# Where the cell clones the repository when there is no checkout (Colab). Not "lightcnn":
# a folder of that name beside the notebook would import as an empty namespace package.
CLONE_DIR = "lightcnn-book"
CELL_ID = "launch"
CELL_TAGS = ("remove-cell",)

_HEADER = """\
# Colab, Binder: install lightcnn from its repository unless it imports (then: nothing).
# Hidden in the book. Written by `python -m lightcnn.launch` from lightcnn/launch.py,
# where this code is tested: edit it there, not here.
import importlib, importlib.util, subprocess, sys
from pathlib import Path
"""


def install_commands(importable: bool, cwd: Path, repo_url: str,
                     branch: str = "main") -> tuple[Path, list[list[str]]] | None:
    """The repository's folder and the commands that install lightcnn from it.

    The repository is the first of ``cwd``, ``cwd.parent`` (a notebook in chapters/ or
    book/) and ``cwd / "lightcnn-book"`` (an earlier clone) that holds
    ``lightcnn/__init__.py``; without one, a clone of ``branch`` goes to
    ``cwd / "lightcnn-book"`` first. pip then installs the chapters' requirements
    (``binder/requirements.txt``) and the package, editable, into this Python.

    Args:
        importable: whether lightcnn is already importable.
        cwd: the kernel's working folder (the notebook's folder).
        repo_url: the repository to clone, ``repository: url`` of ``_config.yml``.
        branch: the branch to clone.

    Returns:
        ``(root, commands)``: the repository's folder and the argument lists to run in
        order; ``None`` when lightcnn is importable (nothing to do).

    Raises:
        ValueError: ``repo_url`` is not an https URL, or ``branch`` is empty.
    """
    if not repo_url.startswith("https://"):
        raise ValueError(f"repo_url must be an https:// URL, got {repo_url!r}")
    if not branch:
        raise ValueError(f"branch must name a branch, got {branch!r}")
    if importable:
        return None
    commands = []
    for root in (cwd, cwd.parent, cwd / "lightcnn-book"):
        if (root / "lightcnn" / "__init__.py").is_file():
            break
    else:
        root = cwd / "lightcnn-book"
        commands.append(["git", "clone", "--quiet", "--depth", "1", "--branch", branch,
                         repo_url, str(root)])
    commands.append([sys.executable, "-m", "pip", "install", "--quiet",
                     "-r", str(root / "binder" / "requirements.txt"), "-e", str(root)])
    return root, commands


def ensure_lightcnn(repo_url: str, branch: str = "main") -> None:
    """Make ``import lightcnn`` work in this kernel; do nothing where it already does.

    Runs :func:`install_commands` for the kernel's folder. Only a missing package counts
    as not importable: a lightcnn that fails on import is left to fail in the next cell,
    with its own message.

    Args:
        repo_url: the repository to clone when there is no checkout.
        branch: the branch to clone.

    Raises:
        subprocess.CalledProcessError: git or pip failed (their messages are above it).
    """
    spec = importlib.util.find_spec("lightcnn")
    # a folder named lightcnn without __init__.py is a namespace package: origin None
    plan = install_commands(spec is not None and spec.origin is not None, Path.cwd(),
                            repo_url, branch)
    if plan is None:
        return
    root, commands = plan
    for command in commands:
        subprocess.run(command, check=True)
    # an editable install is seen by new processes only: this kernel imports from root
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    importlib.invalidate_caches()


def _code(function: Callable) -> str:
    """A function's source without its docstring: the cell stays short, the docs stay here."""
    source = inspect.getsource(function)
    lines = source.splitlines(keepends=True)
    doc = ast.parse(source).body[0].body[0]  # the docstring's expression statement
    return "".join(lines[:doc.lineno - 1] + lines[doc.end_lineno:])


def render_cell(repo_url: str, branch: str = "main") -> str:
    """The first cell's source: the code of the two functions above, then the call.

    Args:
        repo_url: the repository's URL (``repository: url`` of ``_config.yml``).
        branch: its branch (``repository: branch``).

    Returns:
        Python source that needs the standard library only.

    Raises:
        ValueError: ``repo_url`` is not an https URL, or ``branch`` is empty.
    """
    _check_repository(repo_url, branch)
    functions = "\n\n".join(_code(f) for f in (install_commands, ensure_lightcnn))
    call = f"ensure_lightcnn({json.dumps(repo_url)}, {json.dumps(branch)})"
    return f"{_HEADER}\n\n{functions}\n\n{call}"


def _check_repository(repo_url: str, branch: str) -> None:
    check_str("repo_url", repo_url)
    check_str("branch", branch, empty=True)
    if not repo_url.startswith("https://"):
        raise ValueError(f"repo_url must be an https:// URL, got {repo_url!r}")
    if not branch:
        raise ValueError(f"branch must name a branch, got {branch!r}")


def first_cell(repo_url: str, branch: str = "main") -> dict:
    """The notebook cell (nbformat 4.5) holding :func:`render_cell`, keys as nbformat sorts them."""
    lines = render_cell(repo_url, branch).splitlines(keepends=True)
    return {"cell_type": "code", "execution_count": None, "id": CELL_ID,
            "metadata": {"tags": list(CELL_TAGS)}, "outputs": [], "source": lines}


def notebook_paths(root: Path = REPO_ROOT) -> list[Path]:
    """The notebooks that get the cell: ``chapters/*.ipynb`` and ``book/*.ipynb``
    (the Makefile's ``NOTEBOOKS``)."""
    check_path("root", root)
    root = Path(root)
    return sorted(root.glob("chapters/*.ipynb")) + sorted(root.glob("book/*.ipynb"))


def read_repository(config: Path = REPO_ROOT / "_config.yml") -> tuple[str, str]:
    """``(url, branch)`` of the ``repository:`` section of the book's ``_config.yml``.

    Raises:
        ValueError: the file has no ``repository: url``.
    """
    check_path("config", config)
    import yaml  # jupyter-book's dependency; only this helper reads the book's config

    section = (yaml.safe_load(Path(config).read_text()) or {}).get("repository") or {}
    if not section.get("url"):
        raise ValueError(f"{config} has no repository: url")
    return section["url"], section.get("branch", "main")


def write_first_cell(path: Path, repo_url: str, branch: str = "main",
                     check: bool = False) -> bool:
    """Put the launch cell at the top of one notebook, or replace an older one.

    The file keeps its formatting (JSON, indent 1, UTF-8 unescaped, trailing newline);
    only the first cell changes.

    Args:
        path: the ``.ipynb`` file.
        repo_url: the repository's URL.
        branch: its branch.
        check: only compare, write nothing.

    Returns:
        Whether the notebook's first cell differed from the rendered one.
    """
    check_path("path", path)
    _check_repository(repo_url, branch)
    check_bool("check", check)
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    cell = first_cell(repo_url, branch)
    cells = nb["cells"]
    if cells and cells[0].get("id") == CELL_ID:
        if "".join(cells[0]["source"]) == "".join(cell["source"]) and \
                set(CELL_TAGS) <= set(cells[0].get("metadata", {}).get("tags", [])):
            return False
        cells[0] = cell
    else:
        cells.insert(0, cell)
    if not check:
        Path(path).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n",
                              encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> int:
    """``python -m lightcnn.launch [--check]``: write (or compare) every notebook's first cell."""
    check_sequence("argv", argv, str, none=True)
    parser = argparse.ArgumentParser(prog="python -m lightcnn.launch",
                                     description=main.__doc__)
    parser.add_argument("--check", action="store_true",
                        help="only report notebooks whose first cell differs; exit 1 if any")
    args = parser.parse_args(argv)
    url, branch = read_repository()
    changed = [p for p in notebook_paths() if write_first_cell(p, url, branch, args.check)]
    for path in changed:
        print(f"{'differs' if args.check else 'written'}: {path.relative_to(REPO_ROOT)}")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
