"""What happened to a scenario's events: from the delivery log and from what the sandbox accepted."""
from __future__ import annotations

import time
from collections import Counter
from typing import Callable
from dataclasses import dataclass

NOT_TERMINAL = ("queued", "scheduled", "sending")


@dataclass
class LogState:
    """The delivery log of one scenario at one moment."""

    events: set[str]  # events with at least one row
    settled_events: set[str]  # events whose every row is terminal
    not_terminal_rows: int
    by_status: dict[str, int]

    def key(self) -> tuple:
        return (len(self.events), self.not_terminal_rows, tuple(sorted(self.by_status.items())))


class Ledger:
    """Reads the scenario's rows; survives a database that is down (returns None meanwhile)."""

    def __init__(self, database_url: str) -> None:
        from sqlalchemy import create_engine

        self.engine = create_engine(database_url, pool_pre_ping=True, pool_size=1, max_overflow=0)

    def state(self, prefix: str) -> LogState | None:
        from sqlalchemy import text
        from sqlalchemy.exc import DBAPIError

        pattern = prefix + "-%"
        try:
            with self.engine.connect() as conn:
                per_event = conn.execute(text(
                    "SELECT notification_id, bool_and(status <> ALL(:busy)) FROM notification_log "
                    "WHERE notification_id LIKE :p GROUP BY notification_id"), {"busy": list(NOT_TERMINAL), "p": pattern}
                ).all()
                by_status = dict(conn.execute(text(
                    "SELECT status, count(*) FROM notification_log WHERE notification_id LIKE :p GROUP BY status"),
                    {"p": pattern}).all())
        except DBAPIError:
            return None
        return LogState(
            events={nid for nid, _ in per_event},
            settled_events={nid for nid, settled in per_event if settled},
            not_terminal_rows=sum(n for status, n in by_status.items() if status in NOT_TERMINAL),
            by_status=by_status,
        )

    def in_flight_resent(self, prefix: str) -> set[str]:
        """apns-ids of deliveries whose row says they were sent again after a worker died with an earlier
        request in flight (notifier.pipeline.sending.IN_FLIGHT_RESENT): a second copy the system saw coming."""
        from sqlalchemy import text

        from notifier.providers.apns import apns_id
        from notifier.pipeline.sending import IN_FLIGHT_RESENT

        with self.engine.connect() as conn:
            keys = conn.execute(text(
                "SELECT idempotency_key FROM notification_log WHERE notification_id LIKE :p AND reason LIKE :r"),
                {"p": prefix + "-%", "r": f"%{IN_FLIGHT_RESENT}%"}).scalars().all()
        return {apns_id(key) for key in keys}

    def close(self) -> None:
        self.engine.dispose()


@dataclass
class Drain:
    seconds: float | None  # from the last acknowledged event until every event was settled; None: never
    state: LogState | None
    waited_s: float


def wait_drained(ledger: Ledger, prefix: str, expected: set[str], since: float, *, timeout_s: float,
                 quiet_s: float, intake_done: Callable[[], bool] = lambda: True) -> Drain:
    """Poll until every expected event has rows, all terminal; or the deadline.

    Or earlier, once nothing moved in the log for quiet_s while Kafka holds nothing the bridges
    have not committed (`intake_done`): a bridge that waits for its partitions is still coming.
    """
    deadline = time.monotonic() + timeout_s
    last_key, last_change = None, time.monotonic()
    state = None
    while True:
        current = ledger.state(prefix)
        if current is not None:
            state = current
            if expected <= state.settled_events:
                return Drain(round(time.time() - since, 2), state, round(time.time() - since, 2))
            if state.key() != last_key:
                last_key, last_change = state.key(), time.monotonic()
        now = time.monotonic()
        if now > deadline or (now - last_change > quiet_s and intake_done()):
            return Drain(None, state, round(time.time() - since, 2))
        time.sleep(0.5)


def provider_duplicates(messages: list[dict], prefix: str) -> tuple[set[str], int]:
    """(apns-ids APNs accepted more than once, extra requests): by apns-id, deterministic per delivery."""
    per_id = Counter(m["id"] for m in messages if (m.get("payload") or {}).get("chaos") == prefix)
    twice = {apns_id: n for apns_id, n in per_id.items() if n > 1}
    return set(twice), sum(n - 1 for n in twice.values())


def accepted_deliveries(messages: list[dict], prefix: str) -> int:
    return len({m["id"] for m in messages if (m.get("payload") or {}).get("chaos") == prefix})


def count_dead_letters(bootstrap: str, topic: str, timeout_s: float = 20) -> int:
    """How many messages the dead-letter topic holds (read from the start by a throwaway group)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"chaos-count-{time.monotonic_ns()}",
                         "enable.auto.commit": False, "log_level": 0})
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        if topic not in metadata.topics or metadata.topics[topic].error is not None:
            return 0
        total = 0
        for p in metadata.topics[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            total += max(0, high - low)
        return total
    except Exception:  # noqa: BLE001 - a count we cannot take is reported as -1, not fatal
        return -1
    finally:
        consumer.close()


def kafka_lag(bootstrap: str, groups: dict[str, str]) -> int:
    """Messages in the topics not yet committed by their consumer group ({topic: group}); -1 if unknown."""
    from confluent_kafka import Consumer, TopicPartition

    lag = 0
    for topic, group in groups.items():
        # A consumer that never subscribes does not join the group: it only reads its offsets.
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                             "log_level": 0})
        try:
            metadata = consumer.list_topics(topic, timeout=10)
            parts = [TopicPartition(topic, p) for p in metadata.topics[topic].partitions]
            for tp in consumer.committed(parts, timeout=10):
                low, high = consumer.get_watermark_offsets(tp, timeout=10)
                lag += high - (tp.offset if tp.offset >= 0 else low)
        except Exception:  # noqa: BLE001 - Kafka not answering: the intake is not known to be done
            return -1
        finally:
            consumer.close()
    return lag
