"""Durable deferral and the sweeper: the database holds every wait, Celery only the last seconds.

Deferred deliveries (quiet hours, send_at, retry backoff) are `scheduled` rows with a due
time. A beat task releases the due ones in batches, claiming rows with one UPDATE (SKIP
LOCKED on PostgreSQL), so two beats never release the same row; a short ETA covers the
rest of the interval. A sweeper re-drives deliveries stuck in `queued` or `sending`.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from notifier.delivery_log import LOG, as_utc
from notifier.events import Priority
from notifier.models import Status


@dataclass(frozen=True, slots=True)
class Ready:
    """A delivery to put back on a queue: which stage, which lane, not before when."""

    id: int
    lane: str
    stage: str  # "filter" for first attempts, "dedup" for retries (filter already passed)
    eta: datetime | None


def _lane(priority: str) -> str:
    try:
        return Priority(priority).lane
    except ValueError:
        return "low"


BATCH = 1000


def release_due(session: Session, now: datetime, horizon_s: float, limit: int = BATCH) -> list[Ready]:
    """Claim scheduled deliveries due within `horizon_s` and move them to `queued`."""
    due = (
        select(LOG.c.id)
        .where(LOG.c.status == Status.SCHEDULED.value, LOG.c.scheduled_at <= now + timedelta(seconds=horizon_s))
        .order_by(LOG.c.scheduled_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    stmt = (
        update(LOG)
        .where(LOG.c.id.in_(due.scalar_subquery()), LOG.c.status == Status.SCHEDULED.value)
        .values(status=Status.QUEUED.value, updated_at=now)
        .returning(LOG.c.id, LOG.c.priority, LOG.c.scheduled_at, LOG.c.attempts)
    )
    out = []
    for id_, priority, scheduled_at, attempts in session.execute(stmt):
        at = as_utc(scheduled_at)
        out.append(Ready(id_, _lane(priority), "dedup" if attempts else "filter", at if at and at > now else None))
    return out


def sweep_stuck(session: Session, now: datetime, stuck_after_s: float, limit: int = BATCH) -> list[Ready]:
    """Re-drive deliveries left in `queued` or `sending` longer than `stuck_after_s`.

    A `sending` row was claimed by a worker that died before recording; its lease has
    expired (stuck_after_s > lease TTL), so it goes back through dedup. A `queued` row lost
    its message (a crash between commit and enqueue, a broker restart): it starts again at
    filter, or at dedup when it is a retry.
    """
    cutoff = now - timedelta(seconds=stuck_after_s)
    out = []
    for status in (Status.SENDING.value, Status.QUEUED.value):
        stuck = (
            select(LOG.c.id)
            .where(LOG.c.status == status, LOG.c.updated_at < cutoff)
            .order_by(LOG.c.updated_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        stmt = (
            update(LOG)
            .where(LOG.c.id.in_(stuck.scalar_subquery()), LOG.c.status == status, LOG.c.updated_at < cutoff)
            .values(status=Status.QUEUED.value, updated_at=now)
            .returning(LOG.c.id, LOG.c.priority, LOG.c.attempts)
        )
        for id_, priority, attempts in session.execute(stmt):
            stage = "dedup" if status == Status.SENDING.value or attempts else "filter"
            out.append(Ready(id_, _lane(priority), stage, None))
    return out
