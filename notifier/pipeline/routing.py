"""Route: turn events into deliveries (notification x channel x target), one log row each."""
from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Sequence

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from notifier.apps import DEFAULT_APP
from notifier.ops import counters
from notifier.pipeline import rendering
from notifier.pipeline.expiry import BEFORE_INTAKE, expired_reason, expiry_of
from notifier.settings import get_settings
from notifier.store.db import pg_execute
from notifier.store.delivery_log import insert_ignoring_duplicates, utcnow
from notifier.intake.events import NotificationEvent
from notifier.intake.validation import is_storable
from notifier.store.models import IdempotencyKey, Status
from notifier.queues import LANES
from notifier.store.recipients import Recipient, load_recipients
from notifier.store.redis_slots import mget

log = logging.getLogger(__name__)

# Channels used when an event names none, by category (then "*" for any other).
DEFAULT_CHANNELS: dict[str, tuple[str, ...]] = {
    "security": ("push", "email"),
    "transactional": ("push", "email"),
    "marketing": ("email",),
    "social": ("push",),
    "*": ("push",),
}
PUSH_PROVIDER_BY_PLATFORM = {"ios": "apns", "android": "fcm", "web": "webpush"}
DEFAULT_PROVIDER_BY_CHANNEL = {"email": "sendgrid", "sms": "twilio"}
NO_TARGET = "-"
NO_CHANNEL = "-"  # a row about the whole event (duplicate, invalid), not one delivery


def idempotency_key(notification_id: str, channel: str, target: str) -> str:
    """Key of one delivery; the target is hashed so no address or token sits in Redis keys."""
    digest = hashlib.blake2b(target.encode(), digest_size=8).hexdigest()
    return f"{notification_id}:{channel}:{digest}"


def fingerprint(event: NotificationEvent) -> str:
    """A hash of what the event says, so a repeat of its notification_id can be told from a different event.

    Kept in each delivery row's payload (JSON), not a column: the log is the hot, partitioned
    table and only repeats read it back, by notification_id, whose index exists."""
    content = {
        "user_id": event.user_id, "type": event.type, "category": event.category, "priority": event.priority.value,
        "channels": sorted(c.value for c in event.channels) if event.channels else None,
        "title": event.title, "body": event.body, "data": event.data or {},
        "send_at": event.send_at.timestamp() if event.send_at else None,
    }
    if event.template is not None:  # only then: the fingerprints of events without one stay as they were
        content |= {"template": event.template, "params": event.params or {}, "locale": event.locale}
    # Only when given: an event without them keeps the fingerprint it was accepted with before they existed.
    for name in ("app", "ttl_s", "expires_at"):
        value = getattr(event, name)
        if value is not None:
            content[name] = value.timestamp() if name == "expires_at" else value
    raw = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()


CONFLICT_REASON = "notification_id conflicts with the accepted event (another user or content); not delivered"


def accepted_fingerprints(session: Session, notification_ids: Sequence[str]) -> dict[str, str]:
    """The fingerprint each of these notification_ids was accepted with (ids never accepted, accepted
    before fingerprints were kept, or past the dedup window, are absent).

    Read from idempotency_keys, not the log: the log's daily partitions go with retention, the keys
    stay for the whole dedup window (docs/guarantees.md)."""
    if not notification_ids:
        return {}
    ids = sorted(set(notification_ids))
    if session.get_bind().dialect.name == "postgresql":  # every intake batch: one array parameter
        return dict(pg_execute(session, _PG_FINGERPRINTS, (ids,), fetch=True))
    rows = session.execute(
        select(IdempotencyKey.notification_id, IdempotencyKey.fingerprint).where(
            IdempotencyKey.notification_id.in_(ids),
            IdempotencyKey.fingerprint.is_not(None),  # whole-event rows (duplicate, invalid) were not accepted
        )
    )
    return {nid: mark for nid, mark in rows}


