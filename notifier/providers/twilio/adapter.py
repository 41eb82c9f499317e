"""Twilio Messages API: one form POST per SMS, basic auth with the account SID and auth token.

Docs:
- https://www.twilio.com/docs/messaging/api/message-resource#create-a-message-resource
- https://www.twilio.com/docs/api/errors (one page per code: /docs/api/errors/<code>)
- https://www.twilio.com/docs/usage/twilios-response#response-formats-exceptions

The message SID (SM...) is the delivery's provider message id; status callbacks to
``/v1/webhooks/twilio`` find the delivery by it.
"""
from __future__ import annotations

import requests

from notifier.providers.base import Delivery, Outcome, OutcomeKind, retry_after_s
from notifier.providers.http1 import HttpClient, RequestPerDelivery, send_one
from notifier.settings import Settings, get_settings

RESPONSES_DOC = "https://www.twilio.com/docs/api/errors"
MAX_BODY_CHARS = 1600

K = OutcomeKind
# Twilio error code -> outcome kind. One row per code we expect; doc: RESPONSES_DOC/<code>.
CLASSIFICATION: dict[int, OutcomeKind] = {
    20003: K.MISCONFIGURED,  # Authenticate: wrong account SID or auth token (HTTP 401)
    20404: K.MISCONFIGURED,  # resource not found: wrong account SID or messaging service in the URL/form
    20429: K.RETRY,          # Too Many Requests (HTTP 429)
    20500: K.RETRY,          # internal server error
    20503: K.RETRY,          # service unavailable
    21211: K.FAILED,         # invalid 'To' phone number
    21212: K.MISCONFIGURED,  # invalid 'From' phone number
    21408: K.FAILED,         # SMS to the To number's region is not enabled for the account
    21602: K.FAILED,         # message body is required
    21603: K.MISCONFIGURED,  # a 'From' phone number (or MessagingServiceSid) is required
    21604: K.FAILED,         # a 'To' phone number is required
    21606: K.MISCONFIGURED,  # the 'From' number is not a message-capable number of the account
    21610: K.UNSUBSCRIBED,   # the recipient replied STOP: turn SMS off for the user
    21611: K.RETRY,          # the 'From' number's queue is full
    21612: K.FAILED,         # the To number cannot be reached by SMS
    21614: K.FAILED,         # 'To' number is not a valid mobile number
    21617: K.FAILED,         # body over 1600 characters (we trim, so this is our bug)
}


def sms_body(d: Delivery) -> str:
    """Title and body on one message, shortened to Twilio's 1600 characters."""
    text = f"{d.title}\n{d.body}" if d.title and d.body else d.title or d.body
    return text if len(text) <= MAX_BODY_CHARS else text[: MAX_BODY_CHARS - 1] + "…"


def classify(resp: requests.Response) -> Outcome:
    """Turn one Messages API response into an outcome (CLASSIFICATION, RESPONSES_DOC)."""
    status = resp.status_code
    try:
        body = resp.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    if status in (200, 201):
        return Outcome.ok(body.get("sid"))
    code = body.get("code")
    kind = CLASSIFICATION.get(code) if isinstance(code, int) else None
    if kind is None:
        kind = K.RETRY if status == 429 or status >= 500 else K.MISCONFIGURED if status == 401 else K.FAILED
    reason = f"twilio {status} {code or ''} {body.get('message') or resp.reason or 'error'}".replace("  ", " ")
    return Outcome(kind, reason=reason[:500], retry_after_s=retry_after_s(resp.headers.get("Retry-After")))


class TwilioProvider(RequestPerDelivery):
    """Send SMS through Twilio's Messages API over kept-alive connections."""

    name = "twilio"

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = s = settings or get_settings()
        self._url = f"{s.twilio_url.rstrip('/')}/2010-04-01/Accounts/{s.twilio_account_sid}/Messages.json"
        self._auth = (s.twilio_account_sid, s.twilio_auth_token)
        sender = ({"MessagingServiceSid": s.twilio_messaging_service_sid} if s.twilio_messaging_service_sid
                  else {"From": s.twilio_from})
        callback = s.twilio_callback_url
        self._form = sender | ({"StatusCallback": callback} if callback else {})
        self._http = HttpClient(timeout_s=s.send_timeout_s, concurrency=s.provider_http_concurrency)

    def _send(self, d: Delivery) -> Outcome:
        return send_one(
            "twilio",
            lambda: {"To": d.target, "Body": sms_body(d)} | self._form,
            lambda form: self._http.session.post(self._url, data=form, auth=self._auth,
                                                 timeout=self._http.timeout_s),
            classify,
        )
