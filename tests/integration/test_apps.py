"""Credentials per app, through real workers and the sandbox, which checks each request against its app.

The apps (tests/integration/apps_setup.py): `default` (the NOTIFIER_* settings), `courier` (its own
APNs key, team and topic, its own Firebase project and service account, its own email sender) and
`broken` (its key files missing).
"""
from __future__ import annotations

import secrets
import uuid

import pytest
from pydantic import ValidationError

import notifier
from notifier.accounts.devices import register_device
from notifier.accounts.preferences import set_preferences
from notifier.accounts.status import get_status
from notifier.providers import close_all, get_provider
from notifier.providers.apns import ApnsProvider
from notifier.providers.base import Delivery, OutcomeKind
from notifier.providers.fcm import FcmProvider
from notifier.settings import get_settings
from notifier.store import models
from tests.integration.apps_setup import BROKEN, COURIER

TERMINAL = {status.value for status in models.TERMINAL}


def _fcm_token() -> str:
    return f"{secrets.token_urlsafe(16)}:APA91b{secrets.token_urlsafe(100)}"


def _event(unique, user: str, **extra) -> dict:
    return {"notification_id": unique("n"), "user_id": user, "type": "driver_arriving", "category": "transactional",
            "priority": "high", "channels": ["push"], "title": "Your driver", "body": "is here"} | extra


def _settled(nid: str, n: int):
    rows = get_status(nid)
    return rows if len(rows) >= n and all(r["status"] in TERMINAL for r in rows) else None


def _only(records: list[dict]) -> dict:
    assert len(records) == 1, records
    return records[0]


def test_two_apps_in_one_batch_go_out_with_their_own_credentials(worker, sandbox, wait_until, unique):
    # Given a user with an iOS and an Android device in each of two apps
    user = unique("user")
    ios_default, ios_courier = secrets.token_hex(32), secrets.token_hex(32)
    android_default, android_courier = _fcm_token(), _fcm_token()
    register_device(user, ios_default, "ios")
    register_device(user, ios_courier, "ios", app="courier")
    register_device(user, android_default, "android")
    register_device(user, android_courier, "android", app="courier")

    # When one event reaches all four (one chain, one push batch)
    event = _event(unique, user)
    notifier.send_notification.delay(event)
    rows = wait_until(lambda: _settled(event["notification_id"], 4))

    # Then each went out, and the sandbox saw each request signed for its own app
    assert sorted(r["status"] for r in rows) == ["sent"] * 4
    assert sorted((r["provider"], r["app"] or "default") for r in rows) == [
        ("apns", "courier"), ("apns", "default"), ("fcm", "courier"), ("fcm", "default")]
    default_apns = _only(sandbox.messages("apns", ios_default))
    courier_apns = _only(sandbox.messages("apns", ios_courier))
    assert default_apns["credentials"]["app"] == "default"
    assert default_apns["headers"]["apns-topic"] == get_settings().apns_topic
    assert courier_apns["credentials"] == {"app": "courier", "key_id": COURIER["key_id"],
                                           "team_id": COURIER["team_id"]}
    assert courier_apns["headers"]["apns-topic"] == COURIER["topic"]
    default_fcm = _only(sandbox.messages("fcm", android_default))
    courier_fcm = _only(sandbox.messages("fcm", android_courier))
    assert (default_fcm["credentials"]["app"], default_fcm["credentials"]["project_id"]) == (
        "default", get_settings().fcm_project_id)
    assert (courier_fcm["credentials"]["app"], courier_fcm["credentials"]["project_id"]) == (
        "courier", COURIER["project_id"])
    assert courier_fcm["credentials"]["client_email"].endswith(f"@{COURIER['project_id']}.iam.gserviceaccount.com")


def test_an_event_naming_its_app_reaches_that_apps_devices_from_its_senders(worker, sandbox, wait_until, unique):
    # Given a user with a device in each app and an email address
    user = unique("user")
    address, phone = f"{uuid.uuid4().hex[:12]}@example.com", f"+4790{secrets.randbelow(10**6):06d}"
    set_preferences(user, email=address, phone=phone)
    ios_default, ios_courier = secrets.token_hex(32), secrets.token_hex(32)
    register_device(user, ios_default, "ios")
    register_device(user, ios_courier, "ios", app="courier")

    # When an event names the courier app
    event = _event(unique, user, app="courier", channels=["push", "email", "sms"])
    notifier.send_notification.delay(event)
    rows = wait_until(lambda: _settled(event["notification_id"], 3))

    # Then only the courier app's device gets the push, and the email and SMS come from the courier's senders
    assert sorted((r["channel"], r["status"], r["app"]) for r in rows) == [
        ("email", "sent", "courier"), ("push", "sent", "courier"), ("sms", "sent", "courier")]
    assert _only(sandbox.messages("twilio", phone))["payload"]["From"] == COURIER["sms_from"]
    assert sandbox.messages("apns", ios_default) == []
    assert _only(sandbox.messages("apns", ios_courier))["credentials"]["app"] == "courier"
    mail = _only(sandbox.messages("sendgrid", address))
    assert mail["payload"]["from"] == {"email": COURIER["email_from"], "name": "Courier"}


