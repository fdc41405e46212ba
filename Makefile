# Two commands do all set-up on a fresh machine:  `make run`  and  `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Offline, quiet, no telemetry: the default pipeline never reaches a hub or a tracker service.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_LOGGING_LEVEL ?= WARNING
export PATH := $(CURDIR)/$(BIN):$(PATH)

# this machine's pip config lists local mirrors that do not exist; hide its per-package warnings
PIP_QUIET := grep -v 'is ignored: it is neither a file nor a directory'

.PHONY: help setup run test smoke lock bench clean mlflow-ui exps reliability regimes

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

# pip byte-compiles the ~30,000 installed modules one at a time: 87 s of a 155 s install here
# (2-core AMD EPYC, 2026-12-04). So: install with --no-compile (69 s), then compile on every core
# (38 s). The modules must be compiled at install time: with PYTHONDONTWRITEBYTECODE set (as on
# this machine) Python never caches what it compiles, and every stage process would recompile
# torch's modules on import. Files only newer Pythons can parse (torch's py312 tests) do not
# compile, as under pip; -qq keeps them quiet and they do not fail the install.
$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	set -o pipefail; $(BIN)/python -m pip install -q --upgrade pip 2>&1 | ($(PIP_QUIET) || true)
	set -o pipefail; $(BIN)/python -m pip install -q --no-compile -r requirements.lock 2>&1 | ($(PIP_QUIET) || true)
	$(BIN)/python -m compileall -qq -j 0 $(VENV)/lib || true
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

setup: $(STAMP)  ## create .venv with the pinned dependencies

run: $(STAMP)  ## run the whole pipeline on the embedded default (dvc repro), then print the verdict (exit 1 if not calibrated, 3 if calibration is not established)
	$(BIN)/dvc repro
	@$(BIN)/selfilter verdict

test: $(STAMP)  ## run the test suite
	$(BIN)/python -m pytest tests

regimes: $(STAMP)  ## the selector map: the grid in 7 data regimes (sweeps/regimes.yaml), then reports/regimes.md; resumes where it stopped
	$(BIN)/python -m flows.regimes

exps: $(STAMP)  ## dvc experiments side by side: the params and metrics that differ (output hashes dropped)
	$(BIN)/dvc exp show --only-changed --drop '.*/.*|(evals|runs|selections|stage1|el2n|ifd|less|features)$$'

reliability: $(STAMP)  ## fault-injection suite incl. the soak (~25 min on 2 cores); table in .cache/reliability/table.md
	SELFILTER_SOAK=1 $(BIN)/python -m pytest tests/reliability -p no:cacheprovider -rs

lock:  ## re-resolve requirements.in into requirements.lock
	rm -rf /tmp/selfilter-lock && $(PYTHON) -m venv /tmp/selfilter-lock
	/tmp/selfilter-lock/bin/pip install -q -r requirements.in
	( echo '# Exact, tested dependency set (pip freeze of requirements.in on python 3.11 / x86_64). Regenerate: make lock'; \
	  /tmp/selfilter-lock/bin/pip freeze --all | grep -v '^-e \|^pip==' ) > requirements.lock  # --all: setuptools pinned too

bench: $(STAMP)  ## speed/memory benchmarks (figures in benchmarks/README.md)
	$(BIN)/python -m benchmarks.bench_select

mlflow-ui: $(STAMP)  ## browse the runs at http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlruns.db --default-artifact-root ./mlartifacts --host 127.0.0.1 --workers 1

clean:  ## remove generated data, models and runs (keeps .venv)
	rm -rf data models features judge stage1 el2n ifd less select_params selections runs evals reports mlruns.db mlartifacts .prefect .regimes
