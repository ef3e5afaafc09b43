# Two commands set everything up on a fresh machine: `make train` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
TRAIN_STAMP := $(VENV)/.train-stamp
STAMP := $(VENV)/.test-stamp
ARGS ?=

.PHONY: train test test-fast test-slow clean

# The virtual environment: the project (editable) and what training needs for `make train`; the
# test extras (pytest, transformers, peft, optuna, ...) on top of it for the tests.
$(TRAIN_STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e .
	@touch $(TRAIN_STAMP)

$(STAMP): $(TRAIN_STAMP)
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

## train: the main job (tutorial CNN on MNIST, configs/mnist.yaml) in one process; ARGS="epochs=1 ..."
train: $(TRAIN_STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" launch/one.sh $(ARGS)

## test: the test suite (real processes, CPU only; starts a local one-node SLURM cluster, installing it if needed, and stops it)
test: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pytest -q $(ARGS)

## test-fast: the tests without real multi-process runs, full epochs or SLURM (under a minute)
test-fast: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pytest -q -m "not slow" $(ARGS)

## test-slow: only the tests marked slow (real processes, SLURM, full runs)
test-slow: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pytest -q -m slow $(ARGS)

clean:
	rm -rf runs .pytest_cache
