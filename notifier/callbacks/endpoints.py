"""Producers' callback registrations: one URL and signing secret per producer (an API key or an app).

A producer is named as on the delivery rows (notifier.pipeline.routing.producer_of):
"key:<api key id>" for events sent through the HTTP API, "app:<name>" for events carrying an
`app` (send_notification.delay, Kafka). Registering again replaces the URL and makes a new
secret; the secret is returned only then.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select

from notifier.callbacks import signing, urls
from notifier.settings import get_settings
from notifier.store.db import shards, transaction
from notifier.store.delivery_log import utcnow
from notifier.apps import APP_NAME, known_app
from notifier.store.models import CallbackEndpoint, CallbackOutbox



def for_key(key_id: int) -> str:
    return f"key:{key_id}"


def for_app(app: str, *, registering: bool = False) -> str:
    """The producer name of an app; ValueError naming `app` if it is not an app name, or, when
    `registering`, not an app of the registry (an event names only those: none would call back)."""
    if not isinstance(app, str) or not APP_NAME.fullmatch(app):
        raise ValueError("app: 1 to 64 of letters, digits, '.', '_' and '-', starting with a letter or digit")
    if registering:
        try:
            known_app(app, get_settings())
        except ValueError as exc:
            raise ValueError(f"app: {exc}") from None
    return f"app:{app}"


def parse(producer: str) -> str:
    """A producer name as stored ("key:<id>" or "app:<name>"); ValueError naming `producer` otherwise."""
    kind, _, rest = producer.partition(":")
    if kind == "key" and rest.isascii() and rest.isdigit():
        return producer
    if kind == "app" and APP_NAME.fullmatch(rest):
        return producer
    raise ValueError('producer: "key:<api key id>" or "app:<name>"')


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A registration as shown to its producer: never the secret, except right after registering."""

    producer: str
    url: str
    created_at: datetime
    updated_at: datetime
    pending: int = 0  # events waiting (being retried, or not POSTed yet)
    given_up: int = 0  # events not accepted within the retry window
    last_error: str | None = None
    secret: str | None = None

    def as_dict(self) -> dict:
        out = {"producer": self.producer, "url": self.url, "created_at": self.created_at,
               "updated_at": self.updated_at, "pending": self.pending, "given_up": self.given_up,
               "last_error": self.last_error}
        if self.secret is not None:
            out["secret"] = self.secret
        return out


def register(producer: str, url: str) -> Endpoint:
    """Set `producer`'s callback URL with a new secret (returned this once); urls.Refused for a bad URL."""
    url = urls.check_url(url, get_settings().callback_allow_loopback)
    secret = signing.new_secret()
    now = utcnow()
    # On every shard: each shard's terminal-status transaction joins its own copy to write the outbox
    # (notifier.store.callback_outbox). Shard 0's copy is the one read back; the others follow it.
    for shard in reversed(shards()):
        with transaction(shard=shard) as session:
            row = session.get(CallbackEndpoint, producer)
            if row is None:
                row = CallbackEndpoint(producer=producer, url=url, secret=secret, created_at=now, updated_at=now)
                session.add(row)
            else:
                row.url, row.secret, row.updated_at = url, secret, now
            session.flush()
            endpoint = Endpoint(producer, url, row.created_at, row.updated_at, secret=secret)
    return endpoint


def get(producer: str) -> Endpoint | None:
    """A producer's registration with its outbox figures, or None."""
    with transaction(shard=0) as session:
        row = session.get(CallbackEndpoint, producer)
    if row is None:
        return None
    pending = given_up = 0
    last_error = None
    for shard in shards():  # each shard's outbox holds the events of its users' deliveries
        with transaction(shard=shard) as session:
            waiting, dropped = session.execute(
                select(func.count().filter(CallbackOutbox.given_up_at.is_(None)),
                       func.count().filter(CallbackOutbox.given_up_at.is_not(None)))
                .where(CallbackOutbox.producer == producer)
            ).one()
            pending, given_up = pending + waiting, given_up + dropped
            last_error = last_error or session.scalar(
                select(CallbackOutbox.last_error).where(CallbackOutbox.producer == producer,
                                                        CallbackOutbox.last_error.is_not(None))
                .order_by(CallbackOutbox.id.desc()).limit(1))
    return Endpoint(producer, row.url, row.created_at, row.updated_at, pending, given_up, last_error)


def list_all() -> list[Endpoint]:
    with transaction() as session:
        producers = session.scalars(select(CallbackEndpoint.producer).order_by(CallbackEndpoint.producer)).all()
    return [e for e in (get(p) for p in producers) if e is not None]


def remove(producer: str) -> bool:
    """Forget a producer's registration and its waiting events (on every shard); False if it had none."""
    gone = 0
    for shard in shards():
        with transaction(shard=shard) as session:
            gone += session.execute(delete(CallbackEndpoint).where(CallbackEndpoint.producer == producer)).rowcount
            session.execute(delete(CallbackOutbox).where(CallbackOutbox.producer == producer))
    return bool(gone)
