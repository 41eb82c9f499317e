"""Web Push without the network: answers to outcomes (one row each), the RFC 8030 headers from a delivery,
the payload's bound, and the subscription rules of RFC 8291."""
from __future__ import annotations

import base64
import json
import re
from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from notifier.intake import validation
from notifier.providers import OutcomeKind
from notifier.providers.base import Delivery
from notifier.providers.transport import HttpRequest, HttpResponse
from notifier.providers.webpush import (
    CLASSIFICATION, MAX_PAYLOAD_BYTES, build_payload, classify, origin_of, topic, ttl_s, urgency,
)

K = OutcomeKind
ENDPOINT = "https://push.example.com/wpush/v2/abc"


def answer(status: int, body: bytes = b"", **headers: str) -> HttpResponse:
    return HttpResponse(HttpRequest("POST", ENDPOINT, {}, b""), status, headers, body, None, 0.0)


def delivery(**changes) -> Delivery:
    fields = dict(id=1, idempotency_key="k", channel="push", provider="webpush", target=ENDPOINT, priority="high",
                  category="transactional", type="t", title="Hi", body="there")
    return Delivery(**(fields | changes))


# ---- classification: a test per row ----------------------------------------------------------------------

@pytest.mark.parametrize(("status", "kind"), sorted(CLASSIFICATION.items()))
def test_each_row_of_the_table(status, kind):
    outcome = classify(answer(status, b'{"code":%d,"errno":102,"message":"why"}' % status, location="/m/abc"))
    assert outcome.kind is kind
    if kind is K.OK:
        assert outcome.message_id == "abc"
    else:
        assert outcome.reason == f"webpush {status}: why"


def test_the_table_holds_what_the_brief_and_rfcs_name():
    assert CLASSIFICATION[201] is K.OK
    assert {s for s, k in CLASSIFICATION.items() if k is K.TOKEN_INVALID} == {404, 410}
    assert {s for s, k in CLASSIFICATION.items() if k is K.MISCONFIGURED} == {400, 401, 403}
    assert CLASSIFICATION[413] is K.FAILED and CLASSIFICATION[429] is K.RETRY
    assert all(CLASSIFICATION[s] is K.RETRY for s in (500, 502, 503, 504))


def test_retry_after_is_honoured_and_statuses_not_in_the_table_fall_back_by_class():
    assert classify(answer(429, **{"retry-after": "30"})).retry_after_s == 30.0
    assert classify(answer(507)).kind is K.RETRY
    assert classify(answer(418)).kind is K.FAILED
    assert classify(answer(202)).kind is K.OK


@pytest.mark.parametrize("body", [b"[1]", b"\xff\xfe", b'{"message": "a\\nb"}', b"plain text"])
def test_an_odd_answer_is_classified_never_raised(body):
    outcome = classify(answer(400, body))
    assert outcome.kind is K.MISCONFIGURED and outcome.reason.startswith("webpush 400") and "\n" not in outcome.reason


def test_a_transport_error_retries_and_an_unsendable_request_fails():
    lost = HttpResponse(HttpRequest("POST", ENDPOINT, {}, b""), 0, {}, b"", "timeout", 1.0)
    unsendable = HttpResponse(HttpRequest("POST", ENDPOINT, {}, b""), 0, {}, b"", "bad URL", 0.0, True)
    assert classify(lost).kind is K.RETRY and classify(unsendable).kind is K.FAILED


# ---- RFC 8030 headers ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("priority", "expected"),
                         [("critical", "high"), ("high", "high"), ("normal", "normal"), ("low", "low"),
                          ("unknown", "normal")])
def test_urgency_follows_priority(priority, expected):
    assert urgency(priority) == expected


def test_topic_is_the_collapse_id_when_it_fits_else_a_stable_digest():
    assert topic(None) is None and topic("ride-77") == "ride-77"
    long = topic("order:42 shipped to the customer today")
    assert len(long) == 32 and long == topic("order:42 shipped to the customer today")
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}", long)


def test_ttl_is_the_default_or_what_is_left_of_the_delivery_expiry():
    now = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)
    assert ttl_s(delivery(), now, 86400) == 86400
    assert ttl_s(delivery(expires_at=now + timedelta(minutes=10)), now, 86400) == 600
    assert ttl_s(delivery(expires_at=now - timedelta(minutes=1)), now, 86400) == 0


def test_the_vapid_audience_is_the_endpoint_origin():
    assert origin_of("https://fcm.googleapis.com/fcm/send/abc:def") == "https://fcm.googleapis.com"
    assert origin_of("https://127.0.0.1:8797/wp/x") == "https://127.0.0.1:8797"


def test_a_long_body_is_shortened_to_fit_the_4_kib_a_push_service_must_take():
    payload = build_payload(delivery(body="é" * 5000))
    assert len(payload) <= MAX_PAYLOAD_BYTES
    assert json.loads(payload)["body"].endswith("…")


# ---- subscriptions (RFC 8291 §3.2) ------------------------------------------------------------------------

def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _point() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    return _b64(public.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))


def test_a_well_formed_subscription_is_taken_and_padding_dropped():
    p256dh, auth = _point(), _b64(b"0123456789abcdef")
    sub = validation.WebPushSubscription.model_validate(
        {"endpoint": ENDPOINT, "expirationTime": None, "keys": {"p256dh": p256dh + "=", "auth": auth + "=="}})
    assert (sub.keys.p256dh, sub.keys.auth) == (p256dh, auth)