_PG_FINGERPRINTS = ("SELECT notification_id, fingerprint FROM idempotency_keys "
                    "WHERE notification_id = ANY(%s) AND fingerprint IS NOT NULL")


def conflicts(session: Session, event: NotificationEvent) -> bool:
    """Whether `event` reuses the notification_id of a different event already accepted."""
    accepted = accepted_fingerprints(session, [event.notification_id]).get(event.notification_id)
    return accepted is not None and accepted != fingerprint(event)


def channels_for(event: NotificationEvent) -> tuple[str, ...]:
    if event.channels:
        return tuple(c.value for c in event.channels)
    return DEFAULT_CHANNELS.get(event.category, DEFAULT_CHANNELS["*"])


def _targets(recipient: Recipient, channel: str, app: str | None = None) -> list[tuple[str | None, str, str | None]]:
    """(provider, target, app) of a user on a channel; an event naming its app reaches only that app's devices."""
    if channel == "push":
        return [
            (PUSH_PROVIDER_BY_PLATFORM.get(d.platform), d.token, d.app)
            for d in recipient.devices
            if d.platform in PUSH_PROVIDER_BY_PLATFORM and (app is None or (d.app or DEFAULT_APP) == app)
        ]
    address = recipient.email if channel == "email" else recipient.phone
    return [(DEFAULT_PROVIDER_BY_CHANNEL[channel], address, app)] if address else []


def plan(event: NotificationEvent, recipient: Recipient, mark: str | None = None) -> list[dict]:
    """The log rows for one event: one per target, or one `suppressed` row per channel without targets.

    An event with a template is rendered here, once per channel, in the user's locale: the event's
    `locale`, else the user's preference, falling back to the default (rendering.render_channel)."""
    now = utcnow()
    base = {
        "notification_id": event.notification_id,
        "user_id": event.user_id,
        "type": event.type,
        "category": event.category,
        "priority": event.priority.value,
        "payload": {"title": event.title, "body": event.body, "data": event.data or {},
                    "fingerprint": mark or fingerprint(event)},
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
        "scheduled_at": event.send_at,
        "failed_at": None,
        "expires_at": expiry_of(event, now, get_settings().category_ttl_s),
        "app": event.app,
    }
    if event.template is not None:  # rendered per channel below
        base["payload"] = {"data": event.data or {}, "fingerprint": base["payload"]["fingerprint"]}
    rows = []
    for channel in channels_for(event):
        targets = _targets(recipient, channel, event.app)
        rendered = rendering.render_channel(event, channel, recipient) if event.template and targets else None
        if not targets:
            rows.append(
                base
                | {
                    "idempotency_key": idempotency_key(event.notification_id, channel, NO_TARGET),
                    "channel": channel,
                    "provider": None,
                    "target": NO_TARGET,
                    "status": Status.SUPPRESSED.value,
                    "reason": f"no {channel} target: user has no "
                              f"{'device token' if channel == 'push' else 'address'}"
                              + (f" for app {event.app}" if event.app and channel == "push" else ""),
                }
            )
        for provider, target, app in targets:
            status, reason = Status.QUEUED.value, None
            if base["expires_at"] is not None and base["expires_at"] <= now:
                # Published in time, expired while it waited to be consumed (Kafka, the broker): never queued.
                status, reason = Status.EXPIRED.value, expired_reason(base["expires_at"], BEFORE_INTAKE)
            row = base | {
                "idempotency_key": idempotency_key(event.notification_id, channel, target),
                "channel": channel,
                "app": app,
                "provider": provider,
                "target": target,
                "status": status,
                "reason": reason,
            }
            if rendered is not None:
                row |= rendering.delivery_fields(rendered, event, channel, provider, base["payload"], now)
            rows.append(row)
    return rows


@dataclass(slots=True)
class RouteResult:
    queued: dict[str, list[int]] = field(default_factory=lambda: {lane: [] for lane in LANES})  # lane -> ids
    duplicates: list[str] = field(default_factory=list)  # notification ids seen before
    tally: counters.Tally = field(default_factory=counters.Tally)  # accepted, duplicate, suppressed: after commit


