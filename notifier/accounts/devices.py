"""A user's devices: register and unregister push tokens."""
from __future__ import annotations

from sqlalchemy import delete, select

from notifier.store import delivery_log
from notifier.intake import validation
from notifier.store.db import transaction
from notifier.store.models import DeviceToken
from notifier.store.recipients import invalidate
from notifier.store.redis_conn import get_redis

# The rules live in notifier.intake.validation, shared with the HTTP API and the CLI.
PLATFORMS = validation.PLATFORMS


def register_device(user_id: str, token: str, platform: str, app: str | None = None) -> None:
    """Register (or move to this user) a device token; re-registering renews it.

    Raises pydantic.ValidationError naming the field for a token that is not its platform's shape.
    """
    device = validation.Device(user_id=user_id, token=token, platform=platform, app=app)
    user_id, token, platform, app = device.user_id, device.token, device.platform, device.app
    affected = {user_id}
    with transaction() as session:
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
    with transaction() as session:
        result = session.execute(
            delete(DeviceToken).where(DeviceToken.user_id == user_id, DeviceToken.token == token)
        )
    invalidate(get_redis(), [user_id])
    return result.rowcount > 0
