"""On the embedded default, the last `notifier` command using the embedded Redis server stops it when
it exits: after its work, on SIGTERM and on Ctrl-C (issue 14: metrics --once, cancel, send and a worker
stopped with SIGTERM each left a redis-server behind). One that leaves while another still uses the
server (whichever started it) leaves it running.
"""
from __future__ import annotations

import signal
import subprocess
import time
import urllib.request

import pytest

from sandbox.devstack import free_port, wait_for_port
from tests.integration.embedded import BIN, embedded_env, kill_redis_servers_in, notifier, redis_servers_in

EVENT = ('{"notification_id": "n1", "user_id": "u1", "type": "order_shipped", "category": "transactional", '
         '"title": "Shipped", "body": "On its way"}')


@pytest.fixture()
def var_dir(tmp_path):
    var = tmp_path / "var"
    assert notifier("migrate", var_dir=var).returncode == 0
    yield var
    kill_redis_servers_in(var)  # only after a failure: the assertions below found none


def _start(var_dir, *argv: str) -> subprocess.Popen:
    log = (var_dir / f"{argv[0]}.log").open("wb")
    return subprocess.Popen([str(BIN / "notifier"), *argv], env=embedded_env(var_dir), cwd=var_dir.parent,
                            stdout=log, stderr=subprocess.STDOUT)


def _wait_for_log(proc: subprocess.Popen, path, text: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in path.read_text(errors="replace"):
        assert proc.poll() is None and time.monotonic() < deadline, path.read_text()[-3000:]
        time.sleep(0.2)


def _stop(proc: subprocess.Popen, signum: int) -> int:
    proc.send_signal(signum)
    return proc.wait(60)


def test_one_shot_commands_leave_no_redis_server(var_dir):
    for argv in (["metrics", "--once"], ["cancel", "x"], ["send", EVENT], ["status", "n1"], ["sweep"]):
        result = notifier(*argv, var_dir=var_dir)
        assert result.returncode == 0, (argv, result.stderr)
        assert redis_servers_in(var_dir) == [], f"notifier {' '.join(argv)} left its redis-server running"


def test_what_send_queued_survives_the_server_stopping(var_dir):
    # The server saves before it stops, so the worker that starts next finds the task `send` queued.
    # u1's email is switched off: `send` stores a queued email delivery, a worker's filter suppresses it.
    assert notifier("preferences", "set", "u1", "--email", "ada@example.com", "--email-enabled", "false",
                    var_dir=var_dir).returncode == 0
    assert notifier("send", EVENT, var_dir=var_dir).returncode == 0
    assert '"status": "queued"' in notifier("status", "n1", var_dir=var_dir).stdout
    assert redis_servers_in(var_dir) == []
    worker = _start(var_dir, "worker", "-c", "1")
    try:
        _wait_for_log(worker, var_dir / "worker.log", " ready.")
        deadline = time.monotonic() + 90
        while '"status": "queued"' in (status := notifier("status", "n1", var_dir=var_dir).stdout):
            assert time.monotonic() < deadline, status
            time.sleep(0.5)
        assert '"status": "suppressed"' in status and "email" in status
    finally:
        assert _stop(worker, signal.SIGTERM) == 0
    assert redis_servers_in(var_dir) == []


def test_worker_stopped_by_sigterm_stops_its_server_and_takes_celery_options(var_dir):
    worker = _start(var_dir, "worker", "-c", "1", "-n", "embedded-test@%h", "--max-tasks-per-child", "10")
    _wait_for_log(worker, var_dir / "worker.log", " ready.")
    log = (var_dir / "worker.log").read_text()
    assert "embedded-test@" in log and "max-tasks-per-child" not in log  # Celery took both options
    assert len(redis_servers_in(var_dir)) == 1
    assert _stop(worker, signal.SIGTERM) == 0
    assert redis_servers_in(var_dir) == []


def test_beat_and_metrics_stopped_by_a_signal_stop_their_server(var_dir):
    beat = _start(var_dir, "beat")
    _wait_for_log(beat, var_dir / "beat.log", "beat: Starting")
    assert len(redis_servers_in(var_dir)) == 1
    _stop(beat, signal.SIGTERM)
    assert redis_servers_in(var_dir) == []

    port = free_port()
    metrics = _start(var_dir, "metrics", "--port", str(port))
    wait_for_port("127.0.0.1", port, proc=metrics)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:  # starts Redis
        assert b"notifier_metrics_source_up" in response.read()
    assert len(redis_servers_in(var_dir)) == 1
    _stop(metrics, signal.SIGINT)
    assert redis_servers_in(var_dir) == []


def test_the_server_stays_while_another_command_uses_it_and_goes_with_the_last(var_dir):
    beat = _start(var_dir, "beat")  # starts the server
    worker = None
    try:
        _wait_for_log(beat, var_dir / "beat.log", "beat: Starting")
        [server] = redis_servers_in(var_dir)
        worker = _start(var_dir, "worker", "-c", "1")  # joins it
        _wait_for_log(worker, var_dir / "worker.log", " ready.")
        assert notifier("send", EVENT, var_dir=var_dir).returncode == 0  # joins and leaves
        assert _stop(beat, signal.SIGTERM) == 0  # the one that started it leaves first
        assert redis_servers_in(var_dir) == [server]  # the worker still has its broker
        assert notifier("cancel", "n1", var_dir=var_dir).returncode == 0
    finally:
        for proc in (beat, worker):
            if proc is not None and proc.poll() is None:
                _stop(proc, signal.SIGTERM)
    assert worker.returncode == 0
    assert redis_servers_in(var_dir) == []
