"""Provider webhooks against a real `notifier api` process: signatures, and their effects on real rows."""
from __future__ import annotations

import json
import secrets
import time
from datetime import datetime, timezone

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec

from notifier.store.db import session_factory
from notifier.store.delivery_log import utcnow
from notifier.store.models import NotificationLog
from notifier.store.recipients import CACHE_PREFIX, load_recipients
from notifier.store.redis_conn import get_redis
from notifier.pipeline.routing import idempotency_key
from notifier.accounts.preferences import set_preferences
from tests.integration.api_fixture import api  # noqa: F401  (fixture)


def _delivery(unique, channel: str = "email", status: str = "sent", target: str | None = None,
              provider_message_id: str | None = None) -> NotificationLog:
    """A delivery row as the pipeline leaves it after the provider accepted it, and its user's preferences."""
    user, nid = unique("user"), unique("n")
    target = target or (f"{user}@example.com" if channel == "email" else "+4790000000")
    set_preferences(user, **({"email": target} if channel == "email" else {"phone": target}))
    now = utcnow()
    row = NotificationLog(
        idempotency_key=idempotency_key(nid, channel, target), notification_id=nid, user_id=user, type="receipt",
        category="transactional", priority="normal", channel=channel,
        provider="sendgrid" if channel == "email" else "twilio", target=target, status=status, payload={},
        attempts=1, provider_message_id=provider_message_id, created_at=now, updated_at=now,
        sent_at=now if status == "sent" else None,
    )
    with session_factory()() as session, session.begin():
        session.add(row)
    return row


def _row(id_: int) -> NotificationLog:
    with session_factory()() as session:
        return session.get(NotificationLog, id_)


def _prefs(api, user: str) -> dict:
    return requests.get(f"{api.url}/v1/users/{user}/preferences", headers=api.auth(), timeout=10).json()


def _event(row: NotificationLog, event: str, **fields) -> dict:
    return {"email": row.target, "timestamp": int(time.time()), "event": event, "sg_event_id": secrets.token_hex(8),
            "sg_message_id": "sg-" + secrets.token_hex(6), "delivery_id": str(row.id),
            "notification_id": row.notification_id} | fields


def _post_sendgrid(api, events: list[dict], **sign) -> requests.Response:
    body = json.dumps(events).encode()
    return requests.post(f"{api.url}/v1/webhooks/sendgrid", data=body, headers=api.sendgrid_headers(body, **sign),
                         timeout=10)


def _post_twilio(api, params: dict[str, str], **sign) -> requests.Response:
    return requests.post(f"{api.url}/v1/webhooks/twilio", data=params, headers=api.twilio_headers(params, **sign),
                         timeout=10)


# ---- SendGrid: signatures


def test_signed_delivered_event_marks_the_delivery_delivered_at_the_event_time(api, unique):
    row = _delivery(unique)
    at = int(time.time()) - 5

    response = _post_sendgrid(api, [_event(row, "processed"), _event(row, "delivered", timestamp=at)])

    assert response.status_code == 200, response.text
    assert response.json() == {"applied": 1, "ignored": 1, "unknown": 0}
    after = _row(row.id)
    assert after.status == "delivered"
    assert after.delivered_at == datetime.fromtimestamp(at, timezone.utc)


def _tampered(api, row):
    signed = json.dumps([_event(row, "delivered")]).encode()
    sent = json.dumps([_event(row, "bounce", reason="550 no such user")]).encode()
    return requests.post(f"{api.url}/v1/webhooks/sendgrid", data=sent, headers=api.sendgrid_headers(signed),
                         timeout=10)


def _wrong_key(api, row):
    return _post_sendgrid(api, [_event(row, "delivered")], key=ec.generate_private_key(ec.SECP256R1()))


def _replayed(api, row):
    return _post_sendgrid(api, [_event(row, "delivered")], timestamp=int(time.time()) - 601)


def _missing(header):
    def post(api, row):
        body = json.dumps([_event(row, "delivered")]).encode()
        headers = api.sendgrid_headers(body)
        del headers[header]
        return requests.post(f"{api.url}/v1/webhooks/sendgrid", data=body, headers=headers, timeout=10)

    return post


def _not_base64(api, row):
    body = json.dumps([_event(row, "delivered")]).encode()
    headers = api.sendgrid_headers(body) | {"X-Twilio-Email-Event-Webhook-Signature": "%%%not base64%%%"}
    return requests.post(f"{api.url}/v1/webhooks/sendgrid", data=body, headers=headers, timeout=10)


@pytest.mark.parametrize(
    "send",
    [_tampered, _wrong_key, _replayed, _missing("X-Twilio-Email-Event-Webhook-Signature"),
     _missing("X-Twilio-Email-Event-Webhook-Timestamp"), _not_base64],
    ids=["tampered-body", "wrong-key", "replayed-timestamp", "missing-signature", "missing-timestamp", "not-base64"],
)
def test_badly_signed_sendgrid_post_is_403_and_changes_nothing(api, unique, send):
    row = _delivery(unique)

    response = send(api, row)

    assert response.status_code == 403, response.text
    after = _row(row.id)
    assert (after.status, after.delivered_at, after.failed_at, after.updated_at) == (
        "sent", None, None, row.updated_at)
    assert _prefs(api, row.user_id)["email_undeliverable_at"] is None


