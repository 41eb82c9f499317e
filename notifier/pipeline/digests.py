"""Digests: a user's non-urgent deliveries of one category on one channel, held in a window, sent as one.

For categories configured so (NOTIFIER_DIGEST_CATEGORIES, e.g. social=1800), the filter stage
holds a `normal` or `low` delivery in its (user, category, channel) window instead of letting it
go: the delivery ends `suppressed`, reason "digested into <digest notification id>", and joins
the window's members. `critical` and `high` never wait. The first member opens the window; it
closes a fixed time later (a steady trickle cannot keep it open for ever).

The window is durable, like a scheduled delivery: it is a `digest_windows` row, and the release
beat closes the due ones (SKIP LOCKED, so two releases never close the same one). Closing
renders the digest from its members, inserts the digest's deliveries `queued` under the
notification id fixed when the window opened, and deletes the window, in one transaction: a
re-run of the release, a redelivered task or a second beat finds no window and makes no second
digest (and the idempotency key would refuse one anyway). The digest then goes through filter ->
dedup -> send like any delivery, so quiet hours and rate limits apply to it, not to its members.

A window of one member is sent as that member's own title, body and data, unchanged: the
producer's words (and the data its app opens) beat a summary of one. It is still a digest row
(its own notification id, listing its one member), so status reads the same either way.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Mapping, Sequence

import redis
from sqlalchemy import Row, delete, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from notifier.intake.events import NotificationEvent, Priority
from notifier.pipeline.digest_rendering import render_digest
from notifier.pipeline.routing import CANCEL_PREFIX, NO_TARGET, plan
from notifier.pipeline.scheduling import Ready
from notifier.store import delivery_log
from notifier.store.models import DigestMember, DigestWindow, Status
from notifier.store.recipients import load_recipients
from notifier.store.redis_slots import mget

log = logging.getLogger(__name__)

WINDOWS = DigestWindow.__table__
MEMBERS = DigestMember.__table__
LOG = delivery_log.LOG

DIGEST_TYPE = "digest"  # the type of a digest's own deliveries: never held again
NOTIFICATION_PREFIX = "digest:"
BATCH = 100  # windows closed per transaction
# A release may run a moment early: a send_at this close is due (as in filtering.EARLY_TOLERANCE).
EARLY_TOLERANCE = timedelta(seconds=1)


def digested_reason(notification_id: str) -> str:
    """The reason a held member's row carries."""
    return f"digested into {notification_id}"


def holds(row: Row, windows: Mapping[str, float], now: datetime) -> bool:
    """Whether a delivery waits in a digest window rather than going on its own.

    Policy: its category has a window configured; its priority may be digested (normal, low;
    never critical or high); it is not a digest itself; and it is due (an event with send_at
    waits for its time first, then joins the window open at that time). Preferences come
    before this (an opted-out member is suppressed as such), quiet hours and rate limits after
    it, on the digest.
    """
    if row.category not in windows or row.type == DIGEST_TYPE:
        return False
    if not Priority.of(row.priority).may_be_digested:
        return False
    due = delivery_log.as_utc(row.scheduled_at)
    return due is None or due <= now + EARLY_TOLERANCE


def hold(session: Session, rows: Sequence[Row], windows: Mapping[str, float], now: datetime) -> dict[int, str]:
    """Put queued deliveries into their open windows (opening any that is missing); return id -> digest id.

    Three statements for the whole batch, however many windows: upsert the windows, move the
    members to `suppressed`, add them to digest_members. The upsert locks each window row until
    this transaction ends: a release closing it skips it until then (or, having closed it
    first, makes the upsert open a new window), so no member joins a window already sent. A row
    that was no longer `queued` (cancelled meanwhile) keeps its status; the close leaves out any
    member whose row does not say "digested into" its digest.
    """
    if not rows:
        return {}
    keys = sorted({(row.user_id, row.category, row.channel) for row in rows})
    opened = _open(session, keys, now, windows)
    held = {row.id: opened[(row.user_id, row.category, row.channel)] for row in rows}
    delivery_log.record_each(session, [
        {"_id": id_, "status": Status.SUPPRESSED.value, "reason": digested_reason(notification_id)}
        for id_, (_, notification_id) in held.items()
    ], only_from=[Status.QUEUED.value])
    members = [(window_id, id_) for id_, (window_id, _) in held.items()]
    if _postgres(session):
        _execute_values(session, _ADD_MEMBERS, members)
    else:
        session.execute(sqlite.insert(MEMBERS).values([{"window_id": w, "delivery_id": d} for w, d in members])
                        .on_conflict_do_nothing())
    return {id_: notification_id for id_, (_, notification_id) in held.items()}


