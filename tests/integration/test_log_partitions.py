"""The log's lifecycle on PostgreSQL: daily partitions made ahead, dropped whole past retention, and
the dedup guarantee held by idempotency_keys across partition boundaries (issue 13 §1)."""
from __future__ import annotations

import secrets
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import create_engine, text

import notifier
from notifier.accounts.devices import register_device
from notifier.accounts.status import get_status
from notifier.intake.events import parse_event
from notifier.pipeline import routing
from notifier.settings import get_settings
from notifier.store import migrate, partitions
from notifier.store.db import get_engine, transaction
from notifier.store.delivery_log import insert_ignoring_duplicates, set_status
from notifier.store.recipients import load_recipients
from tests.integration import environment
from tests.integration.users import ios_user

pytestmark = pytest.mark.skipif(not environment.ADMIN_DB_URL, reason="daily partitions exist on PostgreSQL only")


def _today():
    return datetime.now(timezone.utc).date()


def _partition_days() -> list:
    with get_engine().connect() as conn:
        return [day for _, day in partitions.partitions(conn)]


def _show(title: str) -> None:
    with get_engine().connect() as conn:
        listing = partitions.sizes(conn)
    print(f"\n{title}:")
    for name, rows, size in listing:
        print(f"  {name}  rows={rows}  bytes={size}")


def _event(unique, user: str, **extra) -> dict:
    return {"notification_id": unique("n"), "user_id": user, "type": "order_shipped", "category": "transactional",
            "priority": "high", "channels": ["push"], "title": "Shipped", "body": "On its way"} | extra


def _rows(nid: str) -> list[tuple[str, str, str]]:
    """(status, reason, partition) of each row of a notification, in id order."""
    with transaction() as session:
        return [tuple(r) for r in session.execute(text(
            "SELECT status, coalesce(reason, ''), tableoid::regclass::text FROM notification_log "
            "WHERE notification_id = :n ORDER BY id"), {"n": nid})]


