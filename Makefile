# Two commands on a fresh machine: `make demo` and `make test`. Both create/refresh the environments themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed
# The local backend's heavy runtimes, each in its own environment as production runs each in its own container
# (tasks/common/runtimes.py finds them): training from the training container's requirements, serving from the
# local engine's.
RUNTIMES := .venvs
TRAINING_STAMP := $(RUNTIMES)/training/.installed
SERVING_STAMP := $(RUNTIMES)/serving/.installed
# The CPU build of torch: an unpinned torch pulls a multi-GB CUDA build. This machine keeps the wheel in /opt/wheels;
# elsewhere it comes from PyTorch's CPU index.
TORCH := torch==2.13.0+cpu
TORCH_SOURCE := $(if $(wildcard /opt/wheels/torch-*),--find-links /opt/wheels,--extra-index-url https://download.pytorch.org/whl/cpu)
# uv: one shared cache, hardlinked into every environment, so three environments cost one download and seconds.
UV_PIP = $(UV) pip install -q $(TORCH_SOURCE)
UV_INSTALL = $(UV_PIP) -c constraints.txt
# The local engine (vLLM's CPU build) pins its own versions: vLLM 0.32 needs transformers<5.20, training 5.24.
SERVING := include/serving
SERVING_CONSTRAINTS := $(SERVING)/local-constraints.txt

.PHONY: install demo ui test test-contract lint format constraints clean mwaa mwaa-check

install: $(STAMP) $(TRAINING_STAMP) $(SERVING_STAMP)

# The Airflow environment (requirements.txt, what production installs) plus the test tooling and, for the tests that
# load models in process, the training container's libraries.
$(STAMP): requirements.txt requirements-dev.txt include/training/requirements.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=70.1" uv==0.13.9
	$(UV_INSTALL) --python $(PY) $(TORCH) -r requirements.txt -r requirements-dev.txt
	$(UV) pip install -q --python $(PY) --no-deps --no-build-isolation -e .  # the llava-pipelines command
	touch $@

# A runtime environment from scratch: torch (and pillow, which the containers ship) plus its requirements file,
# within its constraints file, plus any further uv arguments.
define runtime_env
	rm -rf $(RUNTIMES)/$(1)
	$(UV) venv -q --python $(PYTHON) $(RUNTIMES)/$(1)
	$(UV_PIP) -c $(3) $(4) --python $(RUNTIMES)/$(1)/bin/python $(TORCH) pillow -r $(2)
endef

$(TRAINING_STAMP): include/training/requirements.txt constraints.txt | $(STAMP)
	$(call runtime_env,training,include/training/requirements.txt,constraints.txt)
	touch $@

# Without the CUDA-only packages local-excludes.txt lists, and with the import hook that lets PyPI's torchvision
# import beside torch's CPU build (torchvision_cpu_ops.py) in site-packages, run by a .pth file at every start.
$(SERVING_STAMP): $(SERVING)/local-requirements.txt $(SERVING_CONSTRAINTS) $(SERVING)/local-excludes.txt \
  $(SERVING)/torchvision_cpu_ops.py $(SERVING)/torchvision_cpu_ops.pth | $(STAMP)
	$(call runtime_env,serving,$(SERVING)/local-requirements.txt,$(SERVING_CONSTRAINTS),--excludes $(SERVING)/local-excludes.txt)
	cp $(SERVING)/torchvision_cpu_ops.py $(SERVING)/torchvision_cpu_ops.pth \
	  "$$($(RUNTIMES)/serving/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
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

# Two workers: a serial run keeps 2 cores about half busy (its slow tests wait on servers, schedulers and polls). Each
# file's tests run on one worker, so a module's stack or vLLM server starts once; files are taken in the order
# tests/conftest.py gives them (slow ones first). What they share is safe to share: free ports, per-test storage
# roots and Airflow homes, claimed Redis and PostgreSQL databases.
TEST_WORKERS ?= 2

test: install lint
	bin/test-setup
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# Only the production-parity checks against the serving runtime's own code (include/serving/runtime.json).
test-contract: install
	$(PY) -m pytest -m contract $(PYTEST_ARGS)

# Refreeze exact versions from the environments (after changing a requirements file): constraints.txt from .venv and
# the training runtime, the serving runtime's own file from it.
freeze = { echo "\# Frozen from $(1) (uv pip freeze) on $$(date +%F); regenerate with 'make constraints'."; \
  for py in $(2); do $(UV) pip freeze -q --python $$py; done | grep -v -E '^(torch|uv|pip|setuptools)==|^-e ' | sort -u; }

constraints:
	$(call freeze,.venv and .venvs/training,$(PY) $(RUNTIMES)/training/bin/python) > constraints.txt
	$(call freeze,.venvs/serving,$(RUNTIMES)/serving/bin/python) > $(SERVING_CONSTRAINTS)

# MWAA: requirements.txt resolved against MWAA's published Airflow 3.3.1 constraints, and the upload layout.
mwaa-check: install
	bin/mwaa-check requirements.txt

mwaa: install
	bin/mwaa-package

clean:
	rm -rf .data .airflow test-artifacts $(RUNTIMES)
