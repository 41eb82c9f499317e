"""A hand-over that fails for one event's own reason dead-letters that event; only an outage holds a batch."""
from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter

import kombu.exceptions
import pytest

from notifier.intake.bridge.consumer import Bridge
from notifier.intake.events import NotificationEvent
from tests.integration.test_bridge import (  # noqa: F401 - fixtures
    BOOTSTRAP, Topics, _all_committed, _all_sent, _committed, _end_offsets, _event, _produce, _read,
    bridges, needs_kafka, topics,
)
from tests.integration.users import ios_user


def _nested(depth: int) -> dict:
    data: dict = {}
    inner = data
    for _ in range(depth):
        inner["a"] = {}
        inner = inner["a"]
    return data


class Running:
    """A Bridge in a thread of this process, with the hand-over the test gives it."""

    def __init__(self, topics: Topics, hand_over, **options) -> None:
        self.bridge = Bridge({topics.high: "high", topics.low: "low"}, group_id=topics.group,
                             dead_letter_topic=topics.dead, bootstrap_servers=BOOTSTRAP, create_topics=False,
                             batch_size=50, batch_ms=50, stats_interval_s=0.5, hand_over=hand_over, **options)
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.code = self.bridge.run()

    def stop(self) -> int | None:
        self.bridge.stop()
        self.thread.join(30)
        return self.code


@pytest.fixture()
def running():
    started: list[Running] = []

    def _start(topics: Topics, hand_over, **options) -> Running:
        started.append(Running(topics, hand_over, **options))
        return started[-1]

    yield _start
    for one in started:
        one.stop()


@needs_kafka
def test_an_event_nested_too_deep_to_enqueue_is_dead_lettered_and_its_lane_moves_on(
    worker, sandbox, topics, bridges, wait_until, unique
):
    # Given a lane partition holding valid events around one whose data is nested 300 deep
    # (it passes decode_event; the real hand-over cannot serialize it)
    users = [ios_user(unique) for _ in range(3)]
    before, after = _event(unique, users[0][0]), [_event(unique, u) for u, _ in users[1:]]
    deep = _event(unique, users[0][0], data=_nested(300))
    [*_, (partition, deep_offset), _, _] = _produce(
        topics.low, [(b"k", json.dumps(e).encode()) for e in (before, deep, *after)])

    # When the bridge hands them over to Celery
    bridge = bridges(topics, "--batch-ms", "200")

    # Then the deep one is in the dead-letter topic saying why, the others are sent, and the offsets move past it
    [letter] = _read(topics.dead, 1, timeout_s=60)
    headers = dict(letter.headers())
    assert (headers["source_partition"], headers["source_offset"]) == (str(partition).encode(),
                                                                       str(deep_offset).encode())
    assert json.loads(letter.value())["notification_id"] == deep["notification_id"]
    assert headers["error"].startswith((b"hand-over failed: ValueError", b"data")), headers["error"]
    nids = [e["notification_id"] for e in (before, *after)]
    wait_until(lambda: _all_sent(nids), timeout_s=60, message=bridge.log()[-2000:])
    wait_until(lambda: _all_committed(topics), timeout_s=30, message=bridge.log()[-2000:])
    bridge.proc.send_signal(signal.SIGTERM)
    assert bridge.proc.wait(20) == 0, bridge.log()[-3000:]


@needs_kafka
def test_a_hand_over_refusing_one_event_dead_letters_that_event_and_hands_over_each_other_once(
    topics, running, wait_until
):
    # Given 300 events on both lanes, 3 of which the hand-over refuses for a reason of their own
    poisoned = {"n-17", "n-150", "n-299"}
    handed: Counter[str] = Counter()
    calls: list[int] = []

    def hand_over(events: list[NotificationEvent], lane: str) -> None:
        calls.append(len(events))
        bad = [e.notification_id for e in events if e.notification_id in poisoned]
        if bad:
            raise ValueError(f"cannot serialize {bad[0]}")
        handed.update(e.notification_id for e in events)

    events = [{"notification_id": f"n-{i}", "user_id": f"u-{i % 7}", "type": "t", "category": "social",
               "title": "Hi", "body": "Yo"} for i in range(300)]
    for topic, part in ((topics.high, events[::2]), (topics.low, events[1::2])):
        _produce(topic, [(e["user_id"].encode(), json.dumps(e).encode()) for e in part])

    # When the bridge hands them over
    bridge = running(topics, hand_over)

    # Then every other event is handed over exactly once, the 3 are dead-lettered with the error, and all is committed
    wait_until(lambda: sum(handed.values()) >= 297 and bridge.bridge.stats.dead_lettered >= 3, timeout_s=60)
    wait_until(lambda: _all_committed(topics), timeout_s=30)
    assert handed == Counter({e["notification_id"]: 1 for e in events if e["notification_id"] not in poisoned})
    dead = _read(topics.dead, 3, timeout_s=30)
    assert {json.loads(m.value())["notification_id"]: dict(m.headers())["error"] for m in dead} == {
        n: f"hand-over failed: ValueError: cannot serialize {n}".encode() for n in poisoned}
    assert len(calls) < 120, f"{len(calls)} hand-overs for {len(events)} events: bisect, not one by one"
    assert bridge.stop() == 0


@needs_kafka
def test_an_outage_holds_the_batch_and_commits_nothing_until_the_hand_over_works_again(topics, running, wait_until):
    # Given a hand-over whose broker is down (kombu's OperationalError, as Celery raises it)
    down = threading.Event()
    down.set()
    attempts: list[int] = []
    handed: Counter[str] = Counter()

    def hand_over(events: list[NotificationEvent], lane: str) -> None:
        attempts.append(len(events))
        if down.is_set():
            raise kombu.exceptions.OperationalError("Error 111 connecting to 127.0.0.1:1. Connection refused.")
        handed.update(e.notification_id for e in events)

    events = [{"notification_id": f"n-{i}", "user_id": f"u-{i}", "type": "t", "category": "social",
               "title": "Hi", "body": "Yo"} for i in range(20)]
    _produce(topics.low, [(e["user_id"].encode(), json.dumps(e).encode()) for e in events])
    bridge = running(topics, hand_over)

    # When it is tried several times while the outage lasts
    wait_until(lambda: len(attempts) >= 3, timeout_s=30)
    time.sleep(1.0)

    # Then nothing is committed and nothing is dead-lettered or handed over
    assert set(_committed(topics.group, topics.consumed).values()) == {0}
    assert bridge.bridge.stats.dead_lettered == 0 and not handed

    # ... and once the broker is back every event is handed over once and the offsets move to the end
    down.clear()
    wait_until(lambda: sum(handed.values()) == len(events), timeout_s=30)
    wait_until(lambda: _all_committed(topics), timeout_s=30)
    assert handed == Counter({e["notification_id"]: 1 for e in events})
    assert _read(topics.dead, 1, timeout_s=3) == []
    assert bridge.stop() == 0
