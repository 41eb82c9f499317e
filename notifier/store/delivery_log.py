"""Reading and writing notification_log rows in batches."""
from __future__ import annotations

from collections import namedtuple
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Iterable, Sequence


from sqlalchemy import Row, bindparam, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from notifier.store import callback_outbox, task_context
from notifier.store import json_codec
from notifier.store.db import pg_execute
from notifier.store.models import IdempotencyKey, NotificationLog, Status

LOG = NotificationLog.__table__
KEYS = IdempotencyKey.__table__
NO_CHANNEL = "-"  # a row about a whole event (duplicate, invalid): it carries no accepted fingerprint
# SQLite (the embedded setup): executed with a list of rows, SQLAlchemy batches them into
# multi-row INSERTs ("insertmanyvalues") from one cached compiled statement.
_INSERT = {
    "sqlite": sqlite.insert(LOG).returning(LOG.c.id, LOG.c.idempotency_key),
    "sqlite_keys": sqlite.insert(KEYS).on_conflict_do_nothing(index_elements=["key"]).returning(KEYS.c.key),
}
_SET_DELIVERY = update(KEYS).where(KEYS.c.key == bindparam("_key")).values(delivery_id=bindparam("_id"))
_PG = postgresql.dialect()


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(dt: datetime | None) -> datetime | None:
    """An aware UTC datetime: SQLite hands back naive ones, and every stored time is UTC."""
    return dt.replace(tzinfo=timezone.utc) if dt is not None and dt.tzinfo is None else dt


def insert_ignoring_duplicates(session: Session, rows: Sequence[dict[str, Any]]) -> list[tuple[int, str]]:
    """Insert the rows whose idempotency_key is new within the dedup window; return their (id, idempotency_key).

    The key goes into idempotency_keys (ON CONFLICT DO NOTHING) in the same statement (PostgreSQL)
    or transaction (SQLite) as the log row: the log is partitioned by day and cannot hold that
    unique key itself. Of several rows with one key, the first is kept."""
    if not rows:
        return []
    seen: set[str] = set()
    rows = [row for row in rows if not (row["idempotency_key"] in seen or seen.add(row["idempotency_key"]))]
    record = task_context.current()
    if record is not None:
        record.note(row["notification_id"] for row in rows)
        rows = [{**row, "task_id": record.task_id} for row in rows]
    if session.get_bind().dialect.name == "postgresql":
        inserted = _insert_values(session, rows)
    else:
        inserted = _insert_sqlite(session, rows)
    terminal = {r["idempotency_key"] for r in rows if r.get("status") in callback_outbox.TERMINAL_VALUES}
    if terminal:
        callback_outbox.note(session, (id_ for id_, key in inserted if key in terminal))
    return inserted


def _fingerprint(row: dict[str, Any]) -> str | None:
    payload = row.get("payload")
    if row.get("channel") == NO_CHANNEL or not isinstance(payload, dict):
        return None
    return payload.get("fingerprint")


def _insert_sqlite(session: Session, rows: Sequence[dict[str, Any]]) -> list[tuple[int, str]]:
    """SQLite: claim the keys, insert the rows of those claimed, then note each key's delivery id."""
    now = utcnow()
    keys = [{"key": r["idempotency_key"], "notification_id": r["notification_id"], "fingerprint": _fingerprint(r),
             "created_at": r.get("created_at") or now} for r in rows]
    new = {k for (k,) in session.execute(_INSERT["sqlite_keys"], keys)}
    fresh = [r for r in rows if r["idempotency_key"] in new]
    if not fresh:
        return []
    inserted = [(r[0], r[1]) for r in session.execute(_INSERT["sqlite"], fresh)]
    session.connection().execute(_SET_DELIVERY, [{"_key": key, "_id": id_} for id_, key in inserted])
    return inserted


_INSERT_COLUMNS = tuple(c.name for c in LOG.c if c.name != "id")
# Columns a row may leave out, and what they then hold (created_at and updated_at: now).
_INSERT_DEFAULTS = {"attempts": 0, "redrives": 0, "replays": 0}


def _sql_type(column: str) -> str:
    return LOG.c[column].type.compile(dialect=_PG)


def _record_type(column: str) -> str:
    """The type a column is read from the JSON document as: strings as text, then cast to the column's
    own type in the statement (an explicit cast to VARCHAR(n) cuts to length, as the old VALUES did,
    where a record typed VARCHAR(n) would refuse the whole batch over one long value)."""
    full = _sql_type(column)
    return "text" if full.startswith("VARCHAR") else full


def _from_json(columns: Sequence[str], alias: str = "r") -> str:
    """`json_to_recordset(...) AS r(col type, ...)`: a batch's rows as one JSON array parameter."""
    return (f"json_to_recordset(%(rows)s::json) AS {alias}("
            + ", ".join(f'"{c}" {_record_type(c) if c != "_id" else "bigint"}' for c in columns) + ")")


