"""The migrations run up and down on the configured database and on SQLite."""
from __future__ import annotations

from sqlalchemy import create_engine, inspect

from notifier.store import migrate


def _tables(url: str) -> set[str]:
    return set(inspect(create_engine(url)).get_table_names())


def test_migrations_round_trip_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    migrate.upgrade(url)
    assert {"notification_log", "device_tokens", "user_preferences"} <= _tables(url)
    migrate.downgrade(url)
    assert not {"notification_log", "device_tokens", "user_preferences"} & _tables(url)


def test_configured_database_keys_deliveries_uniquely(database):
    # The log is partitioned on PostgreSQL and cannot hold the unique key: idempotency_keys does.
    insp = inspect(create_engine(database))
    assert insp.get_pk_constraint("idempotency_keys")["constrained_columns"] == ["key"]
