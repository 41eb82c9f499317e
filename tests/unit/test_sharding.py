"""Which shard holds a user: stable, spread evenly, one shard when unsharded (no services)."""
from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from notifier.settings import get_settings
from notifier.store import db


def test_shard_for_is_blake2b_of_the_user_id_modulo_the_count():
    # Pinned: a change of hash would move every user to another shard (docs/sharding.md).
    assert [db.shard_for(u, 8) for u in ("67890", "alice", "user-1", "user-2")] == [1, 1, 0, 0]
    expected = int.from_bytes(hashlib.blake2b(b"67890", digest_size=8).digest(), "big") % 5
    assert db.shard_for("67890", 5) == expected


def test_users_spread_evenly_over_the_shards():
    counts = Counter(db.shard_for(f"user-{i}", 4) for i in range(20_000))
    assert set(counts) == {0, 1, 2, 3}
    assert all(4_500 < n < 5_500 for n in counts.values())


@pytest.fixture
def urls(monkeypatch):
    def _set(value: str) -> None:
        monkeypatch.setenv("NOTIFIER_DATABASE_URLS", value)
        get_settings.cache_clear()

    yield _set
    monkeypatch.delenv("NOTIFIER_DATABASE_URLS", raising=False)
    get_settings.cache_clear()


def test_one_url_is_shard_zero_for_everyone(urls, monkeypatch):
    monkeypatch.setenv("NOTIFIER_DATABASE_URL", "postgresql+psycopg2://u:p@h/one")
    urls("")
    assert db.database_urls() == ["postgresql+psycopg2://u:p@h/one"]
    assert {db.shard_for(f"user-{i}") for i in range(100)} == {0}


def test_urls_name_the_shards_in_order_and_win_over_the_single_url(urls, monkeypatch):
    monkeypatch.setenv("NOTIFIER_DATABASE_URL", "postgresql+psycopg2://u:p@h/one")
    urls(" postgresql+psycopg2://u:p@a/s0 , postgresql+psycopg2://u:p@b/s1 ")
    assert db.database_urls() == ["postgresql+psycopg2://u:p@a/s0", "postgresql+psycopg2://u:p@b/s1"]
    assert db.database_url() == "postgresql+psycopg2://u:p@a/s0"
    assert list(db.shards()) == [0, 1]
    assert db.shard_url(1) == "postgresql+psycopg2://u:p@b/s1"


def test_on_shard_sets_the_current_shard_and_refuses_one_that_does_not_exist(urls):
    urls("postgresql+psycopg2://u:p@a/s0,postgresql+psycopg2://u:p@b/s1")
    assert db.current_shard() == 0
    with db.on_shard(1):
        assert db.current_shard() == 1
    assert db.current_shard() == 0
    with pytest.raises(ValueError, match="shard 2 does not exist"):
        with db.on_shard(2):
            pass
