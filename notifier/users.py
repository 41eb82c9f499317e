"""The Python API for producers and the HTTP API: devices, preferences, status, cancel."""
from __future__ import annotations

from datetime import time
from typing import Any

from sqlalchemy import delete, select

from notifier import delivery_log
from notifier.db import session_factory
from notifier.models import DeviceToken, NotificationLog, Status, UserPreferences
from notifier.recipients import invalidate
from notifier.redis_conn import get_redis
from notifier.routing import CANCEL_PREFIX

PLATFORMS = ("ios", "android", "web")
PREFERENCE_FIELDS = {
    "push_enabled", "email_enabled", "sms_enabled", "email", "phone",
    "quiet_start", "quiet_end", "timezone", "opted_out_categories",
}


def register_device(user_id: str, token: str, platform: str, app: str | None = None) -> None:
    """Register (or move to this user) a device token; re-registering renews it."""
    if platform not in PLATFORMS:
        raise ValueError(f"platform must be one of {', '.join(PLATFORMS)}, not {platform!r}")
    if not token or len(token) > 512:
        raise ValueError("token must be 1 to 512 characters")
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
    """Change some of a user's preferences; returns them all."""
    unknown = set(changes) - PREFERENCE_FIELDS
    if unknown:
        raise ValueError(f"unknown preference(s): {', '.join(sorted(unknown))}")
    for name in ("quiet_start", "quiet_end"):
        if isinstance(changes.get(name), str):
            changes[name] = time.fromisoformat(changes[name])
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
        return len(moved)
