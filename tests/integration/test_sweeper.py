"""The sweeper's rules and cancel of stranded deliveries, on the real database and Redis (no broker, no worker)."""
from __future__ import annotations

import secrets
from datetime import timedelta

from sqlalchemy import update

from notifier.pipeline import dedup
from notifier.store.db import transaction
from notifier.store.delivery_log import LOG, utcnow
from notifier.intake.events import parse_event
from notifier.store.redis_conn import get_redis
from notifier.pipeline.routing import route
from notifier.pipeline.scheduling import sweep_stuck
from notifier.accounts.devices import register_device
from notifier.accounts.status import cancel_notification, get_status


def _stored(unique, status: str, *, priority: str = "high", age_s: float = 600, redrives: int = 0,
            last_error: str | None = None) -> tuple[int, str]:
    """A routed push delivery, moved to `status`, last touched `age_s` ago; (row id, notification id)."""
    user, token = unique("user"), secrets.token_hex(32)
    register_device(user, token, "ios")
    event = parse_event({"notification_id": unique("n"), "user_id": user, "type": "t", "category": "transactional",
                         "priority": priority, "channels": ["push"], "title": "T", "body": "B"})
    with transaction() as session:
        [id_] = [i for ids in route(session, [event]).queued.values() for i in ids]
        session.execute(update(LOG).where(LOG.c.id == id_).values(
            status=status, redrives=redrives, last_error=last_error,
            updated_at=utcnow() - timedelta(seconds=age_s)))
    return id_, event.notification_id


def _sweep(**kwargs):
    with transaction() as session:
        return sweep_stuck(session, utcnow(), 120, max_redrives=3, **kwargs)


def test_a_stuck_delivery_is_re_driven_and_counted(database, unique):
    sending, sending_nid = _stored(unique, "sending")
    queued, queued_nid = _stored(unique, "queued", priority="low")

    swept = _sweep()

    stages = {item.id: (item.stage, item.lane) for item in swept.ready}
    assert stages[sending] == ("dedup", "high") and stages[queued] == ("filter", "low")
    assert [(r["status"]) for r in get_status(sending_nid)] == ["queued"]
    assert swept.failed == 0


def test_a_delivery_re_driven_too_often_ends_failed_with_its_last_error(database, unique):
    # Given a delivery whose send task has died with it three times already
    id_, nid = _stored(unique, "sending", redrives=3, last_error="apns: the worker died")

    # When the sweeper finds it stuck once more
    swept = _sweep()

    # Then it is not re-driven again: it ends failed, saying why
    assert id_ not in {item.id for item in swept.ready} and swept.failed >= 1
    [row] = get_status(nid)
    assert row["status"] == "failed"
    assert row["reason"] == "re-driven 3 times without finishing; last error: apns: the worker died"


def test_a_backlog_is_not_re_driven_but_a_lost_broker_re_drives_everything(database, unique):
    # Given a queued delivery whose lane's pipeline queue has messages waiting, and a young one
    waiting, _ = _stored(unique, "queued", priority="low")
    young, _ = _stored(unique, "queued", priority="low", age_s=1)

    # When the sweeper runs while that queue is busy, the old one is left to its message
    assert waiting not in {item.id for item in _sweep(busy_queues={"pipeline.low"}).ready}

    # But when the broker lost its messages, both are re-driven at once, whatever their age
    assert {waiting, young} <= {item.id for item in _sweep(everything=True).ready}


def test_cancel_reaches_a_sending_delivery_no_worker_holds_but_not_one_in_flight(database, unique):
    # Given two deliveries left `sending`: one whose worker died (no lease), one a live worker holds
    stranded, stranded_nid = _stored(unique, "sending")
    held, held_nid = _stored(unique, "sending")
    [held_key] = [r["idempotency_key"] for r in _rows(held)]
    assert dedup.claim(get_redis(), [held_key], "live-worker", 60) == [dedup.CLAIMED]

    # When the producer cancels both
    assert cancel_notification(stranded_nid) == 1
    assert cancel_notification(held_nid) == 0

    # Then the stranded one is suppressed and can no longer be claimed; the one in flight goes on
    [row] = get_status(stranded_nid)
    assert (row["status"], row["reason"]) == ("suppressed", "cancelled by producer")
    [key] = [r["idempotency_key"] for r in _rows(stranded)]
    assert dedup.claim(get_redis(), [key], "sweeper", 60) == [dedup.HELD]
    assert [r["status"] for r in get_status(held_nid)] == ["sending"]


def _rows(id_: int) -> list[dict]:
    from sqlalchemy import select

    with transaction() as session:
        return [dict(r._mapping) for r in session.execute(select(LOG).where(LOG.c.id == id_))]
