# The README's commands. Every target sets itself up from a clean clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-unit lint lock clean bench bench-quick tools chart-files

# requirements/*.lock pin every package, with hashes, per purpose: runtime (the worker),
# dagster (the image: worker and Dagster), dev (the embedded stack, tests, linters), bench.
# The venv installs pip from pip.lock, the dev lock, then the project itself without dependencies.
$(STAMP): pyproject.toml requirements/pip.lock requirements/dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r requirements/pip.lock
	$(BIN)/pip install --quiet --require-hashes -r requirements/dev.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP) requirements/bench.lock
	$(BIN)/pip install --quiet --require-hashes -r requirements/bench.lock
	touch $(BENCH_STAMP)

# Each lock is compiled from pyproject.toml by pip-tools; bench.lock (every extra) first, and the
# others constrained by it, so a package has one version in all of them. Pins stay where they are
# unless UPGRADE=1 (`make lock UPGRADE=1`); a new or changed range moves only what it must.
PIP_TOOLS := pip-tools==7.7.0
LOCK_VENV := .lock-venv
PIP_COMPILE = CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile --quiet --generate-hashes \
	--allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links $(if $(UPGRADE),--upgrade)
# setuptools and wheel (the build backend) are in each lock: the project installs --no-build-isolation.
COMPILE = $(PIP_COMPILE) --all-build-deps pyproject.toml

lock:  ## re-resolve pyproject's ranges into requirements/*.lock (UPGRADE=1 to move every pin)
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet --require-hashes -r requirements/pip.lock
	$(LOCK_VENV)/bin/pip install --quiet $(PIP_TOOLS)
	$(COMPILE) --extra dev --extra bench -o requirements/bench.lock
	$(COMPILE) -c requirements/bench.lock --extra dev -o requirements/dev.lock
	$(COMPILE) -c requirements/bench.lock --extra dagster -o requirements/dagster.lock
	$(COMPILE) -c requirements/bench.lock -o requirements/runtime.lock
	$(PIP_COMPILE) -o requirements/pip.lock requirements/pip.in
	rm -rf $(LOCK_VENV)

# The Helm chart's checks (tests/test_helm.py) run helm, pinned here and built once from the Go
# module proxy (its go.sum pins every dependency) into the git-ignored .tools/, one folder per version.
# The -X flags are those of helm's own release build: its version, and the Kubernetes version it
# assumes without a cluster (1 + the major, and the minor, of the k8s.io/client-go it builds with).
HELM_VERSION := v3.21.4
HELM_KUBE_MINOR := 36
HELM := .tools/helm-$(HELM_VERSION)/helm
HELM_LDFLAGS := -X helm.sh/helm/v3/internal/version.version=$(HELM_VERSION) \
	$(foreach pkg,lint/rules chartutil,-X helm.sh/helm/v3/pkg/$(pkg).k8sVersionMajor=1 \
	-X helm.sh/helm/v3/pkg/$(pkg).k8sVersionMinor=$(HELM_KUBE_MINOR))
$(HELM):
	GOBIN=$(abspath $(dir $(HELM))) GOTOOLCHAIN=local \
		go install -ldflags '$(HELM_LDFLAGS)' helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

tools: $(HELM)  ## the pinned helm for tests/test_helm.py

chart-files:  ## copy the alert rules, dashboard, routes and schemas into the Helm chart (one source each)
	bash scripts/sync-chart-files.sh

run: $(STAMP)  ## the embedded stack with demo events; Ctrl-C stops everything
	DAGSTER_DISABLE_TELEMETRY=1 $(BIN)/kafka-dagster dev

test: $(STAMP) $(HELM)  ## the whole suite against a real broker and a real Dagster
	bash scripts/ensure-system-deps.sh
	$(BIN)/python -m service.dev.kafka_jars  # the jars of each tested Apache Kafka (dev/kafka/), once
	$(BIN)/python -m service.dev.apicurio  # the test schema registry's distribution (dev/apicurio/), once
	HELM=$(abspath $(HELM)) DAGSTER_DISABLE_TELEMETRY=1 $(BIN)/pytest

test-unit: $(STAMP) $(HELM)
	bash scripts/ensure-system-deps.sh
	HELM=$(abspath $(HELM)) $(BIN)/pytest -m "not integration"

bench: $(BENCH_STAMP)  ## contenders side by side on a fresh broker and Dagster (< 15 min)
	bash scripts/ensure-system-deps.sh
	$(BIN)/python -m service.dev.kafka_jars
	DAGSTER_DISABLE_TELEMETRY=1 $(BIN)/python -m bench

bench-quick: $(BENCH_STAMP)  ## the same with fewer messages and repetitions (about 7 min)
	bash scripts/ensure-system-deps.sh
	$(BIN)/python -m service.dev.kafka_jars
	DAGSTER_DISABLE_TELEMETRY=1 $(BIN)/python -m bench --quick

lint: $(STAMP)
	$(BIN)/ruff check service dagster_project tests bench
	$(BIN)/mypy service dagster_project bench

clean:
	rm -rf $(VENV) $(LOCK_VENV) .tools .kafka-dagster .test-stack .bench-stack .kafka .apicurio