def test_partitions_exist_ahead_after_migrate(database):
    # Given a freshly migrated database, then today's partition and the days ahead exist
    days = _partition_days()
    ahead = get_settings().log_partitions_ahead
    assert {_today() + timedelta(days=d) for d in range(0, ahead + 1)} <= set(days), days
    with get_engine().connect() as conn:
        assert partitions.is_partitioned(conn)
        pk = conn.execute(text("SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                               "WHERE conname = 'notification_log_pkey'")).scalar()
    assert pk == "PRIMARY KEY (id, created_at)"


def test_beat_task_makes_partitions_ahead_and_drops_expired_ones_whole(worker, wait_until, unique):
    # Given a missing partition ahead, and old partitions holding rows (and their dedup keys)
    today = _today()
    retention = get_settings().log_retention_days
    ahead_day = today + timedelta(days=get_settings().log_partitions_ahead)
    old_days = [today - timedelta(days=d) for d in (retention + 15, retention + 1, retention, retention - 1)]
    engine = get_engine()
    with engine.begin() as conn:
        conn.execute(text(f'DROP TABLE IF EXISTS "{partitions.partition_name(ahead_day)}"'))
        for day in old_days:
            conn.execute(text(partitions.create_sql(day)))
    old_keys = []
    with transaction() as session:
        for day in old_days:
            nid = unique("old")
            row = routing.event_row(parse_event(_event(unique, unique("u"), notification_id=nid)),
                                    routing.Status.SENT, "old")
            row["created_at"] = partitions.day_start(day) + timedelta(hours=12)
            insert_ignoring_duplicates(session, [row])
            old_keys.append(row["idempotency_key"])
    _show("partitions before retention")

    # When beat's task runs on a real worker
    from tasks.app import app

    app.send_task("notifier.log_maintenance", queue="scheduler")

    # Then the day ahead is made, the days wholly past retention are gone, the rest stay
    expired = {d for d in old_days if d < today - timedelta(days=retention)}
    days = wait_until(lambda: (lambda ds: ds if ahead_day in ds and not expired & set(ds) else None)(
        set(_partition_days())), timeout_s=60, message="log maintenance did not run")
    _show("partitions after retention")
    assert set(old_days) - expired <= days
    assert min(days) >= today - timedelta(days=retention)
    # ... and the dedup keys older than the window are purged with them (the window equals retention here)
    with transaction() as session:
        left = set(session.scalars(text("SELECT key FROM idempotency_keys WHERE key = ANY(:k)"), {"k": old_keys}))
    assert left == set(old_keys[2:])


def test_repeat_across_a_day_boundary_is_never_delivered_again(worker, sandbox, wait_until, unique):
    # Given an event accepted and sent yesterday: its rows are in yesterday's partition
    user, token = ios_user(unique)
    event = _event(unique, user)
    nid = event["notification_id"]
    yesterday = partitions.day_start(_today()) - timedelta(seconds=30)
    with transaction() as session:
        parsed = parse_event(event)
        rows = routing.plan(parsed, load_recipients(session, [user])[user])
        for row in rows:
            row["created_at"] = row["updated_at"] = yesterday
        [(delivery_id, _)] = insert_ignoring_duplicates(session, rows)
        set_status(session, [delivery_id], "sent", sent_at=yesterday)
    yesterdays = partitions.partition_name(yesterday.date())
    assert _rows(nid) == [("sent", "", yesterdays)]

    # When the same event arrives again today (a Kafka replay), after the user added a second device
    token2 = secrets.token_hex(32)
    register_device(user, token2, "ios")
    notifier.send_notification.delay(event)

    # Then it is recorded once as a duplicate in today's partition and nothing reaches either device
    todays = partitions.partition_name(_today())
    rows = wait_until(lambda: (lambda rs: rs if len(rs) == 2 else None)(_rows(nid)), timeout_s=60)
    print(f"\ncross-day dedup rows of {nid}: {rows}")
    assert rows == [("sent", "", yesterdays), ("duplicate", routing.REPEAT_REASON, todays)]
    assert sandbox.messages(target=token) == [] and sandbox.messages(target=token2) == []
    assert [r["status"] for r in get_status(nid)] == ["sent", "duplicate"]


def test_a_replay_of_many_repeats_adds_one_row_not_one_per_repeat(database, unique):
    # Given an accepted event
    user, _ = ios_user(unique)
    event = parse_event(_event(unique, user))
    with transaction() as session:
        assert len(routing.route(session, [event]).queued["high"]) == 1

    # When it is repeated 500 times (batches of 100, as the bridge hands them), then 50 times in conflict
    repeats = 500
    for _ in range(repeats // 100):
        with transaction() as session:
            result = routing.route(session, [event] * 100)
            assert len(result.duplicates) == 100 and not any(result.queued.values())
    other = parse_event(_event(unique, user, notification_id=event.notification_id, body="Something else"))
    for _ in range(5):
        with transaction() as session:
            routing.route(session, [other] * 10)

    # Then the log holds the delivery, one repeat row and one conflict row: not 550 rows
    rows = _rows(event.notification_id)
    print(f"\n{repeats} repeats + 50 conflicting: {len(rows)} rows: {[r[:2] for r in rows]}")
    assert [(s, r) for s, r, _ in rows] == [
        ("queued", ""), ("duplicate", routing.REPEAT_REASON), ("duplicate", routing.CONFLICT_REASON)]
    with transaction() as session:
        assert routing.conflicts(session, other) and not routing.conflicts(session, event)


def test_migration_moves_an_existing_log_into_daily_partitions():
    # Given an installation at 0009 whose plain log holds rows of three days ago and today
    admin = create_engine(environment.ADMIN_DB_URL, isolation_level="AUTOCOMMIT")
    name = f"notifier_migrate_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"{environment.ADMIN_DB_URL.rsplit('/', 1)[0]}/{name}"
    engine = create_engine(url)
    try:
        migrate.upgrade(url, "0009")
        now = datetime.now(timezone.utc)
        with engine.begin() as conn:
            for i, at in enumerate([now - timedelta(days=3), now - timedelta(days=3), now]):
                conn.execute(text(
                    "INSERT INTO notification_log (idempotency_key, notification_id, user_id, type, category, "
                    "priority, channel, target, status, payload, attempts, created_at, updated_at) VALUES "
                    "(:k, :n, 'u', 't', 'c', 'high', 'push', 'x', 'sent', :p, 0, :at, :at)"),
                    {"k": f"n{i}:push:x", "n": f"n{i}", "p": '{"fingerprint": "f%d"}' % i, "at": at})
            before = conn.execute(text("SELECT max(id) FROM notification_log")).scalar()

        # When it migrates to head
        migrate.upgrade(url, "head")

        # Then every row sits in its day's partition, the keys (with fingerprints) are in idempotency_keys,
        # and new ids go on from the old sequence
        with engine.begin() as conn:
            placed = conn.execute(text("SELECT tableoid::regclass::text, count(*) FROM notification_log "
                                       "GROUP BY 1 ORDER BY 1")).all()
            keys = conn.execute(text("SELECT key, fingerprint FROM idempotency_keys ORDER BY key")).all()
            new_id = conn.execute(text("SELECT nextval('notification_log_id_seq')")).scalar()
            assert partitions.is_partitioned(conn)
        assert placed == [(partitions.partition_name((now - timedelta(days=3)).date()), 2),
                          (partitions.partition_name(now.date()), 1)]
        assert keys == [(f"n{i}:push:x", f"f{i}") for i in range(3)]
        assert new_id > before
        # ... and it migrates back down to a plain table with its unique key
        migrate.downgrade(url, "0009")
        with engine.begin() as conn:
            assert not partitions.is_partitioned(conn)
            assert conn.execute(text("SELECT count(*) FROM notification_log")).scalar() == 3
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
