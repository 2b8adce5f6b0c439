# The README's commands. Every target sets itself up from a clean clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-unit lint lock clean

# requirements.lock pins every package CI installed; `make lock` refreshes it.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

lock:  ## re-resolve the dependency ranges and rewrite requirements.lock
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet -e '.[dev]'
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

lint: $(STAMP)
	$(BIN)/ruff check service dagster_project tests
	$(BIN)/mypy service dagster_project

clean:
	rm -rf $(VENV) .kafka-dagster .test-stack
