# Two entry points: `make demo` (the main job) and `make test` (lint, types, tests).
# Both create .venv on first use with torch 2.14.1 + torchvision 0.29.1 (the build that runs on CPU and CUDA;
# pip takes both from this machine's cache): torchvision is what timm, open_clip and transformers need.
TORCH := torch==2.14.1 torchvision==0.29.1
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHARED_DATA := $(wildcard ../shared/data)
ifneq ($(SHARED_DATA),)
export MEDMETA_DATA ?= $(abspath ../shared/data)
endif

.PHONY: install install-dev demo test lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# the demo's self-supervised stage uses lightly (the ssl extra)
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q $(TORCH) -e ".[ssl]"
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q $(TORCH) -e ".[dev]"
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/medmeta demo

lint: install-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

format: install-dev
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

test: lint
	$(BIN)/python -m pytest -q --durations=15

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
