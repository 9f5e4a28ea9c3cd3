# Two commands set everything up on a fresh machine (see README.md):
#   make book   install into .venv, render the book into _build/html
#   make test   install into .venv, data, unit tests, every chapter at the ci budget, strict build
# make data (run first by test, execute and lab) finds Fashion-MNIST (LIGHTCNN_DATA, the user
# cache, Debian's dataset-fashion-mnist) or downloads it into the user cache, verifies the MD5s
# and prints where it is; without it, it stops with one message that lists the fixes.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the chapters, and the appendix pages that run code
NOTEBOOKS := $(sort $(wildcard chapters/*.ipynb)) $(sort $(wildcard book/*.ipynb))
# nbval: run each notebook in this venv's kernel; a cell may train for a while. --durations
# lists the slowest cells (and tests) in the log: where make test's 15 minutes go.
NBVAL := --nbval-lax --nbval-current-env --nbval-cell-timeout=1200 --durations=20

.PHONY: install data book test unit nbval strict-book execute zoo lab clean

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	@touch $@

install: $(STAMP)

# lightcnn.data.main() (what `python -m lightcnn.data` runs), called through -c: with -m,
# runpy warns that lightcnn/__init__ imported the module before running it as __main__.
data: $(STAMP)
	@$(BIN)/python -c "import sys, lightcnn.data; sys.exit(lightcnn.data.main())"

book: $(STAMP)
	$(BIN)/jupyter-book build .
	@echo "Open _build/html/index.html"

# The three run side by side: the unit tests use one thread (tests/conftest.py) and the
# chapters two, and one after the other they kept a 2-core CPU only 133% busy (1,062 s).
# Each one's output is printed whole when it ends (--output-sync): no interleaved logs.
test: $(STAMP) data
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory -j3 --output-sync=target unit nbval strict-book || exit 1; \
	echo "make test: $$(( $$(date +%s) - start )) s (after install and data)"

unit: $(STAMP)
	$(BIN)/pytest -q --durations=15 tests

# Every chapter, executed at the ci budget; cells tagged nbval-check-output compared strictly.
nbval: $(STAMP)
	LIGHTCNN_BUDGET=ci $(BIN)/pytest -q $(NBVAL) $(NOTEBOOKS)

strict-book: $(STAMP)
	$(BIN)/jupyter-book build . -W -n --keep-going --all

# Re-run every chapter at the full budget in place: refreshes the stored outputs and
# book/results/*.json (at most 45 minutes a chapter on a 2-core CPU).
execute: $(STAMP) data
	for nb in $(NOTEBOOKS); do \
	  LIGHTCNN_BUDGET=full $(BIN)/jupyter nbconvert --to notebook --execute --inplace \
	    --ExecutePreprocessor.timeout=3600 "$$nb" || exit 1; \
	done

# Train the zoo's models that zoo/manifest.json does not ship at their recipe's version, and
# write each into zoo/ when it is done (resumable model by model). NAMES="a b" limits it;
# JOBS=N trains independent models in N processes; LIGHTCNN_DEVICE=auto uses a GPU.
# NPROC=N trains each model in N data-parallel processes (torchrun, DDP; e.g. one per GPU
# of a multi-GPU machine, with LIGHTCNN_DEVICE=auto): rank 0 alone writes zoo/.
NAMES ?=
JOBS ?= 1
NPROC ?= 1
zoo: $(STAMP) data
ifeq ($(NPROC),1)
	$(BIN)/python -c "import sys, lightcnn.zoo; sys.exit(lightcnn.zoo.main(sys.argv[1:]))" \
	  build -j $(JOBS) $(NAMES)
else
	$(BIN)/torchrun --standalone --nproc-per-node $(NPROC) -m lightcnn.zoo build $(NAMES)
endif
	$(BIN)/python -m lightcnn.zoo table --write book/results/zoo.md

# Open the chapters in JupyterLab (installs it into .venv on first use).
lab: $(STAMP) data
	$(BIN)/pip install -q jupyterlab ipywidgets
	$(BIN)/jupyter lab chapters/

clean:
	rm -rf _build
