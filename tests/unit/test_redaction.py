"""Redaction rules: what a log line, a reason or a status may show of a token, an address or a number."""
from __future__ import annotations

import io
import logging

import pytest

import notifier
from notifier.ops.redaction import RedactingFilter, redact_target, redact_text

TOKEN = "9f" * 32
FCM_TOKEN = "dXk3Yq0bE_lK:APA91bHun4MxP5egoKMwt2KZFBaFUH-1RYqx8b7Kq0bE_lK_yS8xXs0nQ5PZfUCWY0J3xYz7"


@pytest.mark.parametrize(
    ("text", "secret", "kept"),
    [
        (f"OSError: https://api.push.apple.com:443/3/device/{TOKEN} failed", TOKEN, "…9f9f"),
        (f"PUT /v1/users/u1/devices/caf%C3%A9{TOKEN} HTTP/1.1", TOKEN, "/devices/…"),
        ("DELETE /v1/users/u1/devices/short-token HTTP/1.1", "short-token", "/devices/…"),
        (f"token {TOKEN} refused", TOKEN, "…9f9f"),
        (f"FCM said no to {FCM_TOKEN}.", FCM_TOKEN, "…xYz7"),
        ("550 5.1.1 <Ada.Lovelace@Example.COM>: no such user", "Lovelace@Example.COM", "A…@Example.COM"),
        ("to=ada.lovelace%40example.com&x=1", "lovelace%40example", "a…%40example.com"),
        ("The 'To' number +15005550009 is not a valid phone number", "5005550009", "…0009"),
        ("To=%2B4790000001", "4790000001", "…0001"),
    ],
)
def test_redact_text_hides_tokens_addresses_and_numbers(text, secret, kept):
    shown = redact_text(text)
    assert secret.lower() not in shown.lower()
    assert kept in shown


@pytest.mark.parametrize(
    "text",
    [
        "Task notifier.send_push[3f2a9c1e-1234-4abc-9def-0123456789ab] succeeded in 0.01s",
        "route: 3 duplicate event(s) recorded",
        "test_posting_the_same_notification_twice_delivers_it_once at 2026-12-01T06:30:00+01:00",
        "delivery 12345 retry 2 of 5 (apns 503)",
    ],
)
def test_redact_text_leaves_ids_times_and_names_alone(text):
    assert redact_text(text) == text


def test_a_known_target_is_hidden_in_any_letter_case():
    assert redact_text("bounced: MAIL TO ADA@EXAMPLE.COM REFUSED", "ada@example.com") == \
        "bounced: MAIL TO a…@example.com REFUSED"
    assert redact_target("email", "ada@example.com") == "a…@example.com"
    assert redact_target("push", TOKEN) == "…9f9f"


def test_filter_redacts_message_arguments_traceback_and_keeps_one_line():
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("tests.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.error("send failed for %s: %r", "ada@example.com", ValueError(f"https://h/3/device/{TOKEN}"))
        logger.warning("bad id %r", "n1\nFORGED 2026 ERROR fake line")
        try:
            raise RuntimeError(f"pycurl: https://h/3/device/{TOKEN} +4790000001")
        except RuntimeError:
            logger.exception("task failed")
    finally:
        logger.removeHandler(handler)
    written = out.getvalue()
    for secret in (TOKEN, "ada@example.com", "4790000001"):
        assert secret not in written
    assert "a…@example.com" in written and "/3/device/…9f9f" in written
    assert "\nFORGED" not in written  # the id's newline is escaped, not a line of its own
    assert "Traceback (most recent call last)" in written  # tracebacks keep their lines
