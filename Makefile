# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# Offline hygiene: no telemetry, no update checks (also set in visionloop.config).
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export MLFLOW_DISABLE_TELEMETRY := true
export NO_ALBUMENTATIONS_UPDATE := 1
export DVC_NO_ANALYTICS := 1
export GIT_PYTHON_REFRESH := quiet

.PHONY: demo test lint env env-dev repro ui clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	# torch and torchvision first, pinned exactly: the pair lies on this machine's disk for pip (a CUDA build
	# that runs on the CPU); a looser pin downloads another multi-GB build.
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

# One resolution and one editable build: installing '.[dev]' after '.' resolved and built everything twice.
$(VENV)/.installed-dev: $(BIN)/activate pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(VENV)/.installed $@

env: $(VENV)/.installed
env-dev: $(VENV)/.installed-dev

demo: env
	$(BIN)/visionloop demo

lint: env-dev
	$(BIN)/ruff check .

test: env-dev
	$(BIN)/ruff check .
	$(BIN)/pytest

repro: env
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro

clean:
	rm -rf .visionloop models reports plots metrics.json data/prepared lightning_logs
