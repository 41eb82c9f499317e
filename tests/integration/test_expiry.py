"""Expiry through real workers and the sandbox: a delivery not handed to its provider in time ends
`expired`, saying where it waited; the expiry travels to the providers."""
from __future__ import annotations

import secrets
from datetime import datetime, timedelta, timezone

import notifier
from notifier.accounts.devices import register_device
from notifier.accounts.status import get_status
from notifier.ops import counters
from notifier.queues import QUEUES
from notifier.store.redis_conn import get_redis
from notifier.store import models
from sandbox import devstack
from tasks.pipeline import send_notification
from tests.integration.environment import TEST_VAR, child_env
from tests.integration.isolation import isolated_broker, produce
from tests.integration.users import ios_user

TERMINAL = {status.value for status in models.TERMINAL}


def _event(unique, user: str, **extra) -> dict:
    return {"notification_id": unique("n"), "user_id": user, "type": "driver_arriving", "category": "transactional",
            "priority": "normal", "channels": ["push"], "title": "Your driver", "body": "is here"} | extra


def _final(nid: str):
    rows = get_status(nid)
    return rows if rows and all(r["status"] in TERMINAL for r in rows) else None


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _expired_count(waited: str) -> int:
    return int(get_redis().hget(counters.EXPIRED.key, waited) or 0)


def test_expires_while_scheduled_in_quiet_hours(worker, sandbox, wait_until, unique):
    before = _expired_count("quiet_hours")
    # Given a user in quiet hours all day, and an event that is worthless in 2 seconds
    user, token = ios_user(unique, quiet_start="00:00", quiet_end="23:59:59", timezone="UTC")
    event = _event(unique, user, ttl_s=2)
    notifier.send_notification.delay(event)

    # Then it waits in quiet hours, due no later than its expiry
    [row] = wait_until(lambda: [r for r in get_status(event["notification_id"]) if r["status"] == "scheduled"])
    assert row["reason"].startswith("quiet hours until")
    assert _utc(row["scheduled_at"]) == _utc(row["expires_at"])

    # And ends `expired` at its expiry, saying it waited in quiet hours; nothing reached APNs
    [row] = wait_until(lambda: _final(event["notification_id"]), timeout_s=20)
    assert row["status"] == "expired"
    assert row["reason"] == f"expired at {_utc(row['expires_at']).isoformat()} while scheduled (quiet hours)"
    assert sandbox.messages("apns", token) == []
    assert _expired_count("quiet_hours") == before + 1  # notifier_expired_deliveries_total{waited="quiet_hours"}


def test_expires_while_retrying(worker, sandbox, wait_until, unique):
    # Given APNs answering 503 (Retry-After 30 s) for this device, and an event worthless in 2 seconds
    user, token = ios_user(unique)
    fault = sandbox.add_fault("apns", token, status=503, reason="ServiceUnavailable", retry_after=30, count=None)
    event = _event(unique, user, priority="high", ttl_s=2)
    notifier.send_notification.delay(event)

    # Then the first attempt fails, the retry waits no later than the expiry, and it ends `expired` there
    [row] = wait_until(lambda: _final(event["notification_id"]), timeout_s=20)
    assert (row["status"], row["attempts"]) == ("expired", 1)
    assert row["reason"] == f"expired at {_utc(row['expires_at']).isoformat()} while retrying"
    assert "ServiceUnavailable" in row["last_error"]
    [armed] = [f for f in sandbox.faults() if f["target"] == token]
    assert armed["hits"] == 1  # one request, never a second one after the expiry
    assert fault["provider"] == "apns"


def test_expires_in_the_queue_behind_a_backlog(sandbox, database, wait_until, unique):
    logs = TEST_VAR / "logs" / "expiry"
    before = _expired_count("queue")
    with isolated_broker("expiry-backlog") as broker:
        env = child_env() | {"NOTIFIER_BROKER_KEY_PREFIX": broker}
        # Given no worker for the queues yet (a backlog nobody drains), and an event worthless in 2 seconds
        user, token = ios_user(unique)
        event = _event(unique, user, priority="high", ttl_s=2)
        produce(broker, send_notification, event)
        [row] = get_status(event["notification_id"])
        assert row["status"] == "queued"
        expires_at = _utc(row["expires_at"])
        wait_until(lambda: datetime.now(timezone.utc) > expires_at + timedelta(seconds=0.5), timeout_s=10)

        # When a worker starts after the expiry
        late = devstack.start_worker(env, logs / "late.log", queues=tuple(q for q in QUEUES if q != "scheduler"))
        try:
            [row] = wait_until(lambda: _final(event["notification_id"]), timeout_s=30)
        finally:
            devstack.stop(late)

    # Then it ends `expired`, having waited in the queue; APNs never saw it
    assert row["status"] == "expired"
    assert row["reason"] == f"expired at {expires_at.isoformat()} in the queue"
    assert sandbox.messages("apns", token) == []
    assert _expired_count("queue") == before + 1


def test_the_expiry_travels_to_the_providers(worker, sandbox, wait_until, unique):
    # Given a user with an iOS and an Android device, and an event that expires in ten minutes
    user, ios = ios_user(unique)
    android = f"{secrets.token_urlsafe(16)}:APA91b{secrets.token_urlsafe(100)}"
    register_device(user, android, "android")
    expires_at = (datetime.now(timezone.utc) + timedelta(minutes=10)).replace(microsecond=0)
    event = _event(unique, user, priority="high", expires_at=expires_at.isoformat())
    notifier.send_notification.delay(event)
    rows = wait_until(lambda: _final(event["notification_id"]))
    assert [r["status"] for r in rows] == ["sent", "sent"]

    # Then APNs got apns-expiration (UNIX seconds), and FCM android.ttl plus the APNs and Web Push headers
    [apns] = sandbox.messages("apns", ios)
    assert apns["headers"]["apns-expiration"] == str(int(expires_at.timestamp()))
    [fcm] = sandbox.messages("fcm", android)
    message = fcm["payload"]["message"]
    ttl_s = int(message["android"]["ttl"].removesuffix("s"))
    assert 540 <= ttl_s <= 600
    assert message["apns"]["headers"]["apns-expiration"] == str(int(expires_at.timestamp()))
    assert message["webpush"]["headers"]["TTL"] == str(ttl_s)


def test_an_event_without_an_expiry_never_expires_and_says_so_to_apns(worker, sandbox, wait_until, unique):
    user, token = ios_user(unique)
    event = _event(unique, user, priority="high")
    notifier.send_notification.delay(event)
    [row] = wait_until(lambda: _final(event["notification_id"]))
    assert (row["status"], row["expires_at"]) == ("sent", None)
    assert sandbox.messages("apns", token)[0]["headers"]["apns-expiration"] == "0"
