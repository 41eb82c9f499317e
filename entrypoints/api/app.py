"""The HTTP API: the same operations as the Python API, for producers that are not Python.

Handlers only translate HTTP to calls into notifier/ (intake, accounts, providers' reports)
and back. Every handler that touches the database or the
broker is a plain `def`, so FastAPI runs it in its thread pool, off the event loop.
"""
from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import datetime, time
from functools import lru_cache
from typing import Annotated, Any, Literal

import redis
from fastapi import Body, Depends, FastAPI, HTTPException, Path, Response, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as BrokerError
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from notifier.pipeline import routing
from notifier.accounts import devices
from notifier.intake import validation
from entrypoints.api import admin, auth, callbacks, docs, webhooks
from entrypoints.api.docs import AUTH, errors, example
from notifier.accounts.api_keys import KeyInfo
from notifier.store.db import database_urls, get_engine, shards, transaction
from notifier.intake.events import MAX_EVENT_BYTES, NotificationEvent
from notifier.accounts.preferences import get_preferences, shown_to, update_preferences
from notifier.store.redis_conn import broker_redis, connect, redis_url
from notifier.accounts.status import cancel_notification, notification_status

log = logging.getLogger(__name__)

WEBHOOK_MAX_BYTES = 5 * 1024 * 1024  # SendGrid posts events in batches
OTHER_MAX_BYTES = 64 * 1024
HEALTH_TIMEOUT_S = 2.0


# Path parameters: the same rules as everywhere (notifier/intake/validation.py). A token's platform is in
# the body, so the path holds it to what any platform's token can be; register_device checks the rest.
UserId = Annotated[str, Path(min_length=1, max_length=128), AfterValidator(validation.single_line)]
TemplateName = Annotated[str, Path(min_length=1, max_length=64), AfterValidator(validation.single_line)]
NotificationId = Annotated[str, Path(min_length=1, max_length=128), AfterValidator(validation.single_line)]
TokenPath = Annotated[str, Path(min_length=1, max_length=validation.MAX_FCM_TOKEN_CHARS),
                      AfterValidator(validation.any_token)]


class NotificationRequest(NotificationEvent):
    """A notification event (the same fields as `send_notification`)."""

    model_config = ConfigDict(title="NotificationEvent")


class NotificationAccepted(BaseModel):
    notification_id: str


class Delivery(BaseModel):
    """One delivery of a notification: a channel and target, where it stands and why."""

    delivery_id: int
    shard: int = Field(0, description="The database shard holding it (delivery ids are per shard); 0 unsharded.")
    notification_id: str
    user_id: str
    channel: str
    provider: str | None
    target: str | None = Field(description="Redacted: enough to tell targets apart, never the whole of one.")
    status: str = Field(description="queued, scheduled, sending; terminal: sent, delivered, failed, suppressed, "
                        "rate_limited, duplicate, expired")
    reason: str | None
    attempts: int
    last_error: str | None
    provider_message_id: str | None
    created_at: datetime | None
    scheduled_at: datetime | None
    sent_at: datetime | None
    delivered_at: datetime | None
    failed_at: datetime | None
    task_id: str | None = Field(None, description="The Celery task that last handled the delivery.")
    task_url: str | None = Field(None, description="That task's page in Flower (when NOTIFIER_FLOWER_URL is set).")
    expires_at: datetime | None = Field(None, description="Not handed to the provider after this: ends expired.")
    app: str | None = Field(None, description="The app whose credentials send it; null: the default app.")
    replays: int = Field(0, description="Times an operator replayed it after it failed (`notifier replay`).")
    replayed_at: datetime | None = None
    replayed_by: str | None = None
    replay_reason: str | None = None
    digest_members: list[str] | None = Field(
        None, description="A digest's deliveries: the notification ids it summarises (docs/guarantees.md, Digests).")


class NotificationStatus(BaseModel):
    notification_id: str
    deliveries: list[Delivery]


class Cancelled(BaseModel):
    notification_id: str
    cancelled: int = Field(description="Deliveries that were not sent yet and now never will be.")


