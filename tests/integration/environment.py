"""This run's own environment for the integration tests: files, sandbox ports, database, Redis databases.

Runs beside each other (seven engineers on one machine, CI) must never collide: each gets a
PostgreSQL database, a pair of Redis databases (or a RabbitMQ vhost) and sandbox ports of its
own. Nothing happens on import: `configure()` is called from the integration conftest's
pytest_configure hook, so a unit-only run touches no service and no environment variable.
"""
from __future__ import annotations

import os
from pathlib import Path

# Where this run keeps its files (logs, keys, beat schedule): decided here, created by configure().
TEST_VAR = Path(os.environ.get("NOTIFIER_VAR_DIR") or f"var/test/run-{os.getpid()}").resolve()
# The database URL this run's private database was made from (to drop it at the end), if any.
ADMIN_DB_URL: str | None = None
# Short timers so deferral, retries and the sweeper happen within a test's patience.
SHORT_TIMERS = {
    "NOTIFIER_RELEASE_INTERVAL_S": "0.5", "NOTIFIER_SWEEP_INTERVAL_S": "1", "NOTIFIER_LEASE_TTL_S": "4",
    "NOTIFIER_STUCK_AFTER_S": "8", "NOTIFIER_RETRY_BASE_S": "0.2", "NOTIFIER_RETRY_MAX_S": "2",
    "NOTIFIER_MAX_ATTEMPTS": "3",
    # Callbacks: the test receivers listen on loopback over http; retries and giving up within seconds.
    "NOTIFIER_CALLBACK_ALLOW_LOOPBACK": "true", "NOTIFIER_CALLBACK_DRAIN_INTERVAL_S": "0.5",
    "NOTIFIER_CALLBACK_RETRY_BASE_S": "0.3", "NOTIFIER_CALLBACK_RETRY_MAX_S": "2",
    "NOTIFIER_CALLBACK_RETRY_WINDOW_S": "15",
}


def configure() -> None:
    """Point this process (and the workers it starts) at this run's own files, ports and services."""
    global ADMIN_DB_URL
    from sandbox import devstack

    os.environ.setdefault("NOTIFIER_VAR_DIR", str(TEST_VAR))
    TEST_VAR.mkdir(parents=True, exist_ok=True)
    os.environ.update(devstack.private_sandbox_env())
    # The sandbox posts receipts only to the API it is configured with: this run's, on a port of its own.
    os.environ["NOTIFIER_SANDBOX_SENDGRID_EVENT_WEBHOOK_URL"] = (
        f"http://127.0.0.1:{devstack.free_port()}/v1/webhooks/sendgrid")
    ADMIN_DB_URL = _private_services()
    # Two more apps beside the default one (tests/integration/test_apps.py); tests naming none are unaffected.
    from tests.integration.apps_setup import write_apps_file

    os.environ.setdefault("NOTIFIER_APPS_FILE", str(write_apps_file(
        TEST_VAR, os.environ["NOTIFIER_SANDBOX_FCM_TOKEN_PORT"])))
    for name, value in SHORT_TIMERS.items():
        os.environ.setdefault(name, value)
    # The shipped example templates, whatever directory a worker, the API or a bridge starts in.
    os.environ.setdefault("NOTIFIER_TEMPLATES_DIR", str(Path(__file__).resolve().parents[2] / "templates"))


def child_env() -> dict[str, str]:
    """The environment worker and sandbox processes get: the same services as this process."""
    from notifier.store.db import database_url
    from notifier.store.redis_conn import broker_url, redis_url

    env = dict(os.environ)
    env["NOTIFIER_DATABASE_URL"] = database_url()
    env["NOTIFIER_REDIS_URL"] = redis_url()
    env["NOTIFIER_BROKER_URL"] = broker_url()
    return env


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


def _use_redis_cluster() -> None:
    """Make the data Redis the cluster from `scripts/services.sh start redis-cluster` (make test-redis-cluster).

    The broker stays this run's database on the single Redis (kombu cannot use a cluster). A
    cluster has only database 0, so a run holds the whole cluster: a key on the single Redis
    names the run that holds it, and the session starts by flushing it (conftest.clean_redis)."""
    import atexit

    import redis

    url = os.environ.get("NOTIFIER_REDIS_CLUSTER_URL", "")
    if not url:
        raise RuntimeError("NOTIFIER_TEST_REDIS_CLUSTER=1 needs NOTIFIER_REDIS_CLUSTER_URL: "
                           "scripts/services.sh start redis-cluster, then eval \"$(scripts/services.sh env)\"")
    base = os.environ.get("NOTIFIER_BROKER_URL", "").rsplit("/", 1)[0]
    if base.startswith("redis://"):
        r, key, me = redis.Redis.from_url(f"{base}/0"), "notifier-test:redis-cluster", str(os.getpid())
        if not r.set(key, me, nx=True, ex=6 * 3600):
            holder = (r.get(key) or b"").decode()
            if holder.isdigit() and Path(f"/proc/{holder}").exists():
                raise RuntimeError(f"the test Redis Cluster is held by the live test run {holder}")
            r.set(key, me, ex=6 * 3600)
        atexit.register(lambda: r.get(key) == me.encode() and r.delete(key))
    os.environ["NOTIFIER_REDIS_URL"] = url


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
    if os.environ.get("NOTIFIER_TEST_REDIS_CLUSTER") == "1":
        _use_redis_cluster()
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
