# CordScope: every target creates .venv and installs the project if needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# tests run on every core; a module's tests stay on one worker (their module-scoped scans run once).
# PYTEST_WORKERS= (empty) runs them in one process.
PYTEST_WORKERS ?= -n auto --dist loadscope

.PHONY: demo demo-study test test-fast lint typecheck bench gui screenshots clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## make demo: scan the demo slide on the simulated microscope
demo: $(STAMP)
	$(VENV)/bin/cordscope demo --out-dir demo-output

## make demo-study: scan a virtual cohort (5 rats per group) and compare the groups
demo-study: $(STAMP)
	$(VENV)/bin/cordscope demo-cohort --animals-per-group 5 --out demo-study-output/scans
	$(VENV)/bin/cordscope study demo-study-output/scans/*.h5 --out demo-study-output

## make test: lint, type-check, then the whole test suite (offscreen Qt)
test: $(STAMP) lint typecheck
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q $(PYTEST_WORKERS)

## make test-fast: lint, then every test not marked slow (everyday work, under 2 minutes)
test-fast: $(STAMP) lint
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q -m "not slow" $(PYTEST_WORKERS)

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

## make screenshots: run the demo in the real window under Xvfb, save PNGs into docs/screenshots
screenshots: $(STAMP)
	@command -v xvfb-run >/dev/null 2>&1 || { echo "install Debian's xvfb: apt-get install xvfb"; exit 1; }
	xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) -m gui.screenshots docs/screenshots

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache demo-output demo-study-output
