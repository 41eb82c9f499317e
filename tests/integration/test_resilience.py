"""Crashes and backlogs: each test runs its own workers on a broker database of its own."""
from __future__ import annotations

import os
import signal
import socket
import statistics
import time

from notifier.queues import QUEUES
from sandbox import devstack
from notifier.store.redis_conn import broker_redis
from notifier.accounts.status import get_status
from notifier.store import models
from tasks.pipeline import send_notification, send_notifications
from tests.integration.environment import TEST_VAR, child_env
from tests.integration.isolation import TcpGate, isolated_broker, produce
from tests.integration.users import ios_user

TERMINAL = {status.value for status in models.TERMINAL}
BACKLOG = 2000


def _terminal(nid: str) -> bool:
    rows = get_status(nid)
    return bool(rows) and all(r["status"] in TERMINAL for r in rows)


def _event(nid: str, user: str, priority: str) -> dict:
    return {"notification_id": nid, "user_id": user, "type": "t", "category": "transactional",
            "priority": priority, "channels": ["push"], "title": "T", "body": "B"}


def test_worker_killed_between_claim_and_send_is_recovered_by_the_sweeper(sandbox, database, wait_until, unique):
    # Given a worker whose APNs endpoint swallows the connection (the request never reaches APNs)
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(8)
    logs = TEST_VAR / "logs" / "resilience"
    with isolated_broker("sweeper") as broker:
        env = child_env() | {"NOTIFIER_BROKER_KEY_PREFIX": broker}
        doomed = devstack.start_worker(
            env | {"NOTIFIER_APNS_URL": f"https://127.0.0.1:{blackhole.getsockname()[1]}"},
            logs / "doomed.log", new_session=True,
        )
        beat = devstack.start_beat(env, logs / "beat.log", logs / "beat")
        healthy = None
        try:
            user, token = ios_user(unique)
            nid = unique("n")
            produce(broker, send_notification, _event(nid, user, "high"))

            # When the worker has claimed the delivery and is connecting to "APNs"
            blackhole.settimeout(20)
            conn, _ = blackhole.accept()
            assert [r["status"] for r in get_status(nid)] == ["sending"]
            os.killpg(doomed.pid, signal.SIGKILL)  # the whole worker: parent and children
            doomed.wait(10)
            conn.close()

            # Then a healthy worker, driven by the sweeper, sends it exactly once
            healthy = devstack.start_worker(env, logs / "healthy.log")
            [row] = wait_until(lambda: [r for r in get_status(nid) if r["status"] in TERMINAL], timeout_s=40)
            assert row["status"] == "sent"
            assert len(sandbox.messages(target=token)) == 1
        finally:
            devstack.stop(healthy)
            devstack.stop(beat)
            devstack.stop(doomed)
            blackhole.close()


