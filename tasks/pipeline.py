"""The delivery chain as Celery tasks: route -> filter -> dedup -> send_<channel>.

Each task opens a transaction, calls one function in notifier/, commits, and only then
enqueues the next stage on the same lane (high or low), so a queued message never
points at rows that are not there.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable

from pydantic import ValidationError

from celeryconfig import queue_for
from notifier import metrics
from notifier.db import session_factory
from notifier.delivery_log import insert_ignoring_duplicates, utcnow
from notifier.events import NotificationEvent, describe_errors, parse_event
from notifier.filtering import filter_deliveries
from notifier.rate_limits import parse_limits
from notifier.recipients import invalidate
from notifier.redis_conn import get_redis
from notifier.models import Status
from notifier.routing import event_row, invalid_event_row, route
from notifier.scheduling import BATCH, Ready, release_due, sweep_stuck
from notifier.sending import claim_deliveries, send_deliveries
from notifier.settings import get_settings
from tasks.app import app
from tasks.base import INFRASTRUCTURE_ERRORS, NotifierTask


log = logging.getLogger(__name__)


class EventTask(NotifierTask):
    """Validates events in the producer, before anything is queued, and picks the lane's queue."""

    abstract = True

    def apply_async(self, args=None, kwargs=None, **options: Any):
        events = [parse_event(e) for e in self.raw_events(args or (), kwargs or {})]
        lanes: dict[str, list[NotificationEvent]] = {}
        for event in events:
            lanes.setdefault(event.lane, []).append(event)
        result = None
        for lane, group in lanes.items():
            payload = [e.model_dump(mode="json", exclude_none=True) for e in group]
            result = super().apply_async(
                self.pack(payload),
                None,
                queue=options.pop("queue", None) or queue_for("pipeline", lane),
                argsrepr=_describe_events(group),
                **options,
            )
        return result

    def raw_events(self, args, kwargs) -> list:
        raise NotImplementedError

    def pack(self, payload: list[dict]) -> tuple:
        raise NotImplementedError


def _describe_events(events: list[NotificationEvent]) -> str:
    first = events[0]
    text = f"notification_id={first.notification_id} user={first.user_id} type={first.type} priority={first.priority.value}"
    return text if len(events) == 1 else f"{text} (+{len(events) - 1} more events)"


class SingleEventTask(EventTask):
    abstract = True

    def raw_events(self, args, kwargs):
        return [args[0] if args else kwargs["event"]]

    def pack(self, payload):
        return (payload[0],)


class ManyEventsTask(EventTask):
    abstract = True

    def raw_events(self, args, kwargs):
        return list(args[0] if args else kwargs["events"])

    def pack(self, payload):
        return (payload,)


def _route_and_continue(raw_events: Iterable[dict]) -> None:
    events, invalid = [], []
    for raw in raw_events:
        try:
            events.append(parse_event(raw))
        except ValidationError as exc:
            # Queued without the producer's validation (e.g. a raw send_task): record why, don't drop it.
            invalid.append((raw, describe_errors(exc)))
    if invalid:
        _record_invalid(invalid)
    if not events:
        return
    try:
        with session_factory()() as session, session.begin():
            result = route(session, events, get_redis())
    except INFRASTRUCTURE_ERRORS:
        raise  # retried whole by the task (autoretry_for)
    except Exception as exc:
        # A bug of ours must not lose accepted events silently: each gets a terminal row saying so.
        log.exception("route: %d event(s) could not be routed", len(events))
        with session_factory()() as session, session.begin():
            insert_ignoring_duplicates(session, [
                event_row(e, Status.FAILED, f"could not be routed: {type(exc).__name__} (see worker log)")
                for e in events
            ])
        raise
    for lane, ids in result.queued.items():
        if ids:
            filter_stage.apply_async((ids, lane), queue=queue_for("pipeline", lane))


def _record_invalid(invalid: list[tuple[object, str]]) -> None:
    rows = []
    for raw, problem in invalid:
        row = invalid_event_row(raw, problem)
        if row is None:
            log.error("route: invalid event refused, no usable notification_id to record it under: %s", problem)
            continue
        log.error("route: invalid event notification_id=%r refused: %s", row["notification_id"], problem)
        rows.append(row)
    with session_factory()() as session, session.begin():
        insert_ignoring_duplicates(session, rows)