def test_a_broken_app_fails_only_its_own_deliveries(worker, sandbox, wait_until, unique):
    # Given a user with devices in the broken app (its key files are missing) and in the two good ones
    user = unique("user")
    ios_broken, ios_courier, ios_default = (secrets.token_hex(32) for _ in range(3))
    android_broken = _fcm_token()
    register_device(user, ios_broken, "ios", app="broken")
    register_device(user, android_broken, "android", app="broken")
    register_device(user, ios_courier, "ios", app="courier")
    register_device(user, ios_default, "ios")

    # When one event reaches all of them in one batch
    event = _event(unique, user)
    notifier.send_notification.delay(event)
    rows = wait_until(lambda: _settled(event["notification_id"], 4), timeout_s=60)

    # Then the broken app's deliveries fail, saying the app is misconfigured and why; the others are sent
    by_app = {(r["app"], r["provider"]): r for r in rows}
    assert by_app[("courier", "apns")]["status"] == by_app[(None, "apns")]["status"] == "sent"
    broken_apns, broken_fcm = by_app[("broken", "apns")], by_app[("broken", "fcm")]
    assert broken_apns["status"] == broken_fcm["status"] == "failed"
    assert broken_apns["reason"].startswith("misconfigured: broken: apns: ")
    assert "missing-apns.p8" in broken_apns["reason"]
    assert broken_fcm["reason"].startswith("misconfigured: broken: fcm credentials ")
    assert "missing-fcm.json" in broken_fcm["reason"]
    assert sandbox.messages("apns", ios_broken) == [] and sandbox.messages("fcm", android_broken) == []
    assert len(sandbox.messages("apns", ios_courier)) == len(sandbox.messages("apns", ios_default)) == 1


def test_an_unknown_app_is_refused_at_intake_and_registration(database, unique):
    user = unique("user")
    with pytest.raises(ValidationError, match="unknown app 'nope'; registered: default, courier, broken") as refused:
        register_device(user, secrets.token_hex(32), "ios", app="nope")
    assert refused.value.errors()[0]["loc"] == ("app",)
    with pytest.raises(ValidationError, match="unknown app 'nope'") as refused:
        notifier.send_notification.delay(_event(unique, user, app="nope"))
    assert refused.value.errors()[0]["loc"] == ("app",)
    assert get_status(unique("n")) == []


def _delivery(target: str) -> Delivery:
    return Delivery(id=1, idempotency_key=f"k-{uuid.uuid4().hex}", channel="push", provider="", target=target,
                    priority="high", category="transactional", type="t", title="T", body="B")


def test_the_sandbox_refuses_a_request_signed_for_another_app(sandbox):
    settings = get_settings()
    courier_apns = {"apns_key_path": settings.apps_file.rsplit("/", 1)[0] + "/courier-apns.p8",
                    "apns_key_id": COURIER["key_id"], "apns_team_id": COURIER["team_id"]}
    # Given the courier's APNs key, but the default app's topic
    provider = ApnsProvider(settings.model_copy(update=courier_apns))
    try:
        [outcome] = provider.send_batch([_delivery(secrets.token_hex(32))])
    finally:
        provider.close()
    # Then APNs (the sandbox) refuses it: the key may not push to another app's topic
    assert (outcome.kind, outcome.reason) == (OutcomeKind.FAILED, "apns 400 TopicDisallowed")

    # Given the courier's service account, but the default app's Firebase project
    courier_fcm = {"fcm_credentials_path": settings.apps_file.rsplit("/", 1)[0] + "/courier-fcm.json"}
    provider = FcmProvider(settings.model_copy(update=courier_fcm))
    try:
        [outcome] = provider.send_batch([_delivery(_fcm_token())])
    finally:
        provider.close()
    # Then FCM (the sandbox) refuses it: that service account may not send for this project
    assert outcome.kind is OutcomeKind.MISCONFIGURED and outcome.reason.startswith("fcm 403 PERMISSION_DENIED")
    assert BROKEN["app"] not in {r.get("credentials", {}).get("app") for r in sandbox.messages(None)}


def test_one_adapter_per_provider_and_app_in_a_process(sandbox):
    # Each (provider, app) has its own adapter (connection, JWT or OAuth token), built once and reused
    try:
        courier, default = get_provider("apns", "courier"), get_provider("apns")
        assert courier is get_provider("apns", "courier") and default is get_provider("apns", "default")
        assert courier is not default
        assert courier._topic == COURIER["topic"] and courier._token._key_id == COURIER["key_id"]
        assert get_provider("fcm", "courier")._url.endswith(f"/v1/projects/{COURIER['project_id']}/messages:send")
    finally:
        close_all()
