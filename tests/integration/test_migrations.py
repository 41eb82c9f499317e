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


def test_configured_database_has_unique_idempotency_key(database):
    insp = inspect(create_engine(database))
    uniques = insp.get_unique_constraints("notification_log")
    assert any(u["column_names"] == ["idempotency_key"] for u in uniques)
