"""Providers' delivery reports and their signatures: the classification tables and the documented test vectors."""
from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from notifier.providers.reports import Effect
from notifier.providers.sendgrid.reports import sendgrid_effect
from notifier.providers.sendgrid.signature import verify_sendgrid
from notifier.providers.twilio.signature import twilio_signature


@pytest.mark.parametrize(
    ("event", "effect"),
    [
        ({"event": "processed"}, Effect.IGNORE),
        ({"event": "delivered"}, Effect.DELIVERED),
        ({"event": "deferred"}, Effect.NOTE),
        ({"event": "bounce"}, Effect.ADDRESS_DEAD),
        ({"event": "bounce", "type": "bounce"}, Effect.ADDRESS_DEAD),
        ({"event": "bounce", "type": "blocked"}, Effect.FAILED),
        ({"event": "dropped", "reason": "Bounced Address"}, Effect.ADDRESS_DEAD),
        ({"event": "dropped", "reason": "Invalid"}, Effect.ADDRESS_DEAD),
        ({"event": "dropped", "reason": "Unsubscribed Address"}, Effect.FAILED_OPT_OUT),
        ({"event": "dropped", "reason": "Spam Reporting Address"}, Effect.FAILED_OPT_OUT),
        ({"event": "dropped", "reason": "Invalid SMTPAPI header"}, Effect.FAILED),
        ({"event": "spamreport"}, Effect.OPT_OUT),
        ({"event": "unsubscribe"}, Effect.OPT_OUT),
        ({"event": "group_unsubscribe"}, Effect.OPT_OUT),
        ({"event": "group_resubscribe"}, Effect.IGNORE),
        ({"event": "open"}, Effect.IGNORE),
        ({"event": "click"}, Effect.IGNORE),
        ({"event": "something_new"}, Effect.IGNORE),
    ],
)
def test_sendgrid_event_classification(event, effect):
    assert sendgrid_effect(event) is effect


def test_sendgrid_signature_matches_sendgrids_published_test_vector():
    # The vector SendGrid's own libraries test with (e.g. sendgrid-python test/unit/test_eventwebhook.py).
    public_key = ("MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEDr2LjtURuePQzplybdC+u4CwrqDqBaWjcMMsTbhdbcwHBcepxo7yAQGhHP"
                  "TnlvFYPAZFceEu/1FwCM/QmGUhA==")
    signature = "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH2j/0="
    payload = b'{"category":"example_payload","event":"test_event","message_id":"message_id"}'
    assert verify_sendgrid(public_key, payload, signature, "1588788367", 600, now=1588788367) is None
    assert verify_sendgrid(public_key, payload + b" ", signature, "1588788367", 600, now=1588788367)
    assert verify_sendgrid(public_key, payload, signature, "1588788367", 600, now=1588788367 + 601)


def test_twilio_signature_matches_twilios_documented_example():
    # https://www.twilio.com/docs/usage/security#validating-requests
    params = [("CallSid", "CA1234567890ABCDE"), ("Caller", "+12349013030"), ("Digits", "1234"),
              ("From", "+12349013030"), ("To", "+18005551212")]
    assert twilio_signature("12345", "https://mycompany.com/myapp.php?foo=1&bar=2", params) == \
        "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
