"""POST the callback outbox to producers: signed, batched per producer, retried with backoff, then given up.

One drain round claims up to `callback_batch_size` x ROUND_BATCHES due events (pushing their
next attempt past the round, so a drainer that dies only delays them), POSTs each producer's
events in batches, and records the answers in a second short transaction: no transaction is
open while an endpoint is called, as for providers. Endpoints are called in parallel (a slow
one does not hold up the others), each request bounded by callback_timeout_s.

A batch the endpoint answers 2xx is deleted. Anything else (another status, a redirect, a
timeout, a refused address) is a failed attempt: its events wait base x 2^(attempts-1) (capped,
with jitter) and are given up (kept, given_up_at set, counted) once the next attempt would fall
outside callback_retry_window_s of the status. Delivery is at least once: an endpoint that
accepted a batch whose record then failed gets it again; each event has a stable `id` to
recognise it by.
"""
from __future__ import annotations

import json
import logging
import random
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Sequence
from urllib.parse import urlsplit

import redis
import urllib3
from sqlalchemy import Row, delete, select, update

from notifier.callbacks import signing, urls
from notifier.ops import counters
from notifier.ops.redaction import redact_text
from notifier.settings import Settings
from notifier.store.db import transaction
from notifier.store.delivery_log import as_utc, utcnow
from notifier.store.models import CallbackEndpoint, CallbackOutbox

log = logging.getLogger(__name__)

OUTBOX = CallbackOutbox.__table__
ROUND_BATCHES = 10  # batches claimed per round
PARALLEL = 4  # endpoints called at once
MAX_RESPONSE_BYTES = 64 * 1024  # read (and ignore) at most this much of an answer
EVENT_TYPE = "delivery.status"
USER_AGENT = "notifier-callbacks/1"


@dataclass(slots=True)
class Drained:
    """What a drain did, in events."""

    sent: int = 0
    failed: int = 0  # failed attempts (the events wait for the next)
    given_up: int = 0

    def add(self, other: "Drained") -> None:
        self.sent += other.sent
        self.failed += other.failed
        self.given_up += other.given_up


def event_json(row: Row) -> dict[str, Any]:
    """One callback event as the producer receives it (no target: no token, address or number)."""
    return {
        "id": f"evt_{row.id}", "type": EVENT_TYPE, "delivery_id": row.delivery_id,
        "notification_id": row.notification_id, "user_id": row.user_id, "channel": row.channel,
        "status": row.status, "reason": row.reason, "replays": row.replays,
        "occurred_at": as_utc(row.occurred_at).isoformat(),
    }


def body_of(rows: Sequence[Row]) -> bytes:
    return json.dumps({"events": [event_json(r) for r in rows]}, separators=(",", ":")).encode()


def post(url: str, secret: str, body: bytes, settings: Settings) -> str | None:
    """POST one signed batch; None when the endpoint accepted it (2xx), else why not."""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    try:
        # A URL refused since it was registered (the rules changed) is refused here too.
        urls.check_url(url, settings.callback_allow_loopback)
        address = urls.resolve(parts.hostname or "", port, settings.callback_allow_loopback)
        if not https and not urls.is_loopback(address):
            raise urls.Refused("http only to a loopback address (tests)")
    except urls.Refused as exc:
        return f"refused: {exc}"
    timeout = urllib3.Timeout(connect=settings.callback_timeout_s, read=settings.callback_timeout_s)
    # Connect to the address checked above; TLS verifies the certificate for the URL's own host name.
    pool = (urllib3.HTTPSConnectionPool(address, port, server_hostname=parts.hostname,
                                        assert_hostname=parts.hostname, cert_reqs="CERT_REQUIRED",
                                        timeout=timeout, retries=False, maxsize=1)
            if https else urllib3.HTTPConnectionPool(address, port, timeout=timeout, retries=False, maxsize=1))
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {"Host": parts.netloc, "Content-Type": "application/json", "User-Agent": USER_AGENT,
               signing.HEADER: signing.header(secret, body)}
    try:
        response = pool.urlopen("POST", path, body=body, headers=headers, redirect=False, retries=False,
                                preload_content=False, assert_same_host=False)
        try:
            response.read(MAX_RESPONSE_BYTES)
        finally:
            response.release_conn()
        if 200 <= response.status < 300:
            return None
        if 300 <= response.status < 400:
            return f"HTTP {response.status} (redirects are not followed)"
        return f"HTTP {response.status}"
    except urllib3.exceptions.HTTPError as exc:
        return f"{type(exc).__name__}: {redact_text(str(exc))}"[:300]
    except Exception as exc:  # noqa: BLE001 - one endpoint's oddity must not stop the drain for every producer
        log.exception("callback POST failed unexpectedly")
        return f"{type(exc).__name__}: {redact_text(str(exc))}"[:300]
    finally:
        pool.close()


