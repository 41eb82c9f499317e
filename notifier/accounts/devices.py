"""The Python API for producers and the HTTP API: devices, preferences, status, cancel."""
from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select

from notifier.store import delivery_log
from notifier.intake import validation
from notifier.store.db import session_factory
from notifier.store.models import DeviceToken, NotificationLog, Status, UserPreferences
from notifier.store.recipients import invalidate
from notifier.store.redis_conn import get_redis
from notifier.pipeline.routing import CANCEL_PREFIX
from notifier.pipeline.sending import cancel_stranded
from notifier.settings import get_settings

# The rules live in notifier.intake.validation, shared with the HTTP API and the CLI.
PLATFORMS = validation.PLATFORMS
PREFERENCE_FIELDS = validation.PREFERENCE_FIELDS


def register_device(user_id: str, token: str, platform: str, app: str | None = None) -> None:
    """Register (or move to this user) a device token; re-registering renews it.

    Raises pydantic.ValidationError naming the field for a token that is not its platform's shape.
    """
    device = validation.Device(user_id=user_id, token=token, platform=platform, app=app)
    user_id, token, platform, app = device.user_id, device.token, device.platform, device.app
    affected = {user_id}
    with session_factory()() as session, session.begin():
        existing = session.scalar(select(DeviceToken).where(DeviceToken.token == token))
        if existing is None:
            session.add(DeviceToken(user_id=user_id, token=token, platform=platform, app=app,
                                    created_at=delivery_log.utcnow()))
        else:
            affected.add(existing.user_id)
            existing.user_id, existing.platform, existing.app = user_id, platform, app
            existing.created_at = delivery_log.utcnow()
    invalidate(get_redis(), affected)


def unregister_device(user_id: str, token: str) -> bool:
    """Forget a user's device token; True if there was one."""
    with session_factory()() as session, session.begin():
        result = session.execute(
            delete(DeviceToken).where(DeviceToken.user_id == user_id, DeviceToken.token == token)
        )
    invalidate(get_redis(), [user_id])
    return result.rowcount > 0


def set_preferences(user_id: str, **changes: Any) -> dict[str, Any]:
    """Change some of a user's preferences; returns them all.

    Raises pydantic.ValidationError naming the field for an unknown preference or a bad value.
    """
    valid = validation.PreferencesChange.model_validate({**changes, "user_id": user_id})
    changes = valid.model_dump(exclude_unset=True)
    user_id = changes.pop("user_id")
    with session_factory()() as session, session.begin():
        prefs = session.get(UserPreferences, user_id)
        if prefs is None:
            prefs = UserPreferences(user_id=user_id, push_enabled=True, email_enabled=True, sms_enabled=True,
                                    opted_out_categories=[])
            session.add(prefs)
        if "email" in changes and changes["email"] != prefs.email:
            # A new address is not the one that bounced.
            prefs.email_undeliverable_at = prefs.email_undeliverable_reason = None
        for name, value in changes.items():
            setattr(prefs, name, list(value) if name == "opted_out_categories" else value)
        prefs.updated_at = delivery_log.utcnow()
        current = {name: getattr(prefs, name) for name in sorted(PREFERENCE_FIELDS)}
    invalidate(get_redis(), [user_id])
    return current


def get_status(notification_id: str) -> list[dict[str, Any]]:
    """Every delivery of a notification: channel, status, reason, attempts, timestamps."""
    with session_factory()() as session:
        rows = session.scalars(
            select(NotificationLog).where(NotificationLog.notification_id == notification_id).order_by(NotificationLog.id)
        )
        return [
            {
                "delivery_id": r.id, "notification_id": r.notification_id, "user_id": r.user_id, "channel": r.channel, "provider": r.provider, "status": r.status,
                "reason": r.reason, "attempts": r.attempts, "last_error": r.last_error,
                "provider_message_id": r.provider_message_id, "created_at": r.created_at,
                "scheduled_at": r.scheduled_at, "sent_at": r.sent_at, "delivered_at": r.delivered_at,
                "failed_at": r.failed_at,
            }
            for r in rows
        ]


CANCEL_TTL_S = 7 * 86400


def cancel_notification(notification_id: str, *, only_known: bool = False) -> int | None:
    """Cancel every delivery of a notification that is not sent yet; returns how many.

    Queued and scheduled deliveries, and `sending` ones whose worker is gone (see cancel_stranded).

    A cancel that overtakes its event (still queued for routing) is remembered for a week,
    so the event is routed straight to `suppressed`. With `only_known` (the HTTP API, where
    anyone with the cancel scope could fill Redis with week-long marks for made-up ids) a
    notification with no row yet is neither cancelled nor remembered: None.
    """
    with session_factory()() as session, session.begin():
        known = session.scalar(
            select(NotificationLog.id).where(NotificationLog.notification_id == notification_id).limit(1)
        )
        if known is None and only_known:
            return None
        get_redis().set(CANCEL_PREFIX + notification_id, 1, ex=CANCEL_TTL_S)
        ids = session.scalars(
            select(NotificationLog.id).where(
                NotificationLog.notification_id == notification_id,
                NotificationLog.status.in_([Status.QUEUED.value, Status.SCHEDULED.value]),
            )
        ).all()
        moved = delivery_log.set_status(
            session, ids, Status.SUPPRESSED.value, only_from=[Status.QUEUED.value, Status.SCHEDULED.value],
            reason="cancelled by producer",
        )
        stranded = cancel_stranded(session, get_redis(), notification_id, get_settings().lease_ttl_s)
        return len(moved) + len(stranded)
