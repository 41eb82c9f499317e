"""The API's own documentation: Swagger UI and ReDoc served offline, error answers and examples.

`/docs` and `/redoc` load their scripts and styles from the `fastapi-offline` package, mounted at
STATIC_URL, not from a CDN: a machine without internet (or behind a strict proxy) still gets the
pages. Each operation documents the errors it can answer with (`errors(...)`), in the shape every
error has here: `{"detail": "..."}` (422: FastAPI's list of field errors; 413: the body limit's
plain text).
"""
from __future__ import annotations

from importlib import metadata
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel

STATIC_URL = "/static-offline-docs"  # fastapi-offline's default mount, said once here for the tests


class Problem(BaseModel):
    """An error: what was wrong, in one sentence."""

    detail: str


class FieldError(BaseModel):
    type: str
    loc: list[str | int]
    msg: str


class ValidationProblem(BaseModel):
    """Invalid input: one entry per field at fault."""

    detail: list[FieldError]


def _problem(description: str, example: str) -> dict[str, Any]:
    return {"model": Problem, "description": description,
            "content": {"application/json": {"example": {"detail": example}}}}


_VALIDATION_EXAMPLE = {"detail": [{"type": "missing", "loc": ["body", "title"], "msg": "Field required"}]}

ERRORS: dict[int, dict[str, Any]] = {
    401: _problem("No API key, or an unknown or revoked one (`Authorization: Bearer <key>`)",
                  "missing API key: send Authorization: Bearer <key>"),
    403: _problem("The key is valid but lacks the scope this operation needs",
                  "this key (status) may not do this: it needs send"),
    409: _problem("The notification_id was already accepted for a different event (another user or content)",
                  "notification_id: already accepted for a different event (another user or content); use a new id"),
    # Answered by the body-size limit before any handler runs: plain text, not JSON.
    413: {"description": "The request body is larger than this operation accepts",
          "content": {"text/plain": {"schema": {"type": "string"}, "example": "Content Too Large"}}},
    422: {"model": ValidationProblem,
          "description": "Invalid input: each error names the field (`loc`) and the problem (`msg`)",
           "content": {"application/json": {"example": _VALIDATION_EXAMPLE}}},
}


def errors(*codes: int, max_bytes: int | None = None) -> dict[int | str, dict[str, Any]]:
    """The documented error answers of an operation (ERRORS by code); `max_bytes`: its body limit, for 413."""
    out: dict[int | str, dict[str, Any]] = {code: ERRORS[code] for code in codes}
    if max_bytes is not None and 413 in out:
        out[413] = {**out[413], "description": f"The request body is over {max_bytes} bytes"}
    return out


AUTH = (401, 403)  # every operation behind an API key


def version() -> str:
    """The notifier package's version, as installed."""
    try:
        return metadata.version("notifier")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def create(**kwargs: Any) -> FastAPI:
    """A FastAPI app whose /docs and /redoc pages need nothing but this server."""
    # validatorUrl: Swagger UI would otherwise fetch a badge from validator.swagger.io.
    return FastAPIOffline(version=version(), static_url=STATIC_URL,
                          swagger_ui_parameters={"validatorUrl": None}, **kwargs)


# ---- Examples of the main operations (valid input: the API fuzz test sends them too).

SEND_EXAMPLES = {
    "order_shipped": {
        "summary": "An order shipped: push to the user's devices",
        "value": {"notification_id": "order-1042-shipped", "user_id": "67890", "type": "order_shipped",
                  "category": "transactional", "priority": "high", "channels": ["push"],
                  "title": "Your order has shipped", "body": "Order #1042 is on its way.",
                  "data": {"order_id": "1042", "collapse_id": "order-1042"}},
    },
    "security_code": {
        "summary": "A security code: critical, bypasses quiet hours, by SMS",
        "value": {"notification_id": "login-7f3a-code", "user_id": "67890", "type": "security_code",
                  "category": "security", "priority": "critical", "channels": ["sms"],
                  "title": "Your code", "body": "Your sign-in code is 481516."},
    },
    "weekly_digest": {
        "summary": "Marketing email, sent at a given time",
        "value": {"notification_id": "digest-2026-49-67890", "user_id": "67890", "type": "weekly_digest",
                  "category": "marketing", "priority": "low", "channels": ["email"],
                  "title": "This week's picks", "body": "Five things we think you'll like.",
                  "send_at": "2026-12-07T09:00:00Z"},
    },
}

STATUS_EXAMPLE = {
    "notification_id": "order-1042-shipped",
    "deliveries": [{
        "delivery_id": 17, "notification_id": "order-1042-shipped", "user_id": "67890", "channel": "email",
        "provider": "sendgrid", "target": "a…@example.com", "status": "scheduled",
        "reason": "retry 2 of 5 after: sendgrid 500", "attempts": 1, "last_error": "sendgrid 500",
        "provider_message_id": None, "created_at": "2026-12-01T09:10:54Z", "scheduled_at": "2026-12-01T09:10:58Z",
        "sent_at": None, "delivered_at": None, "failed_at": None,
        "task_id": "4bbfe627-dc0d-4055-a582-398eb6431375",
        "task_url": "https://ops.example.com/flower/task/4bbfe627-dc0d-4055-a582-398eb6431375",
    }],
}

DEVICE_EXAMPLES = {
    "ios": {"summary": "An iPhone (APNs token: 64 hex characters in the path)",
            "value": {"platform": "ios", "app": "com.example.shop"}},
    "android": {"summary": "An Android phone (FCM registration token in the path)", "value": {"platform": "android"}},
}

PREFERENCES_EXAMPLES = {
    "quiet_hours": {
        "summary": "Quiet hours at night in the user's timezone",
        "value": {"quiet_start": "22:00", "quiet_end": "07:00", "timezone": "Europe/Oslo"},
    },
    "contacts_and_opt_out": {
        "summary": "Set contacts, turn SMS off, opt out of marketing",
        "value": {"email": "ada@example.com", "phone": "+4712345678", "sms_enabled": False,
                  "opted_out_categories": ["marketing"]},
    },
}

PREFERENCES_EXAMPLE = {
    "user_id": "67890", "push_enabled": True, "email_enabled": True, "sms_enabled": False,
    "email": "a…@example.com", "phone": "…5678", "quiet_start": "22:00:00", "quiet_end": "07:00:00",
    "timezone": "Europe/Oslo", "opted_out_categories": ["marketing"], "email_undeliverable_at": None,
    "email_undeliverable_reason": None,
}


def example(value: Any) -> dict[str, Any]:
    """A 200 answer's documented example."""
    return {"content": {"application/json": {"example": value}}}
