# One-command set-up: `make run` starts the daemon on config.toml, `make test` runs the checks.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= config.toml

.PHONY: run test lint bench clean

# What running needs, and nothing more.
$(BIN)/emif: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $(BIN)/emif

# The checks' tools on top (pytest, ruff, mypy, …).
$(VENV)/.test-tools: $(BIN)/emif
	$(BIN)/pip install -q -e '.[test]'
	touch $(VENV)/.test-tools

run: $(BIN)/emif
	$(BIN)/emif init --config $(CONFIG)
	$(BIN)/emif run --config $(CONFIG)

lint: $(VENV)/.test-tools
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(VENV)/.test-tools
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache .mypy_cache
