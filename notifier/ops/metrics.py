"""Operational metrics: counters every process adds to Redis, rendered for Prometheus by one exporter.

Workers are many processes on many machines, so none can hold a counter for Prometheus to
scrape. Each adds its batch's counts to Redis hashes (HINCRBY, one pipeline per batch) and
`render()` reads them back together with what it measures at scrape time: queue depths on
the broker, the scheduled backlog in the database, and the bridge's Kafka lag (which the
bridge reports to Redis itself). A Redis restart resets the counters; Prometheus' rate()
treats that as a counter reset. Nothing here raises into the hot path: a metric that
cannot be written is logged and dropped, never a reason to fail a delivery.
"""
from __future__ import annotations

import bisect
import logging
import time
from collections import Counter
from typing import Any, Callable, Iterable, Iterator, Sequence

import redis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

log = logging.getLogger(__name__)

__all__ = ["CONTENT_TYPE_LATEST", "record_sends", "count_stuck", "bridge_lag", "report_bridge_lag",
           "set_bridge_lag", "queue_depths", "render", "registry", "serve"]

PREFIX = "metrics:"
DELIVERIES = PREFIX + "deliveries"  # field channel|provider|status -> count (sent, failed)
RETRIES = PREFIX + "retries"  # field channel|provider -> count
BATCH = PREFIX + "provider_batch"  # field provider|<bucket index> -> count, provider|sum -> seconds
STUCK = PREFIX + "sweeper_redriven"  # count
BRIDGE_LAG = PREFIX + "bridge_lag"  # field group|topic|partition -> "<lag> <unix time>"
SEP = "\x1f"  # between label values in a hash field; never in a channel, provider, queue or topic name
# Upper bounds (seconds) of the provider call histogram; the last bucket is +Inf.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RETRY_STATUS = "scheduled"  # what _record sets on a delivery that will be tried again


def _field(*parts: Any) -> str:
    return SEP.join(str(p) for p in parts)


def _split(field: bytes | str) -> list[str]:
    return (field.decode() if isinstance(field, bytes) else field).split(SEP)


def _run(pipe: Any, what: str) -> None:
    try:
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("metrics: %s not recorded: %s", what, exc)


# -- written by the hot path -------------------------------------------------------------


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


# -- read at scrape time -------------------------------------------------------------------


def queue_depths(broker: redis.Redis, queues: Sequence[str], key_prefix: str = "",
                 priority_steps: Sequence[int] | None = None) -> dict[str, int]:
    """Messages waiting per queue on a Redis broker: LLEN of each of kombu's priority lists."""
    from kombu.transport.redis import PRIORITY_STEPS, Channel

    steps = list(priority_steps or PRIORITY_STEPS)
    pipe = broker.pipeline(transaction=False)
    for queue in queues:
        for pri in steps:
            # kombu's Channel._q_for_pri: the plain name for priority 0, else name + sep + priority.
            pipe.llen(key_prefix + (f"{queue}{Channel.sep}{pri}" if pri else queue))
    sizes = pipe.execute()
    return {queue: sum(sizes[i * len(steps):(i + 1) * len(steps)]) for i, queue in enumerate(queues)}


def _redis_counters(r: redis.Redis) -> Iterator[Any]:
    pipe = r.pipeline(transaction=False)
    for key in (DELIVERIES, RETRIES, BATCH, BRIDGE_LAG):
        pipe.hgetall(key)
    pipe.get(STUCK)
    deliveries, retries, batch, lag, stuck = pipe.execute()

    family = CounterMetricFamily("notifier_deliveries", "Deliveries a provider call ended, by channel, provider "
                                 "and status (sent or failed; retries are counted apart).",
                                 labels=["channel", "provider", "status"])
    for field, value in sorted(deliveries.items()):
        family.add_metric(_split(field), int(value))
    yield family

    family = CounterMetricFamily("notifier_delivery_retries", "Deliveries scheduled for another attempt after a "
                                 "transient provider failure (timeout, 5xx, 429, misconfiguration).",
                                 labels=["channel", "provider"])
    for field, value in sorted(retries.items()):
        family.add_metric(_split(field), int(value))
    yield family

    family = HistogramMetricFamily("notifier_provider_batch_seconds", "Wall time of one provider call: a batch of "
                                   "deliveries sent together (multiplexed on one HTTP/2 connection for push).",
                                   labels=["provider"])
    per_provider: dict[str, dict[str, float]] = {}
    for field, value in batch.items():
        provider, slot = _split(field)
        per_provider.setdefault(provider, {})[slot] = float(value)
    for provider, slots in sorted(per_provider.items()):
        cumulative, buckets = 0, []
        for i, bound in enumerate((*BUCKETS, float("inf"))):
            cumulative += int(slots.get(str(i), 0))
            buckets.append((floatToGoString(bound), cumulative))
        family.add_metric([provider], buckets, slots.get("sum", 0.0))
    yield family

    yield CounterMetricFamily("notifier_sweeper_redriven", "Deliveries found stuck in queued or sending (a worker "
                              "died, a message was lost) and re-driven by the sweeper.", value=int(stuck or 0))

    lag_family = GaugeMetricFamily("notifier_bridge_lag_messages", "Kafka messages not yet consumed by the bridge, "
                                   "per partition (log end offset minus the consumer's position).",
                                   labels=["group", "topic", "partition"])
    at_family = GaugeMetricFamily("notifier_bridge_lag_timestamp_seconds", "When the bridge last measured a "
                                  "partition's lag (unix time); old means no bridge holds the partition.",
                                  labels=["group", "topic", "partition"])
    for field, value in sorted(lag.items()):
        labels = _split(field)
        count, at = value.decode().split()
        lag_family.add_metric(labels, int(count))
        at_family.add_metric(labels, float(at))
    yield lag_family
    yield at_family


