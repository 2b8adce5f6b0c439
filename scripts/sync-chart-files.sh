#!/usr/bin/env bash
# Copy into the Helm chart the files it shares with the compose deployment, so that each has one
# source: the alert rules (deploy/prometheus/alerts.yml), the Grafana dashboard, the routes file
# and its schemas.
# Helm reads no file outside a chart's folder, and a symlink would break `helm package`.
# tests/test_helm.py fails when a copy differs from its source: run `make chart-files` then.
set -euo pipefail
cd "$(dirname "$0")/.."
files=deploy/helm/kafka-dagster/files
rm -rf "$files"
mkdir -p "$files/schemas"
cp deploy/prometheus/alerts.yml "$files/alerts.yml"
cp deploy/grafana/dashboards/kafka-dagster.json "$files/kafka-dagster-dashboard.json"
cp routes.toml "$files/routes.toml"
cp schemas/*.json "$files/schemas/"
