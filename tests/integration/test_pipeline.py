"""Every terminal status, through a real worker, real PostgreSQL/Redis and the APNs sandbox."""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

from sqlalchemy import select

import notifier
from notifier.store.db import session_factory
from notifier.store.models import DeviceToken
from notifier.accounts.devices import register_device
from notifier.accounts.preferences import set_preferences
from notifier.accounts.status import cancel_notification, get_status
from notifier.store import models
from tests.integration.users import ios_user

TERMINAL = {status.value for status in models.TERMINAL}


def _event(unique, user: str, **extra) -> dict:
    return {"notification_id": unique("n"), "user_id": user, "type": "order_shipped", "category": "transactional",
            "priority": "high", "channels": ["push"], "title": "Shipped", "body": "On its way"} | extra


def _settled(nid: str, n: int = 1):
    rows = get_status(nid)
    return rows if len(rows) >= n and all(r["status"] in TERMINAL for r in rows) else None


def test_channel_switched_off_is_suppressed_and_never_sent(worker, sandbox, wait_until, unique):
    user, token = ios_user(unique, push_enabled=False)
    event = _event(unique, user)
    notifier.send_notification.delay(event)
    [row] = wait_until(lambda: _settled(event["notification_id"]))
    assert (row["status"], row["reason"]) == ("suppressed", "push disabled by user")
    assert sandbox.messages(target=token) == []


def test_category_opt_out_is_suppressed(worker, sandbox, wait_until, unique):
    user, token = ios_user(unique, opted_out_categories=["marketing"])
    event = _event(unique, user, category="marketing", priority="low")
    notifier.send_notification.delay(event)
    [row] = wait_until(lambda: _settled(event["notification_id"]))
    assert row["status"] == "suppressed" and "marketing" in row["reason"]
    assert sandbox.messages(target=token) == []


def test_quiet_hours_schedule_then_send_when_the_window_ends(worker, sandbox, wait_until, unique):
    # Given a user whose quiet hours (in their own timezone) end three seconds from now
    now = datetime.now(timezone.utc)
    tz = "America/New_York"
    local = now.astimezone(__import__("zoneinfo").ZoneInfo(tz))
    end = (local + timedelta(seconds=3)).time()
    user, token = ios_user(unique, quiet_start=(local - timedelta(hours=1)).time(), quiet_end=end, timezone=tz)
    event = _event(unique, user, priority="normal")
    notifier.send_notification.delay(event)

    # Then it waits as `scheduled` with the window's end as its due time
    [row] = wait_until(lambda: [r for r in get_status(event["notification_id"]) if r["status"] == "scheduled"])
    assert "quiet hours" in row["reason"] and tz in row["reason"]
    assert sandbox.messages(target=token) == []

    # And is sent once the window is over, not before
    [row] = wait_until(lambda: _settled(event["notification_id"]), timeout_s=20)
    assert row["status"] == "sent"
    sent_at = row["sent_at"] if row["sent_at"].tzinfo else row["sent_at"].replace(tzinfo=timezone.utc)
    assert sent_at >= now + timedelta(seconds=2)
    assert len(sandbox.messages(target=token)) == 1


def test_critical_bypasses_quiet_hours(worker, sandbox, wait_until, unique):
    user, token = ios_user(unique, quiet_start="00:00", quiet_end="23:59:59", timezone="UTC")
    event = _event(unique, user, priority="critical", category="security", type="new_login")
    notifier.send_notification.delay(event)
    [row] = wait_until(lambda: _settled(event["notification_id"]))
    assert row["status"] == "sent"


def test_send_at_defers_and_cancel_stops_it(worker, sandbox, wait_until, unique):
    user, token = ios_user(unique)
    later = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    event = _event(unique, user, send_at=later)
    notifier.send_notification.delay(event)
    wait_until(lambda: [r for r in get_status(event["notification_id"]) if r["status"] == "scheduled"])
    assert cancel_notification(event["notification_id"]) == 1
    [row] = get_status(event["notification_id"])
    assert (row["status"], row["reason"]) == ("suppressed", "cancelled by producer")
    assert sandbox.messages(target=token) == []


