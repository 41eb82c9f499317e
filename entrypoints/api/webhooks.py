"""Provider webhooks: SendGrid's Event Webhook and Twilio's status callbacks.

They authenticate by the provider's signature, never by API keys. A missing or bad
signature, or a stale timestamp, is refused with 403 and changes nothing; a webhook
whose verification key is not configured answers 503 (the provider retries later).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import time
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key
from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from notifier.providers import reports as webhook_effects
from notifier.settings import get_settings

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

SENDGRID_SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"
TWILIO_SIGNATURE = "X-Twilio-Signature"
TWILIO_PATH = "/v1/webhooks/twilio"


class WebhookResult(BaseModel):
    """How many reports changed something, changed nothing, or matched no delivery of ours."""

    applied: int
    ignored: int
    unknown: int


# ---- SendGrid: ECDSA P-256 / SHA-256 over timestamp + raw body.
# https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/getting-started-event-webhook-security-features


@lru_cache(maxsize=4)
def _sendgrid_key(configured: str) -> ec.EllipticCurvePublicKey:
    text = configured.strip()
    key = load_pem_public_key(text.encode()) if "BEGIN PUBLIC KEY" in text else load_der_public_key(
        base64.b64decode(text, validate=True)
    )
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("the SendGrid verification key is not an elliptic-curve public key")
    return key


_UNIX_SECONDS = re.compile(r"[0-9]{1,12}")


def verify_sendgrid(public_key: str, body: bytes, signature: str | None, timestamp: str | None,
                    max_age_s: float, now: float | None = None) -> str | None:
    """Check a SendGrid Event Webhook signature; return why it is refused, or None if genuine."""
    if not signature or not timestamp:
        return "missing signature or timestamp header"
    # ASCII digits only: str.isdigit() also takes '²' and other digits int() refuses.
    if not _UNIX_SECONDS.fullmatch(timestamp):
        return "timestamp is not unix seconds"
    now = time.time() if now is None else now
    if abs(now - int(timestamp)) > max_age_s:
        return "timestamp outside the accepted window (replayed or clock skew)"
    try:
        raw_signature = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return "signature is not base64"
    try:
        _sendgrid_key(public_key).verify(raw_signature, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return "signature does not match"
    return None


SENDGRID_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "event": {"type": "string", "examples": ["delivered"]},
                "email": {"type": "string"},
                "timestamp": {"type": "integer"},
                "delivery_id": {"type": "string", "description": "Our custom arg: the delivery's id."},
                "notification_id": {"type": "string", "description": "Our custom arg: the notification's id."},
                "reason": {"type": "string"},
                "type": {"type": "string"},
            },
            "required": ["event"],
        },
    }}},
}


@router.post(
    "/sendgrid",
    response_model=WebhookResult,
    summary="SendGrid Event Webhook",
    openapi_extra={"requestBody": SENDGRID_BODY},
    responses={403: {"description": "Missing or bad signature, or a stale timestamp"},
               503: {"description": "No verification key configured"}},
)
async def sendgrid_events(request: Request) -> dict[str, int]:
    """Apply SendGrid delivery events (signed) to the deliveries named by their delivery_id custom arg."""
    settings = get_settings()
    if not settings.sendgrid_webhook_public_key:
        log.error("SendGrid webhook refused: NOTIFIER_SENDGRID_WEBHOOK_PUBLIC_KEY is not set")
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "SendGrid webhook verification is not configured")
    body = await request.body()
    try:
        # Loaded on its own, so that nothing else a request can make go wrong is taken for a bad key.
        _sendgrid_key(settings.sendgrid_webhook_public_key)
    except ValueError as exc:
        log.error("SendGrid webhook refused: bad NOTIFIER_SENDGRID_WEBHOOK_PUBLIC_KEY: %s", exc)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "SendGrid webhook verification is misconfigured")
    refused = verify_sendgrid(settings.sendgrid_webhook_public_key, body, request.headers.get(SENDGRID_SIGNATURE),
                              request.headers.get(SENDGRID_TIMESTAMP), settings.webhook_max_age_s)
    if refused:
        log.warning("SendGrid webhook refused: %s", refused)
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"signature refused: {refused}")
    try:
        events = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "body is not JSON")
    except RecursionError:  # signed, but nested deeper than Python's parser goes: no SendGrid body is
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "body is nested too deep")
    if not isinstance(events, list):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "body must be a JSON array of events")
    report = await run_in_threadpool(webhook_effects.apply_sendgrid_events, events)
    return report.as_dict()


# ---- Twilio: base64(HMAC-SHA1(auth token, URL + each POST param name+value, sorted by name)).
# https://www.twilio.com/docs/usage/security#validating-requests


def twilio_signature(auth_token: str, url: str, params: list[tuple[str, str]]) -> str:
    """The X-Twilio-Signature Twilio sends for a form POST of `params` to `url`."""
    data = url + "".join(name + value for name, value in sorted(set(params)))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def _with_and_without_port(url: str) -> list[str]:
    """Twilio may sign the URL with or without the default port: accept either, like its own helpers do."""
    parts = urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    if default is None or not parts.hostname or parts.port not in (None, default):
        return [url]
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    userinfo = parts.netloc.rpartition("@")[0]
    userinfo = userinfo + "@" if userinfo else ""
    bare = urlunsplit(parts._replace(netloc=f"{userinfo}{host}"))
    ported = urlunsplit(parts._replace(netloc=f"{userinfo}{host}:{default}"))
    return [bare, ported]


def verify_twilio(auth_token: str, url: str, params: list[tuple[str, str]], signature: str | None) -> str | None:
    """Check an X-Twilio-Signature; return why it is refused, or None if genuine."""
    if not signature:
        return "missing X-Twilio-Signature header"
    for candidate in _with_and_without_port(url):
        if hmac.compare_digest(twilio_signature(auth_token, candidate, params).encode(), signature.encode()):
            return None
    return "signature does not match"


def twilio_url(request: Request, public_url: str) -> str:
    """The URL Twilio called, as it signed it: the configured public URL, else this request's own."""
    if not public_url:
        return str(request.url)
    query = request.url.query
    return public_url.rstrip("/") + TWILIO_PATH + (f"?{query}" if query else "")