def backoff_s(attempts: int, settings: Settings) -> float:
    """Exponential backoff with jitter (half to all of base x 2^(attempts-1)), capped."""
    delay = settings.callback_retry_base_s * 2 ** max(attempts - 1, 0)
    return min(delay, settings.callback_retry_max_s) * random.uniform(0.5, 1.0)


def _claim(now: datetime, settings: Settings) -> tuple[list[Row], dict[str, tuple[str, str]]]:
    """Claim due events (hidden until the round is surely over) and their producers' endpoints."""
    hold = timedelta(seconds=2 * settings.callback_timeout_s + 30)
    due = (select(OUTBOX.c.id)
           .where(OUTBOX.c.given_up_at.is_(None), OUTBOX.c.next_attempt_at <= now)
           .order_by(OUTBOX.c.next_attempt_at, OUTBOX.c.id)
           .limit(settings.callback_batch_size * ROUND_BATCHES)
           .with_for_update(skip_locked=True))
    with transaction() as session:
        rows = list(session.execute(
            update(OUTBOX).where(OUTBOX.c.id.in_(due.scalar_subquery()))
            .values(next_attempt_at=now + hold).returning(*OUTBOX.c)))
        producers = sorted({r.producer for r in rows})
        endpoints = {p: (u, s) for p, u, s in session.execute(
            select(CallbackEndpoint.producer, CallbackEndpoint.url, CallbackEndpoint.secret)
            .where(CallbackEndpoint.producer.in_(producers)))} if producers else {}
    rows.sort(key=lambda r: r.id)
    return rows, endpoints


def _record(now: datetime, sent: list[int], failed: list[tuple[list[Row], str]], orphans: list[int],
            settings: Settings) -> Drained:
    done = Drained(sent=len(sent))
    window = timedelta(seconds=settings.callback_retry_window_s)
    with transaction() as session:
        if sent:
            session.execute(delete(OUTBOX).where(OUTBOX.c.id.in_(sent)))
        if orphans:
            session.execute(update(OUTBOX).where(OUTBOX.c.id.in_(orphans))
                            .values(given_up_at=now, last_error="no callback registered any more"))
            done.given_up += len(orphans)
        for rows, error in failed:
            done.failed += len(rows)
            retry, give_up = [], []
            attempts = max(r.attempts for r in rows) + 1
            at = now + timedelta(seconds=backoff_s(attempts, settings))
            for r in rows:
                (give_up if at - as_utc(r.occurred_at) > window else retry).append(r.id)
            values = {"attempts": OUTBOX.c.attempts + 1, "last_error": error}
            if retry:
                session.execute(update(OUTBOX).where(OUTBOX.c.id.in_(retry)).values(next_attempt_at=at, **values))
            if give_up:
                session.execute(update(OUTBOX).where(OUTBOX.c.id.in_(give_up)).values(given_up_at=now, **values))
                done.given_up += len(give_up)
    return done


def drain_once(r: redis.Redis | None, settings: Settings, now: datetime | None = None) -> tuple[int, Drained]:
    """One round: claim due events, POST them per producer in batches, record; (events claimed, what happened)."""
    now = now or utcnow()
    rows, endpoints = _claim(now, settings)
    if not rows:
        return 0, Drained()
    batches: list[tuple[str, str, list[Row]]] = []
    orphans: list[int] = []
    by_producer: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_producer[row.producer].append(row)
    for producer, group in by_producer.items():
        if producer not in endpoints:
            orphans += [row.id for row in group]
            continue
        url, secret = endpoints[producer]
        size = settings.callback_batch_size
        batches += [(url, secret, group[i:i + size]) for i in range(0, len(group), size)]
    with ThreadPoolExecutor(max_workers=min(PARALLEL, max(len(batches), 1))) as pool:
        answers = list(pool.map(lambda b: post(b[0], b[1], body_of(b[2]), settings), batches))
    sent, failed = [], []
    for (url, _, group), error in zip(batches, answers):
        if error is None:
            sent += [row.id for row in group]
        else:
            log.warning("callback to %s failed for %d event(s): %s", group[0].producer, len(group), error)
            failed.append((group, error))
    done = _record(utcnow(), sent, failed, orphans, settings)
    if r is not None:
        counters.record_callbacks(r, done.sent, done.failed, done.given_up)
    if done.given_up:
        log.error("callbacks: %d event(s) given up (not accepted within %ss, or no endpoint)", done.given_up,
                  settings.callback_retry_window_s)
    return len(rows), done


def drain(r: redis.Redis | None, settings: Settings, budget_s: float = 10.0) -> Drained:
    """Drain rounds until no full round is due or the time budget is spent (the next beat goes on)."""
    total = Drained()
    deadline = time.monotonic() + budget_s
    while True:
        claimed, done = drain_once(r, settings)
        total.add(done)
        if claimed < settings.callback_batch_size * ROUND_BATCHES or time.monotonic() > deadline:
            return total
