"""Decoding a Kafka message into an event, and which lane a topic is."""
from __future__ import annotations

import re
from typing import Any, Iterable

from pydantic import ValidationError

from notifier.store import json_codec
from notifier.intake.events import MAX_EVENT_BYTES, NotificationEvent, describe_errors, parse_event
from notifier.intake.publish import TOPIC_BY_LANE


DEFAULT_TOPICS: dict[str, str] = {topic: lane for lane, topic in TOPIC_BY_LANE.items()}


# An event that names no priority takes its topic's: the high topic is for urgent work.
PRIORITY_BY_LANE = {"high": "high", "low": "normal"}


LANES = ("high", "low")


class BadMessage(Exception):
    """A Kafka message that is not a valid notification event; `reason` names the field."""

    def __init__(self, reason: str, notification_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.notification_id = notification_id


def lane_of_topic(topic: str) -> str:
    """The lane a topic feeds: 'high' for names ending in .high, -high or _high, else 'low'."""
    return "high" if re.search(r"[._-]high$", topic) else "low"


def parse_topics(specs: Iterable[str]) -> dict[str, str]:
    """Map topics to lanes from specs 'name' (lane from the name) or 'name=high|low'."""
    topics: dict[str, str] = {}
    for spec in specs:
        name, _, lane = spec.strip().partition("=")
        if not name:
            continue
        lane = lane or lane_of_topic(name)
        if lane not in LANES:
            raise ValueError(f"topic {name!r}: lane must be one of {', '.join(LANES)}, not {lane!r}")
        topics[name] = lane
    if not topics:
        raise ValueError("name at least one topic")
    return topics


def decode_event(value: bytes | None, lane: str) -> NotificationEvent:
    """Validate one message value as an event of a topic in `lane`; raise BadMessage saying why."""
    if value is None:
        raise BadMessage("empty message: no value")
    if len(value) > MAX_EVENT_BYTES:
        raise BadMessage(f"message is {len(value)} bytes; an event is at most MAX_EVENT_BYTES ({MAX_EVENT_BYTES})")
    try:
        raw = json_codec.loads(value)  # orjson's speed, json's answers
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError; neither quotes the input
        raise BadMessage(f"not JSON: {exc}") from None
    except RecursionError:  # nested deeper than Python's parser goes (no event is: data is 16 deep at most)
        raise BadMessage("not JSON: nested too deep") from None
    if not isinstance(raw, dict):
        raise BadMessage(f"not a JSON object: got {_json_type(raw)}")
    raw.setdefault("priority", PRIORITY_BY_LANE[lane])
    try:
        return parse_event(raw, published_earlier=True)  # validated by publish(); may have expired in Kafka
    except ValidationError as exc:
        nid = raw.get("notification_id")
        raise BadMessage(describe_errors(exc), nid if isinstance(nid, str) and len(nid) <= 128 else None) from None


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}
    return names.get(type(value), "null")