# ---- SendGrid: effects


def test_bounce_fails_the_delivery_and_marks_the_address_until_it_changes(api, unique):
    row = _delivery(unique)

    response = _post_sendgrid(api, [_event(row, "bounce", type="bounce", status="5.1.1",
                                           reason="550 5.1.1 The email account does not exist")])

    assert response.json() == {"applied": 1, "ignored": 0, "unknown": 0}
    after = _row(row.id)
    assert after.status == "failed" and after.failed_at is not None
    assert "550 5.1.1" in after.reason and after.reason.startswith("sendgrid bounce")
    prefs = _prefs(api, row.user_id)
    assert prefs["email_undeliverable_at"] is not None and "550 5.1.1" in prefs["email_undeliverable_reason"]
    # A new address is not the dead one
    changed = requests.put(f"{api.url}/v1/users/{row.user_id}/preferences", json={"email": "new@example.com"},
                           headers=api.auth(), timeout=10).json()
    assert changed["email_undeliverable_at"] is None and changed["email_undeliverable_reason"] is None


@pytest.mark.parametrize(
    ("event", "fields", "dead"),
    [
        ("bounce", {"type": "blocked", "reason": "IP blocked"}, False),
        ("dropped", {"reason": "Bounced Address"}, True),
        ("dropped", {"reason": "Invalid"}, True),
        ("dropped", {"reason": "Invalid SMTPAPI header"}, False),
    ],
)
def test_failures_mark_the_address_only_when_it_is_dead(api, unique, event, fields, dead):
    row = _delivery(unique)

    _post_sendgrid(api, [_event(row, event, **fields)])

    assert _row(row.id).status == "failed"
    assert (_prefs(api, row.user_id)["email_undeliverable_at"] is not None) is dead


@pytest.mark.parametrize("event", ["spamreport", "unsubscribe", "group_unsubscribe"])
def test_spam_report_and_unsubscribe_turn_email_off_and_drop_the_cached_recipient(api, unique, event):
    row = _delivery(unique, status="delivered")
    with session_factory()() as session:
        load_recipients(session, [row.user_id], get_redis())  # now cached
    assert get_redis().exists(CACHE_PREFIX + row.user_id)

    response = _post_sendgrid(api, [_event(row, event)])

    assert response.json()["applied"] == 1
    assert _prefs(api, row.user_id)["email_enabled"] is False
    assert not get_redis().exists(CACHE_PREFIX + row.user_id)
    assert _row(row.id).status == "delivered"


@pytest.mark.parametrize("reason", ["Unsubscribed Address", "Spam Reporting Address"])
def test_drop_for_an_opted_out_address_fails_the_delivery_and_turns_email_off(api, unique, reason):
    row = _delivery(unique)

    _post_sendgrid(api, [_event(row, "dropped", reason=reason)])

    after = _row(row.id)
    assert after.status == "failed" and after.reason == f"sendgrid dropped: {reason}"
    prefs = _prefs(api, row.user_id)
    assert prefs["email_enabled"] is False and prefs["email_undeliverable_at"] is None


def test_unsubscribe_of_an_address_the_user_no_longer_has_leaves_email_on(api, unique):
    row = _delivery(unique)
    set_preferences(row.user_id, email="moved@example.com")

    _post_sendgrid(api, [_event(row, "unsubscribe")])

    assert _prefs(api, row.user_id)["email_enabled"] is True


def test_status_api_never_shows_the_address_even_when_the_provider_quotes_it(api, unique):
    row = _delivery(unique)

    _post_sendgrid(api, [_event(row, "bounce", reason=f"550 5.1.1 <{row.target}>: Recipient address rejected")])

    status = requests.get(f"{api.url}/v1/notifications/{row.notification_id}", headers=api.auth(), timeout=10)
    [delivery] = status.json()["deliveries"]
    assert row.target not in status.text
    assert delivery["target"] == row.target[0] + "…@example.com"
    assert delivery["reason"] == f"sendgrid bounce: 550 5.1.1 <{delivery['target']}>: Recipient address rejected"


def test_deferred_is_recorded_as_last_error_only(api, unique):
    row = _delivery(unique)

    _post_sendgrid(api, [_event(row, "deferred", response="421 try again later", attempt="2")])

    after = _row(row.id)
    assert after.status == "sent" and after.last_error == "sendgrid deferred: 421 try again later"


def test_delivered_is_never_taken_back_to_failed(api, unique):
    row = _delivery(unique)

    first = _post_sendgrid(api, [_event(row, "delivered")])
    late = _post_sendgrid(api, [_event(row, "bounce", reason="550 mailbox gone")])
    again = _post_sendgrid(api, [_event(row, "delivered")])

    assert first.json()["applied"] == 1 and again.json() == {"applied": 0, "ignored": 1, "unknown": 0}
    after = _row(row.id)
    assert after.status == "delivered" and after.failed_at is None
    assert late.status_code == 200


