"""One notification the whole way: producer -> Celery worker -> APNs sandbox over HTTP/2."""
from __future__ import annotations

import secrets

import pytest
from pydantic import ValidationError

import notifier
from notifier.accounts.devices import register_device
from notifier.accounts.preferences import set_preferences
from notifier.accounts.status import get_status
from tests.bad_events import BAD_EVENTS, PYTHON_ONLY_BAD_EVENTS


def _ios_token() -> str:
    return secrets.token_hex(32)


def test_push_to_ios_device_ends_sent_with_the_sandbox_apns_id(worker, sandbox, wait_until, unique):
    # Given a user with an iOS device and push enabled
    user, token, nid = unique("user"), _ios_token(), unique("n")
    set_preferences(user, push_enabled=True)
    register_device(user, token, "ios")

    # When a producer sends one notification
    notifier.send_notification.delay({
        "notification_id": nid, "user_id": user, "type": "order_shipped", "category": "transactional",
        "priority": "high", "channels": ["push"], "title": "Shipped", "body": "Your order is on its way",
    })

    # Then its one delivery ends `sent`, carrying the apns-id the sandbox answered with
    rows = wait_until(lambda: [r for r in get_status(nid) if r["status"] == "sent"], message="delivery never sent")
    assert len(get_status(nid)) == 1
    messages = sandbox.messages(provider="apns", target=token)
    assert len(messages) == 1, "exactly one request reached APNs"
    assert rows[0]["provider"] == "apns"
    assert rows[0]["provider_message_id"] == messages[0]["id"]
    assert rows[0]["attempts"] == 1
    assert messages[0]["payload"]["aps"]["alert"] == {"title": "Shipped", "body": "Your order is on its way"}


def test_user_without_device_gets_a_suppressed_row_with_reason(worker, wait_until, unique):
    user, nid = unique("user"), unique("n")
    notifier.send_notification.delay({
        "notification_id": nid, "user_id": user, "type": "friend_request", "category": "social",
        "title": "Hi", "body": "Someone wants to connect",
    })
    rows = wait_until(lambda: get_status(nid))
    assert [(r["channel"], r["status"]) for r in rows] == [("push", "suppressed")]
    assert "no device token" in rows[0]["reason"]


@pytest.mark.parametrize(("change", "field"), BAD_EVENTS + PYTHON_ONLY_BAD_EVENTS)
def test_bad_event_raises_naming_the_field_and_queues_nothing(change, field):
    from notifier.store.redis_conn import broker_redis

    broker = broker_redis()
    before = {q: broker.llen(q) for q in ("pipeline.high", "pipeline.low")}
    event = {"notification_id": "n-bad", "user_id": "u1", "type": "t", "category": "c",
             "title": "x", "body": "y"} | change
    event = {k: v for k, v in event.items() if v is not None}
    with pytest.raises(ValidationError) as info:
        notifier.send_notification.delay(event)
    assert field in str(info.value)
    assert {q: broker.llen(q) for q in before} == before


def test_an_invalid_event_queued_around_the_producer_ends_failed_with_the_reason(worker, sandbox, wait_until, unique):
    # Given a batch put on the queue without the producer's validation (a raw send_task):
    # one good event, one with a bad field, one with no notification_id at all
    from tasks.app import app

    user, token = unique("user"), _ios_token()
    register_device(user, token, "ios")
    good, bad = unique("n"), unique("n")
    base = {"user_id": user, "type": "order_shipped", "category": "transactional", "priority": "high",
            "channels": ["push"], "title": "Shipped", "body": "On its way"}
    app.send_task("notifier.send_notifications", args=[[
        base | {"notification_id": good},
        base | {"notification_id": bad, "channels": ["pigeon"]},
        {"title": "no id"},
    ]], queue="pipeline.high")

    # Then the good one is sent, and the bad one ends `failed` naming the field, not dropped
    wait_until(lambda: [r for r in get_status(good) if r["status"] == "sent"], message="the good event was not sent")
    [row] = wait_until(lambda: get_status(bad), message="the invalid event left no row")
    assert row["status"] == "failed" and "invalid event" in row["reason"] and "channels" in row["reason"]
    assert row["user_id"] == user
    assert len(sandbox.messages(provider="apns", target=token)) == 1


def test_a_solo_pool_worker_started_as_deployed_delivers(database, sandbox, wait_until, unique):
    # Given only a `notifier worker --pool solo` (how the high lane runs) on a broker of its own
    import subprocess
    import sys

    from sandbox import devstack
    from tests.integration.environment import TEST_VAR, child_env
    from tests.integration.isolation import isolated_broker, produce

    user, token, nid = unique("user"), _ios_token(), unique("n")
    register_device(user, token, "ios")
    with isolated_broker("solo") as broker:
        log_path = TEST_VAR / "logs" / "solo-worker.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            [sys.executable, "-m", "entrypoints.cli", "worker", "--pool", "solo", "-Q", "pipeline.high,push.high"],
            env=child_env() | {"NOTIFIER_BROKER_KEY_PREFIX": broker}, stdout=log_path.open("ab"),
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            devstack.wait_for_ready(proc, log_path, 60)
            # When a high-priority event reaches it
            produce(broker, notifier.send_notification, {
                "notification_id": nid, "user_id": user, "type": "login_alert", "category": "security",
                "priority": "critical", "channels": ["push"], "title": "New sign-in", "body": "Was it you?",
            })
            # Then it is sent once, through the whole chain in that one process
            wait_until(lambda: [r for r in get_status(nid) if r["status"] == "sent"], message="not sent by the solo worker")
            assert len(sandbox.messages(provider="apns", target=token)) == 1
            assert "concurrency: 1 (solo)" in log_path.read_text()
        finally:
            devstack.stop(proc)
