"""Operational counters the hot path adds to Redis: what intake, the stages, the send tasks and webhooks decided.

Workers are many processes on many machines, so none can hold a counter for Prometheus to
scrape. Each adds its batch's counts to Redis hashes (HINCRBY, one pipeline per batch, through
a `Tally`); notifier.ops.exporter reads them back at scrape time. A Redis restart resets the
counters; Prometheus' rate() treats that as a counter reset. Nothing here raises into the hot
path: a metric that cannot be written is logged and dropped, never a reason to fail a delivery.

Adding a counter is one line here and one where it is counted; the exporter renders every
family defined with `counter()` or `histogram()`:

    WEBPUSH_EXPIRED = counter("notifier_webpush_expired", "Web push subscriptions gone.", "provider")
    ...
    tally.add(counters.WEBPUSH_EXPIRED, "webpush")   # then tally.write(r), or write_after_commit
"""
from __future__ import annotations

import bisect
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable

import redis

log = logging.getLogger(__name__)

PREFIX = "metrics:"
SEP = "\x1f"  # between label values in a hash field; never in a channel, provider, queue or topic name
SUM = "sum"  # a histogram's hash field holding the sum of its observations, beside one field per bucket


@dataclass(frozen=True, slots=True, eq=False)  # one object per family: hashed by identity, cheaply
class Family:
    """One metric family kept in one Redis hash: field = label values (SEP-joined), plus a bucket for a histogram."""

    name: str  # the exposition name; a counter's gets `_total` appended
    help: str
    labels: tuple[str, ...]
    key: str
    buckets: tuple[float, ...] | None = None  # a histogram's upper bounds (seconds); +Inf is implied

    def field(self, values: tuple[Any, ...]) -> str:
        if len(values) != len(self.labels):
            raise ValueError(f"{self.name}: expected labels {self.labels}, got {values!r}")
        return SEP.join(str(v) for v in values)


FAMILIES: list[Family] = []  # in definition order; the exporter renders each


def _define(family: Family) -> Family:
    if any(f.name == family.name or f.key == family.key for f in FAMILIES):
        raise ValueError(f"metric {family.name} (key {family.key}) defined twice")
    FAMILIES.append(family)
    return family


def counter(name: str, help: str, *labels: str, key: str | None = None) -> Family:
    """Define a counter family (rendered as `<name>_total`)."""
    return _define(Family(name, help, labels, key or PREFIX + name.removeprefix("notifier_")))


def histogram(name: str, help: str, *labels: str, buckets: tuple[float, ...], key: str | None = None) -> Family:
    """Define a histogram family of seconds with fixed bucket bounds."""
    return _define(Family(name, help, labels, key or PREFIX + name.removeprefix("notifier_"), tuple(buckets)))


# Upper bounds (seconds) of the provider call histogram; the last bucket is +Inf.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Accepted -> sent: 1 s is the design's goal for the high lane, 5 s its SLO (docs/operations.md).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)

# The families of 0.1 keep their Redis keys, so an upgrade does not reset them.
DELIVERIES = counter("notifier_deliveries", "Deliveries a provider call ended, by channel, provider and status "
                     "(sent or failed; retries are counted apart).", "channel", "provider", "status",
                     key=PREFIX + "deliveries")
RETRIES = counter("notifier_delivery_retries", "Deliveries scheduled for another attempt after a transient "
                  "provider failure (timeout, 5xx, 429, misconfiguration).", "channel", "provider",
                  key=PREFIX + "retries")
BATCH = histogram("notifier_provider_batch_seconds", "Wall time of one provider call: a batch of deliveries sent "
                  "together (multiplexed on one HTTP/2 connection for push).", "provider", buckets=BUCKETS,
                  key=PREFIX + "provider_batch")
ERRORS = counter("notifier_delivery_errors", "Provider attempts that did not succeed, by a bounded reason "
                 "(failure_reason) and what became of the delivery: scheduled (another attempt) or failed.",
                 "channel", "provider", "status", "reason")
LATENCY = histogram("notifier_accepted_to_sent_seconds", "From accepting a delivery (or the time it was due, for "
                    "send_at and quiet hours) to the provider accepting it, first attempts only, by lane and "
                    "channel.", "lane", "channel", buckets=LATENCY_BUCKETS)
