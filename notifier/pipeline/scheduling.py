"""Durable deferral and the sweeper: the database holds every wait, Celery only the last seconds.

Deferred deliveries (quiet hours, send_at, retry backoff) are `scheduled` rows with a due
time. A beat task releases the due ones in batches, claiming rows with one UPDATE (SKIP
LOCKED on PostgreSQL), so two beats never release the same row; a short ETA covers the
rest of the interval. A sweeper re-drives deliveries stuck in `queued` or `sending`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Collection

import redis
from sqlalchemy import String, func, literal, or_, select, update
from sqlalchemy.orm import Session

from notifier.ops import counters
from notifier.pipeline import expiry
from notifier.store import callback_outbox
from notifier.store.delivery_log import LOG, as_utc, record_each
from notifier.intake.events import Channel, Priority
from notifier.store.models import Status
from notifier.queues import LANES


@dataclass(frozen=True, slots=True)
class Ready:
    """A delivery to put back on a queue: which stage, which lane, not before when."""

    id: int
    lane: str
    stage: str  # "filter" for first attempts, "dedup" for retries (filter already passed)
    eta: datetime | None


def _lane(priority: str) -> str:
    return Priority.of(priority).lane


BATCH = 1000


def release_due(session: Session, now: datetime, horizon_s: float, limit: int = BATCH,
                r: redis.Redis | None = None) -> list[Ready]:
    """Claim scheduled deliveries due within `horizon_s` and move them to `queued`; end the expired `expired`.

    A deferral is due no later than its delivery's expiry (notifier/pipeline/expiry.py), so a
    delivery that waited in quiet hours, for send_at or in a retry's backoff until it expired is
    found here at its expiry and ends with where it waited."""
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
        .returning(LOG.c.id, LOG.c.priority, LOG.c.scheduled_at, LOG.c.attempts, LOG.c.expires_at, LOG.c.reason)
    )
    out, expired, waited = [], [], []
    for row in session.execute(stmt):
        at, ends = as_utc(row.scheduled_at), as_utc(row.expires_at)
        # Past its expiry, or due only when it expires (a wait is capped there): it can no longer go out.
        if ends is not None and (ends <= now or (at is not None and at >= ends)):
            waited.append(expiry.waited_in(row))
            expired.append({"_id": row.id, "status": Status.EXPIRED.value,
                            "reason": expiry.expired_reason(ends, waited[-1])})
            continue
        out.append(Ready(row.id, _lane(row.priority), "dedup" if row.attempts else "filter",
                         at if at and at > now else None))
    record_each(session, expired, only_from=[Status.QUEUED.value])
    counters.count_expired(r, (expiry.METRIC_LABEL[where] for where in waited))
    return out


@dataclass(slots=True)
class Sweep:
    """What one sweep did: deliveries to put back on a queue, and those it gave up on."""

    ready: list[Ready] = field(default_factory=list)
    failed: int = 0


def sweep_stuck(
    session: Session, now: datetime, stuck_after_s: float, *, max_redrives: int, limit: int = BATCH,
    busy_queues: Collection[str] = (), everything: bool = False,
) -> Sweep:
    """Re-drive up to `limit` deliveries left in `queued` or `sending` longer than `stuck_after_s`.

    A `sending` row was claimed by a worker that died before recording; its lease has expired
    (stuck_after_s > lease TTL), so it goes back through dedup. A `queued` row lost its message
    (a crash between commit and enqueue, a broker restart): it starts again at filter, or at
    dedup when it is a retry.

    A row whose queue is in `busy_queues` (messages waiting there) is left alone: its message is
    most likely still waiting, and re-driving a backlog only makes it longer. `everything`
    (the broker lost messages) re-drives regardless of age and queue.

    Each re-drive counts; a delivery re-driven `max_redrives` times ends `failed`: a task that
    fails whole every time it meets this delivery must not go round for ever.
    """
    cutoff = now if everything else now - timedelta(seconds=stuck_after_s)
    out = Sweep()
    for status in (Status.SENDING.value, Status.QUEUED.value):
        stuck = (
            select(LOG.c.id)
            .where(LOG.c.status == status, LOG.c.updated_at <= cutoff, *_not_waiting_in(status, busy_queues))
            .order_by(LOG.c.updated_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        ids = session.scalars(stuck).all()
        if not ids:
            continue
        given_up = (
            update(LOG)
            .where(LOG.c.id.in_(ids), LOG.c.redrives >= max_redrives)
            .values(status=Status.FAILED.value, failed_at=now, updated_at=now,
                    reason=literal(f"re-driven {max_redrives} times without finishing; last error: ", String)
                    + func.coalesce(LOG.c.last_error, f"none recorded (left {status})"))
            .returning(LOG.c.id)
        )
        failed = session.scalars(given_up).all()
        callback_outbox.note(session, failed)
        out.failed += len(failed)
        stmt = (
            update(LOG)
            .where(LOG.c.id.in_(ids), LOG.c.status == status)
            .values(status=Status.QUEUED.value, updated_at=now, redrives=LOG.c.redrives + 1)
            .returning(LOG.c.id, LOG.c.priority, LOG.c.attempts)
        )
        for id_, priority, attempts in session.execute(stmt):
            stage = "dedup" if status == Status.SENDING.value or attempts else "filter"
            out.ready.append(Ready(id_, _lane(priority), stage, None))
    return out


def _not_waiting_in(status: str, busy_queues: Collection[str]) -> list:
    """Conditions leaving out rows whose stage's queue has messages waiting (see sweep_stuck)."""
    if not busy_queues:
        return []
    conditions = []
    for lane in LANES:
        priorities = [p.value for p in Priority if p.lane == lane]
        if status == Status.QUEUED.value:
            if f"pipeline.{lane}" in busy_queues:
                conditions.append(LOG.c.priority.not_in(priorities))
            continue
        busy_channels = [c.value for c in Channel if f"{c.value}.{lane}" in busy_queues]
        if busy_channels:
            conditions.append(or_(LOG.c.priority.not_in(priorities), LOG.c.channel.not_in(busy_channels)))
    return conditions