def test_events_for_unknown_deliveries_are_acknowledged_and_change_nothing(api, unique):
    row = _delivery(unique)
    strangers = [
        _event(row, "delivered", delivery_id="999999999999"),                   # no such row
        _event(row, "delivered", delivery_id="not-a-number"),
        {"event": "delivered", "email": row.target, "timestamp": int(time.time())},  # not sent by us
        _event(row, "delivered", email="someone-else@example.com"),             # another deployment's id
        _event(row, "delivered", notification_id="another-notification"),
        {k: v for k, v in _event(row, "delivered").items() if k != "email"},       # names no recipient
        "not an object",
    ]

    response = _post_sendgrid(api, strangers)

    assert response.status_code == 200
    assert response.json() == {"applied": 0, "ignored": 0, "unknown": 6}
    assert _row(row.id).status == "sent"


def test_sendgrid_body_must_be_a_json_array(api):
    body = b'{"event": "delivered"}'
    response = requests.post(f"{api.url}/v1/webhooks/sendgrid", data=body, headers=api.sendgrid_headers(body),
                             timeout=10)
    assert response.status_code == 400


# ---- Twilio


def _sms(unique, **kwargs) -> NotificationLog:
    return _delivery(unique, channel="sms", provider_message_id="SM" + secrets.token_hex(16), **kwargs)


def test_twilio_delivered_callback_marks_the_sms_delivered(api, unique):
    row = _sms(unique)

    response = _post_twilio(api, {"MessageSid": row.provider_message_id, "MessageStatus": "delivered",
                                  "AccountSid": "AC" + "0" * 32, "ApiVersion": "2010-04-01"})

    assert response.status_code == 200 and response.json()["applied"] == 1
    after = _row(row.id)
    assert after.status == "delivered" and after.delivered_at is not None


@pytest.mark.parametrize("status", ["undelivered", "failed"])
def test_twilio_failure_callback_fails_the_sms_with_the_error_code(api, unique, status):
    row = _sms(unique)

    _post_twilio(api, {"MessageSid": row.provider_message_id, "MessageStatus": status, "ErrorCode": "30003"})

    after = _row(row.id)
    assert after.status == "failed" and after.reason == f"twilio {status}: error 30003"


@pytest.mark.parametrize("status", ["queued", "sent"])
def test_twilio_progress_callbacks_change_nothing(api, unique, status):
    row = _sms(unique)

    response = _post_twilio(api, {"MessageSid": row.provider_message_id, "MessageStatus": status})

    assert response.json() == {"applied": 0, "ignored": 1, "unknown": 0}
    assert _row(row.id).status == "sent"


def test_twilio_failed_after_delivered_stays_delivered(api, unique):
    row = _sms(unique)
    _post_twilio(api, {"MessageSid": row.provider_message_id, "MessageStatus": "delivered"})
    _post_twilio(api, {"MessageSid": row.provider_message_id, "MessageStatus": "failed", "ErrorCode": "30008"})
    assert _row(row.id).status == "delivered"


def test_twilio_callback_for_an_unknown_message_is_acknowledged(api):
    response = _post_twilio(api, {"MessageSid": "SM" + secrets.token_hex(16), "MessageStatus": "delivered"})
    assert response.status_code == 200 and response.json() == {"applied": 0, "ignored": 0, "unknown": 1}


@pytest.mark.parametrize(
    "sign",
    [
        {"token": "0" * 32},                                   # another account's token
        {"url": "http://127.0.0.1/v1/webhooks/twilio"},        # not the public URL Twilio was given
        None,                                                  # no X-Twilio-Signature at all
    ],
    ids=["wrong-token", "wrong-url", "missing"],
)
def test_badly_signed_twilio_callback_is_403_and_changes_nothing(api, unique, sign):
    row = _sms(unique)
    params = {"MessageSid": row.provider_message_id, "MessageStatus": "delivered"}
    headers = api.twilio_headers(params, **sign) if sign is not None else {}

    response = requests.post(f"{api.url}/v1/webhooks/twilio", data=params, headers=headers, timeout=10)

    assert response.status_code == 403
    assert _row(row.id).status == "sent"


def test_twilio_signature_covers_every_parameter(api, unique):
    row = _sms(unique)
    signed = {"MessageSid": row.provider_message_id, "MessageStatus": "sent"}
    sent = signed | {"MessageStatus": "failed"}

    response = requests.post(f"{api.url}/v1/webhooks/twilio", data=sent, headers=api.twilio_headers(signed),
                             timeout=10)

    assert response.status_code == 403
    assert _row(row.id).status == "sent"


def test_twilio_signature_with_the_default_port_is_accepted(api, unique):
    row = _sms(unique)
    params = {"MessageSid": row.provider_message_id, "MessageStatus": "delivered"}

    response = _post_twilio(api, params, url=api.public_url + ":443/v1/webhooks/twilio")

    assert response.status_code == 200 and _row(row.id).status == "delivered"
