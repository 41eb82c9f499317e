"""The Kafka bridge: consume notification events and hand them to Celery in batches.

At-least-once: a partition's offset is committed only once every message before it has
been handed over — enqueued to Celery, or produced to the dead-letter topic and
acknowledged by Kafka. A message consumed twice (after a crash or a rebalance) is
harmless: route() records a repeated notification_id as a `duplicate`, not a second
delivery.

One message never stalls a lane. Only an outage of our infrastructure (notifier.outages)
holds a batch; a batch whose hand-over fails for any other reason is split until the events
at fault are found, and those are dead-lettered. A dead letter carries the original key,
value and headers after ours: source_topic, source_partition, source_offset and error. One
too large for a Kafka record keeps a prefix of its value and says so: truncated=true,
original_size, original_sha256 (and original_key_size/original_key_sha256,
original_headers_dropped when the key or the producer's headers were cut too). A letter
Kafka refuses is retried with backoff while the events behind it flow on; the committed
offset waits at it.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from pydantic import ValidationError

from notifier.ops import counters
from notifier.intake.events import MAX_EVENT_BYTES, NotificationEvent, describe_errors, parse_event
from notifier.outages import OUTAGE_ERRORS
from notifier.intake.publish import DEAD_LETTER_TOPIC, TOPIC_BY_LANE
from notifier.settings import get_settings

log = logging.getLogger(__name__)

DEFAULT_GROUP = "notifier-bridge"
DEFAULT_TOPICS: dict[str, str] = {topic: lane for lane, topic in TOPIC_BY_LANE.items()}
# An event that names no priority takes its topic's: the high topic is for urgent work.
PRIORITY_BY_LANE = {"high": "high", "low": "normal"}
LANES = ("high", "low")
# Hand Celery no more than this in one message, whatever the batch size.
BATCH_MAX_BYTES = 4 * 1024 * 1024
# Backoff between attempts to hand a batch to a Celery broker that refuses it.
RETRY_MIN_S, RETRY_MAX_S = 0.2, 5.0
# Errors librdkafka recovers from by itself (reconnecting, re-resolving the coordinator).
TRANSIENT_ERRORS = {
    KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE,
    KafkaError._TIMED_OUT, KafkaError._MSG_TIMED_OUT, KafkaError._WAIT_COORD,
}
# While Kafka is down librdkafka reports every reconnect attempt; say so once per this many seconds.
REPEAT_LOG_S = 30.0
# A dead letter must fit one Kafka record. librdkafka refuses a produce whose key, value and
# serialized headers exceed the producer's message.max.bytes (default 1,000,000), and the
# broker refuses a record batch over its message.max.bytes (default 1,048,588; a topic may
# set a lower max.message.bytes). A bigger letter keeps a prefix of the value so that the
# whole, with our headers and framing, stays under the producer's limit; a topic that still
# refuses it gets the letter again at half the size, down to DEAD_LETTER_MIN_BYTES.
DEAD_LETTER_MAX_BYTES = 1_000_000 - 8 * 1024
DEAD_LETTER_MIN_BYTES = 16 * 1024
# Per header: the varint lengths of its name and value.
HEADER_OVERHEAD = 10
# A truncated letter keeps at most this much of the key and of the producer's own headers.
TRUNCATED_KEY_BYTES = 1024
TRUNCATED_HEADERS_BYTES = 8 * 1024
# Backoff between attempts to produce a dead letter that Kafka refused.
DEAD_LETTER_RETRY_MIN_S, DEAD_LETTER_RETRY_MAX_S = 0.5, 30.0
# While dead letters wait for the dead-letter topic, valid events keep flowing; past this many
# bytes of them the bridge stops fetching until they are out, so memory stays bounded.
UNSENT_LETTERS_MAX_BYTES = 64 * 1024 * 1024
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


class Throttle:
    """Let an event through once per `interval_s` per key, counting the ones held back."""

    def __init__(self, interval_s: float = REPEAT_LOG_S) -> None:
        self.interval_s = interval_s
        self._seen: dict[Any, tuple[float, int]] = {}

    def allow(self, key: Any) -> int | None:
        """None if held back; else how many were held back since the last one let through."""
        now = time.monotonic()
        last, held = self._seen.get(key, (float("-inf"), 0))
        if now - last < self.interval_s:
            self._seen[key] = (last, held + 1)
            return None
        self._seen[key] = (now, 0)
        return held


class _RepeatFilter(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self._throttle = Throttle()

    def filter(self, record: logging.LogRecord) -> bool:
        # confluent-kafka logs librdkafka lines as ("%s [%s] %s", facility, client, text).
        key = record.args[:2] if isinstance(record.args, tuple) and len(record.args) == 3 else record.msg
        held = self._throttle.allow(key)
        if held:
            record.msg = f"{record.msg} ({held} similar held back)"
        return held is not None


def _kafka_logger() -> logging.Logger:
    """The logger for librdkafka's own lines; a reconnect storm shows once per REPEAT_LOG_S."""
    logger = logging.getLogger("notifier.kafka")
    if not any(isinstance(f, _RepeatFilter) for f in logger.filters):
        logger.addFilter(_RepeatFilter())
    return logger


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
        raw = json.loads(value)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError; neither quotes the input
        raise BadMessage(f"not JSON: {exc}") from None
    except RecursionError:  # nested deeper than Python's parser goes (no event is: data is 16 deep at most)
        raise BadMessage("not JSON: nested too deep") from None
    if not isinstance(raw, dict):
        raise BadMessage(f"not a JSON object: got {_json_type(raw)}")
    raw.setdefault("priority", PRIORITY_BY_LANE[lane])
    try:
        return parse_event(raw)
    except ValidationError as exc:
        nid = raw.get("notification_id")
        raise BadMessage(describe_errors(exc), nid if isinstance(nid, str) and len(nid) <= 128 else None) from None


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}
    return names.get(type(value), "null")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message on its way to the dead-letter topic: the original bytes, where they came from and why."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    error: str
    source_headers: tuple[tuple[str, bytes], ...] = ()
    max_bytes: int = DEAD_LETTER_MAX_BYTES

    @classmethod
    def of(cls, msg: Message, error: str, max_bytes: int = DEAD_LETTER_MAX_BYTES) -> "DeadLetter":
        source_headers = tuple((k, v if v is not None else b"") for k, v in (msg.headers() or []))
        return cls(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(), error, source_headers,
                   max_bytes)

    @property
    def size(self) -> int:
        """Bytes this letter holds in memory (the original key, value and headers)."""
        return len(self.key or b"") + len(self.value or b"") + _headers_size(self.source_headers)

    def smaller(self) -> "DeadLetter | None":
        """The same letter cut to half its byte budget, or None if it is already at the floor."""
        if self.max_bytes <= DEAD_LETTER_MIN_BYTES:
            return None
        return DeadLetter(self.topic, self.partition, self.offset, self.key, self.value, self.error,
                          self.source_headers, max(self.max_bytes // 2, DEAD_LETTER_MIN_BYTES))

    def record(self) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
        """Key, value and headers to produce: the whole message if it fits in max_bytes, else a prefix."""
        ours = [
            ("source_topic", self.topic.encode()),
            ("source_partition", str(self.partition).encode()),
            ("source_offset", str(self.offset).encode()),
            ("error", self.error[:4096].encode(errors="replace")),
        ]
        # The producer's own headers follow ours, so nothing of the original is lost.
        whole = ours + list(self.source_headers)
        if len(self.key or b"") + len(self.value or b"") + _headers_size(whole) <= self.max_bytes:
            return self.key, self.value, whole
        value = self.value or b""
        ours += [
            ("truncated", b"true"),
            ("original_size", str(len(value)).encode()),
            ("original_sha256", hashlib.sha256(value).hexdigest().encode()),
        ]
        key = self.key
        if key is not None and len(key) > TRUNCATED_KEY_BYTES:
            ours += [("original_key_size", str(len(key)).encode()),
                     ("original_key_sha256", hashlib.sha256(key).hexdigest().encode())]
            key = key[:TRUNCATED_KEY_BYTES]
        kept: list[tuple[str, bytes]] = []
        for header in self.source_headers:
            if _headers_size([*kept, header]) > min(TRUNCATED_HEADERS_BYTES, self.max_bytes // 4):
                break
            kept.append(header)
        if len(kept) < len(self.source_headers):
            ours.append(("original_headers_dropped", str(len(self.source_headers) - len(kept)).encode()))
        headers = ours + kept
        room = self.max_bytes - len(key or b"") - _headers_size(headers)
        return key, value[:max(room, 0)], headers


def _headers_size(headers: Iterable[tuple[str, bytes]]) -> int:
    return sum(len(k.encode()) + len(v) + HEADER_OVERHEAD for k, v in headers)


@dataclass(slots=True)
class _PartitionProgress:
    next_offset: int | None = None  # one past the last consumed message
    pending: set[int] = field(default_factory=set)  # consumed, not yet handed over
    committed: int | None = None


class OffsetLedger:
    """Per assigned partition: which consumed offsets are not yet handed over, and so what may be committed."""

    def __init__(self) -> None:
        self._partitions: dict[tuple[str, int], _PartitionProgress] = {}

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            self._partitions[(tp.topic, tp.partition)] = _PartitionProgress()

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            self._partitions.pop((tp.topic, tp.partition), None)

    def consumed(self, topic: str, partition: int, offset: int) -> None:
        progress = self._partitions.get((topic, partition))
        if progress is not None:  # never track (and so never commit) a partition we do not own
            progress.pending.add(offset)
            progress.next_offset = offset + 1

    def handed_over(self, topic: str, partition: int, offset: int) -> None:
        progress = self._partitions.get((topic, partition))
        if progress is not None:
            progress.pending.discard(offset)

    def committable(self) -> list[TopicPartition]:
        """Per partition whose safe point moved: the first offset not yet handed over."""
        offsets = []
        for (topic, partition), progress in self._partitions.items():
            if progress.next_offset is None:
                continue
            safe = min(progress.pending) if progress.pending else progress.next_offset
            if safe != progress.committed:
                offsets.append(TopicPartition(topic, partition, safe))
        return offsets

    def committed(self, offsets: Iterable[TopicPartition]) -> None:
        for tp in offsets:
            progress = self._partitions.get((tp.topic, tp.partition))
            if progress is not None and tp.error is None:
                progress.committed = tp.offset

    def pending_count(self) -> int:
        return sum(len(p.pending) for p in self._partitions.values())


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


def ensure_topics(bootstrap_servers: str, topics: Iterable[str], *, partitions: int = 4,
                  replication_factor: int = 1, timeout_s: float = 30.0) -> None:
    """Create the topics that do not exist yet; an existing topic is left as it is."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers, "logger": _kafka_logger()})
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=replication_factor) for t in topics],
        request_timeout=timeout_s,
    )
    for topic, future in futures.items():
        try:
            future.result(timeout_s)
            log.info("bridge: created topic %s (%d partitions)", topic, partitions)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                # Not fatal: the consumer waits for the topic, and Kafka may be starting.
                log.warning("bridge: could not create topic %s: %s", topic, exc.args[0].str())
        except Exception as exc:  # noqa: BLE001 - a timeout, on a broker that is down
            log.warning("bridge: could not create topic %s: %s", topic, exc)


class Bridge:
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
            "logger": _kafka_logger(),
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
            "logger": _kafka_logger(),
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

    # -- dead letters --------------------------------------------------------------------

    def _dead_letter(self, letter: DeadLetter) -> None:
        self._unsent_letters.append(letter)
        self._letter_bytes += letter.size
        self._send_dead_letters()

    def _send_dead_letters(self) -> None:
        """Produce the waiting dead letters, unless Kafka refused one lately and the backoff runs."""
        if time.monotonic() < self._letter_retry_at:
            return
        while self._unsent_letters:
            letter = self._unsent_letters[0]
            key, value, headers = letter.record()
            try:
                self._producer.produce(self.dead_letter_topic, value=value, key=key, headers=headers,
                                       on_delivery=functools.partial(self._dead_lettered, letter))
            except BufferError:
                self._producer.poll(0.05)  # librdkafka's queue is full; try again next step
                return
            except KafkaException as exc:
                smaller = letter.smaller() if exc.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE else None
                if smaller is not None:
                    self._unsent_letters[0] = smaller
                    continue
                self._unsent_letters[0] = self._full_size(letter)
                self._dead_letter_refused(letter, exc.args[0])
                return
            self._unsent_letters.popleft()
            self._letters_in_flight += 1

    def _dead_lettered(self, letter: DeadLetter, err: KafkaError | None, _msg: Message) -> None:
        self._letters_in_flight -= 1
        if err is not None:
            smaller = letter.smaller() if err.code() == KafkaError.MSG_SIZE_TOO_LARGE else None
            if smaller is not None:
                # The topic's max.message.bytes is below the producer's: try again at half the size.
                self._unsent_letters.appendleft(smaller)
            else:
                self._unsent_letters.append(self._full_size(letter))
                self._dead_letter_refused(letter, err)
            return
        self._ledger.handed_over(letter.topic, letter.partition, letter.offset)
        self._letter_bytes -= letter.size
        self.stats.dead_lettered += 1
        self._letter_retry_delay = 0.0

    def _full_size(self, letter: DeadLetter) -> DeadLetter:
        # The next attempt, after the backoff, starts whole again: the topic may have been fixed.
        return dataclasses.replace(letter, max_bytes=self.dead_letter_max_bytes)

    def _dead_letter_refused(self, letter: DeadLetter, err: KafkaError) -> None:
        """Back off before producing dead letters again, and say so once per REPEAT_LOG_S."""
        self._letter_retry_delay = min(max(self._letter_retry_delay * 2, DEAD_LETTER_RETRY_MIN_S),
                                       DEAD_LETTER_RETRY_MAX_S)
        self._letter_retry_at = time.monotonic() + self._letter_retry_delay
        held = self._error_throttle.allow(("dead-letter", err.code()))
        if held is not None:
            log.error("bridge: %s refused the dead letter for %s[%d]@%d (%s); %d waiting, retrying in %.1fs; "
                      "valid events go on, offsets wait at the letter%s", self.dead_letter_topic, letter.topic,
                      letter.partition, letter.offset, err.str(), len(self._unsent_letters),
                      self._letter_retry_delay, f" ({held} similar held back)" if held else "")

    def _confirm_dead_letters(self, deadline: float) -> bool:
        """Wait (until `deadline`) for Kafka to acknowledge every dead letter; True if it did."""
        while True:
            self._send_dead_letters()
            if self._letters_in_flight:
                self._producer.flush(max(min(deadline - time.monotonic(), self.dead_letter_flush_s), 0.0))
            if not self._unsent_letters and not self._letters_in_flight:
                return True
            if time.monotonic() >= deadline:
                return False
            if self._unsent_letters and not self._letters_in_flight:
                time.sleep(min(max(self._letter_retry_at - time.monotonic(), 0.01), 0.1))

    # -- commits -------------------------------------------------------------------

    def _commit(self, force: bool = False) -> bool:
        """Commit, per partition, the first offset not yet handed over; True if nothing is left uncommitted."""
        if not force and time.monotonic() < self._commit_retry_at:
            return False
        if self._letters_in_flight and force:
            # A dead letter counts as handed over only once Kafka has it.
            self._producer.flush(self.dead_letter_flush_s)
        offsets = self._ledger.committable()
        if not offsets:
            return True
        if not self._coordinator_answers(offsets):
            self._commit_retry_at = time.monotonic() + 1.0
            return False
        try:
            result = self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Redelivery after a failed commit is harmless (dedup); try again shortly.
            self._commit_retry_at = time.monotonic() + 1.0
            log.warning("bridge: commit failed (%s); will retry", exc.args[0].str())
            return False
        self._ledger.committed(result or [])
        self.stats.commits += 1
        failed = [tp for tp in result or [] if tp.error is not None]
        for tp in failed:
            log.warning("bridge: commit of %s[%d]@%d failed: %s", tp.topic, tp.partition, tp.offset, tp.error.str())
        return not failed

    def _coordinator_answers(self, offsets: list[TopicPartition]) -> bool:
        """After Kafka reported brokers down, check the group coordinator answers before committing.

        A synchronous commit waits for the coordinator until the session times out (45 s by
        default); a committed() lookup takes a timeout.
        """
        if not self._brokers_down:
            return True
        try:
            self._consumer.committed(offsets[:1], timeout=1.0)
        except KafkaException as exc:
            log.debug("bridge: coordinator not answering: %s", exc)
            return False
        self._brokers_down = False
        return True

    def _drain(self) -> bool:
        """On stop: hand over what was consumed, confirm dead letters, commit; True if all of it succeeded."""
        deadline = time.monotonic() + self.shutdown_timeout_s
        handed = self._hand_over_all(deadline)
        confirmed = self._confirm_dead_letters(deadline)
        committed = self._commit(force=True)
        if not (handed and confirmed):
            log.error("bridge: stopping with %d events not handed over; Kafka will deliver them again to the "
                      "partitions' next consumer", self._ledger.pending_count())
        elif not committed:
            log.error("bridge: stopping without committing every offset; what was handed over since the last "
                      "commit will be consumed again (and recorded as duplicates)")
        return handed and confirmed and committed

    # -- rebalances and errors -----------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._ledger.assign(partitions)
        log.info("bridge: assigned %s", _describe(partitions) or "no partitions")

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            if partitions and not self._closing:
                log.info("bridge: revoking %s; handing over and committing first", _describe(partitions))
            deadline = time.monotonic() + (0.0 if self._closing else self.revoke_timeout_s)
            self._hand_over_all(deadline)
            self._confirm_dead_letters(deadline)
            self._commit(force=True)
        except Exception:  # noqa: BLE001 - an exception here would escape from consume()
            log.exception("bridge: flushing before a rebalance failed")
        finally:
            # What was not committed is delivered again to the partition's next owner.
            self._ledger.forget(partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Another member may own these already: committing would overwrite its progress.
        log.warning("bridge: lost %s; uncommitted events will be consumed again", _describe(partitions))
        self._ledger.forget(partitions)

    def _on_kafka_error(self, err: KafkaError, where: str = "") -> None:
        if err.fatal():
            log.critical("bridge: fatal Kafka error %s: %s", err.name(), err.str())
            self._fatal = err
            return
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            self._brokers_down = True
        held = self._error_throttle.allow((err.code(), where))
        if held is None:
            return
        # A topic just created is briefly unknown; one that stays unknown keeps being reported.
        transient = err.code() in TRANSIENT_ERRORS or err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
        log.log(logging.WARNING if transient else logging.ERROR, "bridge: Kafka %s%s: %s%s%s", err.name(),
                f" on {where}" if where else "", err.str(), " (librdkafka retries by itself)" if transient else "",
                f" ({held} similar held back)" if held else "")

    def _log_stats(self) -> None:
        now = time.monotonic()
        if now < self._next_stats_at:
            return
        self._next_stats_at = now + self.stats_interval_s
        counters.report_bridge_lag(self.group_id, self._consumer)
        line = self.stats.line(self._ledger.pending_count())
        if line != self._last_stats:
            log.info("bridge: %s", line)
            self._last_stats = line


def _describe(partitions: Iterable[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions)
