"""Reading and writing notification_log rows in batches."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from notifier.models import NotificationLog

LOG = NotificationLog.__table__


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def insert_ignoring_duplicates(session: Session, rows: Sequence[dict[str, Any]]) -> list[tuple[int, str]]:
    """Insert rows in one statement; return (id, idempotency_key) of those that were new."""
    if not rows:
        return []
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - the project supports these two
        raise RuntimeError(f"unsupported database dialect {dialect!r}")
    stmt = (
        insert(LOG)
        .values(list(rows))
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(LOG.c.id, LOG.c.idempotency_key)
    )
    return [(r[0], r[1]) for r in session.execute(stmt)]


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
    stmt = update(LOG).where(LOG.c.id.in_(ids)).values(status=status, updated_at=utcnow(), **values)
    if only_from is not None:
        stmt = stmt.where(LOG.c.status.in_(list(only_from)))
    return [r[0] for r in session.execute(stmt.returning(LOG.c.id))]


def record_each(session: Session, changes: Sequence[dict[str, Any]]) -> None:
    """Apply per-row changes (each dict has `_id` plus column values) as one executemany."""
    if not changes:
        return
    by_shape: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for change in changes:
        by_shape.setdefault(tuple(sorted(change)), []).append(change)
    now = utcnow()
    for shape, group in by_shape.items():
        cols = {c: bindparam(c) for c in shape if c != "_id"}
        stmt = update(LOG).where(LOG.c.id == bindparam("_id")).values(updated_at=now, **cols)
        session.connection().execute(stmt, group)


def load(session: Session, ids: Iterable[int], *, statuses: Iterable[str] | None = None) -> list[NotificationLog]:
    """Load rows by id (optionally only those in given statuses), in id order."""
    ids = list(ids)
    if not ids:
        return []
    stmt = select(NotificationLog).where(NotificationLog.id.in_(ids)).order_by(NotificationLog.id)
    if statuses is not None:
        stmt = stmt.where(NotificationLog.status.in_(list(statuses)))
    return list(session.scalars(stmt))
