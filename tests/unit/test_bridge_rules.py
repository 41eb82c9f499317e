"""The bridge's rules: decoding a message, the topic's lane and priority, the offset ledger."""
from __future__ import annotations

import json
import re

import pytest
from confluent_kafka import TopicPartition
from pydantic import ValidationError

from notifier.intake.bridge.ledger import OffsetLedger
from notifier.intake.bridge.messages import BadMessage, decode_event, lane_of_topic, parse_topics
from notifier.intake.events import MAX_EVENT_BYTES, NotificationEvent

GOOD = {"notification_id": "n-1", "user_id": "u-1", "type": "t", "category": "social", "title": "Hi", "body": "Yo"}


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (b"{not json", "not JSON"),
        (b'["an", "array"]', "not a JSON object"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "user_id"}).encode(), "user_id: Field required"),
        (json.dumps(GOOD | {"title": 4242424}).encode(), "title: Input should be a valid string"),
        (json.dumps(GOOD | {"priority": "urgent"}).encode(), "priority:"),
        (json.dumps(GOOD | {"channels": ["pigeon"]}).encode(), "channels.0:"),
        (json.dumps(GOOD | {"colour": "secret-red"}).encode(), "colour: Extra inputs are not permitted"),
        (json.dumps(GOOD | {"body": "x" * MAX_EVENT_BYTES}).encode(), "MAX_EVENT_BYTES"),
        (json.dumps(GOOD | {"body": "a\u0000b"}).encode(), "body: NUL characters are not allowed"),
        # Read as json reads it (not as a float): validation refuses the integer, naming where it is
        (json.dumps(GOOD | {"data": {"n": 2 ** 70}}).encode(), "data.n: integers are 64-bit"),
        (json.dumps(GOOD | {"title": "a\ud800"}).encode(), "title:"),
        (None, "empty message"),
    ],
)
def test_a_bad_message_is_rejected_naming_the_problem(value, says):
    with pytest.raises(BadMessage) as info:
        decode_event(value, "low")
    assert says in info.value.reason
    assert "4242424" not in info.value.reason and "secret-red" not in info.value.reason, "no input values in it"


def test_publish_encodes_only_what_the_producer_set():
    from notifier.intake.publish import encode, topic_for

    assert json.loads(encode(NotificationEvent(**GOOD))) == GOOD  # no priority: the topic decides
    assert topic_for(NotificationEvent(**GOOD, priority="critical")) == "notifications.high"
    assert topic_for(NotificationEvent(**GOOD, priority="low")) == "notifications.low"
    with pytest.raises(ValidationError, match="MAX_EVENT_BYTES"):
        encode(NotificationEvent(**GOOD | {"body": "é" * 16_000, "data": {"blob": "x" * 40_000}}))


def test_the_ledger_commits_only_up_to_the_first_offset_not_handed_over():
    ledger = OffsetLedger()
    ledger.assign([TopicPartition("t", 0)])
    for offset in (10, 11, 12):
        ledger.consumed("t", 0, offset)
    ledger.consumed("other", 0, 5)  # not assigned to us: never committed
    ledger.handed_over("t", 0, 11)
    assert [(tp.topic, tp.partition, tp.offset) for tp in ledger.committable()] == [("t", 0, 10)]
    ledger.handed_over("t", 0, 10)
    assert [tp.offset for tp in ledger.committable()] == [12]
    ledger.handed_over("t", 0, 12)
    [tp] = ledger.committable()
    assert tp.offset == 13
    ledger.committed([tp])
    assert ledger.committable() == []


def test_the_topic_gives_the_priority_unless_the_event_names_one():
    raw = json.dumps(GOOD).encode()
    assert decode_event(raw, "high").priority.value == "high"
    assert decode_event(raw, "low").priority.value == "normal"
    assert decode_event(json.dumps(GOOD | {"priority": "low"}).encode(), "high").priority.value == "low"


def test_topic_lanes_come_from_the_name_or_are_given():
    assert lane_of_topic("notifications.high") == lane_of_topic("orders-high") == "high"
    assert lane_of_topic("notifications.low") == lane_of_topic("high-volume") == "low"
    assert parse_topics(["a.high", "b", "c=high"]) == {"a.high": "high", "b": "low", "c": "high"}
    with pytest.raises(ValueError, match="lane"):
        parse_topics(["a=urgent"])