EVENTS_ACCEPTED = counter("notifier_events_accepted", "Notification events accepted: stored with their "
                          "deliveries before the producer was answered.", "lane")
EVENTS_DUPLICATE = counter("notifier_events_duplicate", "Events whose notification_id was accepted before "
                           "(a redelivery or retry, or a conflicting event under the same id): recorded "
                           "`duplicate`, never delivered again.", "lane")
DELIVERIES_ACCEPTED = counter("notifier_deliveries_accepted", "Deliveries (event x channel x target) stored "
                              "`queued` at intake.", "lane", "channel")
SUPPRESSED = counter("notifier_deliveries_suppressed", "Deliveries not sent because of the user or the producer, "
                     "by a bounded reason (suppression_reason).", "channel", "reason")
RATE_LIMITED = counter("notifier_deliveries_rate_limited", "Deliveries over the user's rate limit for their "
                       "channel and category.", "channel")
WEBHOOK_REPORTS = counter("notifier_webhook_reports", "Provider delivery reports received by the webhooks, by "
                          "outcome: delivered, bounced, failed, opted_out, deferred, unchanged (already final, "
                          "or engagement), unknown (no delivery of ours).", "provider", "outcome")
DEAD_LETTERS = counter("notifier_dead_letters", "Malformed Kafka messages the bridge wrote to the dead-letter "
                       "topic (reported with the bridge's lag, every --stats-interval).", "group")

EXPIRED = counter("notifier_expired_deliveries", "Deliveries that ended expired, not handed to their provider "
                  "before their expiry, by where they waited (queue, retry, quiet_hours, send_at, scheduled, "
                  "intake).", "waited", key=PREFIX + "expired")
CALLBACKS = counter("notifier_callback_events", "Callback events to producers: sent (accepted by the endpoint), "
                    "failed (an attempt failed; retried) and given_up (not accepted within the retry window).",
                    "outcome", key=PREFIX + "callbacks")

STUCK = PREFIX + "sweeper_redriven"  # count
BRIDGE_LAG = PREFIX + "bridge_lag"  # field group|topic|partition -> "<lag> <unix time>"
RETRY_STATUS = "scheduled"  # what _record sets on a delivery that will be tried again


# --------------------------------------------------------------------------- bounded labels

# Failure reasons: the provider's free-form text mapped to a fixed set, so the label stays small.
FAILURE_REASONS = ("token_invalid", "unsubscribed", "misconfigured", "payload_too_large", "rate_limited", "timeout",
                   "connection", "provider_4xx", "provider_5xx", "other")
_PAYLOAD_TOO_LARGE = re.compile(r"\b413\b|PayloadTooLarge|MessageTooBig|too large|too big|too long|message size|"
                                r"exceeds\b.*\b(size|limit)|\b21617\b", re.IGNORECASE)
_RATE_LIMITED = re.compile(r"\b429\b|TooManyRequests|QUOTA_EXCEEDED|rate.?limit|\b20429\b", re.IGNORECASE)
_TIMEOUT = re.compile(r"\btime(d)?.?out\b|timeout", re.IGNORECASE)
_CONNECTION = re.compile(r"transport|connect|connection|disconnected|TLS|resolve|cut short|HTTP/2", re.IGNORECASE)
# "<provider> <status> …" (apns 400 BadTopic, sendgrid 500 …, twilio 401 20003, smtp 550 …, fcm oauth 503 …)
_STATUS = re.compile(r"^[a-z]+(?: oauth)? ([1-5]\d\d)\b")


def failure_reason(kind: str, reason: str | None) -> str:
    """The bounded label for an outcome that was not ok: its kind first, then what its text says.

    `kind` is the provider outcome's kind (notifier.providers.base.OutcomeKind value); a
    status code 4xx/5xx counts by class (SMTP's 4xx are transient, 5xx permanent: the same classes).
    """
    if kind in ("token_invalid", "unsubscribed", "misconfigured"):
        return kind
    text = reason or ""
    for label, pattern in (("payload_too_large", _PAYLOAD_TOO_LARGE), ("rate_limited", _RATE_LIMITED),
                           ("timeout", _TIMEOUT)):
        if pattern.search(text):
            return label
    status = _STATUS.match(text)
    if status:
        return "provider_4xx" if status.group(1).startswith("4") else "provider_5xx" if status.group(
            1).startswith("5") else "other"
    if _CONNECTION.search(text):
        return "connection"
    return "other"


