"""A Redis Cluster master SIGKILLed mid-run: its replica takes over; nothing lost, nothing answered sent twice.

Real workers and beat, the sandbox's APNs, the data Redis a 3-master + 3-replica cluster
(cluster-node-timeout 2000 ms, scripts/services.sh). Runs with `make test-redis-cluster`.
The figures (lost, duplicates split into in-flight resends and answered duplicates, as `make
chaos` counts them) are printed and written to <test var>/redis_failover.json.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

import notifier
from notifier.accounts.devices import register_device
from notifier.pipeline.sending import IN_FLIGHT_RESENT
from notifier.providers.apns import apns_id
from notifier.store import models
from notifier.store.db import session_factory
from notifier.store.models import NotificationLog
from notifier.store.redis_conn import get_redis
from tests.integration import environment

pytestmark = pytest.mark.skipif(os.environ.get("NOTIFIER_TEST_REDIS_CLUSTER") != "1",
                                reason="needs the Redis Cluster: make test-redis-cluster")

EVENTS, BATCH, USERS = 600, 30, 50  # 12 pushes a user: far below the daily push limit
TERMINAL = {s.value for s in models.TERMINAL}
ROOT = Path(__file__).resolve().parents[2]


def _failed_over(nodes: list[tuple[str, int]], victim_id: str) -> bool:
    """The survivors marked the victim failed and serve every slot again (its replica promoted)."""
    for host, port in nodes:
        try:
            client = redis.Redis(host=host, port=port, socket_timeout=1, decode_responses=True)
            info, table = client.cluster("info"), client.execute_command("CLUSTER NODES")
        except redis.RedisError:
            continue
        flags = [node.get("flags", "") for node in table.values() if node.get("node_id") == victim_id]
        return info.get("cluster_state") == "ok" and bool(flags) and "fail" in flags[0].split(",")
    return False


def _rows(nids: list[str]) -> list[NotificationLog]:
    with session_factory()() as session:
        return list(session.scalars(select(NotificationLog).where(NotificationLog.notification_id.in_(nids))))


def _restart(config_file: str) -> None:
    # The node's own services directory (<dir>/redis-cluster/<port>/redis.conf): services.sh starts
    # every node not answering, and the old master rejoins as a replica of the one promoted.
    env = dict(os.environ, NOTIFIER_SERVICES_DIR=str(Path(config_file).parents[2]))
    subprocess.run(["bash", str(ROOT / "scripts/services.sh"), "start", "redis-cluster"], env=env, check=True,
                   capture_output=True, timeout=120)


def test_a_master_killed_mid_run_loses_nothing_and_sends_nothing_answered_twice(worker, sandbox, wait_until, unique):
    r = get_redis()
    # Given users with an iOS token each, and a master of the data Redis chosen to die
    tokens = {}
    for _ in range(USERS):
        user, token = unique("user"), secrets.token_hex(32)
        register_device(user, token, "ios")
        tokens[user] = token
    users = list(tokens)
    events = [{"notification_id": unique("n"), "user_id": users[i % USERS], "type": "order_shipped",
               "category": "transactional", "priority": "high" if i % 5 == 0 else "normal", "channels": ["push"],
               "title": "Shipped", "body": "On its way"} for i in range(EVENTS)]
    victim = r.get_primaries()[0]
    victim_client = redis.Redis(host=victim.host, port=victim.port, decode_responses=True)
    info, victim_id = victim_client.info("server"), victim_client.execute_command("CLUSTER MYID")
    nodes = [(n.host, n.port) for n in r.get_nodes() if n.name != victim.name]

    # When the events flow in batches and the master is SIGKILLed a third of the way through
    started = time.monotonic()
    killed_at = failover_s = None
    for n, i in enumerate(range(0, EVENTS, BATCH)):
        notifier.send_notifications.delay(events[i:i + BATCH])
        if n == EVENTS // BATCH // 3:
            os.kill(info["process_id"], signal.SIGKILL)
            killed_at = time.monotonic()
        time.sleep(0.25)
    try:
        wait_until(lambda: _failed_over(nodes, victim_id), timeout_s=60)
        failover_s = round(time.monotonic() - killed_at, 1)
        nids = [e["notification_id"] for e in events]

        def settled():
            rows = _rows(nids)
            return rows if len({row.notification_id for row in rows}) == EVENTS and all(
                row.status in TERMINAL for row in rows) else None

        try:
            wait_until(settled, timeout_s=180)
        except Exception:  # noqa: BLE001 - counted below as lost
            pass
        drained_s = round(time.monotonic() - started, 1)
    finally:
        _restart(info["config_file"])

    # Then every event ended terminal, and APNs was asked twice only for a request in flight
    rows = _rows(nids)
    settled_events = {row.notification_id for row in rows} - {row.notification_id for row in rows
                                                             if row.status not in TERMINAL}
    ours = set(tokens.values())
    per_id = Counter(m["id"] for m in sandbox.messages() if m.get("target") in ours)
    twice = {k: n for k, n in per_id.items() if n > 1}
    flagged = {apns_id(row.idempotency_key) for row in rows if IN_FLIGHT_RESENT in (row.reason or "")}
    figures = {
        "events": EVENTS, "killed": victim.name, "failover_s": failover_s, "drained_s": drained_s,
        "lost": EVENTS - len(settled_events),
        "by_status": dict(Counter(row.status for row in rows)),
        "accepted_by_apns": len(per_id),
        "duplicates": sum(n - 1 for n in twice.values()),
        "dup_in_flight": sum(n - 1 for k, n in twice.items() if k in flagged),
        "dup_answered": sum(n - 1 for k, n in twice.items() if k not in flagged),
    }
    print("redis failover:", json.dumps(figures))
    (environment.TEST_VAR / "redis_failover.json").write_text(json.dumps(figures, indent=2))
    assert figures["lost"] == 0, figures
    assert figures["dup_answered"] == 0, figures
    assert figures["by_status"].get("sent", 0) == EVENTS, figures
