# The two commands of the README: `make demo` and `make check`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo check lint test bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/featrec init
	$(BIN)/featrec demo

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: $(VENV)/.installed
	$(BIN)/pytest -q

check: lint test

clean:
	rm -rf $(VENV) .featrec feature_repo/data .pytest_cache .mypy_cache .ruff_cache