def test_rate_limit_caps_push_per_day_and_security_is_exempt(worker, sandbox, wait_until, unique):
    user, token = ios_user(unique)
    events = [_event(unique, user, priority="low") for _ in range(52)]
    notifier.send_notifications.delay(events)
    rows = wait_until(lambda: all(_settled(e["notification_id"]) for e in events) and
                      [r for e in events for r in get_status(e["notification_id"])], timeout_s=60)
    statuses = sorted(r["status"] for r in rows)
    assert statuses.count("sent") == 50 and statuses.count("rate_limited") == 2
    assert len(sandbox.messages(target=token)) == 50

    security = _event(unique, user, category="security", priority="critical")
    notifier.send_notification.delay(security)
    [row] = wait_until(lambda: _settled(security["notification_id"]))
    assert row["status"] == "sent"


def test_same_event_twice_concurrently_is_one_request(worker, sandbox, wait_until, unique):
    user, token = ios_user(unique)
    event = _event(unique, user)
    notifier.send_notification.delay(event)
    notifier.send_notification.delay(event)
    rows = wait_until(lambda: _settled(event["notification_id"], 2))
    assert sorted(r["status"] for r in rows) == ["duplicate", "sent"]
    assert len(sandbox.messages(target=token)) == 1


def test_transient_failures_retry_then_send(worker, sandbox, wait_until, unique):
    user, token = ios_user(unique)
    sandbox.add_fault("apns", token, status=503, reason="ServiceUnavailable", count=1)
    event = _event(unique, user)
    notifier.send_notification.delay(event)
    [row] = wait_until(lambda: _settled(event["notification_id"]), timeout_s=20)
    assert (row["status"], row["attempts"]) == ("sent", 2)
    assert "ServiceUnavailable" in row["last_error"]


def test_retries_are_bounded_then_failed_with_the_last_reason(worker, sandbox, wait_until, unique):
    user, token = ios_user(unique)
    sandbox.add_fault("apns", token, status=500, reason="InternalServerError", count=None)
    before = sandbox.request_count("apns")
    event = _event(unique, user)
    notifier.send_notification.delay(event)
    [row] = wait_until(lambda: _settled(event["notification_id"]), timeout_s=30)
    assert row["status"] == "failed" and row["attempts"] == 3  # NOTIFIER_MAX_ATTEMPTS in conftest
    assert "gave up after 3 attempts" in row["reason"] and "InternalServerError" in row["reason"]
    assert sandbox.request_count("apns") - before >= 3


def test_permanent_failure_is_not_retried(worker, sandbox, wait_until, unique):
    user, token = ios_user(unique)
    sandbox.add_fault("apns", token, status=400, reason="BadTopic", count=None)
    event = _event(unique, user)
    notifier.send_notification.delay(event)
    [row] = wait_until(lambda: _settled(event["notification_id"]))
    assert (row["status"], row["attempts"]) == ("failed", 1)
    assert "BadTopic" in row["reason"]


def test_unregistered_token_fails_and_is_deleted(worker, sandbox, wait_until, unique):
    user, token = ios_user(unique)
    sandbox.unregister(token)
    event = _event(unique, user)
    notifier.send_notification.delay(event)
    [row] = wait_until(lambda: _settled(event["notification_id"]))
    assert row["status"] == "failed" and "token deleted" in row["reason"]
    with session_factory()() as session:
        assert session.scalar(select(DeviceToken).where(DeviceToken.token == token)) is None
    # The next notification finds no device, and says so.
    again = _event(unique, user)
    notifier.send_notification.delay(again)
    [row] = wait_until(lambda: _settled(again["notification_id"]))
    assert row["status"] == "suppressed" and "no device token" in row["reason"]


def test_a_token_registered_again_after_the_410_timestamp_is_kept(worker, sandbox, wait_until, unique):
    # Given a token APNs reports dead since now, which the app then registers again
    user, token = ios_user(unique)
    sandbox.unregister(token)
    time.sleep(0.01)  # the 410's timestamp has millisecond precision
    register_device(user, token, "ios")
    event = _event(unique, user)
    notifier.send_notification.delay(event)
    [row] = wait_until(lambda: _settled(event["notification_id"]))
    # This send failed, but the token lives on: it was registered after APNs saw it die
    assert row["status"] == "failed" and "token kept" in row["reason"] and "Unregistered" in row["reason"]
    with session_factory()() as session:
        assert session.scalar(select(DeviceToken).where(DeviceToken.token == token)) is not None


