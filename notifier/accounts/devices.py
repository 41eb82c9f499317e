"""A user's devices: register and unregister push tokens."""
from __future__ import annotations

from sqlalchemy import delete, select

from notifier.store import delivery_log
from notifier.intake import validation
from notifier.store.db import shard_for, shards, transaction
from notifier.store.models import DeviceToken
from notifier.store.recipients import invalidate
from notifier.store.redis_conn import get_redis

# The rules live in notifier.intake.validation, shared with the HTTP API and the CLI.
PLATFORMS = validation.PLATFORMS


def register_device(user_id: str, token: str, platform: str, app: str | None = None,
                    keys: dict[str, str] | None = None) -> None:
    """Register (or move to this user) a device token; re-registering renews it.

    A browser (platform "web") registers its Push API subscription: the endpoint as `token` and
    `keys` = {"p256dh": …, "auth": …} (see register_web_push for the browser's JSON as it is).
    Raises pydantic.ValidationError naming the field for a token that is not its platform's shape.
    """
    device = validation.Device(user_id=user_id, token=token, platform=platform, app=app, keys=keys)
    user_id, token, platform, app = device.user_id, device.token, device.platform, device.app
    web_push_keys = device.keys.model_dump() if device.keys is not None else None
    affected = {user_id}
    home = shard_for(user_id)
    # A token moved from a user on another shard: that shard must forget it (one device, one owner).
    for shard in shards():
        if shard != home:
            with transaction(shard=shard) as session:
                moved = session.scalars(delete(DeviceToken).where(DeviceToken.token == token)
                                        .returning(DeviceToken.user_id)).all()
                affected.update(moved)
    with transaction(shard=home) as session:
        existing = session.scalar(select(DeviceToken).where(DeviceToken.token == token))
        if existing is None:
            session.add(DeviceToken(user_id=user_id, token=token, platform=platform, app=app,
                                    web_push_keys=web_push_keys, created_at=delivery_log.utcnow()))
        else:
            affected.add(existing.user_id)
            existing.user_id, existing.platform, existing.app = user_id, platform, app
            existing.web_push_keys = web_push_keys
            existing.created_at = delivery_log.utcnow()
    invalidate(get_redis(), affected)


def register_web_push(user_id: str, subscription: dict, app: str | None = None) -> str:
    """Register a browser's Push API subscription (PushSubscription.toJSON()) for a user; return its endpoint.

    Raises pydantic.ValidationError naming the field (endpoint, keys.p256dh, keys.auth)."""
    sub = validation.WebPushSubscription.model_validate(
        subscription if app is None else {**subscription, "app": app})
    register_device(user_id, sub.endpoint, "web", sub.app, keys=sub.keys.model_dump())
    return sub.endpoint


def unregister_device(user_id: str, token: str) -> bool:
    """Forget a user's device token; True if there was one."""
    with transaction(shard=shard_for(user_id)) as session:
        result = session.execute(
            delete(DeviceToken).where(DeviceToken.user_id == user_id, DeviceToken.token == token)
        )
    invalidate(get_redis(), [user_id])
    return result.rowcount > 0
