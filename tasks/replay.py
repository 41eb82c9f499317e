"""Replay failed deliveries: move them back to `queued` in one transaction, then queue their filter stage."""
from __future__ import annotations

import logging

from notifier.pipeline.replay import ReplayResult, Selection, replay
from notifier.queues import queue_for
from notifier.settings import get_settings
from notifier.store.db import transaction
from notifier.store.delivery_log import utcnow
from notifier.store.redis_conn import get_redis

log = logging.getLogger(__name__)


def replay_failed(selection: Selection, *, by: str) -> ReplayResult:
    """Replay the failed deliveries `selection` names (at most its bounded limit); ValueError on a bad limit."""
    from tasks.pipeline import filter_stage

    settings = get_settings()
    limit = selection.bounded_limit(settings.replay_limit_default, settings.replay_limit_max)
    with transaction() as session:
        result = replay(session, get_redis(), selection, by=by, limit=limit, now=utcnow())
    # After the commit, so a queued message never names a row still `failed`; a message lost here
    # leaves the rows `queued`, which the sweeper re-drives.
    for lane, ids in result.queued.items():
        filter_stage.apply_async((ids, lane), queue=queue_for("pipeline", lane))
    if not result.dry_run:
        log.info("replay by %s: %d of %d matching failed deliveries queued again (limit %d, %d refused as "
                 "already sent): %s", by, len(result.replayed), result.matched, limit, len(result.marked_sent),
                 selection.why)
    return result
