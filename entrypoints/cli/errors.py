"""One line for every expected failure: what went wrong, and whether it was the input or the world.

Every command's failures pass through `describe` in `main()`, so a command added later gets the
same treatment for free: raise `CliError` for a refusal of your own, or let the library's error
through (bad JSON, an invalid event, a missing file, a database not migrated, Redis or Kafka down).
"""
from __future__ import annotations

import json

USAGE = 2  # the input was wrong (as argparse exits for a bad option)
RUNTIME = 1  # the input was fine; something it needs failed


class CliError(Exception):
    """An expected failure; its message is the one line the user sees."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.exit_code = USAGE if usage else RUNTIME


def one_line(text: object, limit: int = 800) -> str:
    """Whitespace (newlines too) collapsed, and long text cut: an error is one line on a terminal."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def describe(exc: BaseException) -> tuple[str, int]:
    """The message and exit status for an exception a command let through."""
    if isinstance(exc, CliError):
        return str(exc), exc.exit_code
    if isinstance(exc, json.JSONDecodeError):
        return f"not JSON: {exc}", USAGE
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        from notifier.intake.events import describe_errors

        return f"invalid: {describe_errors(exc)}", USAGE
    for check in (_click, _database, _alembic, _redis, _broker, _kafka):
        found = check(exc)
        if found:
            return found
    if isinstance(exc, OSError):
        if exc.filename is not None:
            return f"{exc.filename}: {exc.strerror or exc}", RUNTIME
        return str(exc) or type(exc).__name__, RUNTIME
    if isinstance(exc, ValueError):
        return str(exc), RUNTIME
    return f"unexpected {type(exc).__name__}: {exc} (run `notifier --debug …` for the traceback)", RUNTIME


def _click(exc: BaseException) -> tuple[str, int] | None:
    # Celery's commands (worker, beat) are click commands run in this process.
    import click

    if isinstance(exc, click.UsageError):
        return exc.format_message(), USAGE
    if isinstance(exc, click.ClickException):
        return exc.format_message(), exc.exit_code or RUNTIME
    return None


def _database(exc: BaseException) -> tuple[str, int] | None:
    from sqlalchemy import exc as sa

    if not isinstance(exc, sa.SQLAlchemyError):
        return None
    if isinstance(exc, sa.ArgumentError):  # a URL SQLAlchemy cannot read, or a driver not installed
        return f"NOTIFIER_DATABASE_URL: {exc}", RUNTIME
    # The driver's own message (exc.orig), without the SQL statement SQLAlchemy appends.
    detail = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
    # SQLite says "no such table"; PostgreSQL 'relation "x" does not exist' (or a missing column after an upgrade).
    if isinstance(exc, (sa.OperationalError, sa.ProgrammingError)) and any(
        words in detail for words in ("no such table", "no such column", "does not exist")
    ):
        return f"database not migrated: run `notifier migrate` ({detail})", RUNTIME
    if isinstance(exc, sa.OperationalError):
        return f"database unavailable: {detail}", RUNTIME
    return f"database error: {detail}", RUNTIME


def _alembic(exc: BaseException) -> tuple[str, int] | None:
    from alembic.util import CommandError

    return (f"migration: {exc}", RUNTIME) if isinstance(exc, CommandError) else None


def _redis(exc: BaseException) -> tuple[str, int] | None:
    import redis

    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return f"Redis unavailable (NOTIFIER_REDIS_URL): {exc}", RUNTIME
    if isinstance(exc, redis.RedisError):
        return f"Redis error: {exc}", RUNTIME
    return None


def _broker(exc: BaseException) -> tuple[str, int] | None:
    from kombu.exceptions import OperationalError

    return (f"broker unavailable (NOTIFIER_BROKER_URL): {exc}", RUNTIME) if isinstance(exc, OperationalError) else None


def _kafka(exc: BaseException) -> tuple[str, int] | None:
    from confluent_kafka import KafkaException

    return (f"Kafka: {exc}", RUNTIME) if isinstance(exc, KafkaException) else None
