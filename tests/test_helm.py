"""The Helm chart (deploy/helm/kafka-dagster), checked offline against pinned schemas and against compose.

`helm lint` and `helm template` (helm pinned in the Makefile, built by `make tools` into .tools/)
render the chart with its defaults and with every optional part on. Every rendered object is
validated strictly (an unknown field fails): Kubernetes objects against the JSON schemas that the
pinned kubernetes-validate package bundles, KEDA and Prometheus-Operator objects against their
CRDs' schemas vendored in tests/fixtures/crd-schemas/. Then the chart is held to what compose
and the code already say: the env var names the worker reads, its port, probes, user, grace
period, the alert rules and the Dagster run coordinator.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]

from service.routes import load_routes
from service.settings import load_settings
from tests.test_deploy import (
    COMPOSE_FILE,
    DOCKERFILE,
    PROMETHEUS_DIR,
    WORKER,
    WORKER_SCRAPE_JOB,
    dockerfile_env,
    environment,
    provided_env,
    settings_env_vars,
)

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "kafka-dagster"
DAGSTER_VALUES = ROOT / "deploy" / "helm" / "dagster-values.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "kafka-dagster.json"
CRD_SCHEMAS = Path(__file__).resolve().parent / "fixtures" / "crd-schemas"
HELM_VERSION = re.search(r"^HELM_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)[1]  # type: ignore[index]
RELEASE = "kd"
NAMESPACE = "streaming"
# The oldest Kubernetes the chart supports (Chart.yaml's kubeVersion) and the newest schemas bundled.
KUBE_VERSIONS = ["1.27.0", kubernetes_validate.utils.latest_version()]

# Every optional part on: SASL over TLS with a client certificate, a Dagster token and private CA,
# KEDA, ServiceMonitor, PrometheusRule, PDB, extra settings, a routes file of one's own.
ALL_ON: dict[str, Any] = {
    "kafka": {
        "bootstrapServers": "broker-0.kafka:9093,broker-1.kafka:9093",
        "securityProtocol": "SASL_SSL",
        "sasl": {"mechanism": "SCRAM-SHA-512", "existingSecret": "kafka-sasl"},
        "tls": {"existingSecret": "kafka-tls", "caKey": "ca.crt", "certKey": "tls.crt", "keyKey": "tls.key"},
    },
    "dagster": {
        "graphqlUrl": "https://dagster-dagster-webserver.dagster.svc/graphql",
        "apiToken": {"existingSecret": "dagster-token", "key": "token"},
        "tls": {"existingSecret": "dagster-ca", "caKey": "ca.crt"},
    },
    "worker": {"extraEnv": {"KAFKA_DAGSTER_MAX_INFLIGHT_RUNS": "32"}},
    "routes": {
        "file": (ROOT / "routes.toml").read_text(),
        "schemas": {p.name: p.read_text() for p in (ROOT / "schemas").glob("*.json")},
    },
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
                "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
                "grafanaDashboard": {"enabled": True}},
    "podDisruptionBudget": {"enabled": True},
    "keda": {"enabled": True, "maxReplicaCount": 6, "topics": [{"name": "demo.orders", "partitions": 6}]},
}


# ---------------------------------------------------------------- helm


def helm_binary() -> str:
    path = os.environ.get("HELM") or str(ROOT / ".tools" / f"helm-{HELM_VERSION}" / "helm")
    if not Path(path).is_file():
        pytest.fail(f"helm {HELM_VERSION} is not built: run `make tools` (make test does)", pytrace=False)
    return path


def helm(tmp_path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run helm with its own empty home: no repository, no plugin, no network."""
    home = tmp_path / "helm-home"
    env = {**os.environ, "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
           "HELM_DATA_HOME": str(home / "data")}
    result = subprocess.run([helm_binary(), *args], capture_output=True, text=True, env=env, timeout=120,
                            check=False)
    if check:
        assert result.returncode == 0, f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def values_file(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / f"values-{len(list(tmp_path.glob('values-*')))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def template(tmp_path: Path, values: dict[str, Any] | None = None, check: bool = True,
             kube_version: str = KUBE_VERSIONS[-1]) -> subprocess.CompletedProcess[str]:
    # Named: each version is validated against its own schemas below.
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", kube_version]
    if values:
        args += ["--values", str(values_file(tmp_path, values))]
    return helm(tmp_path, *args, check=check)


