"""The Prometheus exporter: at scrape time, the counters in Redis plus what it measures then.

`render()` reads back what every process counted (notifier.ops.counters) together with what
it measures at scrape time: queue depths on the broker, the scheduled backlog in the
database, and the bridge's Kafka lag (which the bridge reports to Redis itself).
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterator, Sequence

import redis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from notifier.ops.counters import BRIDGE_LAG, FAMILIES, SEP, STUCK, SUM, Family
from notifier.queues import QUEUES

log = logging.getLogger(__name__)

__all__ = ["CONTENT_TYPE_LATEST", "queue_depths", "render", "registry", "serve"]


def _split(field: bytes | str) -> list[str]:
    return (field.decode() if isinstance(field, bytes) else field).split(SEP)


def version() -> str:
    """The installed notifier package's version."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("notifier")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def _build_info() -> GaugeMetricFamily:
    import platform

    family = GaugeMetricFamily("notifier_build_info", "Always 1; the labels say which notifier release (and "
                               "Python) the exporter runs.", labels=["version", "python"])
    family.add_metric([version(), platform.python_version()], 1)
    return family


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


def _render_family(family: Family, fields: dict) -> Any:
    """A counter or histogram family from its Redis hash (fields: label values, plus bucket or sum)."""
    if family.buckets is None:
        metric: Any = CounterMetricFamily(family.name, family.help, labels=family.labels)
        for field, value in sorted(fields.items()):
            labels = _split(field)
            if len(labels) == len(family.labels):  # a field written under other labels (an old release) is left out
                metric.add_metric(labels, int(value))
        return metric
    metric = HistogramMetricFamily(family.name, family.help, labels=family.labels)
    series: dict[tuple[str, ...], dict[str, float]] = {}
    for field, value in fields.items():
        *labels, slot = _split(field)
        if len(labels) == len(family.labels):
            series.setdefault(tuple(labels), {})[slot] = float(value)
    for labels, slots in sorted(series.items()):
        cumulative, buckets = 0, []
        for i, bound in enumerate((*family.buckets, float("inf"))):
            cumulative += int(slots.get(str(i), 0))
            buckets.append((floatToGoString(bound), cumulative))
        metric.add_metric(list(labels), buckets, slots.get(SUM, 0.0))
    return metric


def _redis_counters(r: redis.Redis) -> Iterator[Any]:
    pipe = r.pipeline(transaction=False)
    for family in FAMILIES:
        pipe.hgetall(family.key)
    pipe.hgetall(BRIDGE_LAG)
    pipe.get(STUCK)
    *hashes, lag, stuck = pipe.execute()
    for family, fields in zip(FAMILIES, hashes):
        yield _render_family(family, fields)

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
                   priority_steps: Sequence[int] | None = None) -> Iterator[Any]:
    family = GaugeMetricFamily("notifier_queue_messages", "Messages waiting in a Celery queue on the broker.",
                               labels=["queue"])
    for queue, depth in queue_depths(broker, queues, key_prefix, priority_steps).items():
        family.add_metric([queue], depth)
    yield family
    yield GaugeMetricFamily("notifier_queue_unacked_messages", "Messages handed to workers and not yet acknowledged "
                            "(running, or prefetched; acks are late).", value=broker.hlen(key_prefix + "unacked"))


def _summed_over_shards(stmt: Any) -> tuple[int, ...]:
    """One row of counts, added up over every shard (each gauge is the fleet's, not one shard's)."""
    from notifier.store.db import database_urls, get_engine

    totals: list[int] = []
    for url in database_urls():
        with get_engine(url).connect() as conn:
            row = conn.execute(stmt).one()
        totals = [a + b for a, b in zip(totals, row)] if totals else list(row)
    return tuple(totals)


def _scheduled_gauges(now: float) -> Iterator[Any]:
    from datetime import datetime, timezone

    from sqlalchemy import case, func, select

    from notifier.store.delivery_log import LOG
    from notifier.store.models import Status

    due_before = datetime.fromtimestamp(now, timezone.utc)
    # Both counts come from the (status, scheduled_at) index.
    stmt = select(func.count(), func.count(case((LOG.c.scheduled_at <= due_before, 1)))).where(
        LOG.c.status == Status.SCHEDULED.value
    )
    backlog, due = _summed_over_shards(stmt)
    yield GaugeMetricFamily("notifier_scheduled_deliveries", "Deliveries waiting in `scheduled` (quiet hours, "
                            "send_at, retry backoff).", value=backlog)
    yield GaugeMetricFamily("notifier_scheduled_due_deliveries", "Scheduled deliveries already due and not yet "
                            "released; grows when beat or the scheduler worker is down.", value=due)
    yield from _digest_gauges(due_before)
    yield from _callback_outbox_gauge()


def _digest_gauges(due_before) -> Iterator[Any]:
    from sqlalchemy import case, func, select

    from notifier.store.models import DigestWindow

    windows = DigestWindow.__table__
    open_, overdue = _summed_over_shards(select(func.count(), func.count(case((windows.c.closes_at <= due_before, 1))))
                                         .select_from(windows))
    yield GaugeMetricFamily("notifier_digest_windows", "Digest windows open (members held for a digest).",
                            value=open_)
    yield GaugeMetricFamily("notifier_digest_windows_due", "Digest windows past their close and not yet sent as "
                            "a digest; grows when beat or the scheduler worker is down.", value=overdue)


def _callback_outbox_gauge() -> Iterator[Any]:
    from sqlalchemy import func, select

    from notifier.store.models import CallbackOutbox

    stmt = select(func.count().filter(CallbackOutbox.given_up_at.is_(None)),
                  func.count().filter(CallbackOutbox.given_up_at.is_not(None)))
    pending, given_up = _summed_over_shards(stmt)
    family = GaugeMetricFamily("notifier_callback_outbox_events", "Callback events in the outbox: pending (not "
                               "accepted yet) and given_up (kept for inspection).", labels=["state"])
    family.add_metric(["pending"], pending)
    family.add_metric(["given_up"], given_up)
    yield family


class NotifierCollector(Collector):
    """Collects every notifier metric at scrape time from Redis, the broker and the database."""

    def __init__(self, queues: Sequence[str] | None = None) -> None:
        self._queues = queues

    def collect(self) -> Iterator[Any]:
        from notifier.settings import get_settings
        from notifier.store.redis_conn import broker_redis, get_redis

        queues = self._queues or QUEUES
        sources: list[tuple[str, Callable[[], Iterator[Any]]]] = [
            ("redis", lambda: _redis_counters(get_redis())),
            ("database", lambda: _scheduled_gauges(time.time())),
        ]
        broker = broker_redis()
        if broker is not None:  # another broker (RabbitMQ) has its own exporter for queue depths
            # celeryconfig sets kombu's global_keyprefix from the same setting.
            prefix = get_settings().broker_key_prefix
            sources.append(("broker", lambda: _broker_gauges(broker, queues, prefix)))
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
        yield _build_info()


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