def _cast(column: str, alias: str = "r") -> str:
    return f"{alias}.{column}::{_sql_type(column)}"


def _inserted_value(column: str) -> str:
    if column in ("created_at", "updated_at"):
        return f"COALESCE({_cast(column)}, %(now)s) AS {column}"
    if column in _INSERT_DEFAULTS and column in _INSERT_COLUMNS:
        return f"COALESCE({_cast(column)}, {_INSERT_DEFAULTS[column]}) AS {column}"
    return f"{_cast(column)} AS {column}"


# One statement: the keys are claimed with ids drawn from the log's own sequence, and only the rows
# whose key was claimed are inserted, with those ids. A key another transaction is inserting makes
# this one wait on the primary key's index until that one ends, as the log's own unique key did.
# The rows travel as one JSON array (json_to_recordset): serialising a batch is one orjson call, where
# adapting each of a row's 30 values to SQL text (psycopg2's execute_values) cost ~30 µs per row, the
# largest single item of the intake's CPU (bench --profile). A row's fingerprint is read from its payload
# (none for a row about a whole event, channel '-').
_INSERT_SQL = (
    f"WITH v AS (SELECT {', '.join(_inserted_value(c) for c in _INSERT_COLUMNS)}, "
    f"CASE WHEN r.channel IS DISTINCT FROM '{NO_CHANNEL}' AND json_typeof(r.payload) = 'object' "
    "THEN (r.payload ->> 'fingerprint')::varchar END AS fingerprint "
    f"FROM {_from_json(_INSERT_COLUMNS)}), "
    "k AS (INSERT INTO idempotency_keys (key, notification_id, delivery_id, fingerprint, created_at) "
    "SELECT idempotency_key, notification_id, nextval('notification_log_id_seq'), fingerprint, created_at FROM v "
    "ON CONFLICT (key) DO NOTHING RETURNING key, delivery_id) "
    f"INSERT INTO notification_log (id, {', '.join(_INSERT_COLUMNS)}) "
    f"SELECT k.delivery_id, {', '.join('v.' + c for c in _INSERT_COLUMNS)} FROM v JOIN k ON k.key = v.idempotency_key "
    "RETURNING id, idempotency_key"
)


def _insert_values(session: Session, rows: Sequence[dict[str, Any]]) -> list[tuple[int, str]]:
    """PostgreSQL: one statement for the whole batch, its rows one JSON parameter (no per-row ORM work)."""
    return [tuple(r) for r in pg_execute(session, _INSERT_SQL, {"rows": _rows_json(rows), "now": utcnow()}, fetch=True)]


def _rows_json(rows: Sequence[dict[str, Any]]) -> str:
    """A batch of rows (or changes) as one JSON array; times as ISO 8601 with their offset, as PostgreSQL reads them."""
    return json_codec.dumps_compact(rows).decode()


def set_status(
    session: Session,
    ids: Iterable[int],
    status: str,
    *,
    only_from: Iterable[str] | None = None,
    **values: Any,
) -> list[int]:
    """Move rows to `status` in one statement (optionally only from given statuses); return the ids moved."""
    ids = list(ids)
    if not ids:
        return []
    record = task_context.current()
    if record is not None:
        values.setdefault("task_id", record.task_id)
    if session.get_bind().dialect.name == "postgresql":
        moved = _set_status_pg(session, ids, status, only_from, values)
    else:
        stmt = update(LOG).where(LOG.c.id.in_(ids)).values(status=status, updated_at=utcnow(), **values)
        if only_from is not None:
            stmt = stmt.where(LOG.c.status.in_(list(only_from)))
        moved = [r[0] for r in session.execute(stmt.returning(LOG.c.id))]
    if status in callback_outbox.TERMINAL_VALUES:
        callback_outbox.note(session, moved)
    return moved


def record_each(
    session: Session, changes: Sequence[dict[str, Any]], *, only_from: Iterable[str] | None = None
) -> None:
    """Apply per-row changes (each dict has `_id` plus column values), optionally only to rows in given statuses."""
    if not changes:
        return
    record = task_context.current()
    if record is not None:
        changes = [{**change, "task_id": record.task_id} for change in changes]
    # Rows a guard left alone are noted too: the outbox reads each row's status at commit.
    callback_outbox.note(session, (c["_id"] for c in changes if c.get("status") in callback_outbox.TERMINAL_VALUES))
    by_shape: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for change in changes:
        by_shape.setdefault(tuple(sorted(change)), []).append(change)
    now = utcnow()
    postgres = session.get_bind().dialect.name == "postgresql"
    for shape, group in by_shape.items():
        if postgres:
            _update_from_values(session, [c for c in shape if c != "_id"], group, only_from)
            continue
        cols = {c: bindparam(c) for c in shape if c != "_id"}
        stmt = update(LOG).where(LOG.c.id == bindparam("_id")).values(updated_at=now, **cols)
        if only_from is not None:
            # Not IN (an "expanding" parameter cannot go with executemany).
            stmt = stmt.where(or_(*(LOG.c.status == status for status in only_from)))
        session.connection().execute(stmt, group)


