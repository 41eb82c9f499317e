"""docker/compose.yaml stays in step with the code: every queue has a worker, every command
and option exists, every NOTIFIER_* variable is a setting. (Docker itself is not needed;
where the `docker compose` plugin exists, its own validation runs too.)
"""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from notifier.queues import QUEUES
from entrypoints import cli
from sandbox import devstack
from sandbox.app import SandboxConfig
from notifier.settings import Settings

COMPOSE = devstack.ROOT / "docker" / "compose.yaml"
IMAGE = "notifier:latest"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _ours(compose: dict) -> dict[str, dict]:
    """The services that run the notifier image."""
    return {name: s for name, s in compose["services"].items() if s.get("image") == IMAGE}


def _workers(compose: dict) -> dict[str, dict]:
    return {name: s for name, s in _ours(compose).items() if s["command"][0] == "worker"}


def _queues(service: dict) -> list[str]:
    command = service["command"]
    return command[command.index("-Q") + 1].split(",")


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


def test_environment_names_only_real_settings(compose):
    known = {f"NOTIFIER_{f.upper()}" for f in Settings.model_fields}
    known |= {f"NOTIFIER_SANDBOX_{f.upper()}" for f in SandboxConfig.__dataclass_fields__}
    for name, service in _ours(compose).items():
        unknown = {var for var in service.get("environment", {}) if var not in known}
        assert not unknown, f"{name}: {unknown} are not settings (notifier/settings.py)"


def test_flower_needs_credentials_and_ports_stay_on_loopback(compose):
    assert compose["services"]["flower"]["environment"]["NOTIFIER_FLOWER_BASIC_AUTH"].startswith(
        "${NOTIFIER_FLOWER_BASIC_AUTH:?")
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond the host's loopback"


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker client")
def test_docker_compose_config_accepts_it():
    plugin = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if plugin.returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    result = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True,
                            env={"NOTIFIER_FLOWER_BASIC_AUTH": "ops:secret", "PATH": "/usr/bin:/usr/local/bin"})
    assert result.returncode == 0, result.stderr


def test_the_sandbox_runs_only_in_the_dev_profile_and_nothing_trusts_its_keys_by_default(compose):
    # The sandbox can arm faults and sign provider webhooks: it is a development tool only.
    services = compose["services"]
    sandbox = services["sandbox"]
    assert sandbox["profiles"] == ["dev"]
    trusted = ("NOTIFIER_SENDGRID_WEBHOOK_PUBLIC_KEY", "NOTIFIER_SENDGRID_WEBHOOK_PUBLIC_KEY_PATH",
               "NOTIFIER_TWILIO_AUTH_TOKEN")
    for name, service in _ours(compose).items():
        if name == "sandbox":
            continue
        assert "profiles" not in service, f"{name} would be missing from a production stack"
        for var in trusted:  # empty unless the operator sets it: never the sandbox's key or a known token
            assert service["environment"].get(var, "") in ("", f"${{{var}:-}}"), (name, var)
        assert not any("sandbox-private" in str(v) for v in service.get("volumes", [])), name
        if "sandbox" in service.get("depends_on", {}):
            assert service["depends_on"]["sandbox"]["required"] is False, f"{name} needs the dev profile to start"
    # Its signing key lives in a volume only it mounts; its control API, beyond its loopback, needs a token.
    env = sandbox["environment"]
    assert env["NOTIFIER_SANDBOX_SENDGRID_WEBHOOK_KEY_PATH"].startswith("/app/var/sandbox-private/")
    assert "sandbox-private:/app/var/sandbox-private" in sandbox["volumes"]
    assert env["NOTIFIER_SANDBOX_CONTROL_HOST"] == "0.0.0.0"
    assert env["NOTIFIER_SANDBOX_CONTROL_TOKEN"].startswith("${NOTIFIER_SANDBOX_CONTROL_TOKEN")
    assert "/_sandbox/health" in " ".join(sandbox["healthcheck"]["test"])
