#!/usr/bin/env bash
# Install the Debian packages the test suite runs for real, only when their
# binaries are missing: idempotent, and quiet when there is nothing to do.
#
#   prometheus      prometheus, promtool  (tests/test_deploy.py, tests/test_prometheus_scrape.py)
#   nginx           nginx: TLS and an API token in front of the test Dagster (tests/test_dagster_https.py)
#   openssl         openssl: the tests' CA and server certificates (tests/tls.py)
#   postgresql      initdb, postgres: Dagster's storage as compose deploys it, a server the
#                   tests and the benchmark start themselves (service/dev/postgres.py)
#   default-jre-headless  java: the Apache Kafka test broker (service/dev/apache_kafka.py)
#   maven           mvn: resolves that broker's jars from Maven Central (dev/kafka/<version>/pom.xml)
#   docker-compose  `docker-compose config`: validates docker-compose.yml against the
#                   Compose schema without a Docker engine (tests/test_deploy.py);
#                   not installed when the Compose v2 plugin (`docker compose`) is there
#
# Exits non-zero, with one line saying what to do, when it cannot install them.
set -euo pipefail

# binary:package pairs; add a line when a test needs another system binary.
REQUIRED=(
    "prometheus:prometheus"
    "promtool:prometheus"
    "nginx:nginx"
    "openssl:openssl"
    "initdb:postgresql"
    "docker-compose:docker-compose"
    "java:default-jre-headless"
    "mvn:maven"
)

say() { echo "ensure-system-deps: $*" >&2; }

have() {
    if [ "$1" = docker-compose ] && docker compose version >/dev/null 2>&1; then
        return 0
    fi
    # Debian keeps PostgreSQL's server binaries off the PATH, under a folder per major version.
    if [ "$1" = initdb ] && compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
        return 0
    fi
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]
}

missing_packages() {
    local pair bin pkg
    local -a pkgs=()
    for pair in "${REQUIRED[@]}"; do
        bin=${pair%%:*}
        pkg=${pair##*:}
        if ! have "$bin" && [[ " ${pkgs[*]:-} " != *" $pkg "* ]]; then
            pkgs+=("$pkg")
        fi
    done
    echo "${pkgs[*]:-}"
}

read -r -a packages <<<"$(missing_packages)"
if [ "${#packages[@]}" -eq 0 ]; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    say "missing Debian packages: ${packages[*]}, and apt-get is not available; install them with your system's package manager"
    exit 1
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo=(sudo -n)
    else
        say "missing Debian packages: ${packages[*]}; run as root: apt-get update && apt-get install -y ${packages[*]}"
        exit 1
    fi
fi

say "installing ${packages[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
if ! "${sudo[@]}" apt-get update -qq >/dev/null; then
    say "apt-get update failed; cannot install ${packages[*]}"
    exit 1
fi
if ! "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null; then
    say "apt-get install ${packages[*]} failed"
    exit 1
fi

# The package enables a system-wide Prometheus on :9090 where systemd runs; the
# tests start their own on free ports, so do not leave one running.
if [[ " ${packages[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
    "${sudo[@]}" systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi
# Same for PostgreSQL on :5432: the tests start their own on free ports.
if [[ " ${packages[*]} " == *" postgresql "* ]] && [ -d /run/systemd/system ]; then
    "${sudo[@]}" systemctl disable --now postgresql.service >/dev/null 2>&1 || true
fi
# Same for nginx on :80: the tests start their own on free ports.
if [[ " ${packages[*]} " == *" nginx "* ]] && [ -d /run/systemd/system ]; then
    "${sudo[@]}" systemctl disable --now nginx.service >/dev/null 2>&1 || true
fi

read -r -a still_missing <<<"$(missing_packages)"
if [ "${#still_missing[@]}" -ne 0 ]; then
    say "installed ${packages[*]} but binaries are still missing (package: ${still_missing[*]})"
    exit 1
fi
say "installed ${packages[*]}"
