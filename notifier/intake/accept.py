"""Intake: an event is accepted only once its deliveries are stored durably.

Every entry point (`send_notification.delay`, the HTTP API, the Kafka bridge) stores the
event's deliveries here, with a synchronous commit, before it acknowledges anything to its
producer (returns, answers 202, commits the Kafka offset). From then on a Celery message that
is lost (a worker killed between the broker handing it out and acking it, a broker that
restarts empty) costs time, not the notification: the rows exist, and the sweeper re-drives
any that stay `queued` (notifier.pipeline.scheduling.sweep_stuck).
"""
from __future__ import annotations

import logging
from typing import Sequence

import psycopg2
import redis
from sqlalchemy import exc as sa_exc

from notifier.ops import stage_cpu
from notifier.store.db import transaction
from notifier.intake.events import NotificationEvent
from notifier.store.redis_conn import get_redis
from notifier.pipeline.routing import RouteResult, route

log = logging.getLogger(__name__)

# Two intakes inserting overlapping keys (the same event through two bridges) can deadlock on
# the unique index; PostgreSQL breaks it by failing one, which simply tries again.
DEADLOCK_ATTEMPTS = 3


def store(events: Sequence[NotificationEvent], producer: str | None = None) -> RouteResult:
    """Route `events` and commit their delivery rows durably; return what is queued, per lane.

    `producer` names who sent them ("key:<id>" for the HTTP API), for callbacks; else each event's app."""
    if not events:
        return RouteResult()
    with stage_cpu.measure("route"):
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
