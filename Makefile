# Two commands on a fresh machine: `make demo` and `make test`. Both create/refresh .venv themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The CPU build of torch, installed first: an unpinned torch pulls a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: install demo ui test test-contract lint format constraints clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=70.1"  # builds the editable install below offline
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -c constraints.txt -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .  # the llava-pipelines command
	touch $@

demo: install
	bin/demo

# The Airflow UI on 127.0.0.1 with the demo's runs, logs and settings, until Ctrl-C (after make demo or make install).
ui: install
	bin/ui

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: install lint
	bin/test-setup
	$(PY) -m pytest $(PYTEST_ARGS)

# Only the production-parity checks against the serving runtime's own code (include/serving/runtime.json).
test-contract: install
	$(PY) -m pytest -m contract $(PYTEST_ARGS)

# Refreeze exact versions from the current venv (after changing requirements*.txt).
constraints:
	{ echo "# Frozen from a working venv (pip freeze) on $$(date +%F); regenerate with 'make constraints'."; \
	  $(PY) -m pip freeze | grep -v -E '^torch=='; } > constraints.txt

clean:
	rm -rf .data .airflow test-artifacts
