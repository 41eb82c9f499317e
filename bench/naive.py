"""The naive design, for comparison only: one Celery task per stage per notification.

route -> filter -> dedup -> send as a 4-task chain, each task a database write, the send
one HTTP/2 request, no batching. Same services, same APNs adapter, same sandbox.
Run its worker with `celery -A bench.naive worker -Q naive`.
"""
from __future__ import annotations

from celery import Celery, chain
from kombu import Queue
from sqlalchemy.exc import IntegrityError

from notifier.store.db import session_factory
from notifier.store.delivery_log import utcnow
from notifier.store.models import DeviceToken, NotificationLog, Status, UserPreferences
from notifier.providers import get_provider
from notifier.store.redis_conn import get_redis
from notifier.pipeline.routing import idempotency_key
from notifier.pipeline.sending import to_delivery

app = Celery("naive")
app.config_from_object("celeryconfig")
app.conf.task_queues = [Queue("naive")]
app.conf.task_default_queue = "naive"


@app.task(name="naive.route")
def route(event: dict) -> int | None:
    with session_factory()() as s:
        device = s.query(DeviceToken).filter_by(user_id=event["user_id"]).first()
        if device is None:
            return None
        row = NotificationLog(
            idempotency_key="naive:" + idempotency_key(event["notification_id"], "push", device.token),
            notification_id=event["notification_id"], user_id=event["user_id"], type=event["type"],
            category=event["category"], priority=event["priority"], channel="push", provider="apns",
            target=device.token, status=Status.QUEUED.value, attempts=0,
            payload={"title": event["title"], "body": event["body"], "data": event.get("data") or {}},
        )
        s.add(row)
        try:
            s.commit()
        except IntegrityError:  # the same event again: the unique key is the naive design's dedup
            return None
        return row.id


@app.task(name="naive.filter")
def filter_(row_id: int | None) -> int | None:
    if row_id is None:
        return None
    with session_factory()() as s:
        row = s.get(NotificationLog, row_id)
        prefs = s.get(UserPreferences, row.user_id)
        if prefs is not None and (not prefs.push_enabled or row.category in (prefs.opted_out_categories or [])):
            row.status, row.reason = Status.SUPPRESSED.value, "opted out"
            s.commit()
            return None
        row.updated_at = utcnow()
        s.commit()
        return row_id


@app.task(name="naive.dedup")
def dedup(row_id: int | None) -> int | None:
    if row_id is None:
        return None
    with session_factory()() as s:
        row = s.get(NotificationLog, row_id)
        if not get_redis().set("naive:" + row.idempotency_key, 1, nx=True, ex=86400):
            row.status = Status.DUPLICATE.value
            s.commit()
            return None
        row.status = Status.SENDING.value
        s.commit()
        return row_id


@app.task(name="naive.send")
def send(row_id: int | None) -> None:
    if row_id is None:
        return
    with session_factory()() as s:
        row = s.get(NotificationLog, row_id)
        [outcome] = get_provider("apns").send_batch([to_delivery(row)])
        row.status = Status.SENT.value if outcome.kind.value == "ok" else Status.FAILED.value
        row.provider_message_id, row.reason, row.attempts = outcome.message_id, outcome.reason, 1
        row.sent_at = utcnow()
        s.commit()


def submit(event: dict) -> None:
    """Queue one event as the naive 4-task chain."""
    chain(route.s(event), filter_.s(), dedup.s(), send.s()).apply_async(queue="naive")
