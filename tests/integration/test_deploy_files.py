"""The Procfile, docker-compose.yml and `make run` agree on processes, queues and safe exposure."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from celery.app.defaults import NAMESPACES, flatten

import celeryconfig
from devstack.run import DEV_PROCESSES

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = ["release", "web", "worker", "webhooks", "housekeeping", "beat", "flower"]
# The compose service that plays each Procfile process; postgres and redis are extra.
SERVICE_OF = {name: name for name in PROCESSES} | {"release": "migrate"}
SERVERS = {"postgres", "redis", "redis-cache"}
QUEUE_OF = {"worker": "transfers", "webhooks": "webhooks", "housekeeping": "housekeeping"}
# migrate runs once and exits; beat has nothing to ask (a crashed beat exits, is restarted).
WITHOUT_HEALTHCHECK = {"migrate", "beat"}


def _procfile() -> dict[str, str]:
    processes = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, command = line.partition(":")
            processes[name.strip()] = command.strip()
    return processes


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _services() -> dict[str, dict[str, Any]]:
    return _compose()["services"]


def _argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


def _option(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def _seconds(duration: str) -> int:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert match and duration, f"unexpected duration {duration!r}"
    return int(match[1] or 0) * 60 + int(match[2] or 0)


def test_procfile_and_compose_name_the_same_processes() -> None:
    assert list(_procfile()) == PROCESSES
    assert set(_services()) == {SERVICE_OF[name] for name in PROCESSES} | SERVERS


def test_workers_consume_their_queue_in_both_files() -> None:
    procfile, services = _procfile(), _services()
    for process, queue in QUEUE_OF.items():
        # The posting worker's queues follow POSTING_SHARDS: "transfers" by default.
        expected = "${POSTING_QUEUES:-transfers}" if process == "worker" else queue
        for argv in (_argv(procfile[process]), _argv(services[process]["command"])):
            assert _option(argv, "-Q") == expected, argv
            assert _option(argv, "-n") == f"{queue}@%h", argv
        # The health check pings this container's node: %h is its $HOSTNAME.
        health = " ".join(services[process]["healthcheck"]["test"])
        assert f"inspect ping -d {queue}@$$HOSTNAME" in health


def test_servers_keep_the_broker_durable() -> None:
    services = _services()
    assert services["postgres"]["image"] == "postgres:15"
    assert services["redis"]["image"] == "redis:7"
    redis_argv = " ".join(_argv(services["redis"]["command"]))
    assert "--appendonly yes" in redis_argv
    assert "--maxmemory-policy noeviction" in redis_argv


def test_the_idempotency_cache_is_a_server_of_its_own_that_evicts() -> None:
    services = _services()
    cache_argv = _argv(services["redis-cache"]["command"])
    assert _option(cache_argv, "--maxmemory-policy") == "allkeys-lru"
    assert _option(cache_argv, "--maxmemory")
    assert _compose()["x-ledger-env"]["IDEMPOTENCY_CACHE_URL"] == "redis://redis-cache:6379/0"


def test_app_services_are_configured_from_the_environment() -> None:
    services = _services()
    for name in set(services) - SERVERS:
        environment = services[name]["environment"]
        assert {"DATABASE_URL", "REDIS_URL"} <= set(environment), name
        assert "${POSTGRES_PASSWORD" in environment["DATABASE_URL"], name
    # Flower's credentials have no default: compose refuses to run without them.
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"].startswith(
        "${FLOWER_BASIC_AUTH:?"
    )


def test_long_running_services_have_health_checks_and_graceful_stops() -> None:
    services = _services()
    for name, service in services.items():
        if name not in WITHOUT_HEALTHCHECK:
            assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
    assert services["migrate"]["restart"] == "no"
    for name in QUEUE_OF:
        # A worker finishes the task it holds (killed at the hard limit) before Docker kills it.
        assert _seconds(services[name]["stop_grace_period"]) > celeryconfig.task_time_limit
        assert services[name]["environment"]["METRICS_PORT"]
    for name, service in services.items():
        metrics_dir = service.get("environment", {}).get("PROMETHEUS_MULTIPROC_DIR")
        if metrics_dir:
            # A tmpfs per container: empty at every start, never shared between containers.
            assert metrics_dir in service.get("tmpfs", []), name


def test_ports_are_published_on_loopback_only() -> None:
    published = []
    for name, service in _services().items():
        for port in service.get("ports", []):
            host_ip = port.get("host_ip", "") if isinstance(port, dict) else str(port)
            published.append(name)
            assert host_ip.startswith("127.0.0.1"), f"{name} publishes {port!r}"
    assert set(published) == {"web", "flower"}


def _compose_command() -> list[str]:
    docker = shutil.which("docker")
    if docker:
        version = subprocess.run(
            [docker, "compose", "version"], capture_output=True, timeout=30, check=False
        )
        if version.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy:
        return [legacy]
    pytest.skip("neither `docker compose` nor `docker-compose` is installed")


def test_compose_file_is_valid_and_requires_the_flower_secret() -> None:
    command = [*_compose_command(), "-f", str(ROOT / "docker-compose.yml"), "config", "-q"]
    env = {key: value for key, value in os.environ.items() if key != "FLOWER_BASIC_AUTH"}
    valid = subprocess.run(
        command,
        env=env | {"FLOWER_BASIC_AUTH": "admin:test"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert valid.returncode == 0, valid.stderr
    missing = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert missing.returncode != 0
    assert "FLOWER_BASIC_AUTH" in missing.stderr


def _expand_flower_command(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Let sh expand the Procfile's flower command as honcho would, printing it instead."""
    return subprocess.run(
        ["sh", "-c", f"printf '%s\\n' {_procfile()['flower']}"],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


def test_procfile_flower_listens_on_loopback_and_needs_credentials() -> None:
    started = _expand_flower_command({"FLOWER_BASIC_AUTH": "admin:secret"})
    assert started.returncode == 0, started.stderr
    argv = started.stdout.split()
    celery = argv.index("celery")
    assert argv[celery : celery + 4] == ["celery", "-A", "workers.celery_app", "flower"]
    # Flower's own metrics stay out of the directory the app's /metrics reads.
    assert argv[:celery] == ["env", "-u", "PROMETHEUS_MULTIPROC_DIR"]
    assert {"--address=127.0.0.1", "--port=5555", "--basic-auth=admin:secret"} <= set(argv)
    # Flower given an empty --basic-auth locks everyone out, and without the option it
    # opens its UI to anyone: the shell refuses to start it instead.
    for env in ({}, {"FLOWER_BASIC_AUTH": ""}):
        refused = _expand_flower_command(env)
        assert refused.returncode != 0
        assert "FLOWER_BASIC_AUTH" in refused.stderr


def test_web_binds_from_the_environment_and_make_run_starts_every_process() -> None:
    web = _procfile()["web"]
    assert re.search(r"--bind \$\{BIND_HOST(:-[^}]*)?\}:\$\{PORT(:-[^}]*)?\}", web), web
    assert sorted(DEV_PROCESSES) == sorted(set(PROCESSES) - {"release"})


def test_every_lowercase_name_in_celeryconfig_is_a_celery_setting() -> None:
    """Celery ignores a misspelt or invented setting without a word; the module's own
    constants are uppercase."""
    settings = {name for name, _ in flatten(NAMESPACES)}
    names = {
        name
        for name, value in vars(celeryconfig).items()
        if name.islower() and not name.startswith("_") and not callable(value)
    } - {"os"}
    assert names, "celeryconfig declares settings"
    assert sorted(names - settings) == []