def render(tmp_path: Path, values: dict[str, Any] | None = None,
           kube_version: str = KUBE_VERSIONS[-1]) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(template(tmp_path, values, kube_version=kube_version).stdout) if doc]


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@pytest.fixture(scope="module")
def default_objects(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return render(tmp_path_factory.mktemp("default"))


@pytest.fixture(scope="module")
def all_on_objects(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return render(tmp_path_factory.mktemp("all-on"), ALL_ON)


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def routes_config_map(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-routes")]
    return found


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (worker,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return worker  # type: ignore[no-any-return]


def env_of(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(objects)["env"]}


def test_helm_is_the_pinned_version(tmp_path: Path) -> None:
    """The module the binary was built from (its build info), and the version it reports (the Makefile's -X)."""
    info = subprocess.run(["go", "version", "-m", helm_binary()], capture_output=True, text=True, check=True)
    assert re.search(rf"^\s*mod\s+helm\.sh/helm/v3\s+{re.escape(HELM_VERSION)}\s", info.stdout, re.M), info.stdout
    assert helm(tmp_path, "version", "--template", "{{.Version}}").stdout == HELM_VERSION


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values", [None, ALL_ON], ids=["defaults", "all-on"])
def test_helm_lint_passes_strictly(tmp_path: Path, values: dict[str, Any] | None, kube_version: str) -> None:
    args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE, "--kube-version", kube_version]
    if values:
        args += ["--values", str(values_file(tmp_path, values))]
    helm(tmp_path, *args)


def test_the_defaults_render_no_optional_custom_resource(default_objects: list[dict[str, Any]]) -> None:
    kinds = sorted(o["kind"] for o in default_objects)
    assert kinds == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service"]


def test_every_optional_part_renders(all_on_objects: list[dict[str, Any]]) -> None:
    kinds = sorted(o["kind"] for o in all_on_objects)
    assert kinds == ["ConfigMap", "ConfigMap", "Deployment", "PodDisruptionBudget", "PrometheusRule", "ScaledObject",
                     "Service", "ServiceMonitor", "TriggerAuthentication"]


# ---------------------------------------------------------------- schemas, strictly


def strict(schema: Any) -> Any:
    """A CRD schema that refuses unknown fields, as the API server does with strict field validation."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out and \
            not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    schemas = {}
    for path in CRD_SCHEMAS.glob("*.yaml"):
        doc = yaml.safe_load(path.read_text())
        schemas[doc["apiVersion"], doc["kind"]] = strict(doc["openAPIV3Schema"])
    return schemas


CRDS = crd_schemas()
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def validate(obj: dict[str, Any], kube_version: str) -> None:
    """Raise if `obj` does not match its schema; unknown fields included."""
    assert DNS_LABEL.fullmatch(obj["metadata"]["name"]) and len(obj["metadata"]["name"]) <= 63
    schema = CRDS.get((obj["apiVersion"], obj["kind"]))
    if schema is not None:
        jsonschema.Draft7Validator(schema).validate(obj)
    else:
        kubernetes_validate.validate(obj, kube_version, strict=True)


def test_the_vendored_crd_schemas_are_the_pinned_versions() -> None:
    sources = {kind: yaml.safe_load((CRD_SCHEMAS / f"{name}.yaml").read_text())["source"] for kind, name in [
        ("ScaledObject", "keda.sh_scaledobjects"), ("TriggerAuthentication", "keda.sh_triggerauthentications"),
        ("ServiceMonitor", "monitoring.coreos.com_servicemonitors"),
        ("PrometheusRule", "monitoring.coreos.com_prometheusrules")]}
    assert sources["ScaledObject"].startswith("kedacore/keda v2.20.2 ")
    assert sources["TriggerAuthentication"].startswith("kedacore/keda v2.20.2 ")
    assert sources["ServiceMonitor"].startswith("prometheus-operator/prometheus-operator v0.93.0 ")
    assert sources["PrometheusRule"].startswith("prometheus-operator/prometheus-operator v0.93.0 ")


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values", [None, ALL_ON], ids=["defaults", "all-on"])
def test_every_rendered_object_is_valid(tmp_path: Path, values: dict[str, Any] | None, kube_version: str) -> None:
    for obj in render(tmp_path, values, kube_version):
        validate(obj, kube_version)


def test_the_chart_refuses_a_kubernetes_older_than_its_kube_version(tmp_path: Path) -> None:
    result = template(tmp_path, kube_version="1.26.0", check=False)
    assert result.returncode != 0 and "chart requires kubeVersion" in result.stderr


@pytest.mark.parametrize("kind", ["Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "ScaledObject",
                                  "TriggerAuthentication", "ServiceMonitor", "PrometheusRule"])
def test_validation_refuses_an_unknown_field(kind: str, all_on_objects: list[dict[str, Any]]) -> None:
    """The check above would pass anything if the schemas were not strict: prove that they are."""
    obj = copy.deepcopy(routes_config_map(all_on_objects) if kind == "ConfigMap" else one(all_on_objects, kind))
    target = obj.get("spec", obj)
    if kind == "Deployment":
        target = obj["spec"]["template"]["spec"]["containers"][0]
    target["replicaz"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate(obj, KUBE_VERSIONS[-1])


# ---------------------------------------------------------------- values.schema.json and the chart's own rules


@pytest.mark.parametrize("values", [
    {"replicas": 3},  # a typo of replicaCount
    {"kafka": {"securityProtocol": "TLS"}},
    {"kafka": {"sasl": {"password": "hunter2"}}},  # a secret as a value: only Secret names are accepted
    {"dagster": {"apiToken": "abc"}},
    {"keda": {"maxReplicaCount": "6"}},
    {"keda": {"topics": []}},
    {"worker": {"extraEnv": {"DAGSTER_GRAPHQL_URL": "http://elsewhere/graphql"}}},
    {"worker": {"extraEnv": {"KAFKA_DAGSTER_ROUTES": "/elsewhere.toml"}}},  # set by the chart already
    {"worker": {"logLevel": "TRACE"}},
    {"dagster": {"graphqlUrl": "dagster-webserver:3000"}},
    {"routes": {"schemas": {"../escape.json": "{}"}}},
], ids=lambda v: json.dumps(v)[:60])
def test_values_schema_rejects_a_wrong_value(tmp_path: Path, values: dict[str, Any]) -> None:
    result = template(tmp_path, values, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr


@pytest.mark.parametrize(("values", "message"), [
    ({"kafka": {"securityProtocol": "SASL_SSL"}}, "kafka.sasl.existingSecret: required"),
    ({"kafka": {"tls": {"existingSecret": "kafka-tls"}}}, "kafka.tls.existingSecret: only with SSL or SASL_SSL"),
    ({"kafka": {"securityProtocol": "SSL", "tls": {"existingSecret": "t", "keyKey": "tls.key"}}},
     "kafka.tls.keyKey: needs kafka.tls.certKey"),
    ({"dagster": {"tls": {"existingSecret": "ca"}}}, "dagster.graphqlUrl is not an https:// URL"),
    ({"terminationGracePeriodSeconds": 20}, "must exceed worker.shutdownTimeoutSeconds=20"),
    ({"keda": {"enabled": True, "maxReplicaCount": 7}}, "keda.maxReplicaCount=7: more than the largest topic's 6"),
    ({"keda": {"enabled": True, "minReplicaCount": 3, "maxReplicaCount": 2}}, "keda.minReplicaCount=3"),
    ({"routes": {"file": (ROOT / "routes.toml").read_text()}}, 'routes.schemas: no "order.json"'),
    ({"routes": {"file": "[[routes]]\nschema_file = '/etc/order.json'\n", "schemas": {"order.json": "{}"}}},
     'schema_file = "/etc/order.json"'),
])
def test_cross_field_rules_fail_the_render_naming_the_value(tmp_path: Path, values: dict[str, Any],
                                                            message: str) -> None:
    result = template(tmp_path, values, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_secrets_are_referenced_never_rendered(all_on_objects: list[dict[str, Any]]) -> None:
    assert not [o for o in all_on_objects if o["kind"] == "Secret"]
    env = env_of(all_on_objects)
    for name, key in [("KAFKA_SASL_USERNAME", "username"), ("KAFKA_SASL_PASSWORD", "password"),
                      ("DAGSTER_API_TOKEN", "token")]:
        assert "value" not in env[name] and env[name]["valueFrom"]["secretKeyRef"]["key"] == key
    volumes = {v["name"]: v for v in one(all_on_objects, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["kafka-tls"]["secret"]["secretName"] == "kafka-tls"
    assert volumes["dagster-tls"]["secret"]["secretName"] == "dagster-ca"


# ---------------------------------------------------------------- the chart and compose agree


@pytest.fixture(scope="module")
def compose_worker() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())["services"][WORKER]  # type: ignore[no-any-return]


def test_chart_sets_each_env_var_once(all_on_objects: list[dict[str, Any]]) -> None:
    names = [e["name"] for e in container(all_on_objects)["env"]]
    assert len(names) == len(set(names))


def test_extra_env_cannot_override_what_the_chart_sets(all_on_objects: list[dict[str, Any]]) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    refused = set(schema["properties"]["worker"]["properties"]["extraEnv"]["propertyNames"]["not"]["enum"])
    chart_set = {n for n in env_of(all_on_objects) if n.startswith("KAFKA_DAGSTER_")}
    assert chart_set - set(ALL_ON["worker"]["extraEnv"]) == refused


def test_chart_sets_only_env_vars_the_worker_reads(all_on_objects: list[dict[str, Any]]) -> None:
    unknown = set(env_of(all_on_objects)) - set(settings_env_vars())
    assert not unknown, f"the chart sets {unknown}, which service/settings.py does not read"


def test_chart_can_set_every_env_var_compose_sets(compose_worker: dict[str, Any],
                                                  all_on_objects: list[dict[str, Any]]) -> None:
    compose_names = set(provided_env(compose_worker)) & set(settings_env_vars())
    missing = compose_names - set(env_of(all_on_objects))
    assert not missing, f"compose sets {missing} for the worker; the chart cannot"


def test_chart_and_compose_give_the_worker_the_same_fixed_settings(compose_worker: dict[str, Any],
                                                                   default_objects: list[dict[str, Any]]) -> None:
    chart = {name: e.get("value") for name, e in env_of(default_objects).items()}
    compose = {**dockerfile_env(), **environment(compose_worker)}
    for name in ("KAFKA_DAGSTER_WEB_HOST", "KAFKA_DAGSTER_WEB_PORT", "KAFKA_DAGSTER_LOG_FORMAT",
                 "KAFKA_DAGSTER_DLQ_TOPIC"):
        assert chart[name] == compose[name], name
    assert chart["KAFKA_DAGSTER_GROUP_ID"] == provided_env(compose_worker)["KAFKA_DAGSTER_GROUP_ID"]


def test_port_and_probes_are_composes(compose_worker: dict[str, Any], default_objects: list[dict[str, Any]]) -> None:
    worker = container(default_objects)
    port = int(environment(compose_worker)["KAFKA_DAGSTER_WEB_PORT"])
    assert worker["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    compose_check = " ".join(compose_worker["healthcheck"]["test"])
    assert f"http://127.0.0.1:{port}/healthz" in compose_check
    assert worker["startupProbe"]["httpGet"] == worker["livenessProbe"]["httpGet"] == {"path": "/healthz",
                                                                                      "port": "http"}
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    startup = worker["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60  # compose's start_period
    (service_port,) = one(default_objects, "Service")["spec"]["ports"]
    assert service_port["port"] == port and service_port["targetPort"] == "http"
    assert worker["command"] == compose_worker["command"]


def test_rollout_replaces_one_worker_at_a_time_without_surge(default_objects: list[dict[str, Any]]) -> None:
    """A surge pod beyond the partition count would get no partition and never be ready (/readyz)."""
    strategy = one(default_objects, "Deployment")["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}


def test_grace_period_outlasts_the_hand_over(compose_worker: dict[str, Any],
                                             default_objects: list[dict[str, Any]]) -> None:
    pod = one(default_objects, "Deployment")["spec"]["template"]["spec"]
    shutdown = float(env_of(default_objects)["KAFKA_DAGSTER_SHUTDOWN_TIMEOUT_S"]["value"])
    assert pod["terminationGracePeriodSeconds"] > shutdown
    assert f"{pod['terminationGracePeriodSeconds']}s" == compose_worker["stop_grace_period"]


def test_pod_runs_as_the_images_user_on_a_read_only_root(default_objects: list[dict[str, Any]]) -> None:
    pod = one(default_objects, "Deployment")["spec"]["template"]["spec"]
    user = next(rest for keyword, rest in _final_stage() if keyword == "USER")
    assert f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}" == user
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    worker = container(default_objects)
    assert worker["securityContext"]["readOnlyRootFilesystem"] is True
    assert worker["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"]: m["name"] for m in worker["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    data_dir = env_of(default_objects)["KAFKA_DAGSTER_DATA_DIR"]["value"]
    for path in (data_dir, "/tmp"):
        assert "emptyDir" in volumes[mounts[path]], f"{path} must be writable"
    assert "limits" in worker["resources"] and "requests" in worker["resources"]


def _final_stage() -> list[tuple[str, str]]:
    from tests.test_deploy import dockerfile_stages
    return dockerfile_stages()[-1]["instructions"]  # type: ignore[no-any-return]


def test_the_image_is_the_one_the_dockerfile_builds(compose_worker: dict[str, Any],
                                                    default_objects: list[dict[str, Any]]) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert chart["appVersion"] == version
    repository = compose_worker["image"].rsplit(":", 1)[0]
    assert compose_worker["build"]["dockerfile"] == DOCKERFILE.name
    assert container(default_objects)["image"] == f"{repository}:{version}"


@pytest.mark.parametrize("objects", ["default_objects", "all_on_objects"])
def test_the_mounted_routes_and_env_are_valid_settings(objects: str, request: pytest.FixtureRequest,
                                                       tmp_path: Path) -> None:
    """Lay the ConfigMap out as the pod sees it and load it with the worker's own settings code."""
    rendered = request.getfixturevalue(objects)
    pod = one(rendered, "Deployment")["spec"]["template"]["spec"]
    data = routes_config_map(rendered)["data"]
    (routes_volume,) = [v for v in pod["volumes"] if v["name"] == "routes"]
    (mount,) = [m for m in container(rendered)["volumeMounts"] if m["name"] == "routes"]
    root = tmp_path / "pod"
    for item in routes_volume["configMap"]["items"]:
        path = root / mount["mountPath"].lstrip("/") / item["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(data[item["key"]])
    env = {name: e["value"] for name, e in env_of(rendered).items() if "value" in e}
    env["KAFKA_DAGSTER_ROUTES"] = str(root / env["KAFKA_DAGSTER_ROUTES"].lstrip("/"))
    env["KAFKA_DAGSTER_DATA_DIR"] = str(tmp_path / "data")
    for name in ("KAFKA_SSL_CAFILE", "KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE", "DAGSTER_SSL_CAFILE"):
        env.pop(name, None)  # files from Secrets: not here
    if env["KAFKA_SECURITY_PROTOCOL"].startswith("SASL_"):
        env |= {"KAFKA_SASL_USERNAME": "from-the-secret", "KAFKA_SASL_PASSWORD": "from-the-secret"}
    settings = load_settings(env)
    routes = load_routes(settings.routes_path)
    assert routes and all(r.schema is not None for r in routes.values())


# ---------------------------------------------------------------- metrics and alerts: one source


def test_the_charts_copies_are_their_sources() -> None:
    """files/ holds copies (Helm reads nothing outside the chart): `make chart-files` refreshes them."""
    pairs = [(PROMETHEUS_DIR / "alerts.yml", CHART / "files" / "alerts.yml"),
             (DASHBOARD, CHART / "files" / "kafka-dagster-dashboard.json"),
             (ROOT / "routes.toml", CHART / "files" / "routes.toml")]
    pairs += [(p, CHART / "files" / "schemas" / p.name) for p in (ROOT / "schemas").glob("*.json")]
    # the routes' JSON Schemas (schema_file); the Avro or Protobuf schemas of `produce` are not the worker's
    copies = {p.name for p in (CHART / "files" / "schemas").iterdir()}
    assert copies == {p.name for p in (ROOT / "schemas").glob("*.json")}
    for source, copy_ in pairs:
        assert copy_.read_text() == source.read_text(), f"{copy_} differs from {source}: run `make chart-files`"


def test_the_prometheus_rule_carries_composes_alert_rules(all_on_objects: list[dict[str, Any]]) -> None:
    rules = one(all_on_objects, "PrometheusRule")
    assert rules["spec"]["groups"] == yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    assert rules["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_the_dashboard_config_map_carries_composes_dashboard(all_on_objects: list[dict[str, Any]]) -> None:
    (dashboard,) = [o for o in all_on_objects
                    if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")]
    assert json.loads(dashboard["data"]["kafka-dagster.json"]) == json.loads(DASHBOARD.read_text())
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_the_service_monitor_scrapes_as_compose_does(all_on_objects: list[dict[str, Any]]) -> None:
    """Same path, and the `job` label the alert rules select on (compose's scrape job name)."""
    monitor = one(all_on_objects, "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    scrape = next(j for j in yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())["scrape_configs"]
                  if j["job_name"] == WORKER_SCRAPE_JOB)
    assert endpoint["path"] == scrape.get("metrics_path", "/metrics") and endpoint["port"] == "http"
    assert {"action": "replace", "targetLabel": "job", "replacement": WORKER_SCRAPE_JOB} in endpoint["relabelings"]
    assert f'job="{WORKER_SCRAPE_JOB}"' in (PROMETHEUS_DIR / "alerts.yml").read_text()
    service = one(all_on_objects, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert service["spec"]["publishNotReadyAddresses"] is True


def test_the_pdb_and_service_select_the_workers(all_on_objects: list[dict[str, Any]]) -> None:
    labels = one(all_on_objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert one(all_on_objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert one(all_on_objects, "Service")["spec"]["selector"].items() <= labels.items()


# ---------------------------------------------------------------- KEDA


def test_keda_scales_the_deployment_on_each_topics_lag(all_on_objects: list[dict[str, Any]]) -> None:
    scaled = one(all_on_objects, "ScaledObject")
    deployment = one(all_on_objects, "Deployment")
    env = env_of(all_on_objects)
    assert "replicas" not in deployment["spec"], "the ScaledObject owns the replica count"
    assert scaled["spec"]["scaleTargetRef"] == {"name": deployment["metadata"]["name"]}
    (trigger,) = scaled["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka" and meta["topic"] == "demo.orders"
    assert meta["consumerGroup"] == env["KAFKA_DAGSTER_GROUP_ID"]["value"]
    assert meta["bootstrapServers"] == env["KAFKA_BOOTSTRAP_SERVERS"]["value"]
    assert meta["tls"] == "enable" and meta["sasl"] == "scram_sha512"
    assert all(isinstance(v, str) for v in meta.values()), "KEDA's trigger metadata is a map of strings"
    assert scaled["spec"]["maxReplicaCount"] <= 6


def test_keda_authenticates_with_the_workers_own_secrets(all_on_objects: list[dict[str, Any]]) -> None:
    auth = one(all_on_objects, "TriggerAuthentication")
    (trigger,) = one(all_on_objects, "ScaledObject")["spec"]["triggers"]
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    env = env_of(all_on_objects)
    sasl = env["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert refs["password"] == (sasl["name"], sasl["key"])
    assert refs["ca"] == ("kafka-tls", "ca.crt") and refs["cert"] == ("kafka-tls", "tls.crt")
    assert refs["key"] == ("kafka-tls", "tls.key")


def test_tls_without_sasl_hands_keda_the_ca_alone(tmp_path: Path) -> None:
    objects = render(tmp_path, {"kafka": {"securityProtocol": "SSL", "tls": {"existingSecret": "kafka-tls"}},
                                "keda": {"enabled": True}})
    for obj in objects:
        validate(obj, KUBE_VERSIONS[-1])
    env = env_of(objects)
    assert "KAFKA_SSL_CAFILE" in env and "KAFKA_SSL_CERTFILE" not in env and "KAFKA_SASL_USERNAME" not in env
    (trigger,) = one(objects, "ScaledObject")["spec"]["triggers"]
    assert trigger["metadata"]["tls"] == "enable" and "sasl" not in trigger["metadata"]
    refs = one(objects, "TriggerAuthentication")["spec"]["secretTargetRef"]
    assert refs == [{"parameter": "ca", "name": "kafka-tls", "key": "ca.crt"}]


def test_plaintext_keda_needs_no_authentication(tmp_path: Path) -> None:
    objects = render(tmp_path, {"keda": {"enabled": True}})
    (trigger,) = one(objects, "ScaledObject")["spec"]["triggers"]
    assert "authenticationRef" not in trigger and trigger["metadata"]["tls"] == "disable"
    assert not [o for o in objects if o["kind"] == "TriggerAuthentication"]


def test_kedas_default_topics_are_the_routed_topics_compose_creates(compose_worker: dict[str, Any]) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    topic_init = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["topic-init"]
    created = dict(spec.split(":") for spec in environment(topic_init)["TOPICS"].split())
    routed = set(load_routes(ROOT / "routes.toml").topics)
    assert {t["name"]: str(t["partitions"]) for t in values["keda"]["topics"]} == {t: created[t] for t in routed}
    assert values["keda"]["maxReplicaCount"] <= max(t["partitions"] for t in values["keda"]["topics"])


# ---------------------------------------------------------------- beside Dagster's chart


def test_dagster_values_mirror_composes_run_coordinator() -> None:
    """The Dagster chart's values hold dagster.yaml's run coordinator and run monitoring, unchanged."""
    instance = yaml.safe_load((ROOT / "deploy" / "dagster" / "dagster.yaml").read_text())
    daemon = yaml.safe_load(DAGSTER_VALUES.read_text())["dagsterDaemon"]
    coordinator = daemon["runCoordinator"]
    assert coordinator["enabled"] is True and coordinator["type"] == "CustomRunCoordinator"
    assert coordinator["config"]["customRunCoordinator"] == instance["run_coordinator"]
    limits = instance["run_coordinator"]["config"]["tag_concurrency_limits"]
    assert {"key": "kafka/batch_id", "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in limits
    monitoring = instance["run_monitoring"]
    assert daemon["runMonitoring"] == {"enabled": monitoring["enabled"],
                                       "startTimeoutSeconds": monitoring["start_timeout_seconds"],
                                       "pollIntervalSeconds": monitoring["poll_interval_seconds"]}


def test_dagsters_code_location_reads_what_the_worker_reads(default_objects: list[dict[str, Any]]) -> None:
    """The code location (a user deployment of Dagster's chart) runs the same image, broker and DLQ topic."""
    (location,) = yaml.safe_load(DAGSTER_VALUES.read_text())["dagster-user-deployments"]["deployments"]
    worker = env_of(default_objects)
    assert f"{location['image']['repository']}:{location['image']['tag']}" == container(default_objects)["image"]
    assert location["dagsterApiGrpcArgs"] == ["-m", "dagster_project.definitions"]
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_DAGSTER_DLQ_TOPIC"):
        assert location["env"][name] == worker[name]["value"], name
    assert location["env"]["KAFKA_DAGSTER_ROUTES"] == dockerfile_env()["KAFKA_DAGSTER_ROUTES"]


def test_the_worker_points_at_dagsters_writable_webserver(compose_worker: dict[str, Any]) -> None:
    """Dagster's chart names its webserver Service <release>-dagster-webserver, on port 80."""
    url = yaml.safe_load((CHART / "values.yaml").read_text())["dagster"]["graphqlUrl"]
    assert url == "http://dagster-dagster-webserver/graphql"
    assert "read-only" not in url
    assert environment(compose_worker)["DAGSTER_GRAPHQL_URL"].endswith("/graphql")
