"""The callback drain: POSTs the outbox to producers, on its own queue, never in the delivery path."""
from __future__ import annotations

from notifier.callbacks.delivery import Drained, drain
from notifier.store.db import on_shard, shards
from notifier.settings import get_settings
from notifier.store.redis_conn import get_redis
from tasks.app import app
from tasks.base import NotifierTask


@app.task(base=NotifierTask, name="notifier.callbacks.drain")
def drain_callbacks() -> dict[str, int]:
    """POST due callback events (beat runs it every callback_drain_interval_s); return the counts."""
    done = Drained()
    for shard in shards():  # each shard's outbox holds the events of its users' deliveries
        with on_shard(shard):
            done.add(drain(get_redis(), get_settings()))
    return {"sent": done.sent, "failed": done.failed, "given_up": done.given_up}