@pytest.mark.parametrize(
    ("keys", "field"),
    [
        (lambda p, a: {"p256dh": p[:-3], "auth": a}, "p256dh"),                  # 63 bytes
        (lambda p, a: {"p256dh": _b64(b"\x02" + b"\x01" * 64), "auth": a}, "p256dh"),  # not uncompressed
        (lambda p, a: {"p256dh": _b64(b"\x04" + b"\x01" * 64), "auth": a}, "p256dh"),  # not on the curve
        (lambda p, a: {"p256dh": p.replace(p[5], "+"), "auth": a}, "p256dh"),     # base64, not base64url
        (lambda p, a: {"p256dh": p, "auth": _b64(b"x" * 15)}, "auth"),
        (lambda p, a: {"p256dh": p, "auth": _b64(b"x" * 32)}, "auth"),
    ],
)
def test_keys_of_the_wrong_shape_are_refused_naming_the_key(keys, field):
    with pytest.raises(ValidationError) as info:
        validation.WebPushSubscription.model_validate(
            {"endpoint": ENDPOINT, "keys": keys(_point(), _b64(b"0123456789abcdef"))})
    assert [e["loc"] for e in info.value.errors()] == [("keys", field)]


@pytest.mark.parametrize("endpoint", ["http://push.example.com/x", "https:///x", "https://u:p@push.example.com/x",
                                      "https://push.example.com/x#y", "https://push.example.com/a b",
                                      "https://push.example.com:99999/x", "https://push.example.com/" + "x" * 500,
                                      "https://pùsh.example.com/x"])
def test_endpoints_that_are_not_plain_https_urls_are_refused(endpoint):
    with pytest.raises(ValidationError) as info:
        validation.WebPushSubscription.model_validate(
            {"endpoint": endpoint, "keys": {"p256dh": _point(), "auth": _b64(b"0123456789abcdef")}})
    assert [e["loc"] for e in info.value.errors()] == [("endpoint",)]


def test_a_web_device_needs_keys_and_only_a_web_device_has_them():
    keys = {"p256dh": _point(), "auth": _b64(b"0123456789abcdef")}
    with pytest.raises(ValidationError) as web:
        validation.Device(user_id="u", platform="web", token=ENDPOINT)
    with pytest.raises(ValidationError) as ios:
        validation.Device(user_id="u", platform="ios", token="ab" * 32, keys=keys)
    assert [e["loc"] for e in web.value.errors()] == [("keys",)] == [e["loc"] for e in ios.value.errors()]


def test_an_endpoint_is_shown_as_its_push_service_and_the_last_four_characters_only():
    from notifier.ops.redaction import redact_target, redact_text

    endpoint = "https://fcm.googleapis.com/fcm/send/dXk3Yz0:APA91bH8s1x2c3v4b5n6m7"
    assert redact_target("push", endpoint) == "https://fcm.googleapis.com/…n6m7"
    assert endpoint not in redact_text(f"webpush to {endpoint} failed", endpoint)


@pytest.mark.parametrize("subject", ["ops@example.com", "mailto:", "mailto:ops", "http://example.com", ""])
def test_a_subject_py_vapid_refuses_fails_the_provider_at_start_not_each_push(tmp_path, subject):
    from notifier.providers.webpush import WebPushProvider
    from notifier.settings import Settings
    from sandbox.keys import ensure_ec_key

    key = ensure_ec_key(tmp_path / "vapid.pem")
    with pytest.raises(ValueError, match="vapid_subject"):
        WebPushProvider(Settings(vapid_private_key_file=key, vapid_subject=subject, apns_ca_file=""))
    WebPushProvider(Settings(vapid_private_key_file=key, vapid_subject="mailto:ops@example.com",
                             apns_ca_file="")).close()


def test_a_missing_or_foreign_key_file_is_refused_and_never_generated(tmp_path):
    from notifier.providers.webpush import load_vapid_key

    with pytest.raises(ValueError, match="cannot be read"):
        load_vapid_key(tmp_path / "absent.pem")
    assert not (tmp_path / "absent.pem").exists()
    (tmp_path / "garbage.pem").write_text("not a key")
    with pytest.raises(ValueError, match="not a PEM private key"):
        load_vapid_key(tmp_path / "garbage.pem")


def test_data_too_large_for_a_push_fails_that_delivery_unsent_and_a_gone_subscription_is_token_invalid(tmp_path):
    from notifier.providers.webpush import NOT_REGISTERED, WebPushProvider
    from notifier.settings import Settings
    from sandbox.keys import ensure_ec_key

    keys = {"p256dh": _point(), "auth": _b64(b"0123456789abcdef")}
    provider = WebPushProvider(Settings(vapid_private_key_file=ensure_ec_key(tmp_path / "v.pem"), apns_ca_file=""),
                               subscriptions=lambda endpoints: {ENDPOINT: keys})
    reported = []
    try:
        big, gone = provider.send_batch(
            [delivery(data={"blob": "x" * 5000}), delivery(target="https://push.example.com/unsubscribed")],
            on_outcome=lambda i, o: reported.append(i))
    finally:
        provider.close()
    assert big.kind is K.FAILED and f"at most {MAX_PAYLOAD_BYTES} fit" in big.reason
    assert (gone.kind, gone.reason) == (K.TOKEN_INVALID, NOT_REGISTERED)
    assert sorted(reported) == [0, 1]