CANCEL_PREFIX = "cancelled:"  # set by notifier.accounts.devices.cancel_notification


REPEAT_REASON = "notification_id already accepted; this repeat was not delivered again"
LOCK_CLASS = 7301  # pg_advisory_xact_lock(LOCK_CLASS, hashtext(notification_id)): ours alone


def _lock_notification_ids(session: Session, notification_ids: Sequence[str]) -> None:
    """Serialize routing of the same notification_id until this transaction ends (PostgreSQL).

    Two different events under one id routed at once (two producers, two bridges) would
    otherwise both find it unaccepted; their targets differ, so the unique index would not stop
    the second. Taken in one order, so two batches wait for each other and never deadlock.
    SQLite runs one writer at a time and needs none."""
    if session.get_bind().dialect.name != "postgresql" or not notification_ids:
        return
    pg_execute(session, "SELECT pg_advisory_xact_lock(%(c)s, h) FROM (SELECT DISTINCT hashtext(n) AS h "
                        "FROM unnest(CAST(%(ids)s AS text[])) AS n) AS ids ORDER BY h",
               {"c": LOCK_CLASS, "ids": sorted(set(notification_ids))})


def producer_of(event: NotificationEvent, producer: str | None = None) -> str | None:
    """Who a delivery's callbacks go to: the API key that sent the event, else the event's app, else nobody."""
    if producer:
        return producer
    app = getattr(event, "app", None)
    return f"app:{app}" if app else None


def route(session: Session, events: Sequence[NotificationEvent], r: redis.Redis | None = None,
          producer: str | None = None) -> RouteResult:
    """Insert the deliveries of `events` in one statement; an accepted notification_id inserts nothing.

    A repeat of an accepted event, or a different event under its id, is never delivered; it is
    recorded as a `duplicate` row, one per notification_id and reason however often it repeats
    (a Kafka replay of a million events adds no million rows); the repeats are counted in metrics."""
    _lock_notification_ids(session, [e.notification_id for e in events])
    accepted = accepted_fingerprints(session, [e.notification_id for e in events])
    fresh: list[tuple[NotificationEvent, str]] = []
    repeats: list[tuple[NotificationEvent, str]] = []
    for event in events:
        mark = fingerprint(event)
        known = accepted.get(event.notification_id)
        if known is None:
            accepted[event.notification_id] = mark  # the first in this batch claims the id
            fresh.append((event, mark))
        else:
            repeats.append((event, REPEAT_REASON if known == mark else CONFLICT_REASON))
    recipients = load_recipients(session, (e.user_id for e, _ in fresh), r)
    cancelled = set()
    if r is not None and fresh:
        flags = mget(r, [CANCEL_PREFIX + e.notification_id for e, _ in fresh])
        cancelled = {e.notification_id for (e, _), flag in zip(fresh, flags) if flag}
    rows: list[dict] = []
    lane_of_key: dict[str, str] = {}
    keys_of_event: list[tuple[NotificationEvent, list[str]]] = []
    for event, mark in fresh:
        planned = plan(event, recipients[event.user_id], mark)
        if event.notification_id in cancelled:
            for row in planned:
                row["status"], row["reason"] = Status.SUPPRESSED.value, "cancelled by producer"
        keys_of_event.append((event, [r["idempotency_key"] for r in planned]))
        for row in planned:
            lane_of_key[row["idempotency_key"]] = event.lane
            row["producer"] = producer_of(event, producer)
        rows.extend(planned)
    # In key order: two batches inserting the same keys (rows accepted before fingerprints were
    # kept) then take the unique index's locks in the same order and wait instead of deadlocking.
    rows = sorted({r["idempotency_key"]: r for r in rows}.values(), key=lambda r: r["idempotency_key"])
    inserted = dict((key, id_) for id_, key in insert_ignoring_duplicates(session, rows))
    late = sum(row["status"] == Status.EXPIRED.value for row in rows if row["idempotency_key"] in inserted)
    if late:
        counters.count_expired(r, ["intake"] * late)
    result = RouteResult()
    queued_keys = {r["idempotency_key"] for r in rows if r["status"] == Status.QUEUED.value}
    for key, id_ in inserted.items():
        if key in queued_keys:
            result.queued[lane_of_key[key]].append(id_)
    for row in rows:
        if row["idempotency_key"] in inserted:
            if row["status"] == Status.QUEUED.value:
                result.tally.add(counters.DELIVERIES_ACCEPTED, lane_of_key[row["idempotency_key"]], row["channel"])
            else:
                result.tally.add(counters.SUPPRESSED, row["channel"], counters.suppression_reason(row["reason"]))
    # An event whose rows all existed already was accepted before fingerprints were kept.
    repeats += [(event, REPEAT_REASON) for event, keys in keys_of_event if not any(k in inserted for k in keys)]
    duplicate_rows = []
    for event, reason in repeats:
        # Every event we accept ends with a row: a repeat is recorded as `duplicate`.
        result.duplicates.append(event.notification_id)
        duplicate_rows.append(event_row(event, Status.DUPLICATE, reason) | {
            "producer": producer_of(event, producer), "idempotency_key": repeat_key(event.notification_id, reason)})
        result.tally.add(counters.EVENTS_DUPLICATE, event.lane)
    repeated = {id(event) for event, _ in repeats}
    for event, _ in fresh:
        if id(event) not in repeated:
            result.tally.add(counters.EVENTS_ACCEPTED, event.lane)
    insert_ignoring_duplicates(session, duplicate_rows)
    if result.duplicates:
        conflicting = sum(reason == CONFLICT_REASON for _, reason in repeats)
        log.info("route: %d duplicate event(s) recorded, %d of them conflicting", len(result.duplicates), conflicting)
    return result


