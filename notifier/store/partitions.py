"""The log's lifecycle on PostgreSQL: daily partitions of notification_log made ahead, dropped whole.

Native declarative partitioning (RANGE on created_at, one partition per UTC day) managed by a
beat task (`notifier.log_maintenance`) rather than pg_partman: no extension to install on every
shard, nothing in shared_preload_libraries, and the same code runs in the tests and at migrate.
Old days go by DETACH … CONCURRENTLY + DROP TABLE, never DELETE: no dead tuples, no vacuum debt.
The dedup keys (idempotency_keys) cannot be partitioned by day (their primary key is the key), so
they are purged in bounded batches by created_at, past the dedup window. SQLite keeps a plain table
and none of this runs there.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone

from sqlalchemy import Connection, Engine, text

PARENT = "notification_log"
_NAME = re.compile(rf"^{PARENT}_p(\d{{8}})$")
PURGE_BATCH = 10_000
# Making or dropping a partition locks the parent briefly; never queue the hot path behind a long wait.
LOCK_TIMEOUT = "2s"


def partition_name(day: date) -> str:
    return f"{PARENT}_p{day:%Y%m%d}"


def day_start(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=timezone.utc)


def is_partitioned(conn: Connection) -> bool:
    """Whether notification_log is a partitioned table here (PostgreSQL after migration 0011)."""
    if conn.dialect.name != "postgresql":
        return False
    return bool(conn.execute(text(
        "SELECT 1 FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid "
        "WHERE c.relname = :t AND c.relnamespace = to_regnamespace(current_schema())::oid"), {"t": PARENT}).scalar())


def create_sql(day: date, parent: str = PARENT, name: str | None = None) -> str:
    """The statement making the partition of `day` (dates are ours, never input: safe to inline)."""
    lo, hi = day_start(day).isoformat(), day_start(day + timedelta(days=1)).isoformat()
    return (f'CREATE TABLE IF NOT EXISTS "{name or partition_name(day)}" PARTITION OF "{parent}" '
            f"FOR VALUES FROM ('{lo}') TO ('{hi}')")


def partitions(conn: Connection) -> list[tuple[str, date]]:
    """The daily partitions attached to notification_log, oldest first."""
    rows = conn.execute(text(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = :t"), {"t": PARENT})
    found = []
    for (name,) in rows:
        m = _NAME.match(name)
        if m:
            found.append((name, datetime.strptime(m.group(1), "%Y%m%d").date()))
    return sorted(found, key=lambda item: item[1])


def ensure(conn: Connection, first: date, last: date) -> list[str]:
    """Make the partitions of days first..last that are missing; return the names made."""
    have = {day for _, day in partitions(conn)}
    made = []
    day = first
    while day <= last:
        if day not in have:
            conn.execute(text(create_sql(day)))
            made.append(partition_name(day))
        day += timedelta(days=1)
    return made


@dataclass
class Maintenance:
    made: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    keys_purged: int = 0


def maintain(engine: Engine, now: datetime, *, retention_days: int, ahead_days: int,
             dedup_window_days: int) -> Maintenance:
    """Make partitions from yesterday to `ahead_days` ahead, drop those wholly past retention, purge old keys.

    Yesterday too: a row stamped just before midnight may be written just after it."""
    done = Maintenance()
    today = now.astimezone(timezone.utc).date()
    with engine.connect() as conn:
        if not is_partitioned(conn):
            return done
    with engine.begin() as conn:
        conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        done.made = ensure(conn, today - timedelta(days=1), today + timedelta(days=ahead_days))
    done.dropped = drop_expired(engine, today, retention_days)
    done.keys_purged = purge_keys(engine, day_start(today - timedelta(days=dedup_window_days)))
    return done


def drop_expired(engine: Engine, today: date, retention_days: int) -> list[str]:
    """Drop the partitions whose whole day is older than `retention_days` before today.

    DETACH … CONCURRENTLY first (PostgreSQL 14+): it waits for running queries instead of
    blocking every insert behind an ACCESS EXCLUSIVE lock on the parent; it cannot run inside a
    transaction block, hence the autocommit connection."""
    oldest_kept = today - timedelta(days=retention_days)
    dropped = []
    with engine.connect() as conn:
        expired = [name for name, day in partitions(conn) if day < oldest_kept]
        # A detach interrupted half-way (a crash, the lock timeout) must be finished, not started again.
        pending = set(conn.scalars(text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = :t AND i.inhdetachpending"), {"t": PARENT}))
    if not expired:
        return dropped
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"SET lock_timeout = '{LOCK_TIMEOUT}'"))
        for name in expired:
            how = "FINALIZE" if name in pending else "CONCURRENTLY"
            conn.execute(text(f'ALTER TABLE "{PARENT}" DETACH PARTITION "{name}" {how}'))
            conn.execute(text(f'DROP TABLE "{name}"'))
            dropped.append(name)
        conn.execute(text("RESET lock_timeout"))
    return dropped


def purge_keys(engine: Engine, before: datetime) -> int:
    """Forget the dedup keys created before `before`, in bounded batches (short transactions, short locks)."""
    purged = 0
    while True:
        with engine.begin() as conn:
            n = conn.execute(text(
                "DELETE FROM idempotency_keys WHERE key IN (SELECT key FROM idempotency_keys "
                "WHERE created_at < :before LIMIT :n)"), {"before": before, "n": PURGE_BATCH}).rowcount
        purged += n
        if n < PURGE_BATCH:
            return purged


def sizes(conn: Connection) -> list[tuple[str, int, int]]:
    """(partition, rows, bytes incl. indexes and TOAST) of each daily partition, oldest first."""
    out = []
    for name, _ in partitions(conn):
        rows = conn.execute(text(f'SELECT count(*) FROM "{name}"')).scalar()
        size = conn.execute(text("SELECT pg_total_relation_size(CAST(:n AS regclass))"), {"n": name}).scalar()
        out.append((name, rows, size))
    return out
