"""Replay failed deliveries: move them back to `queued` in one transaction, then queue their filter stage."""
from __future__ import annotations

import logging

from notifier.pipeline.replay import ReplayResult, Selection, replay
from notifier.queues import queue_for
from notifier.settings import get_settings
from notifier.store.db import on_shard, shards, transaction
from notifier.store.delivery_log import utcnow
from notifier.store.redis_conn import get_redis

log = logging.getLogger(__name__)


def replay_failed(selection: Selection, *, by: str) -> ReplayResult:
    """Replay the failed deliveries `selection` names (at most its bounded limit); ValueError on a bad limit."""
    from tasks.pipeline import filter_stage

    settings = get_settings()
    limit = selection.bounded_limit(settings.replay_limit_default, settings.replay_limit_max)
    result = None
    for shard in shards():  # shard by shard, within one limit over them all (delivery ids are per shard)
        left = limit - (len(result.replayed) if result else 0)
        if result is not None and left <= 0:
            break
        with on_shard(shard), transaction() as session:
            part = replay(session, get_redis(), selection, by=by, limit=left, now=utcnow())
        # After the commit, so a queued message never names a row still `failed`; a message lost here
        # leaves the rows `queued`, which the sweeper re-drives.
        for lane, ids in part.queued.items():
            filter_stage.apply_async((ids, lane), {"shard": shard} if shard else {}, queue=queue_for("pipeline", lane))
        if result is None:
            result = part
        else:
            result.matched += part.matched
            result.replayed += part.replayed
            result.marked_sent += part.marked_sent
            result.sample += part.sample
    result.limit = limit
    if not result.dry_run:
        log.info("replay by %s: %d of %d matching failed deliveries queued again (limit %d, %d refused as "
                 "already sent): %s", by, len(result.replayed), result.matched, limit, len(result.marked_sent),
                 selection.why)
    return result
