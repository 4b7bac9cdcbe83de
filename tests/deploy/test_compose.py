"""compose.yaml, read rather than run (no Docker engine here): what `docker compose up` relies on.

Every process runs a real CLI command with real settings, the secrets must be given (never defaulted),
web and worker start only after the migration succeeded on a healthy PostgreSQL, and the processes fit
the database's connections and have time to hand their tasks back on `docker compose stop`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from service.cli import main as cli
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
#: What the user puts in .env, as the compose section of docs/deployment.md says.
USER_VARIABLES = {
    "POSTGRES_PASSWORD": "url-safe-password",
    "SECRET_KEY": "k" * 48,
    "ADMIN_EMAIL": "admin@example.com",
    "ADMIN_PASSWORD": "a long password",
}
#: The official image's default max_connections, less its superuser_reserved_connections.
POSTGRES_CONNECTIONS = 100 - 3
#: Connections a process opens besides its pool: /health's own probe; the LISTEN of a process that runs tasks.
HEALTH_CONNECTION = 1
LISTEN_CONNECTION = 1
#: The `migrate` container's connections (the revision check, then Alembic's).
MIGRATE_CONNECTIONS = 2
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<operator>:?[-?])(?P<argument>[^}]*))?\}")


class MissingVariableError(Exception):
    """Compose refuses to start: a `${NAME:?message}` variable is unset or empty."""


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    """Compose's `${NAME}`, `${NAME:-default}` and `${NAME:?message}` (and their forms without the colon)."""

    def replace(found: re.Match[str]) -> str:
        name, operator, argument = found.group("name", "operator", "argument")
        given = variables.get(name)
        unset = given is None or (given == "" and operator is not None and operator.startswith(":"))
        if operator in (":?", "?") and unset:
            raise MissingVariableError(f"{name}: {argument}")
        if operator in (":-", "-") and unset:
            return argument
        return given or ""

    return _VARIABLE.sub(replace, value.replace("$$", "\0")).replace("\0", "$")


def _interpolated(node: Any, variables: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, variables)
    if isinstance(node, dict):
        return {key: _interpolated(value, variables) for key, value in node.items()}
    if isinstance(node, list):
        return [_interpolated(value, variables) for value in node]
    return node


def compose(variables: Mapping[str, str] = USER_VARIABLES) -> dict[str, Any]:
    """compose.yaml as Docker Compose sees it with these variables (YAML anchors and merge keys resolved)."""
    document: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    resolved: dict[str, Any] = _interpolated(document, variables)
    return resolved


def ours(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the image built from the Dockerfile, by name."""
    return {name: spec for name, spec in document["services"].items() if "build" in spec}


def by_command(document: dict[str, Any], subcommand: str) -> dict[str, dict[str, Any]]:
    return {name: spec for name, spec in ours(document).items() if spec["command"][1:2] == [subcommand]}


def settings_of(spec: dict[str, Any]) -> Settings:
    """The settings the service's process starts with (the image's own ENV defaults aside)."""
    return Settings.from_env({name: str(value) for name, value in spec.get("environment", {}).items()})


def seconds(duration: str) -> float:
    """A compose duration such as `1m30s` or `45s`, in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(number) * units[unit] for number, unit in parts)


def test_compose_runs_migrate_two_web_replicas_and_a_worker_from_the_dockerfile() -> None:
    """Each process is built from the Dockerfile and runs a real CLI command: one migrate, two serve, one worker."""
    document = compose()
    assert (ROOT / "Dockerfile").is_file()
    services = ours(document)
    for name, spec in services.items():
        assert spec["build"] in (".", {"context": "."}), name
        program, subcommand = spec["command"]
        assert program == "kline-collector" and subcommand in cli.commands, (name, spec["command"])
    assert len(by_command(document, "migrate")) == 1
    assert len(by_command(document, "serve")) == 2
    assert len(by_command(document, "worker")) == 1
    assert set(services) | {"postgres"} == set(document["services"])


