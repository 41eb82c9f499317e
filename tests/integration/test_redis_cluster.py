"""The data Redis as a real Redis Cluster (3 masters + 3 replicas from scripts/services.sh).

Runs with `make test-redis-cluster` (NOTIFIER_TEST_REDIS_CLUSTER=1), which also runs
tests/integration/test_pipeline.py against the cluster; skipped otherwise.
"""
from __future__ import annotations

import os

import pytest
from redis.cluster import RedisCluster
from redis.crc import key_slot

from notifier.pipeline import dedup
from notifier.pipeline.rate_limits import DAY, Limit, Request, check
from notifier.store.redis_conn import get_redis
from notifier.store.redis_slots import mget

pytestmark = pytest.mark.skipif(os.environ.get("NOTIFIER_TEST_REDIS_CLUSTER") != "1",
                                reason="needs the Redis Cluster: make test-redis-cluster")


@pytest.fixture
def r(clean_redis) -> RedisCluster:
    client = get_redis()
    assert isinstance(client, RedisCluster)
    return client


def test_a_batch_of_leases_spread_over_every_master_is_claimed_renewed_and_released(r, unique):
    # Given 300 delivery keys, which land on many slots of all three masters
    keys = [f"{unique('n')}:push:{i:04x}" for i in range(300)]
    masters = {r.get_node_from_key(dedup.lease_key(r, k)).name for k in keys}
    assert len(masters) == 3
    # When one claim takes them all, another claim finds them held
    assert dedup.claim(r, keys, "claim-a", 30) == [dedup.CLAIMED] * 300
    assert dedup.claim(r, keys, "claim-b", 30) == [dedup.HELD] * 300
    # Then renewing flags each attempt; releasing gives them back, and a new claim takes them
    assert dedup.renew(r, keys, "claim-a", 30, 60) == [dedup.CLAIMED] * 300
    dedup.release(r, keys[:100], "claim-a")
    assert dedup.claim(r, keys[:100], "claim-c", 30) == [dedup.CLAIMED] * 100
    # And an attempt whose answer was never read is seen by the next claimant (its flag shares the slot)
    r.delete(*[dedup.lease_key(r, k) for k in keys[100:110]])  # the dead claimant's leases expired
    assert dedup.claim(r, keys[100:110], "claim-d", 30) == [dedup.RECLAIMED] * 10


def test_sent_marks_written_across_slots_are_read_back_across_slots(r, unique):
    keys = [f"{unique('n')}:email:{i:04x}" for i in range(200)]
    with dedup.SentMarks(r, 60) as marks:
        for k in keys[::2]:
            marks.add(k)
    assert marks.failed is None
    assert dedup.marked_sent(r, keys) == [i % 2 == 0 for i in range(200)]
    assert dedup.claim(r, keys[:2], "claim-x", 30) == [dedup.ALREADY_SENT, dedup.CLAIMED]


def test_rate_counters_of_many_users_count_in_one_call_per_slot(r, unique):
    limits = (Limit("sms", "*", 2, DAY),)
    users = [unique("user") for _ in range(60)]
    requests = [Request(u, "sms", "news", "normal") for u in users for _ in range(3)]  # 3 each, limit 2
    allowed = check(r, limits, requests, 5 * DAY)
    assert allowed == [True, True, False] * 60
    assert len({key_slot(f"{{{u}}}".encode()) for u in users}) > 30


def test_mget_reads_keys_of_every_slot(r, unique):
    keys = [unique("recipient:v4:") for _ in range(100)]
    for i, k in enumerate(keys[::3]):
        r.set(k, str(i))
    assert [v is not None for v in mget(r, keys)] == [i % 3 == 0 for i in range(100)]