def test_two_workers_given_the_same_delivery_make_one_request(worker, sandbox, wait_until, unique):
    # Given one routed delivery, handed to the dedup stage twice at once (as after a redelivery)
    from notifier.intake.events import parse_event
    from notifier.pipeline.routing import route
    from tasks.pipeline import dedup_stage

    user, token = ios_user(unique)
    event = _event(unique, user)
    with session_factory()() as session, session.begin():
        ids = route(session, [parse_event(event)]).queued["high"]
    for _ in range(4):
        dedup_stage.delay(ids, "high")

    # Then exactly one provider request is made, and the row says sent
    [row] = wait_until(lambda: _settled(event["notification_id"]))
    assert row["status"] == "sent"
    assert len(sandbox.messages(target=token)) == 1


def test_a_deadlock_while_routing_is_retried_not_failed(worker, sandbox, wait_until, unique):
    # Given a transaction elsewhere that inserted the second of two deliveries' keys and holds it
    from sqlalchemy import text

    from notifier.store.delivery_log import insert_ignoring_duplicates
    from notifier.intake.events import parse_event
    from notifier.store.recipients import Device, Recipient
    from notifier.pipeline.routing import plan

    users = [ios_user(unique) for _ in range(2)]
    events = [_event(unique, user) for user, _ in users]
    rows = [plan(parse_event(e), Recipient(user, devices=[Device(token, "ios")]))[0]
            for e, (user, token) in zip(events, users)]
    first, second = sorted(rows, key=lambda r: r["idempotency_key"])
    other = session_factory()()
    other.begin()
    insert_ignoring_duplicates(other, [second])
    try:
        # When a worker routes both events (it inserts the first key, then waits on the second): a raw
        # route task, as a producer that bypasses delay()'s intake would queue it
        from tasks.app import app

        app.send_task("notifier.send_notifications", args=[events], queue="pipeline.high")
        def waiting_on_a_lock() -> int:
            with session_factory()() as watch:  # a new transaction each time: pg_stat_activity is a snapshot
                return watch.scalar(text("SELECT count(*) FROM pg_stat_activity "
                                         "WHERE wait_event_type = 'Lock' AND datname = current_database()"))

        wait_until(waiting_on_a_lock, message="the worker never waited on the held key")
        # ... and the other transaction then wants the first key: a deadlock, which PostgreSQL breaks
        # by failing the worker's statement (it has waited longest)
        insert_ignoring_duplicates(other, [first])
    finally:
        other.rollback()
        other.close()
    # Then the route task is retried, not failed: both deliveries are sent, once
    for event, (_, token) in zip(events, users):
        [row] = wait_until(lambda: _settled(event["notification_id"]), timeout_s=30)
        assert row["status"] == "sent", row
        assert len(sandbox.messages(target=token)) == 1


def test_cancel_that_overtakes_its_event_suppresses_it(worker, sandbox, wait_until, unique):
    user, token = ios_user(unique)
    event = _event(unique, user)
    assert cancel_notification(event["notification_id"]) == 0  # nothing routed yet
    notifier.send_notification.delay(event)
    [row] = wait_until(lambda: _settled(event["notification_id"]))
    assert (row["status"], row["reason"]) == ("suppressed", "cancelled by producer")
    assert sandbox.messages(target=token) == []


def test_a_preference_change_takes_effect_at_once_despite_the_cache(worker, sandbox, wait_until, unique):
    # Given a user whose record the pipeline has just cached (an event went through)
    user, token = ios_user(unique)
    first = _event(unique, user)
    notifier.send_notification.delay(first)
    assert wait_until(lambda: _settled(first["notification_id"]))[0]["status"] == "sent"

    # When the user switches push off
    set_preferences(user, push_enabled=False)

    # Then the next event is suppressed, not sent from a stale cache
    second = _event(unique, user)
    notifier.send_notification.delay(second)
    [row] = wait_until(lambda: _settled(second["notification_id"]))
    assert (row["status"], row["reason"]) == ("suppressed", "push disabled by user")
    assert len(sandbox.messages(target=token)) == 1


def test_event_with_a_nul_character_is_refused_naming_the_field():
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="NUL characters are not allowed") as info:
        notifier.send_notification.delay({"notification_id": "n", "user_id": "u", "type": "t", "category": "c",
                                          "title": "a\x00b", "body": "b"})
    assert [e["loc"] for e in info.value.errors()] == [("title",)]
