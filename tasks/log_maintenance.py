"""The log's lifecycle on beat: partitions made ahead, expired ones dropped, expired dedup keys purged."""
from __future__ import annotations

import logging

from celery.signals import beat_init

from notifier.settings import get_settings
from notifier.store import partitions
from notifier.store.db import get_engine, on_shard, shards
from notifier.store.delivery_log import utcnow
from tasks.app import app
from tasks.base import NotifierTask

log = logging.getLogger(__name__)


@app.task(base=NotifierTask, name="notifier.log_maintenance")
def log_maintenance() -> dict[str, object]:
    """Make notification_log's daily partitions ahead, drop those past retention, purge old dedup keys,
    on every shard."""
    settings = get_settings()
    made, dropped, purged = [], [], 0
    for shard in shards():
        with on_shard(shard):
            done = partitions.maintain(get_engine(), utcnow(), retention_days=settings.log_retention_days,
                                       ahead_days=settings.log_partitions_ahead,
                                       dedup_window_days=settings.dedup_window_days)
        if done.made or done.dropped or done.keys_purged:
            log.info("log maintenance, shard %d: made %s, dropped %s, purged %d dedup keys",
                     shard, done.made, done.dropped, done.keys_purged)
        made += done.made
        dropped += done.dropped
        purged += done.keys_purged
    return {"made": made, "dropped": dropped, "keys_purged": purged}


@beat_init.connect
def _maintain_when_beat_starts(**_) -> None:
    # An interval entry first runs one interval after beat starts: a beat stopped for days would
    # otherwise come back to a log with no partition for today, refusing every insert for an hour.
    log_maintenance.apply_async(queue="scheduler")