class DeviceRegistration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    platform: validation.PlatformName = Field(
        description="ios (APNs) or android (FCM); a browser (web) registers with POST "
        "/v1/users/{user_id}/web-push-subscriptions")
    app: validation.AppId | None = Field(None, description="An app of NOTIFIER_APPS_FILE; null: the default app")

    @field_validator("platform")
    @classmethod
    def _not_web(cls, v: str) -> str:
        # A browser's token is its endpoint, a URL: it cannot be a path segment, and it needs its keys.
        if v == "web":
            raise validation.invalid("a browser registers its subscription with POST "
                                     "/v1/users/{user_id}/web-push-subscriptions")
        return v


class WebPushEndpoint(BaseModel):
    """The subscription to forget, named by its endpoint."""

    model_config = ConfigDict(extra="forbid")

    endpoint: Annotated[str, Field(min_length=1), AfterValidator(validation.web_push_endpoint)]


PreferencesUpdate = validation.PreferencesUpdate


class Preferences(BaseModel):
    user_id: str
    push_enabled: bool
    email_enabled: bool
    sms_enabled: bool
    email: str | None
    phone: str | None
    quiet_start: time | None
    quiet_end: time | None
    timezone: str | None
    opted_out_categories: list[str]
    locale: str | None = Field(None, description="BCP 47; picks templates' variants (nb-NO, then nb, then default).")
    email_undeliverable_at: datetime | None = Field(description="When the provider reported the address dead.")
    email_undeliverable_reason: str | None


class TemplatePreviewRequest(BaseModel):
    """What to render a template with: the params an event would carry, and whose locale."""

    model_config = ConfigDict(extra="forbid")

    params: validation.JsonData = Field(default_factory=dict)
    channel: Literal["push", "email", "sms"] | None = Field(None, description="One channel; default: all it has.")
    locale: validation.LocaleTag | None = None
    timezone: validation.TimezoneName | None = None


class TemplateRendering(BaseModel):
    channel: str
    locale_used: str
    fallback_chain: list[str] = Field(description="The locales tried, in order, ending with the one used.")
    fields: dict[str, str]
    problem: str | None = Field(description="The channel limit the result breaks (push judged as APNs), or null.")
    sms: dict[str, Any] | None = Field(None, description="encoding (GSM-7 or UCS-2), units, segments")


class TemplatePreview(BaseModel):
    template: str
    renderings: list[TemplateRendering]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str]


def _invalid(_request: Any, exc: RequestValidationError) -> Response:
    """FastAPI's 422 body, encoded so that echoed input with lone surrogates still renders."""
    content = json.dumps({"detail": jsonable_encoder(exc.errors())}, ensure_ascii=True)
    return Response(content, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, media_type="application/json")


