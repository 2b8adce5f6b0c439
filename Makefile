# The README's commands. Every target sets itself up from a clean clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-unit lint bench bench-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip freeze --exclude-editable > requirements.lock
	touch $(STAMP)

run: $(STAMP)  ## the embedded stack with demo events; Ctrl-C stops everything
	DAGSTER_DISABLE_TELEMETRY=1 $(BIN)/kafka-dagster dev

test: $(STAMP)  ## the whole suite against a real broker and a real Dagster
	DAGSTER_DISABLE_TELEMETRY=1 $(BIN)/pytest

test-unit: $(STAMP)
	$(BIN)/pytest -m "not integration"

lint: $(STAMP)
	$(BIN)/ruff check service dagster_project tests
	$(BIN)/mypy service dagster_project

clean:
	rm -rf $(VENV) .kafka-dagster .test-stack
