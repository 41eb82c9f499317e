"""SendGrid v3 Mail Send: one JSON request per delivery, bearer API key.

Docs:
- https://www.twilio.com/docs/sendgrid/api-reference/mail-send/mail-send
- https://www.twilio.com/docs/sendgrid/api-reference/mail-send/errors
- https://www.twilio.com/docs/sendgrid/api-reference/how-to-use-the-sendgrid-v3-api/rate-limits
- https://www.twilio.com/docs/sendgrid/for-developers/sending-email/custom-arguments

Each email carries the custom args ``delivery_id`` and ``notification_id`` (strings),
which SendGrid's Event Webhook echoes back, so a report finds its delivery.
"""
from __future__ import annotations

import time
from typing import Any

import requests

from notifier.providers.base import Delivery, Outcome, OutcomeKind
from notifier.providers.http1 import HttpClient, RequestPerDelivery, send_one
from notifier.settings import Settings, get_settings
from notifier.store.db import current_shard

RESPONSES_DOC = "https://www.twilio.com/docs/sendgrid/api-reference/mail-send/errors"
MAIL_SEND_PATH = "/v3/mail/send"

K = OutcomeKind
# HTTP status -> outcome kind. One row per documented status; doc: RESPONSES_DOC.
CLASSIFICATION: dict[int, OutcomeKind] = {
    202: K.OK,             # valid and queued to be delivered; X-Message-Id names it
    400: K.FAILED,         # the request is invalid (the errors name the field); resending changes nothing
    401: K.MISCONFIGURED,  # the API key is missing, wrong, revoked, or out of credits
    403: K.MISCONFIGURED,  # the key lacks the Mail Send permission, or the sender is not verified
    404: K.MISCONFIGURED,  # wrong API URL
    405: K.MISCONFIGURED,
    413: K.FAILED,         # the message is over 30 MB
    415: K.MISCONFIGURED,
    429: K.RETRY,          # rate limited: retry at X-RateLimit-Reset
    500: K.RETRY,
    502: K.RETRY,
    503: K.RETRY,
    504: K.RETRY,
}


def build_request(d: Delivery, s: Settings) -> dict[str, Any]:
    """The Mail Send body of one delivery."""
    return {
        "personalizations": [{
            "to": [{"email": d.target}],
            # Delivery ids are per shard: a sharded delivery names its shard too (reports find the row by both).
            "custom_args": {"delivery_id": str(d.id), "notification_id": d.notification_id}
            | ({"shard": str(current_shard())} if current_shard() else {}),
        }],
        "from": {"email": s.email_from, "name": s.email_from_name} if s.email_from_name else {"email": s.email_from},
        "subject": d.title or d.body[:78] or "(no subject)",
        # text/plain first: SendGrid requires that order when both are given.
        "content": [{"type": "text/plain", "value": d.body or d.title or " "}]
        + ([{"type": "text/html", "value": d.html}] if d.html else []),
    }


def classify(resp: requests.Response, now: float | None = None) -> Outcome:
    """Turn one Mail Send response into an outcome (CLASSIFICATION, RESPONSES_DOC)."""
    status = resp.status_code
    kind = CLASSIFICATION.get(status)
    if kind is None:
        kind = K.OK if 200 <= status < 300 else K.RETRY if status >= 500 else K.FAILED
    if kind is K.OK:
        return Outcome.ok(resp.headers.get("X-Message-Id"))
    reason = f"sendgrid {status} {_error_text(resp)}"
    retry_after = None
    if status == 429:
        reset = resp.headers.get("X-RateLimit-Reset", "")
        if reset.isdigit():
            retry_after = max(0.0, int(reset) - (time.time() if now is None else now))
    return Outcome(kind, reason=reason, retry_after_s=retry_after)


def _error_text(resp: requests.Response) -> str:
    try:
        errors = resp.json().get("errors") or []
    except (ValueError, AttributeError):
        errors = []
    texts = [
        f"{e.get('message')}" + (f" ({e['field']})" if e.get("field") else "")
        for e in errors if isinstance(e, dict) and e.get("message")
    ]
    return "; ".join(texts)[:500] or resp.reason or "error"


class SendgridProvider(RequestPerDelivery):
    """Send email through SendGrid's v3 Mail Send API over kept-alive connections."""

    name = "sendgrid"

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = s = settings or get_settings()
        self._url = s.sendgrid_url.rstrip("/") + MAIL_SEND_PATH
        self._headers = {"Authorization": f"Bearer {s.sendgrid_api_key}", "Content-Type": "application/json"}
        self._http = HttpClient(timeout_s=s.send_timeout_s, concurrency=s.provider_http_concurrency)

    def _send(self, d: Delivery) -> Outcome:
        return send_one(
            "sendgrid",
            lambda: build_request(d, self.settings),
            lambda body: self._http.session.post(self._url, json=body, headers=self._headers,
                                                 timeout=self._http.timeout_s),
            classify,
        )
