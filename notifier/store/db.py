"""Database engines and sessions: one engine per shard per process.

Users are the unit of sharding (docs/sharding.md): a user's devices, preferences and deliveries
live on the shard `shard_for(user_id)` picks among NOTIFIER_DATABASE_URLS. With one URL (the
default: NOTIFIER_DATABASE_URL, or the embedded SQLite file) there is one shard, 0, and nothing
else changes. Rows that belong to no user (API keys, callback endpoints) live on shard 0.

Why not `sqlalchemy.ext.horizontal_shard.ShardedSession`: it chooses a shard per ORM identity or
per query from the statement, but our hot path is Core statements and multi-row inserts on the
raw DBAPI cursor within one transaction over one user-batch, and every stage already knows its
shard (it is in the task's arguments). A shard chosen once per unit of work (`transaction(shard=)`,
or `on_shard()` around a stage) says that plainly; the engines are SQLAlchemy's, one per shard.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from notifier.settings import Settings, get_settings
from notifier.store import json_codec


def database_urls(settings: Settings | None = None) -> list[str]:
    """Every shard's URL, in shard order (NOTIFIER_DATABASE_URLS, else the one database_url)."""
    settings = settings or get_settings()
    urls = [u.strip() for u in settings.database_urls.split(",") if u.strip()]
    if urls:
        return urls
    if settings.database_url:
        return [settings.database_url]
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    return [f"sqlite:///{settings.sqlite_path.resolve()}"]


def database_url(settings: Settings | None = None) -> str:
    """Return the configured database URL (shard 0's when sharded), or the embedded SQLite file."""
    return database_urls(settings)[0]


def shard_count() -> int:
    """How many shards there are (1 unless NOTIFIER_DATABASE_URLS names more)."""
    return len(database_urls())


def shards() -> range:
    """Every shard number, for work that covers them all (migrations, beat, status look-ups)."""
    return range(shard_count())


def shard_for(user_id: str, count: int | None = None) -> int:
    """The shard that holds `user_id`'s rows: blake2b of the id, modulo the shard count.

    Stable across processes, machines and Python versions (Python's hash() is salted per
    process). The count is part of the answer: adding a shard moves most users, so N changes
    only with a migration that moves their rows (docs/sharding.md)."""
    count = shard_count() if count is None else count
    if count == 1:
        return 0
    digest = hashlib.blake2b(user_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


_current_shard: ContextVar[int] = ContextVar("notifier_shard", default=0)


def current_shard() -> int:
    """The shard this unit of work runs on (set by `on_shard`; 0 outside one)."""
    return _current_shard.get()


@contextmanager
def on_shard(shard: int) -> Iterator[int]:
    """Run the block against `shard`: every transaction() in it that names no shard goes there."""
    shard_url(shard)  # a bad number fails here, naming it, not deep in a stage
    token = _current_shard.set(shard)
    try:
        yield shard
    finally:
        _current_shard.reset(token)


def shard_url(shard: int) -> str:
    """The URL of shard number `shard`."""
    urls = database_urls()
    if not 0 <= shard < len(urls):
        raise ValueError(f"shard {shard} does not exist: NOTIFIER_DATABASE_URLS names {len(urls)} shard(s)")
    return urls[shard]


def _tune_sqlite(dbapi_conn, _record) -> None:
    # Several worker processes share the file: WAL lets readers run beside the writer,
    # and the busy timeout makes a writer wait for the lock instead of failing.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


_engines: dict[str, Engine] = {}


def get_engine(url: str | None = None) -> Engine:
    """Return the process's engine for `url` (default: the current shard's database)."""
    url = url or shard_url(current_shard())
    if url in _engines:
        return _engines[url]
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, hide_parameters=True)
        event.listen(engine, "connect", _tune_sqlite)
    else:
        # hide_parameters: SQL errors must not carry tokens, addresses or phone numbers into logs and Flower.
        # Behind PgBouncer in transaction pooling every statement may reach another server connection:
        # psycopg2 sends plain (unprepared) statements and SQLAlchemy's psycopg2 dialect never asks for
        # server-side prepared statements, and nothing of ours keeps session state (SET LOCAL only,
        # pg_advisory_xact_lock only, no LISTEN), so the same engine works direct or pooled.
        engine = create_engine(url, pool_size=5, max_overflow=5, pool_pre_ping=True, hide_parameters=True,
                               json_deserializer=json_codec.loads)
    _engines[url] = engine
    return engine


_factories: dict[str, sessionmaker[Session]] = {}


def session_factory(url: str | None = None) -> sessionmaker[Session]:
    """Return the process's sessionmaker bound to the engine for `url` (default: the current shard's).

    One per URL, not one per call: each sessionmaker makes a Session subclass whose event
    dispatch SQLAlchemy builds anew (~0.4 ms of CPU), which a batch of one paid per stage."""
    url = url or shard_url(current_shard())
    factory = _factories.get(url)
    if factory is None:
        factory = _factories[url] = sessionmaker(get_engine(url), expire_on_commit=False)
    return factory


def dispose_engines() -> None:
    """Forget pooled connections after fork: a child must not share its parent's sockets."""
    for engine in _engines.values():
        engine.dispose(close=False)


@contextmanager
def transaction(*, durable: bool = False, url: str | None = None, shard: int | None = None) -> Iterator[Session]:
    """One unit of work: a session whose transaction commits when the block ends, or rolls back.

    On `shard` (default: the current one, see `on_shard`), or on the database at `url`.

    `durable`: the commit returns only once PostgreSQL has flushed it to disk, whatever the
    server's `synchronous_commit` says: the writes that stand for an acknowledgement (an event
    accepted, a provider's acceptance recorded) must survive a database crash. `SET LOCAL`, not
    a connection option, so it also holds behind PgBouncer's transaction pooling.
    """
    if url is None and shard is not None:
        url = shard_url(shard)
    with session_factory(url)() as session, session.begin():
        if durable and session.get_bind().dialect.name == "postgresql":
            pg_execute(session, _SYNCHRONOUS_COMMIT)
        yield session


_SYNCHRONOUS_COMMIT = "SET LOCAL synchronous_commit TO on"


def pg_execute(session: Session, sql: str, params: object = None, *, fetch: bool = False) -> list[tuple]:
    """Run `sql` (psycopg2 placeholders) on the session's connection, PostgreSQL's DBAPI cursor itself.

    For the statements every batch runs: SQLAlchemy's statement building (an expanding IN, Row objects,
    the ORM's execute) cost several times the database's own work for them (docs/scaling.md, "Where
    it goes"). Returns the rows when `fetch`."""
    cursor = session.connection().connection.dbapi_connection.cursor()
    try:
        cursor.execute(sql, params)
        return cursor.fetchall() if fetch else []
    finally:
        cursor.close()
