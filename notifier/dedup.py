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


def claim(r: redis.Redis, keys: Sequence[str], claim_id: str, ttl_s: int) -> list[bool]:
    """Try to take the lease of each key in one round trip; True where it was taken."""
    pipe = r.pipeline(transaction=False)
    for key in keys:
        pipe.set(PREFIX + key, claim_id, nx=True, ex=ttl_s)
    return [bool(x) for x in pipe.execute()]


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