def _update_from_values(
    session: Session, cols: list[str], group: list[dict[str, Any]], only_from: Iterable[str] | None
) -> None:
    """PostgreSQL: one UPDATE ... FROM json_to_recordset(...) for the whole group, not a statement per row."""
    sql = _update_sql(tuple(cols), tuple(only_from) if only_from is not None else None)
    pg_execute(session, sql, {"rows": _rows_json(group)})


@lru_cache(maxsize=128)
def _update_sql(cols: tuple[str, ...], only_from: tuple[str, ...] | None) -> str:
    sets = ", ".join(f"{c} = {_cast(c, 'v')}" for c in cols)
    sql = (f"UPDATE notification_log AS t SET {sets}, updated_at = now() "
           f"FROM {_from_json(('_id', *cols), 'v')} WHERE t.id = v._id")
    if only_from is not None:
        # Status names are our own enum values, never input: safe to inline.
        sql += " AND t.status IN (" + ", ".join(f"'{Status(s).value}'" for s in only_from) + ")"
    return sql


def load(
    session: Session, ids: Iterable[int], *, statuses: Iterable[str] | None = None,
    columns: Sequence[str] | None = None,
) -> list[Row]:
    """Load rows by id (optionally only those in given statuses, only some columns), in id order."""
    ids = list(ids)
    if not ids:
        return []
    # Core rows, not ORM objects: the hot path needs the values, not identity tracking;
    # and only the columns a stage reads (the JSON payload costs a decode per row).
    if session.get_bind().dialect.name == "postgresql":
        rows = _load_pg(session, ids, statuses, tuple(columns) if columns else _ALL_COLUMNS)
    else:
        stmt = select(*[LOG.c[c] for c in columns]) if columns else select(LOG)
        stmt = stmt.where(LOG.c.id.in_(ids)).order_by(LOG.c.id)
        if statuses is not None:
            stmt = stmt.where(LOG.c.status.in_(list(statuses)))
        rows = list(session.execute(stmt))
    record = task_context.current()
    if record is not None and (columns is None or "notification_id" in columns):
        record.note(row.notification_id for row in rows)
    return rows


# PostgreSQL's per-batch SELECT and UPDATE are written once, as SQL on the DBAPI cursor: SQLAlchemy's
# statement building (an expanding IN of a batch's ids, Row objects) cost more client CPU than the
# database's own work for them (docs/scaling.md, "Where it goes"). The rows are named tuples with
# the same attributes as SQLAlchemy's Rows; psycopg2 decodes the JSON payload and the times itself.
_ALL_COLUMNS = tuple(c.name for c in LOG.c)


@lru_cache(maxsize=64)
def _load_sql(columns: tuple[str, ...], by_status: bool) -> tuple[str, type]:
    for name in columns:
        LOG.c[name]  # noqa: B018 - an unknown column raises KeyError here, as select() would
    sql = f"SELECT {', '.join(columns)} FROM notification_log WHERE id = ANY(%(ids)s)"
    if by_status:
        sql += " AND status = ANY(%(statuses)s)"
    return sql + " ORDER BY id", namedtuple("LogRow", columns)


def _load_pg(session: Session, ids: list[int], statuses: Iterable[str] | None,
             columns: tuple[str, ...]) -> list[Any]:
    sql, row_type = _load_sql(columns, statuses is not None)
    params = {"ids": ids, "statuses": list(statuses) if statuses is not None else None}
    return [row_type._make(r) for r in pg_execute(session, sql, params, fetch=True)]


def _set_status_pg(session: Session, ids: list[int], status: str, only_from: Iterable[str] | None,
                   values: dict[str, Any]) -> list[int]:
    for name in values:
        LOG.c[name]  # noqa: B018 - only our own column names are ever inlined below
    sets = "".join(f", {name} = %({name})s" for name in values)
    sql = f"UPDATE notification_log SET status = %(_status)s, updated_at = %(_now)s{sets} WHERE id = ANY(%(_ids)s)"
    if only_from is not None:
        sql += " AND status = ANY(%(_from)s)"
    params = {**values, "_status": status, "_now": utcnow(), "_ids": ids,
              "_from": list(only_from) if only_from is not None else None}
    return [r[0] for r in pg_execute(session, sql + " RETURNING id", params, fetch=True)]
