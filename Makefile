# CordScope: every target creates .venv and installs the project if needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench gui screenshots clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## make demo: scan the demo slide on the simulated microscope
demo: $(STAMP)
	$(VENV)/bin/cordscope demo --out-dir demo-output

## make test: lint, type-check, then the whole test suite (offscreen Qt)
test: $(STAMP) lint typecheck
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check acquisition analysis gui cordscope tests benchmarks examples
	$(VENV)/bin/ruff format --check acquisition analysis gui cordscope tests benchmarks examples

typecheck: $(STAMP)
	$(VENV)/bin/mypy acquisition analysis gui cordscope

## make bench: speed and memory benchmarks, one JSON line each
bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

## make gui: open the GUI on the demo microscope
gui: $(STAMP)
	$(VENV)/bin/cordscope gui

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache demo-output