@app.task(base=SingleEventTask, name="notifier.send_notification")
def send_notification(event: dict) -> None:
    """Accept one notification event and route it."""
    _route_and_continue([event])


@app.task(base=ManyEventsTask, name="notifier.send_notifications")
def send_notifications(events: list[dict]) -> None:
    """Accept many notification events at once and route them as one batch."""
    _route_and_continue(events)


@app.task(base=NotifierTask, name="notifier.filter")
def filter_stage(ids: list[int], lane: str) -> None:
    """Apply preferences and schedules; pass on what may be sent now."""
    limits = parse_limits(get_settings().rate_limits)
    with session_factory()() as session, session.begin():
        proceed = filter_deliveries(session, get_redis(), ids, utcnow(), limits)
    if proceed:
        dedup_stage.apply_async((proceed, lane), queue=queue_for("pipeline", lane))


@app.task(base=NotifierTask, name="notifier.dedup", bind=True)
def dedup_stage(self, ids: list[int], lane: str) -> None:
    """Claim each delivery's lease; hand what we hold to its channel's send queue."""
    claim_id = self.request.id or "local"
    with session_factory()() as session, session.begin():
        claimed = claim_deliveries(session, get_redis(), ids, claim_id, get_settings().lease_ttl_s)
    for channel, channel_ids in claimed.by_channel.items():
        SEND_TASKS[channel].apply_async((channel_ids, lane, claim_id), queue=queue_for(channel, lane))


def _send(ids: list[int], lane: str, claim_id: str) -> None:
    settings = get_settings()
    with session_factory()() as session, session.begin():
        report = send_deliveries(session, get_redis(), ids, claim_id, settings)
    # Retries wait as `scheduled` rows; release_due puts them back on the queue when due.
    if report.changed_users:
        invalidate(get_redis(), report.changed_users)


@app.task(base=NotifierTask, name="notifier.send_push")
def send_push(ids: list[int], lane: str, claim_id: str) -> None:
    """Send push deliveries (APNs, FCM)."""
    _send(ids, lane, claim_id)


@app.task(base=NotifierTask, name="notifier.send_email")
def send_email(ids: list[int], lane: str, claim_id: str) -> None:
    """Send email deliveries (SendGrid, SMTP)."""
    _send(ids, lane, claim_id)


@app.task(base=NotifierTask, name="notifier.send_sms")
def send_sms(ids: list[int], lane: str, claim_id: str) -> None:
    """Send SMS deliveries (Twilio)."""
    _send(ids, lane, claim_id)


SEND_TASKS = {"push": send_push, "email": send_email, "sms": send_sms}


def _enqueue(ready: list[Ready]) -> None:
    """Put released or re-driven deliveries back on their stage's queue, batched by lane and ETA."""
    groups: dict[tuple, list[int]] = {}
    for item in ready:
        groups.setdefault((item.stage, item.lane, item.eta), []).append(item.id)
    for (stage, lane, eta), ids in groups.items():
        task = filter_stage if stage == "filter" else dedup_stage
        task.apply_async((ids, lane), queue=queue_for("pipeline", lane), eta=eta)


@app.task(base=NotifierTask, name="notifier.release_due")
def release_due_task() -> int:
    """Release scheduled deliveries that fall due before the next beat (ETA covers the rest)."""
    settings = get_settings()
    released = 0
    while True:
        with session_factory()() as session, session.begin():
            ready = release_due(session, utcnow(), settings.release_interval_s)
        _enqueue(ready)
        released += len(ready)
        if len(ready) < BATCH:
            return released


@app.task(base=NotifierTask, name="notifier.sweep")
def sweep_task() -> int:
    """Re-drive deliveries stuck in queued/sending (a worker died, a message was lost)."""
    with session_factory()() as session, session.begin():
        ready = sweep_stuck(session, utcnow(), get_settings().stuck_after_s)
    _enqueue(ready)
    metrics.count_stuck(get_redis(), len(ready))
    return len(ready)
