"""The callback outbox: a terminal status and its callback event commit together, or not at all.

Status changes go through notifier.store.delivery_log, which notes the ids it moved to a
terminal status on the session (`note`); a write of a terminal status anywhere else must call
`note` too (the sweeper's give-up does). Just before that transaction commits, one
INSERT … SELECT copies those rows that belong to a producer with a registered callback into
`callback_outbox`; a separate task on the `callbacks` queue POSTs them (notifier.callbacks).

Why a table written in the same transaction, not a Redis stream written after the commit: the
cost on the hot path is one statement per transaction (not per delivery), executed inside a
transaction that commits anyway, and nothing is lost between the commit and a second store
(a worker killed after its commit would lose a Redis XADD, and the producer would never hear of
the delivery). A delivery of a producer without a callback costs only the join that finds none.
The unique (delivery_id, status, replays) index makes a status written twice one event.
"""
from __future__ import annotations

from typing import Iterable

from sqlalchemy import event, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from notifier.store.db import pg_execute
from notifier.store.models import TERMINAL, CallbackEndpoint, CallbackOutbox, NotificationLog

_PENDING = "callback_outbox.terminal_ids"
TERMINAL_VALUES = frozenset(s.value for s in TERMINAL)
_COLUMNS = ("producer", "delivery_id", "notification_id", "user_id", "channel", "status", "reason", "replays",
            "occurred_at")


def note(session: Session, ids: Iterable[int]) -> None:
    """Remember deliveries this transaction moved to a terminal status; their events are written at commit."""
    ids = list(ids)
    if ids:
        session.info.setdefault(_PENDING, set()).update(ids)


_PG_SQL = (
    f"INSERT INTO callback_outbox ({', '.join(_COLUMNS)}) "
    "SELECT l.producer, l.id, l.notification_id, l.user_id, l.channel, l.status, l.reason, l.replays, l.updated_at "
    "FROM notification_log AS l JOIN callback_endpoints AS e ON e.producer = l.producer "
    "WHERE l.id = ANY(%s) AND l.status IN (" + ", ".join(f"'{s}'" for s in sorted(TERMINAL_VALUES)) + ") "
    "ON CONFLICT DO NOTHING"
)


def write(session: Session, ids: Iterable[int]) -> None:
    """Copy the terminal rows among `ids` whose producer has a callback into the outbox (one statement)."""
    ids = sorted(ids)
    if not ids:
        return
    if session.get_bind().dialect.name == "postgresql":
        # On the DBAPI cursor with one array parameter: this runs in every transaction that ends a
        # delivery, and SQLAlchemy's compilation of an IN list cost more CPU than the statement.
        pg_execute(session, _PG_SQL, (ids,))
        return
    log = NotificationLog
    rows = (
        select(log.producer, log.id, log.notification_id, log.user_id, log.channel, log.status, log.reason,
               log.replays, log.updated_at)
        .join(CallbackEndpoint, CallbackEndpoint.producer == log.producer)
        .where(log.id.in_(ids), log.status.in_(sorted(TERMINAL_VALUES)))
    )
    stmt = sqlite.insert(CallbackOutbox).from_select(list(_COLUMNS), rows).on_conflict_do_nothing()
    session.execute(stmt)


@event.listens_for(Session, "before_commit")
def _write_noted(session: Session) -> None:
    ids = session.info.pop(_PENDING, None)
    if ids:
        write(session, ids)


@event.listens_for(Session, "after_rollback")
def _forget_noted(session: Session) -> None:
    session.info.pop(_PENDING, None)


__all__ = ["note", "write", "TERMINAL_VALUES"]
