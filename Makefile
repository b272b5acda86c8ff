# `make serve` and `make test` create/refresh the local virtual environment first.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps 'trackers==2.6.1'  # why --no-deps: see the track extra in pyproject.toml
	touch $@

# Writing .tflite files needs litert-torch, which pins older pydantic and typing-extensions: its own environment,
# where the .tflite tests run (tests/test_edge_tflite.py; they skip in the main one).
TFLITE_VENV ?= .venv-tflite
TFLITE_PY := $(TFLITE_VENV)/bin/python
TFLITE_TESTS := tests/test_edge_tflite.py

$(TFLITE_VENV)/.installed: pyproject.toml
	python3 -m venv $(TFLITE_VENV)
	$(TFLITE_PY) -m pip install -q --upgrade pip
	$(TFLITE_PY) -m pip install -q -e '.[serve,train,edge,tflite,test]'
	$(TFLITE_PY) -m pip install -q --no-deps 'mediapipe==1.2.3'  # why --no-deps: see the tflite extra in pyproject.toml
	touch $@

.PHONY: install install-tflite serve test test-all check bench
install: $(VENV)/.installed
install-tflite: $(TFLITE_VENV)/.installed

serve: $(VENV)/.installed
	$(PY) -m service

test: $(VENV)/.installed $(TFLITE_VENV)/.installed
	$(PY) -m pytest -m "not slow"
	$(TFLITE_PY) -m pytest -m "not slow" $(TFLITE_TESTS)

test-all: $(VENV)/.installed $(TFLITE_VENV)/.installed
	$(PY) -m pytest
	$(TFLITE_PY) -m pytest $(TFLITE_TESTS)

# What CI runs before the tests (and .pre-commit-config.yaml on each commit): lint, format, types, docs.
check: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir "$$(mktemp -d)"

bench: $(VENV)/.installed
	$(PY) -m bench.latency
