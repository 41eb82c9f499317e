"""The Kafka bridge: real broker, real bridge processes, a real Celery worker and the APNs sandbox.

Every test uses its own topics and consumer group, so tests never see each other's messages.
"""
from __future__ import annotations

import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from pydantic import ValidationError
from sqlalchemy import select

from sandbox import devstack
from notifier.intake.bridge.topics import ensure_topics
from notifier.store.db import session_factory
from notifier.intake.events import MAX_EVENT_BYTES
from notifier.store.models import NotificationLog
from tests.integration.environment import TEST_VAR, child_env
from tests.integration.isolation import TcpGate
from tests.integration.users import ios_user

BOOTSTRAP = os.environ.get("NOTIFIER_KAFKA_BOOTSTRAP_SERVERS")
needs_kafka = pytest.mark.skipif(not BOOTSTRAP, reason="Kafka comes from `make services` (make test starts it)")
ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4


# -- helpers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Topics:
    high: str
    low: str
    dead: str
    group: str

    @property
    def consumed(self) -> list[str]:
        return [self.high, self.low]


@pytest.fixture()
def topics():
    """A fresh pair of lane topics, a dead-letter topic and a consumer group for one test."""
    tag = uuid.uuid4().hex[:12]
    t = Topics(f"bridge-{tag}.high", f"bridge-{tag}.low", f"bridge-{tag}.dead", f"bridge-{tag}")
    ensure_topics(BOOTSTRAP, [t.high, t.low, t.dead], partitions=PARTITIONS)
    _end_offsets([t.high, t.low, t.dead])  # every partition has a leader
    yield t
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    futures = [*admin.delete_topics([t.high, t.low, t.dead]).values(),
               *admin.delete_consumer_groups([t.group]).values()]
    for future in futures:
        try:
            future.result(10)
        except Exception:  # noqa: BLE001 - a group that never committed does not exist
            pass


class BridgeProcess:
    """`python -m entrypoints.cli bridge` as a child process, logging to its own file."""

    def __init__(self, topics: Topics, *args: str, env: dict[str, str] | None = None) -> None:
        log_dir = TEST_VAR / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"bridge-{topics.group}-{time.monotonic_ns()}.log"
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "entrypoints.cli", "bridge",
                "--topics", ",".join(topics.consumed), "--group", topics.group,
                "--dead-letter-topic", topics.dead, "--stats-interval", "0.1",
                # A SIGKILLed member leaves the group after this long, not the default 45 s.
                "-X", "session.timeout.ms=6000", *args,
            ],
            env=env or child_env(), cwd=ROOT, stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stat(self, name: str) -> int:
        found = re.findall(rf"\b{name}=(\d+)", self.log())
        return int(found[-1]) if found else 0


@pytest.fixture()
def bridges():
    """Start bridge processes; whatever is still running at the end is stopped."""
    started: list[BridgeProcess] = []

    def _start(topics: Topics, *args: str, env: dict[str, str] | None = None) -> BridgeProcess:
        bridge = BridgeProcess(topics, *args, env=env)
        started.append(bridge)
        return bridge

    yield _start
    for bridge in started:
        devstack.stop(bridge.proc, timeout_s=10)


def _produce(topic: str, messages: list[tuple[bytes | None, bytes]]) -> list[tuple[int, int]]:
    """Produce (key, value) messages in order; return each one's (partition, offset)."""
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "enable.idempotence": True})
    positions: list[tuple[int, int] | None] = [None] * len(messages)

    def delivered(i, err, msg):
        assert err is None, err
        positions[i] = (msg.partition(), msg.offset())

    for i, (key, value) in enumerate(messages):
        producer.produce(topic, value=value, key=key, on_delivery=functools.partial(delivered, i))
    assert producer.flush(30) == 0
    return positions


def _read(topic: str, n: int, timeout_s: float = 30.0) -> list:
    """Read the first n messages of a topic (all partitions)."""
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"reader-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    got = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < n and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                got.append(msg)
    finally:
        consumer.close()
    return got


def _end_offsets(topics: list[str], timeout_s: float = 15.0) -> dict[tuple[str, int], int]:
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"reader-{uuid.uuid4().hex}"})
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                return {(t, p): consumer.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1]
                        for t in topics for p in range(PARTITIONS)}
            except KafkaException:
                if time.monotonic() > deadline:  # a new topic's leaders take a moment to be known
                    raise
                time.sleep(0.2)
    finally:
        consumer.close()


def _committed(group: str, topics: list[str]) -> dict[tuple[str, int], int]:
    """The group's committed offsets (0 where it committed none)."""
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(t, p) for t in topics for p in range(PARTITIONS)])
    result = admin.list_consumer_group_offsets([request])[group].result(10)
    return {(tp.topic, tp.partition): max(tp.offset, 0) for tp in result.topic_partitions}


