"""Rate limits per user x channel x category per window, configured in one table.

Counters are fixed windows in Redis (INCR + EXPIRE), checked for a whole batch in one
round trip. A delivery over its limit is `rate_limited` and never sent.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

import redis

from notifier.intake.events import Priority
from notifier.store.redis_slots import run_script, tagged

DAY = 86_400
WEEK = 7 * DAY
# Categories that are never limited: a user must always hear about their account's security.
EXEMPT_CATEGORIES = frozenset({"security"})


@dataclass(frozen=True, slots=True)
class Limit:
    channel: str
    category: str  # "*" = any category
    max_count: int
    window_s: int


# The defaults; NOTIFIER_RATE_LIMITS (a JSON list of these four fields) replaces them.
DEFAULT_LIMITS: tuple[Limit, ...] = (
    Limit("push", "*", 50, DAY),
    Limit("email", "marketing", 10, WEEK),
    Limit("sms", "*", 5, WEEK),
)


def parse_limits(raw: str | None) -> tuple[Limit, ...]:
    """Read the limits table from its JSON form; empty means the defaults."""
    if not raw:
        return DEFAULT_LIMITS
    try:
        return tuple(Limit(**item) for item in json.loads(raw))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"NOTIFIER_RATE_LIMITS must be a JSON list of {{channel, category, max_count, window_s}}: {exc}")


def limit_for(limits: Sequence[Limit], channel: str, category: str) -> Limit | None:
    """The most specific limit for a channel and category (exact category beats '*')."""
    best = None
    for limit in limits:
        if limit.channel == channel and limit.category in (category, "*"):
            if best is None or limit.category != "*":
                best = limit
    return best


@dataclass(frozen=True, slots=True)
class Request:
    user_id: str
    channel: str
    category: str
    priority: str


# Per key: create the window's counter with its expiry if new, then count one more.
# (EXPIRE NX would need Redis 7.) One call for the whole batch.
_COUNT = """
local out = {}
for i, key in ipairs(KEYS) do
  redis.call('SET', key, 0, 'EX', ARGV[i], 'NX')
  out[i] = redis.call('INCR', key)
end
return out
"""


def applicable_limit(limits: Sequence[Limit], req: Request) -> Limit | None:
    """The limit a request counts against; None for security mail and critical events, which are never limited."""
    if req.category in EXEMPT_CATEGORIES or Priority.of(req.priority).bypasses_user_limits:
        return None
    return limit_for(limits, req.channel, req.category)


def window_key(req: Request, limit: Limit, now_s: float, r: redis.Redis | None = None) -> tuple[str, int]:
    """The counter of the fixed window `now_s` falls in, and its expiry (the window plus a minute).

    On a Redis Cluster the user id is the hash tag: a user's counters share a slot."""
    window = int(now_s // limit.window_s)
    return tagged(r, "rl:", req.user_id, f":{req.channel}:{limit.category}:{limit.window_s}:{window}"), \
        limit.window_s + 60


def check(r: redis.Redis, limits: Sequence[Limit], requests: Sequence[Request], now_s: float) -> list[bool]:
    """Count each request against its limit in one round trip; True where it is allowed."""
    plan: list[Limit | None] = []
    keys, ttls = [], []
    # A batch asks about a handful of (channel, category, priority) combinations, each delivery once:
    # the limit of each combination is looked up once.
    found: dict[tuple[str, str, str], Limit | None] = {}
    for req in requests:
        combination = (req.channel, req.category, req.priority)
        limit = found[combination] if combination in found else found.setdefault(
            combination, applicable_limit(limits, req))
        plan.append(limit)
        if limit is None:
            continue
        key, ttl = window_key(req, limit, now_s, r)
        keys.append(key)
        ttls.append(ttl)
    counts = iter(run_script(r, _COUNT, [(k,) for k in keys], per_item_args=ttls))
    return [True if limit is None else next(counts) <= limit.max_count for limit in plan]

