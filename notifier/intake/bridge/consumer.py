"""The Bridge: one member of a consumer group, batching events per lane and handing them over."""
from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

from notifier.intake.bridge.commits import Commits
from notifier.intake.bridge.dead_letters import DEAD_LETTER_MAX_BYTES, UNSENT_LETTERS_MAX_BYTES, DeadLetter, DeadLetters
from notifier.intake.bridge.kafka_log import Throttle, kafka_logger
from notifier.intake.bridge.ledger import OffsetLedger
from notifier.intake.bridge.messages import BadMessage, DEFAULT_TOPICS, LANES, decode_event, lane_of_topic, parse_topics
from notifier.intake.bridge.rebalances import Rebalances
from notifier.intake.bridge.topics import ensure_topics
from notifier.intake.events import NotificationEvent
from notifier.intake.publish import DEAD_LETTER_TOPIC
from notifier.ops import counters
from notifier.outages import OUTAGE_ERRORS
from notifier.settings import get_settings

log = logging.getLogger(__name__)

DEFAULT_GROUP = "notifier-bridge"
# Hand Celery no more than this in one message, whatever the batch size.
BATCH_MAX_BYTES = 4 * 1024 * 1024
# Backoff between attempts to hand a batch to a Celery broker that refuses it.
RETRY_MIN_S, RETRY_MAX_S = 0.2, 5.0
# Consumer group timing. librdkafka's default session timeout (45 s) is how long a SIGKILLed
# bridge's partitions stay assigned to it: a restarted bridge waited that long for them. The
# broker's group.min.session.timeout.ms is 6 s; 10 s leaves room for a loaded machine, and
# librdkafka heartbeats from its own thread, so a busy Python loop does not miss them.
# A bridge given a stable group.instance.id (static membership, KIP-345; from
# NOTIFIER_BRIDGE_INSTANCE_ID or -X group.instance.id=…) takes its old partitions back at once
# on restart, with no rebalance at all. The id must be unique per running bridge (two with one
# id fence each other), and a static member stays in the group when it closes: a bridge
# stopped for good hands its partitions on only after the session timeout.
# (The KIP-848 consumer protocol would not help: its session timeout is the broker's, 45 s,
# and a static member restarting before that is refused with UNRELEASED_INSTANCE_ID.)
SESSION_TIMEOUT_MS = 10_000
HEARTBEAT_INTERVAL_MS = 2_000
INSTANCE_ID_ENV = "NOTIFIER_BRIDGE_INSTANCE_ID"
HandOver = Callable[[list[NotificationEvent], str], None]


@dataclass(slots=True)
class _Batch:
    lane: str
    events: list[NotificationEvent] = field(default_factory=list)
    # Each event's message, kept to dead-letter it should its hand-over fail for a reason of its own.
    messages: list[Message] = field(default_factory=list)
    size_bytes: int = 0
    started: float = 0.0

    def add(self, event: NotificationEvent, msg: Message) -> None:
        if not self.events:
            self.started = time.monotonic()
        self.events.append(event)
        self.messages.append(msg)
        self.size_bytes += len(msg.value() or b"")

    def keep(self, indexes: Iterable[int]) -> None:
        """Keep only the entries at these indexes, in order."""
        kept = sorted(set(indexes))
        self.events = [self.events[i] for i in kept]
        self.messages = [self.messages[i] for i in kept]
        self.size_bytes = sum(len(m.value() or b"") for m in self.messages)

    def clear(self) -> None:
        self.events, self.messages, self.size_bytes = [], [], 0


