# The README's commands. Every target sets itself up from a clean clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-unit lint lock clean bench bench-quick

# requirements.lock pins every package CI installed; `make lock` refreshes it.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev,bench]'
	touch $(BENCH_STAMP)

lock:  ## re-resolve the dependency ranges and rewrite requirements.lock
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet -e '.[dev,bench]'
	.lock-venv/bin/pip freeze --exclude-editable | grep -v '^-e' > requirements.lock
	rm -rf .lock-venv

run: $(STAMP)  ## the embedded stack with demo events; Ctrl-C stops everything
	DAGSTER_DISABLE_TELEMETRY=1 $(BIN)/kafka-dagster dev

test: $(STAMP)  ## the whole suite against a real broker and a real Dagster
	bash scripts/ensure-system-deps.sh
	DAGSTER_DISABLE_TELEMETRY=1 $(BIN)/pytest

test-unit: $(STAMP)
	bash scripts/ensure-system-deps.sh
	$(BIN)/pytest -m "not integration"

bench: $(BENCH_STAMP)  ## contenders side by side on a fresh broker and Dagster (< 10 min)
	DAGSTER_DISABLE_TELEMETRY=1 $(BIN)/python -m bench

bench-quick: $(BENCH_STAMP)  ## the same with fewer messages and repetitions (< 3 min)
	DAGSTER_DISABLE_TELEMETRY=1 $(BIN)/python -m bench --quick

lint: $(STAMP)
	$(BIN)/ruff check service dagster_project tests bench
	$(BIN)/mypy service dagster_project bench

clean:
	rm -rf $(VENV) .kafka-dagster .test-stack .bench-stack