def _all_committed(topics: Topics) -> bool:
    return _committed(topics.group, topics.consumed) == _end_offsets(topics.consumed)


def _event(unique, user: str, **extra) -> dict:
    return {"notification_id": unique("n"), "user_id": user, "type": "message", "category": "social",
            "channels": ["push"], "title": "New message", "body": "You have a new message"} | extra


def _rows(nids: list[str]) -> list[NotificationLog]:
    with session_factory()() as session:
        return list(session.scalars(select(NotificationLog).where(NotificationLog.notification_id.in_(nids))))


def _all_sent(nids: list[str]) -> bool:
    sent = {r.notification_id for r in _rows(nids) if r.status == "sent"}
    return sent == set(nids)


# -- validation and bookkeeping, no broker ------------------------------------------------------

GOOD = {"notification_id": "n-1", "user_id": "u-1", "type": "t", "category": "social", "title": "Hi", "body": "Yo"}


# -- publish, against the broker ---------------------------------------------------------------


@needs_kafka
def test_publish_validates_every_event_before_producing_any(topics):
    from notifier.intake.publish import flush, publish_many

    with pytest.raises(ValidationError, match="user_id"):
        publish_many([GOOD, GOOD | {"user_id": ""}], topic=topics.low)
    flush(10)
    assert set(_end_offsets([topics.low]).values()) == {0}, "nothing was produced"