# PostgreSQL: plain SQL through psycopg2's execute_values, as delivery_log inserts rows: compiling a
# multi-row INSERT in SQLAlchemy costs more CPU than the database spends running it.
# The no-op DO UPDATE makes an existing window's row come back, and locks it.
_OPEN_WINDOWS = (
    "INSERT INTO digest_windows (user_id, category, channel, notification_id, opened_at, closes_at) VALUES %s "
    "ON CONFLICT (user_id, category, channel) DO UPDATE SET closes_at = digest_windows.closes_at "
    "RETURNING user_id, category, channel, id, notification_id"
)
_ADD_MEMBERS = "INSERT INTO digest_members (window_id, delivery_id) VALUES %s ON CONFLICT DO NOTHING"


def _postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _execute_values(session: Session, sql: str, args: list[tuple], *, fetch: bool = False) -> list[tuple]:
    from psycopg2.extras import execute_values

    cursor = session.connection().connection.dbapi_connection.cursor()
    try:
        return execute_values(cursor, sql, args, page_size=len(args), fetch=fetch) or []
    finally:
        cursor.close()


def _open(session: Session, keys: Sequence[tuple[str, str, str]], now: datetime,
          windows: Mapping[str, float]) -> dict[tuple[str, str, str], tuple[int, str]]:
    """The open window of each (user, category, channel), opened now where there is none; locked."""
    values = [  # in key order: two holds lock their windows alike and never deadlock
        (user_id, category, channel, f"{NOTIFICATION_PREFIX}{category}:{uuid.uuid4().hex}", now,
         now + timedelta(seconds=windows[category]))
        for user_id, category, channel in keys
    ]
    if _postgres(session):
        returned = _execute_values(session, _OPEN_WINDOWS, values, fetch=True)
    else:
        stmt = sqlite.insert(WINDOWS).values([dict(zip(("user_id", "category", "channel", "notification_id",
                                                        "opened_at", "closes_at"), v)) for v in values])
        returned = session.execute(stmt.on_conflict_do_update(
            index_elements=["user_id", "category", "channel"], set_={"closes_at": WINDOWS.c.closes_at},
        ).returning(WINDOWS.c.user_id, WINDOWS.c.category, WINDOWS.c.channel, WINDOWS.c.id,
                    WINDOWS.c.notification_id)).all()
    return {(user_id, category, channel): (id_, nid) for user_id, category, channel, id_, nid in returned}


@dataclass(frozen=True, slots=True)
class Closed:
    """What one close did: the digest deliveries to queue (after the commit), and how many windows closed."""

    ready: list[Ready]
    windows: int


MEMBER_COLUMNS = ("id", "notification_id", "type", "priority", "payload", "created_at", "status", "reason")