class _Outage(Exception):
    """A hand-over met an outage of our infrastructure part-way through isolating a batch's bad events."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


@dataclass(slots=True)
class BridgeStats:
    consumed: int = 0
    handed_over: int = 0
    dead_lettered: int = 0
    commits: int = 0

    def line(self, pending: int) -> str:
        return (f"consumed={self.consumed} handed_over={self.handed_over} dead_lettered={self.dead_lettered} "
                f"pending={pending} commits={self.commits}")


class Bridge(DeadLetters, Commits, Rebalances):
    """Consume events from Kafka topics as one member of a consumer group and hand them to Celery."""

    def __init__(
        self,
        topics: Mapping[str, str] | Sequence[str] = DEFAULT_TOPICS,
        *,
        hand_over: HandOver,
        group_id: str = DEFAULT_GROUP,
        dead_letter_topic: str = DEAD_LETTER_TOPIC,
        batch_size: int = 500,
        batch_ms: int = 200,
        bootstrap_servers: str | None = None,
        create_topics: bool = True,
        partitions: int = 4,
        replication_factor: int = 1,
        consumer_config: Mapping[str, Any] | None = None,
        stats_interval_s: float = 60.0,
        shutdown_timeout_s: float = 10.0,
        revoke_timeout_s: float = 5.0,
        dead_letter_flush_s: float = 1.0,
        dead_letter_max_bytes: int = DEAD_LETTER_MAX_BYTES,
        unsent_letters_max_bytes: int = UNSENT_LETTERS_MAX_BYTES,
        instance_id: str | None = None,
    ) -> None:
        if batch_size < 1 or batch_ms < 0:
            raise ValueError("batch_size must be at least 1 and batch_ms at least 0")
        self.topics = dict(topics) if isinstance(topics, Mapping) else parse_topics(topics)
        self.group_id = group_id
        self.dead_letter_topic = dead_letter_topic
        if dead_letter_topic in self.topics:
            raise ValueError("the dead-letter topic cannot be one the bridge consumes")
        self.batch_size = batch_size
        self.batch_s = batch_ms / 1000
        self.bootstrap_servers = bootstrap_servers or get_settings().kafka_bootstrap_servers
        self.create_topics = create_topics
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.consumer_config = dict(consumer_config or {})
        self.hand_over = hand_over
        self.stats_interval_s = stats_interval_s
        self.shutdown_timeout_s = shutdown_timeout_s
        self.revoke_timeout_s = revoke_timeout_s
        self.dead_letter_flush_s = dead_letter_flush_s
        self.dead_letter_max_bytes = dead_letter_max_bytes
        self.unsent_letters_max_bytes = unsent_letters_max_bytes
        # Static membership: a bridge restarted with the same id takes its partitions back at once.
        # Each running bridge needs its own id (a StatefulSet pod name, a systemd instance name).
        self.instance_id = instance_id or os.environ.get(INSTANCE_ID_ENV) or None

        self.stats = BridgeStats()
        self._stopping = False
        self._stop_reason = ""
        self._ledger = OffsetLedger()
        self._batches = {lane: _Batch(lane) for lane in LANES}
        self._unsent_letters: deque[DeadLetter] = deque()
        self._letters_in_flight = 0
        self._letter_bytes = 0  # held by letters not yet acknowledged by Kafka
        self._letter_retry_at = 0.0  # set while Kafka refuses dead letters
        self._letter_retry_delay = 0.0
        self._paused = False
        self._retry_at: float | None = None  # set while Celery refuses hand-overs
        self._retry_delay = 0.0
        self._commit_retry_at = 0.0
        self._fatal: KafkaError | None = None
        self._error_throttle = Throttle()
        self._brokers_down = False  # librdkafka said so; cleared once the coordinator answers
        self._closing = False
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._next_stats_at = 0.0
        self._last_stats = ""
        self._dead_letters_reported = 0  # of stats.dead_lettered, already added to the Redis counter

    # -- lifecycle -----------------------------------------------------------------

    def stop(self, reason: str = "stop requested") -> None:
        """Ask the loop to finish the in-flight batches, commit and return (thread- and signal-safe)."""
        # A plain flag: an Event's lock could deadlock against a signal handler in the same thread.
        self._stop_reason = self._stop_reason or reason
        self._stopping = True

    def run(self) -> int:
        """Run until stopped (SIGTERM, SIGINT or stop()); 0 when everything consumed was handed over and committed."""
        self._install_signal_handlers()
        if self.create_topics:
            ensure_topics(self.bootstrap_servers, [*self.topics, self.dead_letter_topic],
                          partitions=self.partitions, replication_factor=self.replication_factor)
        clean = True
        while not self._stopping:
            clean = self._run_session()
        log.info("bridge: stopped (%s); %s", self._stop_reason or "stopped", self.stats.line(self._ledger.pending_count()))
        return 0 if clean else 1

    def _run_session(self) -> bool:
        """Consume with one consumer until stopped or the consumer fails fatally; True if it ended clean."""
        self._fatal = None
        self._closing = False
        self._producer = self._producer or Producer(self._producer_config())
        self._consumer = Consumer(self._consumer_config())
        self._consumer.subscribe(list(self.topics), on_assign=self._on_assign, on_revoke=self._on_revoke,
                                 on_lost=self._on_lost)
        log.info("bridge: group %s consuming %s; dead letters to %s; batches of %d or %d ms",
                 self.group_id, ", ".join(f"{t} ({lane} lane)" for t, lane in self.topics.items()),
                 self.dead_letter_topic, self.batch_size, int(self.batch_s * 1000))
        clean = False
        try:
            while not self._stopping and self._fatal is None:
                try:
                    self._step()
                except Exception:  # noqa: BLE001 - nothing but a signal stops the bridge
                    log.exception("bridge: unexpected error; carrying on")
                    time.sleep(0.5)
            clean = self._drain()
        finally:
            self._closing = True
            try:
                self._consumer.close()  # leaves the group; on_revoke runs once more (nothing left to do)
            except Exception:  # noqa: BLE001
                log.exception("bridge: closing the consumer failed")
            self._consumer = None
        if self._fatal is not None and not self._stopping:
            log.error("bridge: consumer failed (%s); starting a new one in %.0fs", self._fatal.str(), RETRY_MAX_S)
            self._ledger = OffsetLedger()
            deadline = time.monotonic() + RETRY_MAX_S
            while not self._stopping and time.monotonic() < deadline:
                time.sleep(0.1)
        return clean

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda s, _f: self.stop(signal.Signals(s).name))

    def _consumer_config(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.bootstrap_servers,
            "group.id": self.group_id,
            "client.id": "notifier-bridge",
            # We commit explicit offsets ourselves, only for what is handed over.
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # A new group starts at the beginning: events produced before the first bridge ran still count.
            "auto.offset.reset": "earliest",
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": HEARTBEAT_INTERVAL_MS,
            **({"group.instance.id": self.instance_id} if self.instance_id else {}),
            "error_cb": self._on_kafka_error,
            "logger": kafka_logger(),
            **self.consumer_config,
        }

    def _producer_config(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": "notifier-bridge-dlq",
            "acks": "all",
            "linger.ms": 5,
            # A letter Kafka cannot take comes back as an error within this, to be retried by us
            # with a backoff and a log line, rather than waiting librdkafka's default 5 minutes.
            "message.timeout.ms": 30_000,
            "error_cb": self._on_kafka_error,
            "logger": kafka_logger(),
        }

    # -- the loop --------------------------------------------------------------------

    def _step(self) -> None:
        consumer = self._consumer
        if not self._held():
            for msg in consumer.consume(self.batch_size, self._wait_s()):
                self._take(msg)
        else:
            # Celery refuses work, or too many dead letters wait for Kafka: serve the group
            # (heartbeats, rebalances) without fetching more.
            self._pause()
            wait = self._retry_at - time.monotonic() if self._retry_at is not None else 0.1
            msg = consumer.poll(min(max(wait, 0.0), 0.5))
            if msg is not None:
                self._take(msg)
        self._flush_due()
        self._send_dead_letters()
        self._producer.poll(0)
        if self._paused and not self._held():
            self._resume()
        self._commit()
        self._log_stats()

    def _held(self) -> bool:
        """True while the bridge must not fetch: Celery refuses work or dead letters fill their bound."""
        return self._retry_at is not None or self._letter_bytes > self.unsent_letters_max_bytes

    def _wait_s(self) -> float:
        started = [b.started for b in self._batches.values() if b.events]
        if not started:
            # consume() waits for a full batch or the timeout: an idle bridge must not hold the
            # first event of a quiet lane longer than the batch window.
            return min(max(self.batch_s, 0.01), 0.5)
        return min(max(min(started) + self.batch_s - time.monotonic(), 0.0), 0.5)

    def _take(self, msg: Message) -> None:
        error = msg.error()
        if error is not None:
            self._on_kafka_error(error, where=f"{msg.topic()}[{msg.partition()}]")
            return
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        self._ledger.consumed(topic, partition, offset)
        self.stats.consumed += 1
        try:
            event = decode_event(msg.value(), self.topics.get(topic) or lane_of_topic(topic))
        except BadMessage as bad:
            # %r: the id and the reason (which names the producer's fields) are the producer's text,
            # and a newline in them must not forge a log line.
            log.warning("bridge: %s[%d]@%d%s is not a valid event (%r); dead-lettered to %s", topic, partition,
                        offset, f" notification_id={bad.notification_id!r}" if bad.notification_id else "",
                        bad.reason, self.dead_letter_topic)
            self._dead_letter(DeadLetter.of(msg, bad.reason, self.dead_letter_max_bytes))
            return
        except Exception as exc:  # noqa: BLE001 - a bug of ours must not lose the message either
            log.exception("bridge: %s[%d]@%d could not be read; dead-lettered", topic, partition, offset)
            self._dead_letter(DeadLetter.of(msg, f"internal error: {type(exc).__name__}: {exc}",
                                            self.dead_letter_max_bytes))
            return
        batch = self._batches[event.lane]
        batch.add(event, msg)
        if self._retry_at is None and (len(batch.events) >= self.batch_size or batch.size_bytes >= BATCH_MAX_BYTES):
            self._hand_over(batch)

    def _flush_due(self) -> None:
        now = time.monotonic()
        if self._retry_at is not None and now < self._retry_at:
            return
        for batch in self._batches.values():
            if batch.events and (
                now - batch.started >= self.batch_s
                or len(batch.events) >= self.batch_size
                or batch.size_bytes >= BATCH_MAX_BYTES
            ):
                if not self._hand_over(batch):
                    return

    def _hand_over(self, batch: _Batch) -> bool:
        """Hand one batch over; True if none of it is left.

        An outage of our infrastructure (OUTAGE_ERRORS) keeps the batch, backs off and pauses
        fetching: the offsets wait for it. Any other exception belongs to some event in the
        batch, so the batch is split in halves until the events at fault are found; those are
        dead-lettered with the error as the reason and the rest are handed over.
        """
        done: set[int] = set()
        try:
            try:
                self.hand_over(batch.events, batch.lane)
            except OUTAGE_ERRORS as exc:
                raise _Outage(exc) from exc
            except Exception as exc:  # noqa: BLE001 - any other error is some event's own fault
                # The type only: the exception's text may quote an event's content (it goes to the
                # dead-letter headers, beside the message itself).
                log.warning("bridge: handing %d %s-lane events over failed (%s), not an outage; finding the "
                            "events at fault", len(batch.events), batch.lane, type(exc).__name__)
                self._isolate(batch, range(len(batch.events)), exc, done)
            else:
                done.update(range(len(batch.events)))
                self._handed_over(batch.messages)
        except _Outage as outage:
            batch.keep(i for i in range(len(batch.events)) if i not in done)
            exc = outage.cause
            self._retry_delay = min(max(self._retry_delay * 2, RETRY_MIN_S), RETRY_MAX_S)
            self._retry_at = time.monotonic() + self._retry_delay
            held = self._error_throttle.allow(("hand-over", type(exc)))
            if held is not None:
                log.warning("bridge: handing %d %s-lane events over failed (%s: %r); retrying in %.1fs, "
                            "offsets not committed%s", len(batch.events), batch.lane, type(exc).__name__,
                            str(exc)[:500], self._retry_delay, f" ({held} similar held back)" if held else "")
            return False
        log.debug("bridge: handed %d %s-lane events over", len(batch.events), batch.lane)
        batch.clear()
        if self._retry_at is not None:
            log.info("bridge: hand-over works again")
            self._retry_at, self._retry_delay = None, 0.0
        return True

    def _isolate(self, batch: _Batch, indexes: range, error: Exception, done: set[int]) -> None:
        """Hand over the events at `indexes` (which failed together with `error`) in halves; dead-letter the bad."""
        if len(indexes) == 1:
            i = indexes[0]
            msg, event = batch.messages[i], batch.events[i]
            reason = f"hand-over failed: {type(error).__name__}: {error}"
            log.warning("bridge: %s[%d]@%d notification_id=%r could not be handed over (%s); dead-lettered to %s "
                        "with the error", msg.topic(), msg.partition(), msg.offset(), event.notification_id,
                        type(error).__name__, self.dead_letter_topic)
            self._dead_letter(DeadLetter.of(msg, reason, self.dead_letter_max_bytes))
            done.add(i)
            return
        middle = len(indexes) // 2
        for half in (indexes[:middle], indexes[middle:]):
            try:
                self.hand_over([batch.events[i] for i in half], batch.lane)
            except OUTAGE_ERRORS as exc:
                raise _Outage(exc) from exc
            except Exception as exc:  # noqa: BLE001 - narrowing down to the event at fault
                self._isolate(batch, half, exc, done)
            else:
                done.update(half)
                self._handed_over([batch.messages[i] for i in half])

    def _handed_over(self, messages: Iterable[Message]) -> None:
        for msg in messages:
            self._ledger.handed_over(msg.topic(), msg.partition(), msg.offset())
            self.stats.handed_over += 1

    def _hand_over_all(self, deadline: float) -> bool:
        """Hand over every batch, retrying until `deadline`; True if none is left."""
        while True:
            for batch in self._batches.values():
                if batch.events:
                    self._hand_over(batch)
            if not any(b.events for b in self._batches.values()):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(self._retry_delay or RETRY_MIN_S, max(deadline - time.monotonic(), 0.0)))

    def _pause(self) -> None:
        try:
            self._consumer.pause(self._consumer.assignment())
            self._paused = True
        except KafkaException as exc:
            log.debug("bridge: pause failed: %s", exc)

    def _resume(self) -> None:
        try:
            self._consumer.resume(self._consumer.assignment())
            self._paused = False
        except (KafkaException, RuntimeError) as exc:
            log.debug("bridge: resume failed: %s", exc)

    def _log_stats(self) -> None:
        now = time.monotonic()
        if now < self._next_stats_at:
            return
        self._next_stats_at = now + self.stats_interval_s
        dead_letters, self._dead_letters_reported = (self.stats.dead_lettered - self._dead_letters_reported,
                                                     self.stats.dead_lettered)
        counters.report_bridge_lag(self.group_id, self._consumer, dead_letters)
        line = self.stats.line(self._ledger.pending_count())
        if line != self._last_stats:
            log.info("bridge: %s", line)
            self._last_stats = line


