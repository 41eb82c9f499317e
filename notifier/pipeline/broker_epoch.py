"""Notice a Redis broker that lost messages: restarted empty, or from an older snapshot.

Each sweep bumps a counter kept in the broker itself. A broker that kept its data answers with
more than this process saw last time; one that restarted empty or from an older snapshot answers
with the same or less, and then every stored delivery still `queued` or `sending` may have lost
its message: the sweeper re-drives them at once instead of waiting out `stuck_after_s`.

The last value seen is kept in the sweeping process, not in Redis: the data Redis is often the
same server as the broker and would go back in time with it. A sweeper that restarted too has
no memory, and the ordinary age-based sweep covers what this check would have caught.
"""
from __future__ import annotations

import logging

import redis

log = logging.getLogger(__name__)

EPOCH_KEY = "notifier:broker-epoch"
_last_seen: int | None = None


def went_back(broker: redis.Redis | None) -> bool:
    """True when the broker's counter is not ahead of the value this process saw last."""
    global _last_seen
    if broker is None:  # not a Redis broker (RabbitMQ keeps durable queues itself)
        return False
    try:
        value = int(broker.incr(EPOCH_KEY))
    except redis.RedisError as exc:
        log.warning("broker epoch: broker not answering (%s)", exc)
        return False
    lost = _last_seen is not None and value <= _last_seen
    if lost:
        log.warning("broker epoch: the broker went back from %d to %d (restarted empty or from an older "
                    "snapshot); re-driving every queued and sending delivery now", _last_seen, value)
    _last_seen = value
    return lost
