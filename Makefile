# The README's first two commands: `make demo` and `make test`. Both create .venv on first
# use (Python >= 3.10 and make are all a fresh machine needs).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: demo test test-essential test-all lint format bench clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip setuptools wheel

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e .
	touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@ $(STAMP)

## demo: the embedded ablation (none vs SE vs CBAM on a CIFAR ResNet-20, synthetic data, CPU)
demo: $(STAMP)
	$(BIN)/attnexp-train -m experiment=demo
	$(BIN)/attnexp-table outputs/demo/multirun --latest

## test: the default test suite (slow, essential and GPU tests excluded; budget 15 min on 2 cores)
test: $(DEV_STAMP)
	$(BIN)/python -m pytest

## test-essential: checks that guard the numbers but take minutes (CI's second stage, after test)
test-essential: $(DEV_STAMP)
	$(BIN)/python -m pytest -m "essential and not gpu"

## test-all: also the slow and essential tests
test-all: $(DEV_STAMP)
	$(BIN)/python -m pytest -m "not gpu"

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(DEV_STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## bench: speed benchmarks (prints measured ratios; installs the bench extra with timm)
bench: $(DEV_STAMP)
	$(BIN)/python -m pip install -e ".[dev,bench]"
	$(BIN)/python scripts/bench.py

clean-venv:
	rm -rf $(VENV)
