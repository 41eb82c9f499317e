"""The app registry and the expiry rules, with no services: parsing, per-app settings, event validation."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from notifier import apps
from notifier.intake.events import parse_event
from notifier.pipeline import expiry
from notifier.providers.base import Delivery
from notifier.providers.expiry import apns_expiration, remaining_ttl_s
from notifier.providers.fcm import build_message
from notifier.settings import Settings

GOOD = {"notification_id": "n-1", "user_id": "u-1", "type": "driver_arriving", "category": "transactional",
        "title": "Your driver", "body": "is here"}
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)

APPS = """
[apps.courier]
apns = { key_id = "K1", team_id = "T1", key_file = "courier.p8", topic = "com.example.courier", environment = "sandbox" }
fcm = { project_id = "courier-prod", credentials_file = "/secrets/courier-fcm.json" }
email = { from = "dispatch@courier.example.com", from_name = "Courier" }
sms = { messaging_service_sid = "MG0123456789abcdef0123456789abcdef" }

[apps.white-label]
apns = { key_id = "K2", team_id = "T2", key_file = "wl.p8", topic = "not a topic" }

[apps.email-only]
email = { from = "news@example.org" }
"""


@pytest.fixture
def apps_file(tmp_path: Path) -> Path:
    path = tmp_path / "apps.toml"
    path.write_text(APPS)
    return path


def test_each_app_gets_its_own_credentials_over_the_default_settings(apps_file: Path):
    base = Settings(apps_file=str(apps_file), apns_url="https://api.push.apple.com",
                    apns_development_url="https://api.sandbox.push.apple.com")
    courier = apps.get_app("courier", base)
    apns = courier.settings_for("apns", base)
    assert (apns.apns_key_id, apns.apns_team_id, apns.apns_topic) == ("K1", "T1", "com.example.courier")
    assert apns.apns_key_path == apps_file.parent / "courier.p8"  # relative to the apps file
    assert apns.apns_url == "https://api.sandbox.push.apple.com"  # environment = sandbox
    fcm = courier.settings_for("fcm", base)
    assert (fcm.fcm_project_id, str(fcm.fcm_credentials_path)) == ("courier-prod", "/secrets/courier-fcm.json")
    assert courier.settings_for("sendgrid", base).email_from == "dispatch@courier.example.com"
    assert courier.settings_for("smtp", base).email_from_name == "Courier"
    assert courier.settings_for("twilio", base).twilio_messaging_service_sid.startswith("MG")
    assert apps.get_app(None, base).settings_for("apns", base) is base  # the default app is the settings


def test_a_bad_app_is_marked_misconfigured_and_the_others_are_not(apps_file: Path):
    base = Settings(apps_file=str(apps_file))
    with pytest.raises(apps.Misconfigured, match=r"apps.white-label.apns.topic: 'not a topic' is not valid"):
        apps.get_app("white-label", base).settings_for("apns", base)
    email_only = apps.get_app("email-only", base)
    with pytest.raises(apps.Misconfigured, match=r"no \[apns\] credentials"):
        email_only.settings_for("apns", base)
    assert email_only.settings_for("twilio", base).twilio_from == base.twilio_from  # the default sender
    assert email_only.settings_for("sendgrid", base).email_from == "news@example.org"
    with pytest.raises(apps.Misconfigured, match="not in the apps file"):
        apps.get_app("nope", base)


@pytest.mark.parametrize(("text", "problem"), [
    ("[apps.default]\nemail = { from = 'a@b.c' }", "apps.default is the NOTIFIER_"),
    ("[apps.'a b']\n", "app name 'a b'"),
    ("apps = 3", "expected only [apps.<name>] tables"),
    ("[apps.x\n", "apps file"),
])
def test_an_apps_file_that_cannot_be_read_names_the_problem(tmp_path: Path, text: str, problem: str):
    path = tmp_path / "apps.toml"
    path.write_text(text)
    with pytest.raises(apps.AppsFileError, match=problem.replace("[", r"\[").replace(".", r"\.")):
        apps.read_apps_file(path)


def test_no_apps_file_is_the_one_app_setup():
    assert list(apps.registry(Settings(apps_file=""))) == ["default"]
    with pytest.raises(ValueError, match="unknown app 'courier'; registered: default"):
        apps.known_app("courier", Settings(apps_file=""))


@pytest.mark.parametrize(("change", "message"), [
    ({"ttl_s": 0}, "ttl_s"),
    ({"ttl_s": 28 * 86400 + 1}, "ttl_s"),
    ({"expires_at": "2020-01-01T00:00:00Z"}, "is in the past"),
    ({"expires_at": "2030-01-01T00:00:00"}, "timezone offset"),
    ({"expires_at": (datetime.now(timezone.utc) + timedelta(days=40)).isoformat()}, "next 28 days"),
    ({"ttl_s": 60, "expires_at": (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()}, "not both"),
    ({"ttl_s": 60, "send_at": (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()}, "before send_at"),
    ({"app": "nope"}, "unknown app 'nope'"),
])
def test_an_event_with_a_bad_expiry_or_app_is_refused_naming_it(change: dict, message: str):
    with pytest.raises(ValidationError, match=message):
        parse_event(GOOD | change)


def test_the_expiry_is_the_events_own_then_its_ttl_then_its_categorys_default():
    at = NOW + timedelta(minutes=5)
    assert expiry.expiry_of(parse_event(GOOD | {"expires_at": (datetime.now(timezone.utc) + timedelta(minutes=5))
                                                .isoformat()}), NOW) is not None
    assert expiry.expiry_of(parse_event(GOOD | {"ttl_s": 300}), NOW, "transactional=60") == at
    assert expiry.expiry_of(parse_event(GOOD | {"category": "security"}), NOW, "security=600, social=3600") \
        == NOW + timedelta(seconds=600)
    assert expiry.expiry_of(parse_event(GOOD), NOW, "security=600") is None
    with pytest.raises(ValueError, match="NOTIFIER_CATEGORY_TTL_S: 'security': expected category=seconds"):
        expiry.category_ttls("security")


def test_a_wait_is_capped_at_the_expiry_and_the_reason_says_where_it_waited():
    assert expiry.cap(NOW + timedelta(hours=8), NOW + timedelta(minutes=1)) == NOW + timedelta(minutes=1)
    assert expiry.cap(NOW, None) == NOW
    row = SimpleNamespace
    assert expiry.waited_in(row(attempts=2, reason="retry 3 of 5 after: apns 503")) == "while retrying"
    assert expiry.waited_in(row(attempts=0, reason="quiet hours until 07:00")) == "while scheduled (quiet hours)"
    assert expiry.waited_in(row(attempts=0, reason="send_at 2026-12-01")) == "while scheduled (send_at)"
    assert expiry.expired_reason(NOW, expiry.IN_THE_QUEUE) == "expired at 2026-12-01T09:00:00+00:00 in the queue"


def _delivery(expires_at: datetime | None) -> Delivery:
    return Delivery(id=1, idempotency_key="k", channel="push", provider="fcm", target="t" * 40, priority="high",
                    category="c", type="t", title="T", body="B", expires_at=expires_at)


def test_the_expiry_goes_into_apns_and_fcm_headers():
    d = _delivery(NOW + timedelta(seconds=90, milliseconds=500))
    assert remaining_ttl_s(d, NOW) == 91 and remaining_ttl_s(d, NOW + timedelta(hours=1)) == 0
    assert remaining_ttl_s(_delivery(None), NOW) is None
    assert apns_expiration(d) == str(int(d.expires_at.timestamp())) and apns_expiration(_delivery(None)) == "0"
    message = build_message(d, NOW)
    assert message["android"]["ttl"] == "91s"
    assert message["apns"]["headers"] == {"apns-expiration": apns_expiration(d)}
    assert message["webpush"]["headers"] == {"TTL": "91"}
    assert "apns" not in build_message(_delivery(None), NOW)


def test_an_event_that_expired_waiting_in_kafka_is_accepted_and_its_deliveries_end_expired():
    import json

    from notifier.intake.bridge.messages import decode_event
    from notifier.pipeline.routing import plan
    from notifier.store.recipients import Device as Known, Recipient

    # Given an event published in time whose expiry passed while it waited to be consumed
    past = (datetime.now(timezone.utc) - timedelta(seconds=5)).isoformat()
    with pytest.raises(ValidationError, match="in the past"):
        parse_event(GOOD | {"expires_at": past})  # a producer handing it over late is told at once
    event = decode_event(json.dumps(GOOD | {"expires_at": past, "channels": ["push"]}).encode(), "high")

    # Then its deliveries are stored `expired`, never queued
    recipient = Recipient("u-1", devices=[Known("a" * 64, "ios"), Known("b" * 64, "ios", "courier")])
    rows = plan(event, recipient)
    assert [row["status"] for row in rows] == ["expired", "expired"]
    assert rows[0]["reason"].endswith("before intake (waiting to be consumed)")


def test_an_event_naming_its_app_plans_only_that_apps_devices():
    from notifier.pipeline.routing import plan
    from notifier.store.recipients import Device as Known, Recipient

    recipient = Recipient("u-1", devices=[Known("a" * 64, "ios"), Known("b" * 64, "ios", "courier")])
    event = parse_event(GOOD | {"channels": ["push"]})
    assert sorted(str(row["app"]) for row in plan(event, recipient)) == ["None", "courier"]
    courier_only = event.model_copy(update={"app": "courier"})  # registered apps need NOTIFIER_APPS_FILE
    assert [(row["target"], row["app"]) for row in plan(courier_only, recipient)] == [("b" * 64, "courier")]
    default_only = event.model_copy(update={"app": "default"})
    assert [row["target"] for row in plan(default_only, recipient)] == ["a" * 64]