def repeat_key(notification_id: str, reason: str) -> str:
    """The one key of a notification_id's `duplicate` row for this reason: later repeats add no row."""
    return f"{notification_id}:{Status.DUPLICATE.value}:{'repeat' if reason == REPEAT_REASON else 'conflict'}"


def event_row(event: NotificationEvent, status: Status, reason: str) -> dict:
    """A row about the event as a whole (not one delivery): a duplicate, or an event that could not be routed."""
    return _whole_event_row(event.notification_id, event.user_id, event.type, event.category, event.priority.value,
                            status, reason)


def _whole_event_row(notification_id: str, user_id: str, type_: str, category: str, priority: str,
                     status: Status, reason: str) -> dict:
    now = utcnow()
    return {
        "idempotency_key": f"{notification_id}:{status.value}:{uuid.uuid4().hex}",
        "notification_id": notification_id,
        "user_id": user_id,
        "type": type_,
        "category": category,
        "priority": priority,
        "channel": NO_CHANNEL,
        "provider": None,
        "target": NO_TARGET,
        "status": status.value,
        "reason": reason,
        "payload": {},
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
    }


def invalid_event_row(raw: object, problem: str) -> dict | None:
    """A `failed` row for an event that reached a worker unvalidated and does not validate.

    Producers' events are validated before they are queued; this covers a message put on the
    queue some other way. None when it has no usable notification_id to record it under."""

    def text(name: str, limit: int) -> str | None:
        value = raw.get(name) if isinstance(raw, dict) else None
        if not isinstance(value, str) or not 0 < len(value) <= limit or not is_storable(value):
            return None
        return value

    notification_id = text("notification_id", 128)
    if notification_id is None:
        return None
    return _whole_event_row(
        notification_id, text("user_id", 128) or NO_TARGET, text("type", 64) or NO_TARGET,
        text("category", 64) or NO_TARGET, text("priority", 16) or NO_TARGET,
        Status.FAILED, f"invalid event, not delivered: {problem}"[:1000],
    )
