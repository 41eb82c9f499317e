"""The data Redis as one server or a Redis Cluster: hash tags, and batches split by slot.

In a cluster a Lua script may only touch keys of one hash slot, and MGET likewise. So the keys
a script reads together carry the same hash tag (a delivery's lease and attempt flag
`dedup:{notification}:channel:target` and `dedup-attempt:{notification}:…`; a user's rate counters
`rl:{user}:...`), and a batch is grouped by slot: one script call per group, all
sent in one pipelined round trip per node (EVAL, not EVALSHA: a replica promoted after a
failover has no script cache, and EVAL needs none).

On a single server nothing changes: no tags (a key renamed under a rolling upgrade would let an
old worker and a new one both claim the same delivery) and one script call for the whole batch.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot


def is_cluster(r: Any) -> bool:
    """Whether `r` is a Redis Cluster client."""
    return isinstance(r, RedisCluster)


def tagged(r: Any, prefix: str, tag: str, rest: str = "") -> str:
    """`prefix + tag + rest`, with `tag` as the hash tag when `r` is a cluster (keys sharing it share a slot)."""
    return f"{prefix}{{{tag}}}{rest}" if is_cluster(r) else f"{prefix}{tag}{rest}"


def slot_groups(keys: Sequence[str]) -> dict[int, list[int]]:
    """Positions of `keys` grouped by their cluster hash slot, in order within each group."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        groups[key_slot(key.encode())].append(i)
    return groups


@lru_cache(maxsize=32)
def _script(r: redis.Redis, source: str):
    return r.register_script(source)


def run_script(r: Any, source: str, keys: Sequence[Sequence[str]], args: Sequence[Any] = (),
               per_item_args: Sequence[Any] | None = None) -> list:
    """Run a batch script over items, each with the same number of keys (all in one slot).

    The script sees KEYS = every item's first key, then every item's second key, and so on;
    ARGV = `args`, then one of `per_item_args` per item. It must return one value per item.
    Returns the values in the items' order. On a cluster, one call per slot group.
    """
    if not keys:
        return []
    width = len(keys[0])
    if not is_cluster(r):
        flat = [item[k] for k in range(width) for item in keys]
        return _script(r, source)(keys=flat, args=[*args, *(per_item_args or ())])
    groups = slot_groups([item[0] for item in keys])
    pipe = r.pipeline(transaction=False)
    for slot, members in groups.items():
        flat = [keys[i][k] for k in range(width) for i in members]
        extra = [per_item_args[i] for i in members] if per_item_args is not None else []
        # The node named: without it redis-py asks a server (COMMAND GETKEYS) which keys each EVAL
        # has, a round trip per call (27x the client CPU of the single-server claim, measured).
        pipe.execute_command("EVAL", source, len(flat), *flat, *args, *extra,
                             target_nodes=r.nodes_manager.get_node_from_slot(slot))
    out: list = [None] * len(keys)
    for members, values in zip(groups.values(), pipe.execute()):
        for i, value in zip(members, values):
            out[i] = value
    return out


def mget(r: Any, keys: Sequence[str]) -> list:
    """MGET over any keys: split by slot on a cluster (each slot's part atomic, not the whole)."""
    if not keys:
        return []
    return r.mget_nonatomic(list(keys)) if is_cluster(r) else r.mget(list(keys))
