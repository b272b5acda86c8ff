# `make serve` and `make test` create/refresh the local virtual environment first.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps 'trackers==2.6.1'  # why --no-deps: see the track extra in pyproject.toml
	touch $@

.PHONY: install serve test test-all check bench
install: $(VENV)/.installed

serve: $(VENV)/.installed
	$(PY) -m service

test: $(VENV)/.installed
	$(PY) -m pytest -m "not slow"

test-all: $(VENV)/.installed
	$(PY) -m pytest

# What CI runs before the tests (and .pre-commit-config.yaml on each commit): lint, format, types, docs.
check: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir "$$(mktemp -d)"

bench: $(VENV)/.installed
	$(PY) -m bench.latency