def _invalid_call(_request: Any, exc: ValidationError) -> Response:
    """A 422 for what notifier/ refused after the request's own checks (e.g. a token not of its platform)."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    content = json.dumps({"detail": jsonable_encoder(errors)}, ensure_ascii=True)
    return Response(content, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, media_type="application/json")


def _unavailable(what: str):
    def handler(_request: Any, exc: Exception) -> JSONResponse:
        log.warning("%s unavailable: %s", what, exc)
        return JSONResponse({"detail": f"{what} unavailable, try again"}, status_code=503,
                            headers={"Retry-After": "5"})

    return handler


_health_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="healthz")


@lru_cache(maxsize=1)
def _health_redis() -> redis.Redis:
    return connect(redis_url(), HEALTH_TIMEOUT_S)


@lru_cache(maxsize=1)
def _health_broker() -> redis.Redis | None:
    return broker_redis()


def _check_database() -> None:
    for url in database_urls():  # every shard: a user on a shard that is down cannot be served
        with get_engine(url).connect() as conn:
            conn.execute(text("SELECT 1"))


def _check_broker() -> None:
    client = _health_broker()
    if client is not None:
        client.ping()


def create_app() -> FastAPI:
    """Build the API application."""
    app = docs.create(
        max_body_size=OTHER_MAX_BYTES,
        title="notifier",
        description="Send notifications, see where each delivery stands, manage devices and preferences, "
        "and receive the providers' delivery reports. Authenticate with `Authorization: Bearer <key>` "
        "(`notifier keys create`); webhooks authenticate by the provider's signature.",
    )
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(ValidationError, _invalid_call)
    app.add_exception_handler(sa_exc.OperationalError, _unavailable("database"))
    app.add_exception_handler(sa_exc.InterfaceError, _unavailable("database"))
    app.add_exception_handler(redis.ConnectionError, _unavailable("redis"))
    app.add_exception_handler(redis.TimeoutError, _unavailable("redis"))
    app.add_exception_handler(BrokerError, _unavailable("broker"))
    app.include_router(webhooks.router, max_body_size=WEBHOOK_MAX_BYTES)
    app.include_router(admin.router)
    app.include_router(callbacks.router)

    @app.post("/v1/notifications", status_code=status.HTTP_202_ACCEPTED, response_model=NotificationAccepted,
              tags=["notifications"], max_body_size=MAX_EVENT_BYTES,
              responses=errors(*AUTH, 409, 413, 422, max_bytes=MAX_EVENT_BYTES))
    def send(event: Annotated[NotificationRequest, Body(openapi_examples=docs.SEND_EXAMPLES)],
             key: KeyInfo = Depends(auth.send)) -> dict[str, str]:
        """Queue one notification event; repeating a notification_id delivers it once."""
        from tasks.pipeline import accept

        # Every shard: the same id under another user would live on that user's shard.
        for shard in shards():
            with transaction(shard=shard) as session:
                if not routing.conflicts(session, event):
                    continue
            raise HTTPException(status.HTTP_409_CONFLICT, "notification_id: already accepted for a different "
                                "event (another user or content); use a new id")
        # Its deliveries' callbacks go to this key's endpoint (PUT /v1/callbacks), if it has one.
        accept([event], producer=f"key:{key.id}")
        return {"notification_id": event.notification_id}

    @app.post("/v1/templates/{template}/render", response_model=TemplatePreview, tags=["notifications"],
              dependencies=[Depends(auth.send)],
              responses={422: {"description": "Unknown template, no variant for the channel, params missing"}})
    def render_template(template: TemplateName, request: TemplatePreviewRequest) -> dict[str, Any]:
        """Render a template as a delivery would be rendered, without sending anything."""
        from notifier.content.templates import TemplateError
        from notifier.pipeline.rendering import preview

        try:
            renderings = preview(template, [request.channel] if request.channel else None, request.params,
                                 request.locale, request.timezone)
        except TemplateError as exc:
            # The shape of every other 422 here (FastAPI's), naming the part of the request at fault.
            where = "params" if str(exc).startswith("params missing") else "template"
            loc = ["body", "params"] if where == "params" else ["path", "template"]
            return JSONResponse({"detail": [{"type": "invalid_value", "loc": loc, "msg": str(exc)}]},
                                status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)
        return {"template": template, "renderings": renderings}

    @app.get("/v1/notifications/{notification_id}", response_model=NotificationStatus, tags=["notifications"],
             dependencies=[Depends(auth.read_status)],
             responses={200: example(docs.STATUS_EXAMPLE), **errors(*AUTH, 422),
                        404: {"model": docs.Problem, "description": "No delivery (yet)"}})
    def get(notification_id: NotificationId) -> dict[str, Any]:
        """Every delivery of a notification: channel, redacted target, status, reason, attempts, times."""
        deliveries = notification_status(notification_id)
        if not deliveries:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no delivery of this notification (yet)")
        return {"notification_id": notification_id, "deliveries": deliveries}

    @app.delete("/v1/notifications/{notification_id}", response_model=Cancelled, tags=["notifications"],
                dependencies=[Depends(auth.cancel)],
                responses={**errors(*AUTH, 422), 404: {"model": docs.Problem, "description": "No delivery (yet)"}})
    def cancel(notification_id: NotificationId) -> dict[str, Any]:
        """Cancel the deliveries of a notification that are not sent yet (queued or scheduled)."""
        count = cancel_notification(notification_id, only_known=True)
        if count is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no delivery of this notification (yet)")
        return {"notification_id": notification_id, "cancelled": count}

    @app.put("/v1/users/{user_id}/devices/{token}", status_code=status.HTTP_204_NO_CONTENT, tags=["users"],
             dependencies=[Depends(auth.users)], responses=errors(*AUTH, 413, 422, max_bytes=OTHER_MAX_BYTES))
    def register_device(user_id: UserId, token: TokenPath,
                        device: Annotated[DeviceRegistration, Body(openapi_examples=docs.DEVICE_EXAMPLES)]) -> Response:
        """Register a device's push token for a user (moving it from another user if need be)."""
        devices.register_device(user_id, token, device.platform, device.app)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @app.delete("/v1/users/{user_id}/devices/{token}", status_code=status.HTTP_204_NO_CONTENT, tags=["users"],
                dependencies=[Depends(auth.users)],
                responses={**errors(*AUTH, 422), 404: {"model": docs.Problem, "description": "No such device"}})
    def unregister_device(user_id: UserId, token: TokenPath) -> Response:
        """Forget a user's device token."""
        if not devices.unregister_device(user_id, token):
            raise HTTPException(status.HTTP_404_NOT_FOUND, "this user has no such device token")
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @app.post("/v1/users/{user_id}/web-push-subscriptions", status_code=status.HTTP_204_NO_CONTENT,
              tags=["users"], dependencies=[Depends(auth.users)])
    def register_web_push(user_id: UserId, subscription: validation.WebPushSubscription) -> Response:
        """Register a browser's Push API subscription (PushSubscription.toJSON(), and optionally its app)."""
        devices.register_web_push(user_id, subscription.model_dump(by_alias=True))
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @app.delete("/v1/users/{user_id}/web-push-subscriptions", status_code=status.HTTP_204_NO_CONTENT,
                tags=["users"], dependencies=[Depends(auth.users)],
                responses={404: {"description": "No such subscription"}})
    def unregister_web_push(user_id: UserId, subscription: WebPushEndpoint) -> Response:
        """Forget a browser's subscription, named by its endpoint in the body (a URL is no path segment)."""
        if not devices.unregister_device(user_id, subscription.endpoint):
            raise HTTPException(status.HTTP_404_NOT_FOUND, "this user has no such subscription")
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @app.get("/v1/users/{user_id}/preferences", response_model=Preferences, tags=["users"],
             responses={200: example(docs.PREFERENCES_EXAMPLE), **errors(*AUTH, 422)})
    def read_preferences(user_id: UserId, key: KeyInfo = Depends(auth.read_users)) -> dict[str, Any]:
        """A user's preferences (the defaults for a user never seen); email and phone need the contacts scope."""
        return shown_to(key, get_preferences(user_id))

    @app.put("/v1/users/{user_id}/preferences", response_model=Preferences, tags=["users"],
             responses={200: example(docs.PREFERENCES_EXAMPLE), **errors(*AUTH, 413, 422, max_bytes=OTHER_MAX_BYTES)})
    def write_preferences(user_id: UserId,
                          changes: Annotated[PreferencesUpdate, Body(openapi_examples=docs.PREFERENCES_EXAMPLES)],
                          key: KeyInfo = Depends(auth.users)) -> dict[str, Any]:
        """Change some of a user's preferences; returns them all (email and phone redacted without contacts)."""
        return shown_to(key, update_preferences(user_id, **changes.model_dump(exclude_unset=True)))

    @app.get("/healthz", response_model=Health, tags=["operations"],
             responses={503: {"model": Health, "description": "A dependency does not answer"}})
    def healthz() -> JSONResponse:
        """Whether the database, Redis and the broker answer within two seconds."""
        checks = {"database": _check_database, "redis": lambda: _health_redis().ping(), "broker": _check_broker}
        futures = {name: _health_pool.submit(fn) for name, fn in checks.items()}
        wait(futures.values(), timeout=HEALTH_TIMEOUT_S)
        results = {}
        for name, future in futures.items():
            if not future.done():
                results[name] = "timeout"
            elif future.exception() is not None:
                results[name] = f"error: {type(future.exception()).__name__}"
            else:
                results[name] = "ok"
        healthy = all(v == "ok" for v in results.values())
        return JSONResponse({"status": "ok" if healthy else "unavailable", "checks": results},
                            status_code=200 if healthy else 503)

    @app.get("/metrics", tags=["operations"], dependencies=[Depends(auth.admin)], response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition format"},
                        **errors(*AUTH)})
    def prometheus_metrics() -> Response:
        """Deliveries, retries, provider call times, queue depths, scheduled backlog, bridge lag (admin key)."""
        from notifier.ops.exporter import CONTENT_TYPE_LATEST, render

        return Response(render(), media_type=CONTENT_TYPE_LATEST)

    return app


app = create_app()
