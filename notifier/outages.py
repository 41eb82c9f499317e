"""Which exceptions mean our own infrastructure is down, not that one piece of work is bad.

An outage (the Celery broker, PostgreSQL or Redis unreachable) is waited out: the work is
kept and tried again. Any other exception belongs to the work that raised it (a value that
will not serialize, a row the database refuses) and trying it again cannot help.

What each client raises when its server is gone, as read in the pinned versions:

- Celery's `delay()` / `apply_async()` publish through `kombu.Connection.ensure`, which
  re-raises the transport's recoverable connection errors as `kombu.exceptions.OperationalError`
  (`Connection._reraise_as_library_errors`): a Redis broker refusing connections surfaces as
  `OperationalError('Error 111 connecting to …')`. On RabbitMQ (py-amqp) the connection-level
  errors (`amqp.exceptions.ConnectionError` and its kin: ConnectionForced, Blocked, a memory
  or disk alarm's ResourceError) and a publisher-confirm nack (`MessageNacked`) can escape
  unwrapped. Channel errors are left out on purpose: `ContentTooLarge` is one message's fault.
- SQLAlchemy wraps the driver's connection failures as OperationalError / InterfaceError;
  psycopg2's own classes come unwrapped from statements run on the DBAPI cursor (its
  OperationalError also covers deadlocks and serialization failures, which a retry resolves).
- redis-py raises ConnectionError / TimeoutError (BusyLoadingError is a ConnectionError).
- Our own database being wrong for the code (a migration not run: UndefinedTable; a statement
  of ours PostgreSQL refuses) is a ProgrammingError or InternalError. It is no outage, but it
  is not one event's fault either: every event would fail the same way, and dead-lettering
  the whole stream would be worse than waiting for the operator. Held too. What a single
  event can cause in the database (DataError, IntegrityError) stays that event's.
- The builtin ConnectionError and TimeoutError are what a socket raises when a client lets
  it through unwrapped. OSError as a whole is not here: it covers far more than the network.
"""
from __future__ import annotations

import amqp.exceptions
import kombu.exceptions
import psycopg2
import redis.exceptions
from sqlalchemy import exc as sa_exc

OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    kombu.exceptions.OperationalError,
    amqp.exceptions.ConnectionError,
    amqp.exceptions.MessageNacked,
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    psycopg2.OperationalError,
    psycopg2.InterfaceError,
    sa_exc.ProgrammingError,
    sa_exc.InternalError,
    psycopg2.ProgrammingError,
    psycopg2.InternalError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
    TimeoutError,
)


def is_outage(exc: BaseException) -> bool:
    """True if `exc` says our infrastructure is down (wait and try again), not that the work is bad."""
    return isinstance(exc, OUTAGE_ERRORS)
