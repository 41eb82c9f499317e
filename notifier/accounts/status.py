"""A notification's deliveries: their status (targets redacted for the HTTP API), and cancelling them."""
from __future__ import annotations

from typing import Any

from sqlalchemy import select

from notifier.ops.redaction import redact_target, redact_text
from notifier.pipeline.routing import CANCEL_PREFIX, NO_TARGET
from notifier.pipeline.sending import cancel_stranded
from notifier.settings import get_settings
from notifier.store import delivery_log
from notifier.store.db import on_shard, shards, transaction
from notifier.store.models import NotificationLog, Status
from notifier.store.redis_conn import get_redis


redact = redact_target  # the name other modules know


def get_status(notification_id: str) -> list[dict[str, Any]]:
    """Every delivery of a notification: channel, status, reason, attempts, timestamps, the task that last
    handled it (and its page in Flower).

    Sharded, every shard is asked: the deliveries live on their user's shard, and the id alone
    does not name the user (one indexed look-up per shard)."""
    found: list[dict[str, Any]] = []
    for shard in shards():
        found += _status_on_shard(shard, notification_id)
    return found


def _status_on_shard(shard: int, notification_id: str) -> list[dict[str, Any]]:
    with transaction(shard=shard) as session:
        rows = session.scalars(
            select(NotificationLog).where(NotificationLog.notification_id == notification_id).order_by(NotificationLog.id)
        )
        return [
            {
                "delivery_id": r.id, "shard": shard, "notification_id": r.notification_id, "user_id": r.user_id, "channel": r.channel, "provider": r.provider, "status": r.status,
                "reason": r.reason, "attempts": r.attempts, "last_error": r.last_error,
                "provider_message_id": r.provider_message_id, "created_at": r.created_at,
                "scheduled_at": r.scheduled_at, "sent_at": r.sent_at, "delivered_at": r.delivered_at,
                "failed_at": r.failed_at, "task_id": r.task_id, "task_url": task_url(r.task_id),
                "expires_at": r.expires_at, "app": r.app,
                "replays": r.replays, "replayed_at": r.replayed_at, "replayed_by": r.replayed_by,
                "replay_reason": r.replay_reason,
                # A digest lists the notifications it summarises (each of theirs says "digested into <id>").
                "digest_members": ((r.payload or {}).get("digest") or {}).get("members"),
            }
            for r in rows
        ]


def task_url(task_id: str | None) -> str | None:
    """Flower's page of the task that last handled a delivery, when NOTIFIER_FLOWER_URL is set."""
    base = get_settings().flower_url.rstrip("/")
    return f"{base}/task/{task_id}" if base and task_id else None


CANCEL_TTL_S = 7 * 86400


def cancel_notification(notification_id: str, *, only_known: bool = False) -> int | None:
    """Cancel every delivery of a notification that is not sent yet; returns how many.

    Queued and scheduled deliveries, and `sending` ones whose worker is gone (see cancel_stranded).

    A cancel that overtakes its event (still queued for routing) is remembered for a week,
    so the event is routed straight to `suppressed`. With `only_known` (the HTTP API, where
    anyone with the cancel scope could fill Redis with week-long marks for made-up ids) a
    notification with no row yet is neither cancelled nor remembered: None.

    Sharded, every shard is asked (the id alone does not name the user, so not the shard).
    """
    known_on = []
    for shard in shards():
        with transaction(shard=shard) as session:
            if session.scalar(
                select(NotificationLog.id).where(NotificationLog.notification_id == notification_id).limit(1)
            ) is not None:
                known_on.append(shard)
    if not known_on and only_known:
        return None
    get_redis().set(CANCEL_PREFIX + notification_id, 1, ex=CANCEL_TTL_S)
    return sum(_cancel_on_shard(shard, notification_id) for shard in known_on)


def _cancel_on_shard(shard: int, notification_id: str) -> int:
    with on_shard(shard), transaction() as session:
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


def notification_status(notification_id: str) -> list[dict[str, Any]]:
    """Every delivery of a notification (get_status) with a redacted target."""
    deliveries = get_status(notification_id)
    if not deliveries:
        return []
    targets: dict[tuple[int, int], str] = {}
    for shard in {d["shard"] for d in deliveries}:
        with transaction(shard=shard) as session:
            targets.update(((shard, id_), target) for id_, target in session.execute(
                select(NotificationLog.id, NotificationLog.target).where(
                    NotificationLog.notification_id == notification_id
                )
            ).all())
    return [_redacted(d, targets.get((d["shard"], d["delivery_id"]))) for d in deliveries]


def _redacted(delivery: dict[str, Any], target: str | None) -> dict[str, Any]:
    """The delivery with its target redacted, also where a provider's message quotes it."""
    out = delivery | {"target": redact_target(delivery["channel"], target)}
    known = target if target and target != NO_TARGET else None
    for name in ("reason", "last_error"):
        if out.get(name):
            out[name] = redact_text(out[name], known)
    return out
