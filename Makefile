# The two commands a newcomer needs: `make demo` and `make test`. Each creates .venv on a fresh
# machine and installs what it needs; the stamp files make reruns cheap.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test lint bench-deltas clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[signing]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/overdrive demo $(DEMO_ARGS)

# PostgreSQL-backed server tests run when a server answers on 127.0.0.1:5432.
test: $(VENV)/.installed-dev
	@if [ -z "$$OVERDRIVE_TEST_POSTGRES_URL" ] && $(BIN)/python -c "import socket; socket.create_connection(('127.0.0.1', 5432), 1).close()" 2>/dev/null; then \
		export OVERDRIVE_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/test; \
	fi; \
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench-deltas: $(VENV)/.installed-dev
	$(BIN)/python bench/deltas.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
