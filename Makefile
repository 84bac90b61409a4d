# The two set-up commands of the README: `make demo` and `make test`. Both create .venv on first use.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1

.PHONY: demo test lint install clean

# pip's "Location ... is ignored" lines come from the machine's local wheel index config: noise, not errors.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]' 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m bench demo

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint
	$(PY) -m bench report --check
	$(PY) -m pytest -n 2 --dist loadgroup --benchmark-disable tests --ignore=tests/benchmarks
	$(PY) -m pytest tests/benchmarks --benchmark-only --benchmark-columns=min,median,max,rounds

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .benchmarks
