"""scripts/services.sh and docker/compose.yaml run the services as docs/operations.md says.

The script is run for real, on ports and in a directory of this test's own (its
NOTIFIER_SERVICES_PORT_OFFSET and NOTIFIER_SERVICES_DIR knobs), and the servers it starts are
asked for their settings; it only ever stops what it started there.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import redis
import yaml

from sandbox import devstack
from tests.integration.environment import TEST_VAR

SCRIPT = devstack.ROOT / "scripts" / "services.sh"
COMPOSE = devstack.ROOT / "docker" / "compose.yaml"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="scripts/services.sh runs as root")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_offset() -> int:
    """A port offset at which both Redis and PostgreSQL would listen on free ports."""
    for _ in range(50):
        offset = devstack.free_port() - 16379
        if 20000 <= 15432 + offset < 32768 and _bindable(15432 + offset):
            return offset
    raise RuntimeError("no free pair of ports for a private Redis and PostgreSQL")


class PrivateServices:
    """scripts/services.sh with a directory and ports of its own (the Redis port picked free)."""

    def __init__(self, root: Path) -> None:
        self.offset = _free_offset()
        self.redis_port = 16379 + self.offset
        self.env = os.environ | {"NOTIFIER_SERVICES_DIR": str(root),
                                 "NOTIFIER_SERVICES_PORT_OFFSET": str(self.offset)}
        self.root = root

    def run(self, *args: str) -> str:
        done = subprocess.run(["bash", str(SCRIPT), *args], env=self.env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, f"services.sh {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout


@pytest.fixture()
def private_services():
    services = PrivateServices(TEST_VAR / "services-script")
    try:
        yield services
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", "redis", "postgres"], env=services.env,
                       capture_output=True, timeout=120)
        shutil.rmtree(services.root, ignore_errors=True)


@needs_root
def test_redis_keeps_an_append_only_file_and_an_old_snapshot_survives_turning_it_on(private_services):
    # Given a data directory written by a Redis without an append-only file (an RDB snapshot only)
    data = private_services.root / "redis" / "data"
    data.mkdir(parents=True)
    old = subprocess.Popen(["redis-server", "--port", str(private_services.redis_port), "--bind", "127.0.0.1",
                            "--dir", str(data), "--appendonly", "no"], stdout=subprocess.DEVNULL)
    devstack.wait_for_port("127.0.0.1", private_services.redis_port, proc=old)
    client = redis.Redis(port=private_services.redis_port, socket_timeout=5)
    client.set("kept", "yes")
    try:
        client.shutdown(save=True)
    except redis.exceptions.ConnectionError:
        pass
    old.wait(30)

    # When the script starts Redis there, and again after a stop
    for _ in range(2):
        private_services.run("start", "redis")
        # Then the data is still there, and every write goes to the AOF, fsynced every second
        assert client.get("kept") == b"yes"
        assert client.config_get("append*").items() >= {"appendonly": "yes", "appendfsync": "everysec"}.items()
        private_services.run("stop", "redis")
    assert (data / "appendonlydir").is_dir()


@needs_root
def test_postgres_commits_synchronously(private_services):
    private_services.run("start", "postgres")
    port = 15432 + private_services.offset
    psql = sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"))[-1]
    show = subprocess.run([str(psql), "-X", "-tA", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c",
                           "SELECT name, setting FROM pg_settings WHERE name IN "
                           "('fsync', 'synchronous_commit', 'full_page_writes') ORDER BY name"],
                          capture_output=True, text=True, check=True).stdout
    assert show.split() == ["fsync|on", "full_page_writes|on", "synchronous_commit|on"]


@needs_root
@pytest.mark.skipif(not Path("/usr/sbin/pgbouncer").exists(), reason="needs Debian's pgbouncer")
def test_pg_shards_start_a_pgbouncer_in_transaction_pooling_in_front_of_each_shard(private_services):
    import psycopg2

    # When the script starts PostgreSQL with --pg-shards
    private_services.run("start", "--pg-shards", "postgres")
    try:
        # Then `env` names both shards through their PgBouncers (beside the unchanged single URL)
        env = private_services.run("env")
        [line] = [x for x in env.splitlines() if x.startswith("export NOTIFIER_DATABASE_URLS_SHARDED=")]
        urls = line.split("=", 1)[1].split(",")
        assert [u.rsplit("/", 1)[1] for u in urls] == ["notifier_shard0", "notifier_shard1"]
        assert "export NOTIFIER_DATABASE_URL=" in env
        for url in urls:
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            assert port != 15432 + private_services.offset  # through PgBouncer, not to the server
            with psycopg2.connect(host="127.0.0.1", port=port, dbname=url.rsplit("/", 1)[1], user="notifier",
                                  password="notifier") as conn, conn.cursor() as cur:
                cur.execute("SELECT current_database()")
                assert cur.fetchone()[0] == url.rsplit("/", 1)[1]
            console = psycopg2.connect(host="127.0.0.1", port=port, dbname="pgbouncer", user="notifier")
            console.autocommit = True
            try:
                with console.cursor() as cur:
                    cur.execute("SHOW CONFIG")
                    config = {row[0]: row[1] for row in cur.fetchall()}
            finally:
                console.close()
            assert config["pool_mode"] == "transaction"
        assert "pgbouncer shard 1: running" in private_services.run("status", "--pg-shards", "postgres")
    finally:
        # And `stop --pg-shards` stops the PgBouncers only
        private_services.run("stop", "--pg-shards")
    assert "postgres: running" in private_services.run("status", "postgres")


def test_compose_runs_redis_with_the_same_append_only_file():
    compose = yaml.safe_load(COMPOSE.read_text())
    command = " ".join(compose["services"]["redis"]["command"])
    assert "--appendonly yes" in command and "--appendfsync everysec" in command
    postgres = " ".join(str(arg) for arg in compose["services"]["postgres"].get("command", []))
    assert "synchronous_commit=off" not in postgres and "fsync=off" not in postgres


def test_every_long_running_compose_service_is_restarted_when_it_dies():
    compose = yaml.safe_load(COMPOSE.read_text())
    for name, service in compose["services"].items():
        if name == "migrate":  # runs once, then exits
            assert service["restart"] == "no"
            continue
        assert service.get("restart") in ("always", "unless-stopped"), f"{name} stays down when it dies"
