"""Simulate delivery receipts: call the notifier's webhooks as SendGrid and Twilio would.

    GET  /_sandbox/receipts    the SendGrid Event Webhook URL and verification key in use
    POST /_sandbox/receipts    {"provider": "sendgrid" | "twilio", "message_id": ... or "target": ...,
                                "event": "delivered" | "bounce" | ... | "undelivered",
                                optional "reason", "type", "error_code"}

SendGrid posts a JSON array of events to the account's Event Webhook URL, signed with
ECDSA P-256 (the sandbox's key pair, made at first start; its public key is written
for the API to read). Twilio posts the message's status as a form to the message's
StatusCallback, signed with the account's auth token.

Receipts go only to the notifier API the sandbox is configured with: SendGrid events to
its Event Webhook URL, Twilio callbacks to a StatusCallback on that URL's origin. No
request names where to post: a control API that signs and posts anywhere is a
forged-webhook and server-side request forgery tool.
https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/event
https://www.twilio.com/docs/messaging/guides/track-outbound-message-status
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sandbox.keys import ensure_ec_key
from sandbox.signing import TWILIO_SIGNATURE, public_key_b64, sendgrid_headers, twilio_signature
from sandbox.state import SandboxState

TIMEOUT_S = 4.0  # below the control client's own 5 s
TWILIO_FAILED = frozenset({"undelivered", "failed"})
_FIELDS = {"provider", "message_id", "target", "event", "reason", "type", "error_code", "status", "response"}


class ReceiptError(ValueError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Receipts:
    """Build, sign and post one provider report about a message the sandbox accepted."""

    def __init__(self, state: SandboxState, *, sendgrid_key: ec.EllipticCurvePrivateKey,
                 sendgrid_event_webhook_url: str, twilio_account_sid: str, twilio_auth_token: str) -> None:
        self.state = state
        self.sendgrid_key = sendgrid_key
        self.sendgrid_event_webhook_url = sendgrid_event_webhook_url
        self.twilio_account_sid = twilio_account_sid
        self.twilio_auth_token = twilio_auth_token
        self._session = requests.Session()

    def info(self) -> dict[str, str]:
        return {
            "sendgrid_event_webhook_url": self.sendgrid_event_webhook_url,
            "sendgrid_webhook_public_key": public_key_b64(self.sendgrid_key),
        }

    async def handle(self, method: str, body: bytes) -> tuple[int, Any]:
        """The control endpoint: (status, JSON-able payload)."""
        if method == "GET":
            return 200, self.info()
        if method != "POST":
            return 405, {"error": f"method {method} not allowed, use GET or POST"}
        try:
            spec = json.loads(body or b"null")
            url, headers, data, sent = self.build(spec)
        except ReceiptError as exc:
            return exc.status, {"error": str(exc)}
        except ValueError as exc:
            return 400, {"error": f"body: {exc}"}
        try:
            response = await asyncio.to_thread(self._session.post, url, data=data, headers=headers, timeout=TIMEOUT_S)
        except requests.RequestException as exc:
            return 502, {"error": f"webhook {url} did not answer: {exc}", "url": url, "sent": sent}
        try:
            answer: Any = response.json()
        except ValueError:
            answer = response.text
        return 200, {"provider": spec["provider"], "url": url, "status": response.status_code,
                     "response": answer, "sent": sent}

    def build(self, spec: Any) -> tuple[str, dict[str, str], bytes | dict[str, str], Any]:
        """Return (url, headers, body, what was sent) for a receipt request; raise ReceiptError."""
        if not isinstance(spec, dict):
            raise ReceiptError(400, "body: expected a JSON object")
        unknown = set(spec) - _FIELDS
        if unknown:
            raise ReceiptError(400, f"{sorted(unknown)[0]}: unknown field")
        provider = spec.get("provider")
        if provider not in ("sendgrid", "twilio"):
            raise ReceiptError(400, "provider: expected sendgrid or twilio")
        event = spec.get("event")
        if not isinstance(event, str) or not event:
            raise ReceiptError(400, "event: expected a string, e.g. delivered")
        record = self._find(provider, spec.get("message_id"), spec.get("target"))
        if provider == "sendgrid":
            return self._sendgrid(record, event, spec)
        return self._twilio(record, event, spec)

    def _find(self, provider: str, message_id: Any, target: Any) -> dict[str, Any]:
        if message_id is None and target is None:
            raise ReceiptError(400, "message_id or target: one is required")
        for record in reversed(self.state.records):
            if record["provider"] == provider and (
                (message_id is not None and record["id"] == message_id)
                or (message_id is None and record["target"] == target)
            ):
                return record
        raise ReceiptError(404, f"no {provider} message {message_id or target!r} was accepted")

    def _sendgrid(self, record: dict[str, Any], event: str, spec: dict[str, Any]):
        url = self.sendgrid_event_webhook_url
        if not url:
            raise ReceiptError(400, "no SendGrid Event Webhook URL is configured (--sendgrid-event-webhook-url)")
        payload = record["payload"]
        args = dict(payload.get("custom_args") or {})
        for p in payload.get("personalizations") or []:
            if any(to.get("email") == record["target"] for to in p.get("to") or []):
                args.update(p.get("custom_args") or {})
        now = int(time.time())
        item: dict[str, Any] = {
            "email": record["target"], "timestamp": now, "event": event,
            "smtp-id": f"<{record['id']}@sandbox.sendgrid.invalid>",
            "sg_event_id": secrets.token_urlsafe(16), "sg_message_id": f"{record['id']}.sandbox.{now}",
            **args,
        }
        for name in ("reason", "type", "status", "response"):
            if spec.get(name) is not None:
                item[name] = str(spec[name])
        body = json.dumps([item]).encode()
        return url, sendgrid_headers(self.sendgrid_key, body, timestamp=now), body, [item]

    def _twilio(self, record: dict[str, Any], event: str, spec: dict[str, Any]):
        form = record["payload"]
        url = form.get("StatusCallback")
        if not url:
            raise ReceiptError(400, "the message has no StatusCallback: Twilio would not call back")
        if _origin(url) != _origin(self.sendgrid_event_webhook_url):
            raise ReceiptError(400, f"the message's StatusCallback is not on the configured notifier API "
                                    f"({_origin(self.sendgrid_event_webhook_url)}); receipts post nowhere else")
        params = {
            "MessageSid": record["id"], "SmsSid": record["id"], "AccountSid": self.twilio_account_sid,
            "MessageStatus": event, "SmsStatus": event, "To": record["target"], "ApiVersion": "2010-04-01",
        }
        if form.get("From"):
            params["From"] = form["From"]
        if form.get("MessagingServiceSid"):
            params["MessagingServiceSid"] = form["MessagingServiceSid"]
        if event in TWILIO_FAILED:
            params["ErrorCode"] = str(spec.get("error_code") or 30003)
        headers = {TWILIO_SIGNATURE: twilio_signature(self.twilio_auth_token, url, params)}
        return url, headers, params, params


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        port = -1  # not a port: matches no configured origin
    return parts.scheme, (parts.hostname or "").lower(), port


def load_or_make_key(
    private_path: str | os.PathLike[str], public_path: str | os.PathLike[str]
) -> ec.EllipticCurvePrivateKey:
    """Read (or make, once) the SendGrid signing key; write its public half where the API reads it."""
    key = serialization.load_pem_private_key(Path(ensure_ec_key(private_path)).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{private_path}: expected an EC P-256 private key")
    public_path = Path(public_path)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = public_path.with_name(f".{public_path.name}.{os.getpid()}.tmp")
    tmp.write_text(public_key_b64(key) + "\n")
    tmp.replace(public_path)
    return key
