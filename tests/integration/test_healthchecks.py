"""The healthchecks docker/compose.yaml gives each long-running service, run against real processes
started as compose starts them: healthy while the process does its job, unhealthy once it does not."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from sandbox import devstack
from tests.integration.api_fixture import api  # noqa: F401  (fixture)
from tests.integration.environment import TEST_VAR, child_env

COMPOSE = yaml.safe_load((devstack.ROOT / "docker" / "compose.yaml").read_text())
BOOTSTRAP = os.environ.get("NOTIFIER_KAFKA_BOOTSTRAP_SERVERS")


def _check(service: str, **substitute: str) -> subprocess.CompletedProcess:
    """Run a compose service's healthcheck here, as Docker runs it in the container."""
    test = COMPOSE["services"][service]["healthcheck"]["test"]
    env = child_env() | {"HOSTNAME": socket.gethostname(),
                         "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    if test[0] == "CMD-SHELL":
        command: list[str] | str = test[1].replace("$$", "$")  # compose's escape for a literal $
    else:
        command = [sys.executable if arg == "python" else arg for arg in test[1:]]
        command = [substitute.get(arg, arg) for arg in command]
    return subprocess.run(command, shell=isinstance(command, str), env=env, cwd=devstack.ROOT, capture_output=True,
                          text=True, timeout=120)


def _start(log_name: str, *args: str) -> tuple[subprocess.Popen, Path]:
    log_path = TEST_VAR / "logs" / log_name
    log_path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "entrypoints.cli", *args], env=child_env(), cwd=devstack.ROOT,
                            stdout=log_path.open("ab"), stderr=subprocess.STDOUT)
    return proc, log_path


def test_a_worker_answers_the_compose_ping_and_a_stopped_one_does_not(database):
    # Given a worker started as compose starts it (`notifier worker`, default node name celery@<hostname>)
    proc, log_path = _start("healthcheck-worker.log", "worker", "-Q", "scheduler", "--pool", "solo")
    try:
        devstack.wait_for_ready(proc, log_path, 90)
        # Then the compose healthcheck (celery inspect ping -d celery@$HOSTNAME) passes
        result = _check("worker-scheduler")
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        devstack.stop(proc)
    # And once the worker is gone it fails
    assert _check("worker-scheduler").returncode != 0


def test_beat_is_healthy_while_it_saves_its_schedule(database, tmp_path):
    schedule_dir = tmp_path / "beat"
    proc, _ = _start("healthcheck-beat.log", "beat", "--schedule", str(schedule_dir / "celerybeat-schedule"))
    try:
        deadline = time.monotonic() + 60
        while not list(schedule_dir.glob("celerybeat-schedule*")) and time.monotonic() < deadline:
            time.sleep(0.5)
        result = _check("beat", **{"/app/var/beat": str(schedule_dir)})
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        devstack.stop(proc)
    # A schedule not saved for longer than beat ever waits: beat is stuck or gone.
    for path in schedule_dir.glob("celerybeat-schedule*"):
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    result = _check("beat", **{"/app/var/beat": str(schedule_dir)})
    assert result.returncode == 1 and "unhealthy" in result.stdout


@pytest.mark.skipif(not BOOTSTRAP, reason="Kafka comes from `make services` (make test starts it)")
def test_a_bridge_is_healthy_while_it_is_a_member_of_its_group(database):
    from confluent_kafka.admin import AdminClient

    from notifier.intake.bridge.topics import ensure_topics

    tag = uuid.uuid4().hex[:12]
    high, low, dead, group = f"health-{tag}.high", f"health-{tag}.low", f"health-{tag}.dead", f"health-{tag}"
    ensure_topics(BOOTSTRAP, [high, low, dead], partitions=1)
    proc, _ = _start("healthcheck-bridge.log", "bridge", "--topics", f"{high},{low}", "--group", group,
                     "--dead-letter-topic", dead, "-X", "session.timeout.ms=6000")
    try:
        deadline = time.monotonic() + 90
        result = _check("bridge-high", **{"notifier-bridge-high": group})
        while result.returncode != 0 and time.monotonic() < deadline:
            time.sleep(1)
            result = _check("bridge-high", **{"notifier-bridge-high": group})
        assert result.returncode == 0, result.stdout + result.stderr
        assert "1 from this host" in result.stdout
    finally:
        devstack.stop(proc, timeout_s=15)
        admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
        for future in [*admin.delete_topics([high, low, dead]).values()]:
            try:
                future.result(10)
            except Exception:  # noqa: BLE001 - cleanup only
                pass
    # A group no bridge of ours is in
    result = _check("bridge-high", **{"notifier-bridge-high": f"nobody-{tag}"})
    assert result.returncode == 1 and "unhealthy" in result.stdout


def test_the_api_and_the_exporter_answer_their_healthchecks(api):  # noqa: F811
    result = _check("api", **{"http://127.0.0.1:8000/healthz": api.url + "/healthz"})
    assert result.returncode == 0, result.stdout + result.stderr
    port = devstack.free_port()
    proc, _ = _start("healthcheck-metrics.log", "metrics", "--port", str(port))
    try:
        devstack.wait_for_port("127.0.0.1", port, proc=proc)
        result = _check("metrics", **{"http://127.0.0.1:9808/metrics": f"http://127.0.0.1:{port}/metrics"})
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        devstack.stop(proc)
    result = _check("metrics", **{"http://127.0.0.1:9808/metrics": f"http://127.0.0.1:{port}/metrics"})
    assert result.returncode == 1