def test_high_priority_is_not_delayed_by_a_low_priority_backlog(sandbox, database, wait_until, unique, capsys):
    # Given dedicated workers per lane, as production runs them, and a backlog of low-lane events
    logs = TEST_VAR / "logs" / "backlog"
    high_queues = tuple(q for q in QUEUES if q.endswith(".high"))
    low_queues = tuple(q for q in QUEUES if not q.endswith(".high"))
    with isolated_broker("backlog") as broker:
        env = child_env() | {"NOTIFIER_BROKER_KEY_PREFIX": broker}
        high = devstack.start_worker(env, logs / "high.log", queues=high_queues, concurrency=1, name="high")
        low = None
        try:
            users = [ios_user(unique) for _ in range(100)]
            backlog = [_event(unique("low"), users[i % 100][0], "low") for i in range(BACKLOG)]
            # Accepted (stored) first, then the low lane's worker starts on the whole backlog: producing
            # it now takes longer than draining a part of it would.
            for i in range(0, len(backlog), 100):
                produce(broker, send_notifications, backlog[i:i + 100])
            low = devstack.start_worker(env, logs / "low.log", queues=low_queues, concurrency=1, name="low")

            # When high-priority events arrive behind it
            latencies = []
            for _ in range(5):
                user, _token = ios_user(unique)
                nid = unique("high")
                started = time.monotonic()
                produce(broker, send_notification, _event(nid, user, "high"))
                wait_until(lambda: [r for r in get_status(nid) if r["status"] == "sent"], timeout_s=30, interval_s=0.02)
                latencies.append(time.monotonic() - started)
            pending = broker_redis().llen(broker + "pipeline.low")

            # Then each is sent within a small bound while the backlog is still there
            with capsys.disabled():
                print(f"\nhigh-lane latency behind a {BACKLOG}-event low backlog: "
                      f"median {statistics.median(latencies)*1000:.0f} ms, max {max(latencies)*1000:.0f} ms; "
                      f"pipeline.low still queued: {pending} tasks")
            assert pending > 0, "the backlog drained before the high-lane events were measured"
            assert max(latencies) < 3.0

            # And the backlog itself drains with nothing lost
            ids = [e["notification_id"] for e in backlog]
            wait_until(lambda: all(_terminal(nid) for nid in ids[-50:]), timeout_s=120, interval_s=0.5)
            assert all(_terminal(nid) for nid in ids)
        finally:
            devstack.stop(high)
            devstack.stop(low)


def test_database_outage_in_the_workers_loses_nothing(sandbox, database, wait_until, unique):
    # Given a worker whose database is unreachable
    from urllib.parse import urlsplit

    url = urlsplit(database)
    if not url.scheme.startswith("postgresql"):
        import pytest

        pytest.skip("needs PostgreSQL from `make services`")
    gate = TcpGate((url.hostname, url.port))
    logs = TEST_VAR / "logs" / "outage"
    with isolated_broker("outage") as broker:
        env = child_env() | {"NOTIFIER_BROKER_KEY_PREFIX": broker,
                             "NOTIFIER_DATABASE_URL": database.replace(f":{url.port}/", f":{gate.port}/")}
        worker = devstack.start_worker(env, logs / "worker.log")
        try:
            user, token = ios_user(unique)
            nid = unique("n")
            # When an event is accepted (stored by the producer) during the workers' outage
            produce(broker, send_notification, _event(nid, user, "high"))
            wait_until(lambda: b"Retry in" in (logs / "worker.log").read_bytes(), timeout_s=20)
            assert [r["status"] for r in get_status(nid)] == ["queued"]

            # Then once the database is back, it is filtered and sent, once
            gate.open()
            [row] = wait_until(lambda: [r for r in get_status(nid) if r["status"] in TERMINAL], timeout_s=60)
            assert row["status"] == "sent"
            assert len(sandbox.messages(target=token)) == 1
        finally:
            devstack.stop(worker)
            gate.close()


def test_scheduled_delivery_survives_losing_workers_beat_and_the_broker_queues(sandbox, database, wait_until, unique):
    # Given a delivery scheduled a few seconds ahead, and a stack running
    from datetime import datetime, timedelta, timezone

    logs = TEST_VAR / "logs" / "durable"
    with isolated_broker("durable") as broker:
        env = child_env() | {"NOTIFIER_BROKER_KEY_PREFIX": broker}
        worker = devstack.start_worker(env, logs / "worker-1.log", new_session=True)
        beat = devstack.start_beat(env, logs / "beat-1.log", logs / "beat-1")
        user, token = ios_user(unique)
        nid = unique("n")
        send_at = datetime.now(timezone.utc) + timedelta(seconds=6)
        produce(broker, send_notification, _event(nid, user, "high") | {"send_at": send_at.isoformat()})
        wait_until(lambda: [r for r in get_status(nid) if r["status"] == "scheduled"], timeout_s=20)

        # When the worker is killed, beat stops, and every broker key is lost (a Redis restart without data)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
        devstack.stop(beat)
        r = broker_redis()
        for key in r.scan_iter(match=broker + "*"):
            r.delete(key)

        # Then a new stack sends it once, after its time
        worker = devstack.start_worker(env, logs / "worker-2.log")
        beat = devstack.start_beat(env, logs / "beat-2.log", logs / "beat-2")
        try:
            [row] = wait_until(lambda: [r for r in get_status(nid) if r["status"] in TERMINAL], timeout_s=40)
            assert row["status"] == "sent"
            sent_at = row["sent_at"] if row["sent_at"].tzinfo else row["sent_at"].replace(tzinfo=timezone.utc)
            assert sent_at >= send_at - timedelta(seconds=1)
            time.sleep(2)  # a duplicate release would show up by now
            assert len(sandbox.messages(target=token)) == 1
        finally:
            devstack.stop(beat)
            devstack.stop(worker)


