# Everything a fresh machine needs is installed by these targets; nothing by hand.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup test lint unit integration demo bench clean

$(BIN)/reconcile: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/reconcile

lint: setup
	$(BIN)/ruff check reconciler tests bench
	$(BIN)/ruff format --check reconciler tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: setup
	$(BIN)/pytest -q tests/unit

integration: setup
	$(BIN)/pytest -q tests/integration

# The README's test command: lint, types, layers, then every test.
test: lint
	$(BIN)/pytest -q -p no:cacheprovider tests

demo: setup
	$(BIN)/reconcile validate --repo example-repo
	$(BIN)/reconcile --repo example-repo --dry-run --target status || test $$? -eq 2

bench: setup
	$(BIN)/python bench/plan_scale.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