def _broker_gauges(broker: redis.Redis, queues: Sequence[str], key_prefix: str,
                   priority_steps: Sequence[int] | None) -> Iterator[Any]:
    family = GaugeMetricFamily("notifier_queue_messages", "Messages waiting in a Celery queue on the broker.",
                               labels=["queue"])
    for queue, depth in queue_depths(broker, queues, key_prefix, priority_steps).items():
        family.add_metric([queue], depth)
    yield family
    yield GaugeMetricFamily("notifier_queue_unacked_messages", "Messages handed to workers and not yet acknowledged "
                            "(running, or prefetched; acks are late).", value=broker.hlen(key_prefix + "unacked"))


def _scheduled_gauges(now: float) -> Iterator[Any]:
    from datetime import datetime, timezone

    from sqlalchemy import case, func, select

    from notifier.store.db import get_engine
    from notifier.store.delivery_log import LOG
    from notifier.store.models import Status

    due_before = datetime.fromtimestamp(now, timezone.utc)
    # Both counts come from the (status, scheduled_at) index.
    stmt = select(func.count(), func.count(case((LOG.c.scheduled_at <= due_before, 1)))).where(
        LOG.c.status == Status.SCHEDULED.value
    )
    with get_engine().connect() as conn:
        backlog, due = conn.execute(stmt).one()
    yield GaugeMetricFamily("notifier_scheduled_deliveries", "Deliveries waiting in `scheduled` (quiet hours, "
                            "send_at, retry backoff).", value=backlog)
    yield GaugeMetricFamily("notifier_scheduled_due_deliveries", "Scheduled deliveries already due and not yet "
                            "released; grows when beat or the scheduler worker is down.", value=due)


class NotifierCollector(Collector):
    """Collects every notifier metric at scrape time from Redis, the broker and the database."""

    def __init__(self, queues: Sequence[str] | None = None) -> None:
        self._queues = queues

    def collect(self) -> Iterator[Any]:
        from notifier.store.redis_conn import broker_redis, get_redis
        from notifier.settings import get_settings

        import celeryconfig

        queues = self._queues or celeryconfig.QUEUES
        options = celeryconfig.broker_transport_options
        sources: list[tuple[str, Callable[[], Iterator[Any]]]] = [
            ("redis", lambda: _redis_counters(get_redis())),
            ("database", lambda: _scheduled_gauges(time.time())),
        ]
        broker = broker_redis()
        if broker is not None:  # another broker (RabbitMQ) has its own exporter for queue depths
            prefix = options.get("global_keyprefix", get_settings().broker_key_prefix)
            sources.append(("broker", lambda: _broker_gauges(broker, queues, prefix, options.get("priority_steps"))))
        up = GaugeMetricFamily("notifier_metrics_source_up", "1 if the exporter could read a source at this scrape.",
                               labels=["source"])
        for name, read in sources:
            try:
                families = list(read())
            except Exception as exc:  # noqa: BLE001 - one source down must not hide the others
                log.warning("metrics: reading %s failed: %s", name, exc)
                up.add_metric([name], 0)
                continue
            up.add_metric([name], 1)
            yield from families
        yield up


_registry: CollectorRegistry | None = None


def registry() -> CollectorRegistry:
    """The registry holding the notifier collector (one per process)."""
    global _registry
    if _registry is None:
        _registry = CollectorRegistry(auto_describe=False)
        _registry.register(NotifierCollector())
    return _registry


def render() -> bytes:
    """Every notifier metric in the Prometheus text exposition format."""
    return generate_latest(registry())


def serve(port: int, address: str = "127.0.0.1") -> None:
    """Serve /metrics on `address`:`port` until interrupted (the standalone exporter)."""
    from prometheus_client import start_http_server

    server, thread = start_http_server(port, addr=address, registry=registry())
    log.info("metrics: serving http://%s:%d/metrics", address, port)
    try:
        while thread.is_alive():
            thread.join(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
