"""Publish notification events to Kafka for the bridge: validated here, keyed by user.

Events are validated before anything is produced, so a bad one raises
pydantic.ValidationError naming the field, exactly as send_notification.delay does.
The key is the user id: one user's events share a partition and stay in order.
"""
from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
import types
from typing import Any, Callable, Iterable

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from pydantic import ValidationError
from pydantic_core import PydanticCustomError

from notifier.intake.events import MAX_EVENT_BYTES, NotificationEvent, parse_event
from notifier.settings import get_settings

log = logging.getLogger(__name__)

TOPIC_BY_LANE = {"high": "notifications.high", "low": "notifications.low"}
DEAD_LETTER_TOPIC = "notifications.dead"
# How long produce() waits for room when librdkafka's local queue is full.
QUEUE_FULL_TIMEOUT_S = 30.0

DeliveryCallback = Callable[[KafkaError | None, Message], None]

_lock = threading.Lock()
_producer: Producer | None = None
_producer_pid: int | None = None


def topic_for(event: NotificationEvent) -> str:
    """The topic of an event's lane: notifications.high for critical/high, else notifications.low."""
    return TOPIC_BY_LANE[event.lane]


def encode(event: NotificationEvent) -> bytes:
    """The message value of an event; raises ValidationError when it exceeds MAX_EVENT_BYTES."""
    # Only what the producer set: an event without a priority takes its topic's lane at the bridge.
    value = event.model_dump_json(exclude_unset=True, exclude_none=True).encode()
    if len(value) > MAX_EVENT_BYTES:
        raise ValidationError.from_exception_data(
            "NotificationEvent",
            [{
                "type": PydanticCustomError(
                    "event_too_large", "event is {size} bytes encoded; at most {limit} (MAX_EVENT_BYTES)",
                    {"size": len(value), "limit": MAX_EVENT_BYTES},
                ),
                "loc": ("event",),
                "input": event.notification_id,
            }],
        )
    return value


def publish(event: dict[str, Any] | NotificationEvent, *, topic: str | None = None,
            on_delivery: DeliveryCallback | None = None) -> NotificationEvent:
    """Validate one event and produce it to its lane's topic (or `topic`); returns the validated event."""
    return publish_many([event], topic=topic, on_delivery=on_delivery)[0]


def publish_many(events: Iterable[dict[str, Any] | NotificationEvent], *, topic: str | None = None,
                 on_delivery: DeliveryCallback | None = None) -> list[NotificationEvent]:
    """Validate every event, then produce them all; one bad event raises before any is produced."""
    parsed = [parse_event(e) for e in events]
    encoded = [(e, encode(e)) for e in parsed]
    producer = get_producer()
    for event, value in encoded:
        _produce(producer, topic or topic_for(event), event, value, on_delivery)
    producer.poll(0)
    return parsed


def flush(timeout_s: float = 30.0) -> int:
    """Wait for produced events to be acknowledged; return how many are still not."""
    return _producer.flush(timeout_s) if _producer is not None and _producer_pid == os.getpid() else 0


def get_producer() -> Producer:
    """The process's idempotent producer, created on first use (and again in a forked child)."""
    global _producer, _producer_pid
    if _producer is None or _producer_pid != os.getpid():
        with _lock:
            if _producer is None or _producer_pid != os.getpid():
                # A producer inherited across fork() has no threads behind it; the child needs its own.
                _producer = Producer({
                    "bootstrap.servers": get_settings().kafka_bootstrap_servers,
                    "client.id": "notifier-publish",
                    "enable.idempotence": True,  # retries never duplicate or reorder within a partition
                    "linger.ms": 5,
                    "logger": logging.getLogger("notifier.kafka"),
                })
                _producer_pid = os.getpid()
    return _producer


def _produce(producer: Producer, topic: str, event: NotificationEvent, value: bytes,
             on_delivery: DeliveryCallback | None) -> None:
    nid = event.notification_id

    def delivered(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            log.error("publish: %s not delivered to %s: %s", nid, topic, err.str())
        if on_delivery is not None:
            on_delivery(err, msg)

    deadline = time.monotonic() + QUEUE_FULL_TIMEOUT_S
    while True:
        try:
            producer.produce(topic, value=value, key=event.user_id.encode(), on_delivery=delivered)
            return
        except BufferError:
            if time.monotonic() >= deadline:
                raise
            producer.poll(0.1)  # the local queue is full: let acknowledgements drain it
        except KafkaException as exc:
            if exc.args[0].fatal():
                _forget_producer(producer, exc.args[0])  # an idempotent producer that failed fatally is unusable
            raise


def _forget_producer(producer: Producer, error: KafkaError) -> None:
    global _producer
    with _lock:
        if _producer is producer:
            log.critical("publish: Kafka producer failed fatally (%s); the next publish starts a new one", error.str())
            _producer = None


@atexit.register
def _flush_at_exit() -> None:
    # Without this, events still in librdkafka's queue at exit would be lost silently.
    left = flush(10.0)
    if left:
        log.error("publish: %d event(s) not acknowledged by Kafka at exit", left)


class _CallableModule(types.ModuleType):
    """`notifier.intake.publish` is both this module and the function: importing the module makes the
    package attribute the module, so calling it must publish too."""

    def __call__(self, event: dict[str, Any] | NotificationEvent, **options: Any) -> NotificationEvent:
        return publish(event, **options)


sys.modules[__name__].__class__ = _CallableModule
