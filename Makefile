# Two commands for a newcomer: `make demo` and `make test`. Both create the environment first.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)

.PHONY: venv tools environments demo demo-snowflake test test-fast test-live lint bench bench-snapshot clean soak

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

tools:
	bash .ci/install-tools.sh

# The project's environment and checkov's own (~35 s each on one core) are made side by side.
environments:
	@$(MAKE) --no-print-directory -j2 venv tools

demo: venv
	$(BIN)/python -m local.demo

demo-snowflake: venv
	$(BIN)/python -m local.demo_snowflake

lint: venv
	$(BIN)/ruff check .

# Three workers on two cores, each with its own PostgreSQL cluster (tests/conftest.py): a good part of the suite waits
# (Terraform's provider polling moto, followers and workloads that run for seconds), so a third worker fills the idle
# CPU. The serial tests (wall-clock bounds, mostly waiting on the outages they cause) run beside them from the start,
# at normal priority, while the parallel part runs under `nice`: the scheduler gives the serial tests' processes the
# CPU they ask for (about a third of a core each), and their two minutes overlap the parallel part instead of
# following it. Then the tests that saturate or measure the machine's CPU, alone. The slowest tests are listed at
# the end (where the time goes: issue 17). TEST_WORKERS=0 runs each part in one process.
TEST_WORKERS ?= 3
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(1) --dist loadgroup)
test: environments
	@$(MAKE) --no-print-directory lint
	@status=0; serial_log=$$(mktemp); \
	$(BIN)/pytest -q -m "serial and not alone and not live" --durations=5 $(call XDIST,2) >$$serial_log 2>&1 & \
	serial=$$!; \
	nice -n 10 $(BIN)/pytest -q -m "not serial and not live" --durations=30 $(call XDIST,$(TEST_WORKERS)) \
		|| status=$$?; \
	wait $$serial || status=$$?; \
	echo "--- the serial tests (run beside the parallel part, at normal priority):"; cat $$serial_log; \
	rm -f $$serial_log; \
	$(BIN)/pytest -q -m "alone and not live" --durations=5 || status=$$?; \
	exit $$status

test-fast: venv
	$(BIN)/pytest -q -m "not slow and not live"

# Opt-in: the whole product against a real Snowflake account and S3 bucket, leaving nothing behind; skips with the
# missing variables named. LIVE_USE_STAND_INS=1 runs it against moto and fakesnow. docs/testing.md#live-tests-make-test-live
test-live: venv
	$(BIN)/pytest -q -m live tests/live

# The race-and-crash soak of CDC (tests/race): SEEDS seeds for every mode, ~1 min each. make soak SEEDS=200;
# RACE_MODES=follow,land-merge RACE_DDL=1 RACE_SEED_START=1000 RACE_RESULTS=r.jsonl RACE_KEEP_DIR=/tmp/f pass through.
SEEDS ?= 50
soak: venv
	RACE_SEEDS=$(SEEDS) $(BIN)/pytest -q -m race tests/race

bench: venv
	$(BIN)/python -m bench.snapshot_vs_copy --rows 1000000

# Issue 11's snapshot benchmark (docs/performance.md): 5M + 1M rows, ~15 min on a quiet machine; it rewrites
# docs/performance.md from its results. A small run: make bench-snapshot BENCH_ARGS="--rows 300000 --wide-rows 50000
# --repeat 1 --pgbench-seconds 10"
BENCH_STAMP := $(VENV)/.bench-$(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)
BENCH_ARGS ?=

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test,bench]'
	@rm -f $(VENV)/.bench-* && touch $@

bench-snapshot: $(BENCH_STAMP)
	$(BIN)/python -m bench.snapshot_load --write-docs $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .venv-tools demo.duckdb .pytest_cache .ruff_cache