def test_push_worker_killed_mid_batch_sends_nothing_twice(sandbox, database, wait_until, unique):
    # Given a batch of 20 pushes in one send task, of which APNs answers 15 at once and holds 5 unanswered
    logs = TEST_VAR / "logs" / "mid-batch"
    users = [ios_user(unique) for _ in range(20)]
    slow = [token for _, token in users[15:]]
    for token in slow:
        # Dropped unanswered after 30 s: never accepted, so resending these is no duplicate.
        sandbox.add_fault("apns", token, drop=True, latency_ms=30_000, count=1)
    fast = [token for _, token in users[:15]]
    with isolated_broker("mid-batch") as broker:
        env = child_env() | {"NOTIFIER_BROKER_KEY_PREFIX": broker}
        push_queues = tuple(q for q in QUEUES if q.startswith("push."))
        doomed = devstack.start_worker(env, logs / "doomed.log", queues=push_queues, concurrency=1,
                                       new_session=True, name="doomed")
        pipeline = devstack.start_worker(env, logs / "pipeline.log",
                                         queues=tuple(q for q in QUEUES if q not in push_queues), name="pipeline")
        beat = devstack.start_beat(env, logs / "beat.log", logs / "beat")
        healthy = None
        try:
            events = [_event(unique("n"), user, "high") for user, _ in users]
            produce(broker, send_notifications, events)

            # When the push worker dies once the 15 answers are in, while it waits for the other 5
            wait_until(lambda: all(sandbox.messages(target=t) for t in fast), timeout_s=30)
            time.sleep(0.3)  # the answers reach the worker
            os.killpg(doomed.pid, signal.SIGKILL)
            doomed.wait(10)

            # Then a new push worker, driven by the sweeper, finishes the batch: every delivery is sent,
            # and APNs was asked exactly once per delivery
            healthy = devstack.start_worker(env, logs / "healthy.log", queues=push_queues, name="healthy")
            for event in events:
                wait_until(lambda: _terminal(event["notification_id"]), timeout_s=60)
                assert [r["status"] for r in get_status(event["notification_id"])] == ["sent"]
            assert {t: len(sandbox.messages(target=t)) for _, t in users} == {t: 1 for _, t in users}
            recovered = [r for e in events[:15] for r in get_status(e["notification_id"])]
            assert all("recorded on recovery" in (r["reason"] or "") for r in recovered)
            # And the 5 whose requests were in flight (sent, never answered) say they were sent again
            resent = [r for e in events[15:] for r in get_status(e["notification_id"])]
            assert all("sent again after a worker died with an earlier request in flight" in r["reason"]
                       for r in resent), resent
        finally:
            devstack.stop(healthy)
            devstack.stop(beat)
            devstack.stop(pipeline)
            devstack.stop(doomed)


