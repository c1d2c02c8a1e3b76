# Every target installs what it needs and is safe to run twice.
# `make help` lists them.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: help venv run test lint bench bench-quick soak clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# pip's output (index warnings, build-backend deprecations) goes to .venv/pip.log and
# is shown only when the install fails: `make run` in a fresh clone prints what matters.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing the project and its dev tools into $(VENV) (about a minute; log: $(VENV)/pip.log)"
	@{ $(BIN)/python -m pip install -q --upgrade pip && \
	   $(BIN)/python -m pip install -q -e '.[dev]'; } > $(VENV)/pip.log 2>&1 || \
	   { cat $(VENV)/pip.log; echo "pip install failed (log: $(VENV)/pip.log)"; exit 1; }
	@touch $(STAMP)

BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

NPM_STAMP := dashboard/node_modules/.package-lock.json

$(NPM_STAMP): dashboard/package-lock.json
	@scripts/system-deps.sh run
	@echo "installing the dashboard's npm packages (dashboard/node_modules)"
	@cd dashboard && npm ci --no-audit --no-fund --loglevel=error > /dev/null

venv: $(STAMP) ## create .venv and install the project with its dev extras

run: venv $(NPM_STAMP) ## gateway + embedded simulator fleet + dashboard at http://127.0.0.1:8080/
	@scripts/run.sh

test: $(BENCH_STAMP) ## lint, then the whole test suite (what CI runs)
	@scripts/system-deps.sh test
	@$(MAKE) --no-print-directory $(NPM_STAMP)
	$(MAKE) --no-print-directory lint
	$(BIN)/python -m pytest

lint: venv ## ruff (lint + format check) and mypy (strict on gateway/core)
	$(BIN)/ruff check gateway devices_sim tests bench
	$(BIN)/ruff format --check gateway devices_sim tests bench
	$(BIN)/mypy gateway devices_sim

bench: $(BENCH_STAMP) $(NPM_STAMP) ## run the benchmarks and rewrite docs/benchmarks.md and its plots (over an hour)
	@scripts/system-deps.sh bench
	$(BIN)/python bench/core_bench.py --write
	$(BIN)/python bench/fanout_bench.py --write
	$(BIN)/python bench/ingest_bench.py --write
	$(BIN)/python bench/sim_bench.py --write
	$(BIN)/python bench/browser_bench.py --write --seconds 420 --warmup 330
	$(BIN)/python bench/scaling_bench.py --write
	$(BIN)/python bench/e2e_bench.py --write
	$(BIN)/python bench/history_bench.py --write
	$(BIN)/python bench/hub_stalls_bench.py --pin --json bench/results/hub_stalls_latest.json
	$(BIN)/python bench/fault_lag_bench.py --pin --json bench/results/fault_lag_latest.json
	$(BIN)/python bench/walls_bench.py
	$(BIN)/python bench/workers_bench.py

bench-quick: $(BENCH_STAMP) $(NPM_STAMP) ## a reduced benchmark run, about 10 minutes (no docs rewrite)
	@scripts/system-deps.sh bench
	$(BIN)/python bench/core_bench.py --quick
	$(BIN)/python bench/fanout_bench.py --quick
	$(BIN)/python bench/ingest_bench.py --quick
	$(BIN)/python bench/sim_bench.py --quick
	$(BIN)/python bench/browser_bench.py --quick
	$(BIN)/python bench/scaling_bench.py --quick --write
	$(BIN)/python bench/e2e_bench.py --quick
	$(BIN)/python bench/history_bench.py --quick
	$(BIN)/python bench/hub_stalls_bench.py --quick --pin
	$(BIN)/python bench/walls_bench.py --quick

soak: venv ## long randomized soak tests (not in the default run)
	$(BIN)/python -m pytest -m soak

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis dashboard/node_modules