# Suppression reasons: the row's reason text (notifier.pipeline) mapped to a fixed set.
SUPPRESSION_REASONS = ("channel_disabled", "category_opted_out", "address_undeliverable", "no_target", "cancelled",
                       "other")
_SUPPRESSION = (("channel_disabled", " disabled by user"), ("category_opted_out", "opted out of category"),
                ("address_undeliverable", "undeliverable"), ("no_target", "no "), ("cancelled", "cancelled"))


def suppression_reason(reason: str | None) -> str:
    """The bounded label for a suppressed delivery's reason text."""
    text = reason or ""
    for label, marker in _SUPPRESSION:
        if (text.startswith(marker) if label == "no_target" else marker in text):
            return label
    return "other"


# --------------------------------------------------------------------------- writing

class Tally:
    """A batch's counts and observations, written to Redis in one pipeline (one round trip)."""

    __slots__ = ("_ints", "_floats")

    def __init__(self) -> None:
        self._ints: Counter[tuple[Family, tuple]] = Counter()
        self._floats: Counter[tuple[Family, tuple]] = Counter()

    def __bool__(self) -> bool:
        return bool(self._ints or self._floats)

    # Counted under (family, label values) and turned into hash fields once, when written: a batch
    # counts each delivery (twice or three times), and joining the fields per count cost ~5 µs each.
    def add(self, family: Family, *labels: Any, n: int = 1) -> None:
        """Count `n` in a counter family under these label values."""
        if len(labels) != len(family.labels):
            family.field(labels)  # raises, naming the labels expected
        if n:
            self._ints[family, labels] += n

    def observe(self, family: Family, seconds: float, *labels: Any) -> None:
        """Observe one value in a histogram family."""
        assert family.buckets is not None, f"{family.name} is not a histogram"
        if len(labels) != len(family.labels):
            family.field(labels)  # raises, naming the labels expected
        self._ints[family, (*labels, bisect.bisect_left(family.buckets, seconds))] += 1
        self._floats[family, (*labels, SUM)] += seconds

    def into(self, pipe: Any) -> Any:
        """Queue the increments on a pipeline (to share a round trip with other writes)."""
        for (family, labels), n in self._ints.items():
            pipe.hincrby(family.key, _labelled(family, labels), n)
        for (family, labels), x in self._floats.items():
            pipe.hincrbyfloat(family.key, _labelled(family, labels), x)
        return pipe

    def write(self, r: redis.Redis, what: str = "counts") -> None:
        """Add everything to Redis in one round trip; a failure is logged, never raised."""
        if self:
            _run(self.into(r.pipeline(transaction=False)), what)

    def write_after_commit(self, session: Any, what: str = "counts") -> None:
        """Write once `session`'s transaction commits (nothing on a rollback: it did not happen)."""
        if not self:
            return
        from sqlalchemy import event

        def write(_session: Any) -> None:
            try:
                from notifier.store.redis_conn import get_redis

                self.write(get_redis(), what)
            except Exception as exc:  # noqa: BLE001 - a metric is never worth failing a committed batch for
                log.warning("metrics: %s not recorded: %s", what, exc)

        event.listen(session, "after_commit", write, once=True)


def _labelled(family: Family, labels: tuple[Any, ...]) -> str:
    """The hash field of a count (label values) or of a histogram's bucket or sum (label values, then it)."""
    if family.buckets is not None:
        return family.field(labels[:-1]) + SEP + str(labels[-1])
    return family.field(labels)


def _field(*parts: Any) -> str:
    return SEP.join(str(p) for p in parts)


def _run(pipe: Any, what: str) -> None:
    try:
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("metrics: %s not recorded: %s", what, exc)


def tally_send(tally: Tally, *, channel: str, provider: str, status: str, lane: str, kind: str,
               reason: str | None, latency_s: float | None) -> None:
    """Count one send result: its status, the bounded reason of an error, the latency of a first-attempt send."""
    if status == RETRY_STATUS:
        tally.add(RETRIES, channel, provider)
    else:
        tally.add(DELIVERIES, channel, provider, status)
    if kind != "ok":
        tally.add(ERRORS, channel, provider, status, failure_reason(kind, reason))
    if latency_s is not None:
        tally.observe(LATENCY, max(latency_s, 0.0), lane, channel)