def test_broker_redis_killed_and_restarted_empty_loses_nothing(sandbox, database, wait_until, unique, tmp_path):
    # Given a stack on a Redis of its own (broker and data), and a backlog of accepted events in it
    import shutil
    import subprocess

    import pytest

    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server from `make services`")
    from tasks.app import app

    port = devstack.free_port()

    def start_redis(data_dir) -> subprocess.Popen:
        data_dir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
                                 "--appendonly", "yes", "--save", ""], stdout=subprocess.DEVNULL)
        wait_until(lambda: _answers(port), timeout_s=10)
        return proc

    server = start_redis(tmp_path / "before")
    env = child_env() | {"NOTIFIER_REDIS_URL": f"redis://127.0.0.1:{port}/0",
                         "NOTIFIER_BROKER_URL": f"redis://127.0.0.1:{port}/1"}
    logs = TEST_VAR / "logs" / "redis-kill"
    worker = beat = None
    try:
        users = [ios_user(unique) for _ in range(20)]
        events = [_event(unique("n"), users[i % 20][0], "high" if i % 2 else "low") for i in range(200)]
        with app.connection_for_write(env["NOTIFIER_BROKER_URL"]) as conn:
            for i in range(0, len(events), 50):
                send_notifications.apply_async((events[i:i + 50],), connection=conn)
        assert all(r["status"] == "queued" for e in events for r in get_status(e["notification_id"]))

        # When that Redis is SIGKILLed and comes back with nothing (its queued messages gone)
        server.kill()
        server.wait(10)
        server = start_redis(tmp_path / "after")

        # Then the stack started on it sends every event, once
        worker = devstack.start_worker(env, logs / "worker.log")
        beat = devstack.start_beat(env, logs / "beat.log", logs / "beat")
        ids = [e["notification_id"] for e in events]
        wait_until(lambda: all(_terminal(nid) for nid in ids), timeout_s=120, interval_s=0.5)
        assert [r["status"] for nid in ids for r in get_status(nid)] == ["sent"] * len(ids)
        per_token = {t: len(sandbox.messages(target=t)) for _, t in users}
        assert per_token == {t: 10 for _, t in users}
    finally:
        devstack.stop(beat)
        devstack.stop(worker)
        server.kill()
        server.wait(10)


def _answers(port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(port=port, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def test_a_threads_pool_worker_keeps_several_slow_batches_in_flight_each_sent_once(
        sandbox, database, wait_until, unique):
    # Given every APNs answer 300 ms late, and one worker process on Celery's threads pool with 4
    # threads (`notifier worker --pool threads -c 4`): each thread sends on an HTTP/2 connection of its own
    logs = TEST_VAR / "logs" / "resilience"
    sandbox.add_fault(latency_ms=300, fraction=1.0)
    with isolated_broker("threads") as broker:
        env = child_env() | {"NOTIFIER_BROKER_KEY_PREFIX": broker}
        open_before = sandbox.connections()["open"]
        proc = devstack.start_worker(env, logs / "threads.log", pool="threads", concurrency=4)
        try:
            # When 8 batches of 25 users' events arrive at once
            batches = []
            for b in range(8):
                users = [ios_user(unique) for _ in range(25)]
                batches.append([(unique("n"), user, token) for user, token in users])
            started = time.monotonic()
            for batch in batches:
                produce(broker, send_notifications, [_event(nid, user, "normal") for nid, user, _ in batch])
            everything = [nid for batch in batches for nid, _, _ in batch]
            wait_until(lambda: all(_terminal(nid) for nid in everything), timeout_s=90)
            took = time.monotonic() - started
            opened = sandbox.connections()["open"] - open_before
            requests = {token: len(sandbox.messages(target=token)) for batch in batches for _, _, token in batch}
        finally:
            devstack.stop(proc)
            sandbox.reset()

    # Then every delivery was sent, each token received exactly one request
    assert {r["status"] for nid in everything for r in get_status(nid)} == {"sent"}
    assert set(requests.values()) == {1}, {n for n in requests.values() if n != 1}
    # And the one process sent on several HTTP/2 connections, one per thread that sent (a transport
    # shared by the threads would be one connection, used by two threads at once); the time is
    # only reported: the bench measures throughput (`python -m bench`, whose low lane runs the threads pool)
    assert opened >= 2, f"{opened} APNs connection(s) from a threads-pool worker of 4 threads"
    print(f"8 batches x 25 deliveries, 300 ms per answer, one threads-pool process, {opened} connections: "
          f"{took:.1f}s")
