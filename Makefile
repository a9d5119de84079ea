# procreg: `make demo` runs the demo, `make test` runs lint and the whole suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench,web]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m procreg demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/ruff format --check src tests bench examples
	$(VENV)/bin/mypy --strict src
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff format src tests bench examples
	$(VENV)/bin/ruff check --fix src tests bench examples

test: lint
	$(PY) -m pytest src tests

bench: $(STAMP)
	$(PY) -m procreg bench

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