def record_sends(r: redis.Redis, sends: Iterable[tuple[str, str, str]],
                 calls: Iterable[tuple[str, float]] = (), tally: Tally | None = None) -> None:
    """Count a batch's send results by (channel, provider, status) and observe its provider calls; one round trip.

    `status` is the delivery's new status: sent, failed, or scheduled (a retry). `calls` is
    (provider, seconds) per send_batch call: the wall time of one batch, not of one request.
    `tally` carries anything else counted for the batch (tally_send), written in the same round trip.
    """
    tally = tally or Tally()
    for (channel, provider, status), n in Counter(sends).items():
        if status == RETRY_STATUS:
            tally.add(RETRIES, channel, provider, n=n)
        else:
            tally.add(DELIVERIES, channel, provider, status, n=n)
    for provider, seconds in calls:
        tally.observe(BATCH, seconds, provider)
    tally.write(r, "send results")


def count_expired(r: redis.Redis | None, waited: Iterable[str]) -> None:
    """Count deliveries that ended `expired`, by where they waited (notifier/pipeline/expiry.py)."""
    if r is None:
        return
    tally = Tally()
    for where, n in Counter(waited).items():
        tally.add(EXPIRED, where, n=n)
    tally.write(r, "expired count")


def record_callbacks(r: redis.Redis, sent: int, failed: int, given_up: int) -> None:
    """Count callback events accepted by producers, failed attempts, and events given up."""
    tally = Tally()
    for outcome, n in (("sent", sent), ("failed", failed), ("given_up", given_up)):
        tally.add(CALLBACKS, outcome, n=n)
    tally.write(r, "callback counts")


def count_stuck(r: redis.Redis, n: int) -> None:
    """Count deliveries the sweeper found stuck and re-drove."""
    if n:
        _run(r.pipeline(transaction=False).incrby(STUCK, n), "sweeper count")


def bridge_lag(consumer: Any) -> list[tuple[str, int, int]]:
    """(topic, partition, lag) for each partition a Kafka consumer holds: log end offset minus its position.

    The log end is librdkafka's, from the last fetch response: free to read, where asking the
    broker waits behind the consumer's own long-poll fetch (up to fetch.wait.max.ms per
    partition). While the bridge pauses fetching (Celery refusing work) it stands still. A
    partition not consumed from yet (no position) is left out.
    """
    assignment = consumer.assignment()
    if not assignment:
        return []
    lags = []
    for tp in consumer.position(assignment):
        if tp.offset < 0:
            continue
        _low, high = consumer.get_watermark_offsets(tp, cached=True)
        if high >= 0:
            lags.append((tp.topic, tp.partition, max(high - tp.offset, 0)))
    return lags


def set_bridge_lag(r: redis.Redis, group: str, lags: Iterable[tuple[str, int, int]], now: float | None = None,
                   tally: Tally | None = None) -> None:
    """Record a consumer group's lag per partition, with when it was measured (and `tally`, same round trip)."""
    now = time.time() if now is None else now
    mapping = {_field(group, topic, partition): f"{lag} {now:.3f}" for topic, partition, lag in lags}
    pipe = r.pipeline(transaction=False)
    if mapping:
        pipe.hset(BRIDGE_LAG, mapping=mapping)
    if tally:
        tally.into(pipe)
    if len(pipe):
        _run(pipe, "bridge lag")


def report_bridge_lag(group: str, consumer: Any, dead_letters: int = 0) -> None:
    """Measure and record the bridge's lag and its new dead letters; never raises (the bridge must go on)."""
    try:
        from notifier.store.redis_conn import get_redis

        tally = Tally()
        tally.add(DEAD_LETTERS, group, n=dead_letters)
        set_bridge_lag(get_redis(), group, bridge_lag(consumer), tally=tally)
    except Exception as exc:  # noqa: BLE001 - a metric is never worth stopping the bridge for
        log.warning("metrics: bridge lag not recorded: %s", exc)