@needs_kafka
def test_publish_cli_keys_events_by_user(topics, tmp_path):
    events = [GOOD | {"notification_id": f"n-{i}", "user_id": "u-same"} for i in range(5)]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    done = subprocess.run([sys.executable, "-m", "entrypoints.cli", "publish", "--file", str(path), "--topic", topics.low],
                          env=child_env(), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    got = _read(topics.low, 5)
    assert {m.key() for m in got} == {b"u-same"} and len({m.partition() for m in got}) == 1
    assert [json.loads(m.value())["notification_id"] for m in got] == [e["notification_id"] for e in events]


# -- the bridge end to end -------------------------------------------------------------------------


@needs_kafka
def test_poison_messages_go_to_the_dead_letter_topic_and_the_valid_ones_around_them_are_sent(
    worker, sandbox, topics, bridges, wait_until, unique
):
    from notifier.intake import publish
    from notifier.intake.publish import flush

    # Given valid events (published like a producer would) with poison interleaved on the same partitions
    users = [ios_user(unique) for _ in range(4)]
    valid = [
        (topics.high, _event(unique, users[0][0])),  # no priority: the high topic makes it high
        (topics.high, _event(unique, users[1][0], priority="low")),  # the event's own priority wins
        (topics.low, _event(unique, users[2][0])),
        (topics.low, _event(unique, users[3][0], priority="critical")),
    ]
    missing = {k: v for k, v in _event(unique, users[0][0]).items() if k != "user_id"}
    poison = [
        (topics.high, users[0][0].encode(), b"{definitely not json", "not JSON"),
        (topics.high, users[1][0].encode(), json.dumps(missing).encode(), "user_id"),
        (topics.low, users[2][0].encode(), json.dumps(_event(unique, users[2][0], title=123)).encode(), "title"),
        (topics.low, users[3][0].encode(),
         json.dumps(_event(unique, users[3][0], body="x" * (MAX_EVENT_BYTES + 1))).encode(), "MAX_EVENT_BYTES"),
    ]
    produced = []  # (topic, partition, offset, key, value, says)
    for (topic, event), (ptopic, key, value, says) in zip(valid, poison):
        publish(event, topic=topic)
        assert flush(10) == 0
        [(partition, offset)] = _produce(ptopic, [(key, value)])
        produced.append((ptopic, partition, offset, key, value, says))

    # When the bridge consumes them
    bridge = bridges(topics, "--batch-ms", "50")

    # Then every poison message is in the dead-letter topic, byte for byte, with where it came from and why
    dead = _read(topics.dead, len(poison))
    assert len(dead) == len(poison), bridge.log()[-3000:]
    by_origin = {}
    for msg in dead:
        headers = {k: v.decode() for k, v in msg.headers()}
        by_origin[(headers["source_topic"], int(headers["source_partition"]), int(headers["source_offset"]))] = (
            msg.key(), msg.value(), headers["error"])
    for topic, partition, offset, key, value, says in produced:
        got_key, got_value, error = by_origin[(topic, partition, offset)]
        assert (got_key, got_value) == (key, value)
        assert says in error
    # ... and every valid event around them was sent, once, on the lane its topic or its priority says
    nids = [e["notification_id"] for _, e in valid]
    wait_until(lambda: _all_sent(nids), timeout_s=60, message="valid events not all sent")
    priorities = {r.notification_id: r.priority for r in _rows(nids)}
    assert [priorities[n] for n in nids] == ["high", "low", "normal", "critical"]
    for _, token in users:
        assert len(sandbox.messages(provider="apns", target=token)) == 1
    wait_until(lambda: _all_committed(topics), timeout_s=15, message="offsets not committed past the poison")
    assert "definitely not json" not in bridge.log() and "x" * 100 not in bridge.log(), "no bodies in the log"
    assert bridge.proc.poll() is None, "the bridge kept running"


@needs_kafka
def test_a_killed_bridge_loses_nothing_and_delivers_nothing_twice(worker, sandbox, topics, bridges, wait_until, unique):
    # Given 300 users with an iOS device each, and a stream of one event per user
    users = [ios_user(unique) for _ in range(300)]
    events = [(topics.high if i % 2 else topics.low, _event(unique, user)) for i, (user, _) in enumerate(users)]

    def stream() -> None:
        for start in range(0, len(events), 30):
            chunk = events[start:start + 30]
            for topic in {t for t, _ in chunk}:
                _produce(topic, [(e["user_id"].encode(), json.dumps(e).encode()) for t, e in chunk if t == topic])
            time.sleep(0.3)

    producer = threading.Thread(target=stream)
    bridge = bridges(topics, "--batch-size", "20", "--batch-ms", "50")
    wait_until(lambda: "assigned bridge-" in bridge.log(), timeout_s=30, message=bridge.log()[-2000:])
    producer.start()

    # When the bridge is SIGKILLed mid-stream, after handing some of it over, and started again
    wait_until(lambda: bridge.stat("handed_over") >= 60, timeout_s=60, message=bridge.log()[-2000:])
    bridge.proc.kill()
    bridge.proc.wait(10)
    handed_over_before_kill = bridge.stat("handed_over")
    assert handed_over_before_kill < len(events), "the kill came after the whole stream"
    bridges(topics, "--batch-size", "20", "--batch-ms", "50")
    producer.join(60)

    # Then every event is delivered, exactly once per device
    nids = [e["notification_id"] for _, e in events]
    wait_until(lambda: _all_sent(nids), timeout_s=90, message="not every event was sent after the restart")
    tokens = {token for _, token in users}
    per_token = Counter(m["target"] for m in sandbox.messages(provider="apns") if m["target"] in tokens)
    assert per_token == Counter({token: 1 for token in tokens})
    statuses = Counter(r.status for r in _rows(nids))
    assert statuses["sent"] == len(events)
    assert set(statuses) <= {"sent", "duplicate"}, statuses  # a redelivered event is recorded as a duplicate
    wait_until(lambda: _all_committed(topics), timeout_s=15)


@needs_kafka
def test_events_consumed_again_are_recorded_as_duplicates_not_sent_again(worker, sandbox, topics, bridges,
                                                                         wait_until, unique):
    # Given 50 events the bridge has handed over and committed
    users = [ios_user(unique) for _ in range(50)]
    events = [_event(unique, user) for user, _ in users]
    _produce(topics.low, [(e["user_id"].encode(), json.dumps(e).encode()) for e in events])
    first = bridges(topics, "--batch-ms", "50")
    nids = [e["notification_id"] for e in events]
    wait_until(lambda: _all_sent(nids) and _all_committed(topics), timeout_s=60)
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(15) == 0

    # When the group's offsets go back to the start (as after a crash between hand-over and commit)
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    rewind = ConsumerGroupTopicPartitions(topics.group, [TopicPartition(t, p, 0) for t in topics.consumed
                                                         for p in range(PARTITIONS)])
    admin.alter_consumer_group_offsets([rewind])[topics.group].result(10)
    second = bridges(topics, "--batch-ms", "50")
    wait_until(lambda: second.stat("handed_over") == len(events), timeout_s=30, message=second.log()[-2000:])

    # Then every event consumed twice is recorded once more as a duplicate, and sent only once
    wait_until(lambda: Counter(r.status for r in _rows(nids))["duplicate"] == len(events), timeout_s=60)
    assert Counter(r.status for r in _rows(nids)) == {"sent": len(events), "duplicate": len(events)}
    tokens = {token for _, token in users}
    assert Counter(m["target"] for m in sandbox.messages(provider="apns") if m["target"] in tokens) == Counter(
        {token: 1 for token in tokens})


@needs_kafka
def test_sigterm_hands_over_the_batch_in_flight_commits_and_exits_0(worker, sandbox, topics, bridges, wait_until,
                                                                    unique):
    # Given 40 events consumed into batches that would wait a minute to be handed over
    users = [ios_user(unique) for _ in range(40)]
    events = [_event(unique, user) for user, _ in users]
    for topic, part in ((topics.high, events[:20]), (topics.low, events[20:])):
        _produce(topic, [(e["user_id"].encode(), json.dumps(e).encode()) for e in part])
    bridge = bridges(topics, "--batch-size", "1000", "--batch-ms", "60000")
    wait_until(lambda: bridge.stat("consumed") == len(events), timeout_s=30, message=bridge.log()[-2000:])
    nids = [e["notification_id"] for e in events]
    assert _rows(nids) == [], "still in flight"

    # When it gets SIGTERM
    started = time.monotonic()
    bridge.proc.send_signal(signal.SIGTERM)
    code = bridge.proc.wait(15)
    took = time.monotonic() - started

    # Then it exits 0 within seconds, having handed the batch over and committed up to the end
    assert code == 0, bridge.log()[-3000:]
    # The bridge gives itself 10 s (shutdown_timeout_s) to hand over and commit before it gives up.
    assert took < 10, f"took {took:.1f}s to stop"
    end = _end_offsets(topics.consumed)
    assert sum(end.values()) == len(events)
    assert _committed(topics.group, topics.consumed) == end
    wait_until(lambda: _all_sent(nids), timeout_s=60, message="the batch in flight was not handed over")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_database_outage_holds_the_offsets_and_loses_nothing(topics, bridges, database, wait_until, unique):
    # Given a bridge whose database (where it stores what it accepts) sits behind a gate
    from urllib.parse import urlsplit

    url = urlsplit(database)
    if not url.scheme.startswith("postgresql"):
        pytest.skip("needs PostgreSQL from `make services`")
    gate = TcpGate((url.hostname, url.port))
    gate.open()
    env = child_env() | {"NOTIFIER_DATABASE_URL": database.replace(f":{url.port}/", f":{gate.port}/")}
    try:
        bridge = bridges(topics, "--batch-ms", "50", env=env)
        before = [_event(unique, unique("user")) for _ in range(10)]
        _produce(topics.high, [(e["user_id"].encode(), json.dumps(e).encode()) for e in before])
        wait_until(lambda: _all_committed(topics), timeout_s=30, message=bridge.log()[-2000:])

        # When the database goes away while events keep coming
        gate.close()
        committed_before = _committed(topics.group, topics.consumed)
        during = [_event(unique, unique("user")) for _ in range(10)]
        _produce(topics.high, [(e["user_id"].encode(), json.dumps(e).encode()) for e in during])
        wait_until(lambda: "over failed" in bridge.log(), timeout_s=60, message=bridge.log()[-2000:])
        time.sleep(1.0)

        # Then nothing past the events not yet stored is committed, and the bridge keeps retrying
        assert _committed(topics.group, topics.consumed) == committed_before
        assert bridge.proc.poll() is None
        assert _rows([e["notification_id"] for e in during]) == []

        # ... and once the database is back, the events are stored (accepted) and the offsets move on
        gate.open()
        wait_until(lambda: _all_committed(topics), timeout_s=60, message=bridge.log()[-2000:])
        rows = _rows([e["notification_id"] for e in during])
        assert sorted(r.notification_id for r in rows) == sorted(e["notification_id"] for e in during)
        bridge.proc.send_signal(signal.SIGTERM)
        assert bridge.proc.wait(15) == 0
    finally:
        gate.close()


def test_a_celery_broker_outage_loses_nothing_the_rows_are_stored(topics, bridges, database, wait_until, unique):
    # Given a bridge whose Celery broker is a Redis of its own, which is down
    port = _free_port()
    env = child_env() | {"NOTIFIER_BROKER_URL": f"redis://127.0.0.1:{port}/0"}
    bridge = bridges(topics, "--batch-ms", "50", env=env)
    events = [_event(unique, ios_user(unique)[0]) for _ in range(10)]

    # When events arrive
    _produce(topics.high, [(e["user_id"].encode(), json.dumps(e).encode()) for e in events])

    # Then they are accepted all the same: stored `queued` (the sweeper re-drives them once a broker
    # takes work), and their offsets committed
    wait_until(lambda: _all_committed(topics), timeout_s=60, message=bridge.log()[-2000:])
    rows = _rows([e["notification_id"] for e in events])
    assert sorted(r.notification_id for r in rows) == sorted(e["notification_id"] for e in events)
    assert {r.status for r in rows} == {"queued"}
    assert "the sweeper re-drives them" in bridge.log()
    bridge.proc.send_signal(signal.SIGTERM)
    assert bridge.proc.wait(15) == 0