def close_due(session: Session, r: redis.Redis | None, now: datetime, limit: int = BATCH) -> Closed:
    """Close up to `limit` windows due by `now`: each becomes its digest's deliveries, and is deleted."""
    due = session.execute(
        select(WINDOWS).where(WINDOWS.c.closes_at <= now).order_by(WINDOWS.c.closes_at).limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    if not due:
        return Closed([], 0)
    window_ids = [w.id for w in due]
    member_ids: dict[int, list[int]] = {}
    for window_id, delivery_id in session.execute(
            select(MEMBERS.c.window_id, MEMBERS.c.delivery_id).where(MEMBERS.c.window_id.in_(window_ids))):
        member_ids.setdefault(window_id, []).append(delivery_id)
    rows = {row.id: row for row in delivery_log.load(
        session, [i for ids in member_ids.values() for i in ids], columns=MEMBER_COLUMNS)}
    recipients = load_recipients(session, {w.user_id for w in due}, r)
    planned: list[dict] = []
    lanes: dict[str, str] = {}
    # A cancel of the digest's id (shown to the producer by its members' reasons) that came before the close.
    cancelled = set()
    if r is not None:
        flags = mget(r, [CANCEL_PREFIX + w.notification_id for w in due])
        cancelled = {w.notification_id for w, flag in zip(due, flags) if flag}
    for window in due:
        reason = digested_reason(window.notification_id)
        # Only rows that still say they were digested into this window (a cancel may have got there first).
        members = sorted((rows[i] for i in member_ids.get(window.id, ()) if i in rows
                          and rows[i].status == Status.SUPPRESSED.value and rows[i].reason == reason),
                         key=lambda row: (delivery_log.as_utc(row.created_at), row.id))
        if not members:
            continue
        try:
            event, extra = digest_event(window, members)
            rows_of_window = plan(event, recipients[window.user_id])
        except Exception as exc:  # noqa: BLE001 - a bug of ours: the members' digest says so, the others go on
            log.exception("digests: the digest %s could not be made", window.notification_id)
            planned.append(_failed_row(window, members, f"digest could not be made: {type(exc).__name__} "
                                                        "(see worker log)"))
            continue
        for row in rows_of_window:
            row["payload"]["digest"] = extra
            if window.notification_id in cancelled:
                row["status"], row["reason"] = Status.SUPPRESSED.value, "cancelled by producer"
            lanes[row["idempotency_key"]] = event.lane
            planned.append(row)
    inserted = delivery_log.insert_ignoring_duplicates(
        session, sorted(planned, key=lambda row: row["idempotency_key"]))
    queued = {row["idempotency_key"] for row in planned if row["status"] == Status.QUEUED.value}
    session.execute(delete(MEMBERS).where(MEMBERS.c.window_id.in_(window_ids)))
    session.execute(delete(WINDOWS).where(WINDOWS.c.id.in_(window_ids)))
    ready = [Ready(id_, lanes[key], "filter", None) for id_, key in inserted if key in queued]
    if len(inserted) < len(planned):
        log.warning("digests: %d digest deliveries existed already (a window closed twice?); not made again",
                    len(planned) - len(inserted))
    return Closed(ready, len(due))


def _failed_row(window: Row, members: Sequence[Row], reason: str) -> dict[str, Any]:
    """A `failed` row under the digest's id, so its members' "digested into" leads to why nothing was sent."""
    now = delivery_log.utcnow()
    # The same columns as routing.plan's rows: one multi-row insert takes both.
    return {
        "idempotency_key": f"{window.notification_id}:{window.channel}:failed",
        "notification_id": window.notification_id, "user_id": window.user_id, "type": DIGEST_TYPE,
        "category": window.category, "priority": Priority.NORMAL.value, "channel": window.channel,
        "provider": None, "target": NO_TARGET, "status": Status.FAILED.value, "reason": reason,
        "payload": {"digest": {"members": list(dict.fromkeys(m.notification_id for m in members))}},
        "attempts": 0, "created_at": now, "updated_at": now, "scheduled_at": None,
    }


def digest_event(window: Row, members: Sequence[Row]) -> tuple[NotificationEvent, dict[str, Any]]:
    """The digest of a window's members as an event (its own notification id), and what its rows record."""
    by_notification: dict[str, Row] = {}
    for row in members:  # one member per event: an event sent to two devices is two rows, one member
        by_notification.setdefault(row.notification_id, row)
    distinct = list(by_notification.values())
    priority = Priority.NORMAL if any(Priority.of(m.priority) is Priority.NORMAL for m in distinct) else Priority.LOW
    extra: dict[str, Any] = {"members": list(by_notification), "opened_at": delivery_log.as_utc(
        window.opened_at).isoformat()}
    if len(distinct) == 1:
        payload = distinct[0].payload or {}
        title, body, data = payload.get("title") or "", payload.get("body") or "", payload.get("data") or {}
        extra["template"] = "the member unchanged"
    else:
        rendered = render_digest(window.category, window.channel, [_member_view(m) for m in distinct])
        title, body = rendered.title, rendered.body
        data = {"digest": {"category": window.category, "count": len(distinct)}}
        extra["template"] = rendered.template
        if rendered.note:
            extra["note"] = rendered.note
        if rendered.html is not None:
            extra["html"] = rendered.html
    event = NotificationEvent(
        notification_id=window.notification_id, user_id=window.user_id, type=DIGEST_TYPE,
        category=window.category, priority=priority, channels=[window.channel], title=title, body=body, data=data,
    )
    return event, extra


def _member_view(row: Row) -> dict[str, Any]:
    """What a template sees of one member."""
    payload = row.payload or {}
    return {"notification_id": row.notification_id, "type": row.type, "title": payload.get("title") or "",
            "body": payload.get("body") or "", "params": payload.get("data") or {},
            "created_at": delivery_log.as_utc(row.created_at)}
