"""Provider webhooks: SendGrid's Event Webhook and Twilio's status callbacks.

They authenticate by the provider's signature, never by API keys. A missing or bad
signature, or a stale timestamp, is refused with 403 and changes nothing; a webhook
whose verification key is not configured answers 503 (the provider retries later).
"""
from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from notifier.providers.sendgrid.reports import apply_sendgrid_events
from notifier.providers.sendgrid.signature import verification_key, verify_sendgrid
from notifier.providers.twilio.reports import apply_twilio_status
from notifier.providers.twilio.signature import verify_twilio
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
        verification_key(settings.sendgrid_webhook_public_key)
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
    report = await run_in_threadpool(apply_sendgrid_events, events)
    return report.as_dict()


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
        apply_twilio_status, sid, message_status, fields.get("ErrorCode") or None
    )
    return report.as_dict()
