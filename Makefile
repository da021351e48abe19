# `make test` and `make install` set up .venv from nothing; later calls reuse it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test lint

$(BIN)/lrstudy: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,jax,kaggle]'
	touch $@

install: $(BIN)/lrstudy

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

# The trainer must work on both Keras backends: its tests run once more under JAX.
test: lint
	$(BIN)/pytest
	KERAS_BACKEND=jax $(BIN)/pytest tests/trainer
