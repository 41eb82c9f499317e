"""Dead letters never jam a lane: one too large to go whole goes truncated, with proof of the original."""
from __future__ import annotations

import hashlib
import json
import signal
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from tests.integration.test_bridge import (  # noqa: F401 - fixtures
    BOOTSTRAP, _all_committed, _all_sent, _committed, _end_offsets, _event, _produce, _read, bridges,
    needs_kafka, topics,
)
from tests.integration.users import ios_user
from tests.integration.test_bridge_hand_over import running  # noqa: F401 - fixture

# What a producer can put on the broker: its default message.max.bytes (1,000,000) and the broker's
# default record-batch limit (message.max.bytes 1,048,588), both less some framing.
NEAR_PRODUCER_LIMIT = 999_000
NEAR_BROKER_LIMIT = 1_040_000


# -- the letter, no broker ----------------------------------------------------------------------------------


# -- the bridge against the broker ------------------------------------------------------------------------


def _produce_all(topic: str, messages: list[tuple[bytes | None, bytes]], **config) -> None:
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "enable.idempotence": True, "linger.ms": 20, **config})
    errors = []
    for key, value in messages:
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=lambda err, _m: err and errors.append(err))
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(60) == 0 and not errors, errors


@needs_kafka
def test_two_thousand_malformed_messages_five_of_them_1mb_all_reach_the_dead_letter_topic_without_jamming(
    worker, sandbox, topics, bridges, wait_until, unique
):
    # Given 2,000 malformed messages (5 of them ~1 MB, at the producer's and the broker's limits)
    # and 40 valid events between them, on both lanes and on the same partitions (one key each lane)
    users = [ios_user(unique) for _ in range(40)]
    valid = [_event(unique, user) for user, _ in users]
    large = {100: NEAR_PRODUCER_LIMIT, 500: NEAR_PRODUCER_LIMIT, 900: NEAR_PRODUCER_LIMIT}
    larger = {1300: NEAR_BROKER_LIMIT, 1700: NEAR_BROKER_LIMIT}
    forged = "n-forged\n2026-01-01 00:00:00 ERROR notifier.intake.bridge: FORGED"
    ordinary, big = {topics.high: [], topics.low: []}, {topics.high: [], topics.low: []}
    for i in range(2000):
        topic = topics.high if i % 2 else topics.low
        key = b"same-key"
        if i in large or i in larger:
            size = large.get(i) or larger[i]
            value = (b'{"notification_id": "big-%d", "blob": "' % i).ljust(size - 2, b"x") + b'"}'
            big[topic].append((key, value, i in larger))
        elif i == 7:
            value = json.dumps({"notification_id": forged, "type": "t"}).encode()
            ordinary[topic].append((key, value))
        else:
            value = b"{not json %d" % i if i % 3 else json.dumps({"notification_id": f"bad-{i}"}).encode()
            ordinary[topic].append((key, value))
        if i % 50 == 0:
            ordinary[topic].append((key, json.dumps(valid[i // 50]).encode()))
    for topic in (topics.high, topics.low):
        _produce_all(topic, ordinary[topic][:len(ordinary[topic]) // 2])
        _produce_all(topic, [(k, v) for k, v, over in big[topic] if not over])
        _produce_all(topic, [(k, v) for k, v, over in big[topic] if over], **{"message.max.bytes": 1_048_576})
        _produce_all(topic, ordinary[topic][len(ordinary[topic]) // 2:])

    # When one bridge consumes them
    bridge = bridges(topics, "--batch-ms", "50")

    # Then every malformed message is in the dead-letter topic once, the 1 MB ones truncated with proof
    dead = _read(topics.dead, 2000, timeout_s=120)
    origins = {}
    for msg in dead:
        headers = dict(msg.headers())
        origins[(headers["source_topic"], headers["source_partition"], headers["source_offset"])] = (msg, headers)
    assert len(origins) == 2000, (len(dead), len(origins), bridge.log()[-3000:])
    assert sum(_end_offsets([topics.dead]).values()) == 2000, "each one once"
    truncated = [(msg, h) for msg, h in origins.values() if h.get("truncated") == b"true"]
    originals = {v: v for topic in big.values() for _, v, _ in topic}
    assert len(truncated) == 5
    for msg, headers in truncated:
        [original] = [v for v in originals if hashlib.sha256(v).hexdigest().encode() == headers["original_sha256"]]
        assert int(headers["original_size"]) == len(original) and original.startswith(msg.value())
        assert b"MAX_EVENT_BYTES" in headers["error"]
        assert len(msg.value()) > 900_000
    # ... the valid events between them were handed over and sent, and every offset committed
    nids = [e["notification_id"] for e in valid]
    wait_until(lambda: _all_sent(nids), timeout_s=90, message="valid events not all sent")
    wait_until(lambda: _all_committed(topics), timeout_s=30, message="offsets stuck: " + bridge.log()[-2000:])
    # ... with no error lines, no forged line, and a clean exit on SIGTERM
    lines = bridge.log().splitlines()
    assert not [line for line in lines if line.split(" ", 3)[2:3] == ["ERROR"]], lines[-30:]
    assert not [line for line in lines if line.startswith("2026-01-01 00:00:00 ERROR")], "a forged log line"
    assert any("n-forged\\n2026" in line for line in lines), "the id is logged escaped"
    bridge.proc.send_signal(signal.SIGTERM)
    assert bridge.proc.wait(20) == 0, bridge.log()[-3000:]
    assert bridge.stat("dead_lettered") == 2000


def _set_max_message_bytes(topic: str, value: int) -> None:
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("max.message.bytes", str(value), incremental_operation=AlterConfigOpType.SET)])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(15)


@needs_kafka
def test_a_dead_letter_topic_that_refuses_letters_holds_the_offset_not_the_lane_and_backs_off(
    topics, running, wait_until, caplog
):
    # Given a dead-letter topic that refuses anything over 4 KiB (below the letters' 16 KiB floor)
    _set_max_message_bytes(topics.dead, 4096)
    handed: list[str] = []
    events = [json.dumps({"notification_id": f"n-{i}", "user_id": "u", "type": "t", "category": "social",
                          "title": "Hi", "body": "Yo"}).encode() for i in range(30)]
    too_big = b"{not json " + b"x" * 40_000
    positions = _produce(topics.low, [(b"k", events[0]), (b"k", too_big), *[(b"k", e) for e in events[1:]]])
    partition, letter_offset = positions[1]

    # When a bridge reads them, and a second poison arrives while the first still waits
    caplog.set_level("INFO", logger="notifier.intake.bridge")
    bridge = running(topics, lambda batch, lane: handed.extend(e.notification_id for e in batch),
                     unsent_letters_max_bytes=60_000)
    wait_until(lambda: len(handed) == len(events), timeout_s=30, message="valid events behind the letter")
    wait_until(lambda: _committed(topics.group, [topics.low]).get((topics.low, partition)) == letter_offset,
               timeout_s=15)
    more = [json.dumps({"notification_id": f"m-{i}", "user_id": "u", "type": "t", "category": "social",
                        "title": "Hi", "body": "Yo"}).encode() for i in range(5)]
    _produce(topics.low, [(b"k", too_big)])
    wait_until(lambda: bridge.bridge.stats.consumed == len(events) + 2, timeout_s=15)
    _produce(topics.low, [(b"k", e) for e in more])
    time.sleep(4)

    # Then the valid events behind the first letter were handed over, the offset waits at it, the letters
    # past the byte bound pause fetching, and the refusals are logged with a backoff, not once per loop
    assert handed == [json.loads(e)["notification_id"] for e in events]
    assert _committed(topics.group, [topics.low])[(topics.low, partition)] == letter_offset
    refusals = [r for r in caplog.records if r.levelname == "ERROR" and "refused the dead letter" in r.getMessage()]
    assert 1 <= len(refusals) <= 2, [r.getMessage() for r in refusals]
    assert bridge.bridge.stats.dead_lettered == 0

    # ... and once the topic takes them, both letters go and the lane and the offsets move on
    _set_max_message_bytes(topics.dead, 1_048_588)
    wait_until(lambda: bridge.bridge.stats.dead_lettered == 2, timeout_s=60)
    wait_until(lambda: len(handed) == len(events) + len(more), timeout_s=30)
    wait_until(lambda: _all_committed(topics), timeout_s=30)
    letters = _read(topics.dead, 2)
    for letter in letters:  # whole, or (if sent while the topic's new limit spread) cut with proof
        headers = dict(letter.headers())
        assert letter.value() == too_big or (
            too_big.startswith(letter.value())
            and headers["original_sha256"] == hashlib.sha256(too_big).hexdigest().encode())
    assert bridge.stop() == 0
