"""Hash tags and slot grouping for a Redis Cluster data Redis (no server needed)."""
from __future__ import annotations

import pytest
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from notifier.pipeline import dedup
from notifier.pipeline.rate_limits import DAY, Limit, Request, window_key
from notifier.store.redis_conn import cluster_nodes, is_cluster_url
from notifier.store.redis_slots import slot_groups, tagged

# A cluster client that never connected: only its type matters to the key functions.
CLUSTER = object.__new__(RedisCluster)
SINGLE = redis.Redis()  # connects lazily, never here


def slot(key: str) -> int:
    return key_slot(key.encode())


def test_a_single_server_keeps_its_key_names():
    assert tagged(SINGLE, "dedup:", "n1:push:ab") == "dedup:n1:push:ab"
    assert dedup.lease_key(SINGLE, "n1:push:ab") == "dedup:n1:push:ab"


def test_a_lease_and_its_attempt_flag_share_a_slot_on_a_cluster():
    assert dedup.lease_key(CLUSTER, "order-42:email:0f") == "dedup:{order-42}:email:0f"
    for key in ("n1:push:ab", "order:42:email:0f", "weird}{id:sms:1", "x"):
        lease = dedup.lease_key(CLUSTER, key)
        attempt = lease.replace(dedup.PREFIX, dedup.ATTEMPT_PREFIX, 1)
        assert slot(lease) == slot(attempt)


def test_one_notifications_deliveries_share_a_slot_and_notifications_spread():
    keys = [f"n-1:{channel}:{target}" for channel in ("push", "email", "sms") for target in ("a1", "b2")]
    assert len({slot(dedup.lease_key(CLUSTER, k)) for k in keys}) == 1
    assert len({slot(dedup.lease_key(CLUSTER, f"n-{i}:push:a1")) for i in range(200)}) > 150


def test_a_users_rate_counters_share_a_slot_and_users_spread():
    push, sms = Limit("push", "*", 50, DAY), Limit("sms", "*", 5, 7 * DAY)
    a1, _ = window_key(Request("u1", "push", "news", "normal"), push, 10 * DAY, CLUSTER)
    a2, _ = window_key(Request("u1", "sms", "news", "normal"), sms, 10 * DAY, CLUSTER)
    assert a1.startswith("rl:{u1}:push:")
    assert slot(a1) == slot(a2)
    slots = {slot(window_key(Request(f"user-{i}", "push", "n", "normal"), push, 0, CLUSTER)[0]) for i in range(200)}
    assert len(slots) > 150  # spread over the cluster, not piled on one slot


def test_slot_groups_keep_every_position_once_in_order():
    keys = [tagged(CLUSTER, "rl:", f"u{i % 7}", f":push:{i}") for i in range(50)]
    groups = slot_groups(keys)
    assert len(groups) == len({slot(k) for k in keys}) <= 7
    assert sorted(i for members in groups.values() for i in members) == list(range(50))
    for s, members in groups.items():
        assert members == sorted(members)
        assert all(slot(keys[i]) == s for i in members)


@pytest.mark.parametrize("url, nodes", [
    ("redis+cluster://127.0.0.1:17000,127.0.0.1:17001/", [("127.0.0.1", 17000), ("127.0.0.1", 17001)]),
    ("redis+cluster://redis-a:6379", [("redis-a", 6379)]),
    ("rediss+cluster://user:pw@[::1]:7000/0", [("::1", 7000)]),
])
def test_cluster_urls_name_their_startup_nodes(url, nodes):
    assert is_cluster_url(url)
    assert cluster_nodes(url) == nodes


@pytest.mark.parametrize("url, says", [
    ("redis+cluster://127.0.0.1/", "not host:port"),
    ("redis+cluster:///", "names no node"),
    ("redis+cluster://127.0.0.1:17000/3", "only database 0"),
])
def test_a_bad_cluster_url_says_what_is_wrong(url, says):
    with pytest.raises(ValueError, match=says):
        cluster_nodes(url)


def test_a_plain_url_is_no_cluster():
    assert not is_cluster_url("redis://127.0.0.1:16379/0")


def test_a_cluster_data_redis_needs_a_broker_of_its_own():
    from notifier.settings import Settings
    from notifier.store.redis_conn import broker_url

    cluster = "redis+cluster://127.0.0.1:17000/"
    with pytest.raises(ValueError, match="NOTIFIER_BROKER_URL must be set"):
        broker_url(Settings(redis_url=cluster, broker_url=""))
    assert broker_url(Settings(redis_url=cluster, broker_url="redis://127.0.0.1:16379/1")) == "redis://127.0.0.1:16379/1"