def test_compose_environment_is_real_settings_pointing_at_the_postgres_service() -> None:
    """Every variable compose sets is a setting and loads as one; DATABASE_URL reaches the postgres service
    with its user, password and database; processes share one weight budget and one SECRET_KEY."""
    document = compose()
    known = {name.upper() for name in Settings.__struct_fields__}
    postgres = document["services"]["postgres"]["environment"]
    for name, spec in ours(document).items():
        environment = spec["environment"]
        assert set(environment) <= known, (name, set(environment) - known)
        settings = settings_of(spec)
        assert settings.database_url is not None
        url = urlsplit(settings.database_url)
        assert (url.hostname, url.port, url.path) == ("postgres", 5432, "/" + postgres["POSTGRES_DB"]), name
        assert (url.username, url.password) == (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"]), name
    for name, spec in {**by_command(document, "serve"), **by_command(document, "worker")}.items():
        settings = settings_of(spec)
        assert settings.weight_budget_scope == "shared", name
        assert settings.secret_key == USER_VARIABLES["SECRET_KEY"], name
        assert settings.admin_email == USER_VARIABLES["ADMIN_EMAIL"], name
    for name, spec in by_command(document, "serve").items():
        assert settings_of(spec).web_runs_tasks is False, f"{name}: the worker collects; web answers the API"


@pytest.mark.parametrize("missing", sorted(USER_VARIABLES))
def test_compose_refuses_to_start_without_each_secret(missing: str) -> None:
    """Without POSTGRES_PASSWORD, SECRET_KEY, ADMIN_EMAIL or ADMIN_PASSWORD (unset or empty), compose stops
    with a message naming it, instead of starting with a default."""
    for variables in ({k: v for k, v in USER_VARIABLES.items() if k != missing}, {**USER_VARIABLES, missing: ""}):
        with pytest.raises(MissingVariableError, match=rf"^{missing}: set {missing}"):
            compose(variables)


def test_compose_starts_web_and_worker_after_migrate_succeeded_on_a_healthy_postgres() -> None:
    """postgres has a healthcheck and a named volume; migrate waits for it to be healthy and runs once; web
    and worker start only once migrate has exited 0."""
    document = compose()
    postgres = document["services"]["postgres"]
    assert postgres["image"].split(":")[0] == "postgres"
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    volume, mount = postgres["volumes"][0].split(":")
    assert volume in document["volumes"]
    assert mount == "/var/lib/postgresql", "PostgreSQL 18 images keep their data below /var/lib/postgresql"
    (migrate,) = by_command(document, "migrate").values()
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert migrate["restart"] == "no"
    for name, spec in {**by_command(document, "serve"), **by_command(document, "worker")}.items():
        assert spec["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}, name
        assert spec["restart"] == "unless-stopped", name


def test_compose_web_replicas_listen_on_distinct_host_ports_and_processes_stop_gracefully() -> None:
    """The two web replicas publish distinct host ports onto the image's PORT; the worker has no HTTP
    healthcheck to fail; every process gets longer than SHUTDOWN_GRACE_SECONDS to stop before Docker kills it."""
    document = compose()
    image_port = re.search(r"\bPORT=(\d+)", (ROOT / "Dockerfile").read_text())
    assert image_port is not None
    host_ports = []
    for spec in by_command(document, "serve").values():
        (mapping,) = spec["ports"]
        host, container = str(mapping).rsplit(":", 1)
        assert container == image_port.group(1)
        host_ports.append(host)
    assert len(set(host_ports)) == 2, host_ports
    for spec in by_command(document, "worker").values():
        assert "ports" not in spec
        assert spec["healthcheck"] == {"disable": True}
    for name, spec in {**by_command(document, "serve"), **by_command(document, "worker")}.items():
        assert seconds(spec["stop_grace_period"]) > settings_of(spec).shutdown_grace_seconds, name


def test_compose_processes_fit_postgres_connections_with_room_to_scale_workers() -> None:
    """Web replicas, the worker and migrate together stay within PostgreSQL's default connections, and so
    do three workers (`docker compose up --scale worker=3`)."""
    document = compose()

    def connections(spec: dict[str, Any]) -> int:
        settings = settings_of(spec)
        serves = spec["command"][1] == "serve"
        runs_tasks = not serves or settings.web_runs_tasks
        return settings.db_pool_max + (HEALTH_CONNECTION if serves else 0) + (LISTEN_CONNECTION if runs_tasks else 0)

    web = sum(connections(spec) for spec in by_command(document, "serve").values())
    (worker,) = (connections(spec) for spec in by_command(document, "worker").values())
    assert web + worker + MIGRATE_CONNECTIONS <= POSTGRES_CONNECTIONS
    assert web + 3 * worker + MIGRATE_CONNECTIONS <= POSTGRES_CONNECTIONS
