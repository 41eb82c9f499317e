"""Operational counters the hot path adds to Redis: send results, retries, provider call times, sweeps, bridge lag.

Workers are many processes on many machines, so none can hold a counter for Prometheus to
scrape. Each adds its batch's counts to Redis hashes (HINCRBY, one pipeline per batch);
notifier.ops.exporter reads them back at scrape time. A Redis restart resets the counters;
Prometheus' rate() treats that as a counter reset. Nothing here raises into the hot path: a
metric that cannot be written is logged and dropped, never a reason to fail a delivery.
"""
from __future__ import annotations

import bisect
import logging
import time
from collections import Counter
from typing import Any, Iterable

import redis

log = logging.getLogger(__name__)

PREFIX = "metrics:"
DELIVERIES = PREFIX + "deliveries"  # field channel|provider|status -> count (sent, failed)
RETRIES = PREFIX + "retries"  # field channel|provider -> count
BATCH = PREFIX + "provider_batch"  # field provider|<bucket index> -> count, provider|sum -> seconds
STUCK = PREFIX + "sweeper_redriven"  # count
EXPIRED = PREFIX + "expired"  # field <where it waited: queue, retry, quiet_hours, send_at, scheduled> -> count
BRIDGE_LAG = PREFIX + "bridge_lag"  # field group|topic|partition -> "<lag> <unix time>"
CALLBACKS = PREFIX + "callbacks"  # field outcome (sent, failed, given_up) -> callback events
SEP = "\x1f"  # between label values in a hash field; never in a channel, provider, queue or topic name
# Upper bounds (seconds) of the provider call histogram; the last bucket is +Inf.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RETRY_STATUS = "scheduled"  # what _record sets on a delivery that will be tried again


def _field(*parts: Any) -> str:
    return SEP.join(str(p) for p in parts)


def _run(pipe: Any, what: str) -> None:
    try:
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("metrics: %s not recorded: %s", what, exc)


def record_sends(r: redis.Redis, sends: Iterable[tuple[str, str, str]],
                 calls: Iterable[tuple[str, float]] = ()) -> None:
    """Count a batch's send results by (channel, provider, status) and observe its provider calls; one round trip.

    `status` is the delivery's new status: sent, failed, or scheduled (a retry). `calls` is
    (provider, seconds) per send_batch call: the wall time of one batch, not of one request.
    """
    pipe = r.pipeline(transaction=False)
    for (channel, provider, status), n in Counter(sends).items():
        if status == RETRY_STATUS:
            pipe.hincrby(RETRIES, _field(channel, provider), n)
        else:
            pipe.hincrby(DELIVERIES, _field(channel, provider, status), n)
    for provider, seconds in calls:
        pipe.hincrby(BATCH, _field(provider, bisect.bisect_left(BUCKETS, seconds)), 1)
        pipe.hincrbyfloat(BATCH, _field(provider, "sum"), seconds)
    if len(pipe):
        _run(pipe, "send results")


def count_expired(r: redis.Redis | None, waited: Iterable[str]) -> None:
    """Count deliveries that ended `expired`, by where they waited (notifier/pipeline/expiry.py)."""
    counts = Counter(waited)
    if r is None or not counts:
        return
    pipe = r.pipeline(transaction=False)
    for where, n in counts.items():
        pipe.hincrby(EXPIRED, where, n)
    _run(pipe, "expired count")


def record_callbacks(r: redis.Redis, sent: int, failed: int, given_up: int) -> None:
    """Count callback events accepted by producers, failed attempts, and events given up."""
    pipe = r.pipeline(transaction=False)
    for outcome, n in (("sent", sent), ("failed", failed), ("given_up", given_up)):
        if n:
            pipe.hincrby(CALLBACKS, outcome, n)
    if len(pipe):
        _run(pipe, "callback counts")


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


def set_bridge_lag(r: redis.Redis, group: str, lags: Iterable[tuple[str, int, int]], now: float | None = None) -> None:
    """Record a consumer group's lag per partition, with when it was measured."""
    now = time.time() if now is None else now
    mapping = {_field(group, topic, partition): f"{lag} {now:.3f}" for topic, partition, lag in lags}
    if mapping:
        _run(r.pipeline(transaction=False).hset(BRIDGE_LAG, mapping=mapping), "bridge lag")


def report_bridge_lag(group: str, consumer: Any) -> None:
    """Measure and record the bridge's lag; never raises (the bridge must go on consuming)."""
    try:
        from notifier.store.redis_conn import get_redis

        set_bridge_lag(get_redis(), group, bridge_lag(consumer))
    except Exception as exc:  # noqa: BLE001 - a metric is never worth stopping the bridge for
        log.warning("metrics: bridge lag not recorded: %s", exc)