TWILIO_BODY = {
    "required": True,
    "content": {"application/x-www-form-urlencoded": {"schema": {
        "type": "object",
        "properties": {
            "MessageSid": {"type": "string"},
            "MessageStatus": {"type": "string", "examples": ["delivered"]},
            "ErrorCode": {"type": "string"},
        },
        "required": ["MessageSid", "MessageStatus"],
    }}},
}


@router.post(
    "/twilio",
    response_model=WebhookResult,
    summary="Twilio message status callback",
    openapi_extra={"requestBody": TWILIO_BODY},
    responses={403: {"description": "Missing or bad X-Twilio-Signature"},
               503: {"description": "No auth token configured"}},
)
async def twilio_status(request: Request) -> dict[str, Any]:
    """Apply a Twilio status callback (signed) to the SMS delivery with that MessageSid."""
    settings = get_settings()
    if not settings.twilio_auth_token:
        log.error("Twilio webhook refused: NOTIFIER_TWILIO_AUTH_TOKEN is not set")
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "Twilio webhook verification is not configured")
    body = await request.body()
    try:
        params = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "signature refused: body is not UTF-8 form data")
    refused = verify_twilio(settings.twilio_auth_token, twilio_url(request, settings.api_public_url), params,
                            request.headers.get(TWILIO_SIGNATURE))
    if refused:
        log.warning("Twilio webhook refused: %s", refused)
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"signature refused: {refused}")
    fields = dict(params)
    sid, message_status = fields.get("MessageSid", ""), fields.get("MessageStatus", "")
    if not sid or not message_status or len(sid) > 128 or not sid.isprintable():
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "MessageSid and MessageStatus are required")
    report = await run_in_threadpool(
        webhook_effects.apply_twilio_status, sid, message_status, fields.get("ErrorCode") or None
    )
    return report.as_dict()
