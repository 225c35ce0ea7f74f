# The project's entry points. `make demo` and `make test` work on a fresh machine with Python 3.11.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: lint demo test test-distributed dev bench stress materialize reconcile report sql gallery stop-emulator clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 needed, found {sys.version}"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]" -c constraints.txt
	touch $(STAMP)

# The Dagster instance of `make dev` and of every `flokan-dagster` command (unless DAGSTER_HOME is set).
DEMO_HOME := $(abspath $(or $(FLOKAN_DATA_DIR),$(CURDIR)/.data))/dagster_home
PORT ?= 3000
ARGS ?=

demo: $(STAMP)  ## set up, generate every demo SKU's images on the local emulator, print the cost report
	$(BIN)/flokan-dagster materialize
	$(BIN)/flokan-dagster report

test: $(STAMP)  ## set up and run the whole test suite (installs Chromium for the browser test when root)
	bash .ci/install-browser
	$(BIN)/python -m pytest -q

test-distributed: $(STAMP)  ## the shared mode against a real PostgreSQL and S3 server (started and stopped here)
	PYTHON=$(BIN)/python bash .ci/test-distributed

dev: $(STAMP)  ## the Dagster UI on http://127.0.0.1:$(PORT) with the demo pipeline (make dev PORT=3100)
	$(BIN)/python -c 'import sys, pathlib; from flokan_dagster.demo import prepare_dagster_home; prepare_dagster_home(pathlib.Path(sys.argv[1]))' "$(DEMO_HOME)"
	DAGSTER_HOME=$${DAGSTER_HOME:-$(DEMO_HOME)} $(BIN)/dagster dev -h 127.0.0.1 -p $(PORT) -w workspace.yaml

bench: $(STAMP)  ## run every benchmark and write benchmarks/RESULTS.md
	$(BIN)/python benchmarks/run_all.py

materialize: $(STAMP)  ## flokan-dagster materialize $(ARGS), e.g. make materialize ARGS="--sku MUG-001 --asset hero_images"
	$(BIN)/flokan-dagster materialize $(ARGS)

reconcile: $(STAMP)  ## one reconciliation pass over Flokan's jobs
	$(BIN)/flokan-dagster reconcile

stress: $(STAMP)  ## the ledger under contention with every core busy, 20 times (issue 16); refreshes its RESULTS.md rows
	$(BIN)/python benchmarks/run_all.py bench_ledger_stress

report: $(STAMP)  ## the cost report from the ledger
	$(BIN)/flokan-dagster report $(ARGS)

sql: $(STAMP)  ## a read-only query of the ledger: make sql Q="SELECT * FROM credits_by_asset"
	$(BIN)/flokan-dagster sql "$(Q)" $(ARGS)

gallery: $(STAMP)  ## write the gallery (HTML page and contact sheet) and print its path
	$(BIN)/flokan-dagster gallery

stop-emulator: $(STAMP)  ## stop the local emulator that `make demo` or `make dev` started
	$(BIN)/flokan-dagster stop-emulator

clean: ## remove the virtualenv and the demo's data (ledger, images, emulator state)
	-test -x $(BIN)/flokan-dagster && $(BIN)/flokan-dagster stop-emulator
	rm -rf $(VENV) .data .pytest_cache

lint: $(STAMP)  ## ruff over the package, tests and benchmarks; mypy over the package (config in pyproject.toml)
	$(BIN)/ruff check flokan_dagster tests benchmarks
	$(BIN)/mypy
