# Two entry points for a fresh machine that has python3: `make example` and `make test`.
# Both create .venv inside the repo on first use and re-install only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs

# Use the real MNIST files beside the repo (../shared/data/mnist) unless told otherwise.
ifeq ($(origin FUNCNN_DATA_DIR), undefined)
  ifneq ($(wildcard ../shared/data/mnist/train-images-idx3-ubyte*),)
    export FUNCNN_DATA_DIR := $(abspath ../shared/data/mnist)
  endif
endif

.PHONY: example test venv docs
example: $(STAMP)
	$(PY) examples/mnist_mlp.py

test: $(STAMP)
	$(PY) -m pytest

venv: $(STAMP)

# The documentation site, built into site/ with warnings as errors (as CI builds it).
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

$(DOCS_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[docs]"
	touch $(DOCS_STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test,examples]"
	touch $(STAMP)
