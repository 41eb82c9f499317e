"""Intake: an event is accepted only once its deliveries are stored durably.

Every entry point (`send_notification.delay`, the HTTP API, the Kafka bridge) stores the
event's deliveries here, with a synchronous commit, before it acknowledges anything to its
producer (returns, answers 202, commits the Kafka offset). From then on a Celery message that
is lost (a worker killed between the broker handing it out and acking it, a broker that
restarts empty) costs time, not the notification: the rows exist, and the sweeper re-drives
any that stay `queued` (notifier.pipeline.scheduling.sweep_stuck).

Sharded (NOTIFIER_DATABASE_URLS), a batch is split by its users' shards and each part is stored
in a durable transaction of its own on its shard; the producer is acknowledged once every part
is. A part stored before another shard failed is not undone: the producer's retry finds it a
repeat, and its rows are re-driven like any other (docs/sharding.md).
"""
from __future__ import annotations

import logging
from typing import Sequence

import psycopg2
import redis
from sqlalchemy import exc as sa_exc

from notifier.ops import stage_cpu
from notifier.store.db import on_shard, shard_count, shard_for, transaction
from notifier.intake.events import NotificationEvent
from notifier.store.redis_conn import get_redis
from notifier.pipeline.routing import RouteResult, route

log = logging.getLogger(__name__)

# Two intakes inserting overlapping keys (the same event through two bridges) can deadlock on
# the unique index; PostgreSQL breaks it by failing one, which simply tries again.
DEADLOCK_ATTEMPTS = 3


def split_by_shard(events: Sequence[NotificationEvent]) -> dict[int, list[NotificationEvent]]:
    """The events grouped by their user's shard (one group, shard 0, when unsharded)."""
    count = shard_count()
    if count == 1:
        return {0: list(events)} if events else {}
    parts: dict[int, list[NotificationEvent]] = {}
    for event in events:
        parts.setdefault(shard_for(event.user_id, count), []).append(event)
    return parts


def store(events: Sequence[NotificationEvent], producer: str | None = None) -> dict[int, RouteResult]:
    """Route `events` and commit their delivery rows durably, one transaction per shard; return what
    is queued, per shard and lane (delivery ids are per shard).

    `producer` names who sent them ("key:<id>" for the HTTP API), for callbacks; else each event's app."""
    return {shard: store_on_shard(shard, part, producer) for shard, part in split_by_shard(events).items()}


def store_on_shard(shard: int, events: Sequence[NotificationEvent], producer: str | None = None) -> RouteResult:
    """Route events whose users all live on `shard` and commit their rows there durably."""
    if not events:
        return RouteResult()
    with stage_cpu.measure("route"), on_shard(shard):
        return _store(events, producer)


def _store(events: Sequence[NotificationEvent], producer: str | None) -> RouteResult:
    r: redis.Redis | None = get_redis()
    deadlocks = 0
    while True:
        try:
            with transaction(durable=True) as session:
                result = route(session, events, r, producer=producer)
            if r is not None:  # counted once committed; not while Redis is out (each try would wait for it)
                result.tally.write(r, "intake counts")
            return result
        except (psycopg2.extensions.TransactionRollbackError, sa_exc.DBAPIError) as exc:
            if not _is_deadlock(exc):
                raise
            deadlocks += 1
            if deadlocks == DEADLOCK_ATTEMPTS:
                raise
            log.info("intake: deadlock while storing %d event(s); trying again", len(events))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if r is None:
                raise
            # Redis holds only caches and cancel flags here: accept from the database alone rather
            # than refuse the producer (a cancel sent before its event is missed during the outage).
            log.warning("intake: Redis unavailable (%s); storing without the recipient cache", exc)
            r = None


def _is_deadlock(exc: Exception) -> bool:
    # The bulk insert runs on the DBAPI cursor (psycopg2's error unwrapped); reads go through SQLAlchemy.
    orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
    return isinstance(orig, psycopg2.extensions.TransactionRollbackError)
