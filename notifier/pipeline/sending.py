"""Claim and send deliveries, and record every outcome on the delivery's row."""
from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Sequence

import redis
from sqlalchemy import Row, delete, select
from sqlalchemy.orm import Session

from notifier.apps import DEFAULT_APP
from notifier.intake.events import Priority
from notifier.pipeline import dedup, expiry, summary
from notifier.store import delivery_log
from notifier.ops import counters
from notifier.store.db import transaction
from notifier.store.models import DeviceToken, NotificationLog, Status, UserPreferences
from notifier.providers import Delivery, Outcome, OutcomeKind, get_provider
from notifier.ops.redaction import redact_text
from notifier.settings import Settings

log = logging.getLogger(__name__)


IN_FLIGHT_RESENT = ("sent again after a worker died with an earlier request in flight "
                    "(its answer never read): the provider may have had it twice")


@dataclass(slots=True)
class Claimed:
    by_channel: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    notification_ids: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # per channel, for Flower


CLAIM_COLUMNS = ("id", "idempotency_key", "channel", "notification_id", "expires_at")


def claim_deliveries(session: Session, r: redis.Redis, ids: Sequence[int], claim_id: str, ttl_s: int) -> Claimed:
    """Take the dedup lease of each queued delivery; move those we hold to `sending`.

    A delivery past its expiry (it waited in a backlog) ends `expired` instead."""
    rows = delivery_log.load(session, ids, statuses=[Status.QUEUED.value], columns=CLAIM_COLUMNS)
    return claim_rows(session, r, rows, claim_id, ttl_s)


def claim_rows(session: Session, r: redis.Redis, rows: Sequence[Row], claim_id: str, ttl_s: int) -> Claimed:
    """claim_deliveries for rows read in this transaction, still `queued` (any with CLAIM_COLUMNS)."""
    states = dedup.claim(r, [row.idempotency_key for row in rows], claim_id, ttl_s)
    now = datetime.now(timezone.utc)
    # Only what we hold can expire here: a key marked sent was accepted in time (recorded below).
    expired = [row for row, state in zip(rows, states)
               if state in (dedup.CLAIMED, dedup.RECLAIMED) and expiry.is_expired(row.expires_at, now)]
    expire(session, r, expired, Status.QUEUED, claim_id)
    gone = {row.id for row in expired}
    mine = [row for row, state in zip(rows, states)
            if state in (dedup.CLAIMED, dedup.RECLAIMED) and row.id not in gone]
    moved = set(delivery_log.set_status(session, [row.id for row in mine], Status.SENDING.value, only_from=["queued"]))
    # The request of an earlier attempt may be at the provider already (its worker died before the
    # answer was read): it is sent again — a delivery is never given up on a guess — and the row
    # says so (IN_FLIGHT_RESENT), so a possible second copy is data, not a mystery.
    resent = [row.id for row, state in zip(rows, states) if state == dedup.RECLAIMED and row.id in moved]
    delivery_log.set_status(session, resent, Status.SENDING.value, only_from=[Status.SENDING.value],
                            last_error=IN_FLIGHT_RESENT)
    result = Claimed()
    for row in mine:
        if row.id in moved:
            result.by_channel[row.channel].append(row.id)
            result.notification_ids[row.channel].add(row.notification_id)
    # The provider accepted these before a worker died without recording it (found by the sweeper).
    recovered = [row.id for row, state in zip(rows, states) if state == dedup.ALREADY_SENT]
    delivery_log.set_status(
        session, recovered, Status.SENT.value, only_from=["queued"], sent_at=datetime.now(timezone.utc),
        reason="provider accepted it before a worker crash; recorded on recovery",
    )
    held = len(rows) - len(mine) - len(recovered) - len(expired)
    if held:
        log.info("dedup: %d of %d deliveries already claimed elsewhere", held, len(rows))
    return result


def expire(session: Session, r: redis.Redis, rows: Sequence[Row], status: Status, claim_id: str) -> None:
    """End rows we hold leases for and that waited in a queue past their expiry `expired`; free their leases."""
    if not rows:
        return
    delivery_log.record_each(session, [
        {"_id": row.id, "status": Status.EXPIRED.value,
         "reason": expiry.expired_reason(row.expires_at, expiry.IN_THE_QUEUE)} for row in rows
    ], only_from=[status.value])
    dedup.release(r, [row.idempotency_key for row in rows], claim_id)
    log.info("expiry: %d deliveries expired in the queue before they were sent", len(rows))
    counters.count_expired(r, ["queue"] * len(rows))


@dataclass(slots=True)
class SendReport:
    """What the caller must do after the commit: drop these users' cached records; and what became of
    each delivery, (notification_id, summary outcome), for the task's result."""

    changed_users: set[str] = field(default_factory=set)
    outcomes: list[tuple[str, str]] = field(default_factory=list)


def to_delivery(row: Row) -> Delivery:
    payload = row.payload or {}
    data = payload.get("data") or {}
    return Delivery(
        id=row.id,
        notification_id=row.notification_id,
        idempotency_key=row.idempotency_key,
        channel=row.channel,
        provider=row.provider or "",
        target=row.target,
        priority=row.priority,
        category=row.category,
        type=row.type,
        title=payload.get("title", ""),
        body=payload.get("body", ""),
        data=data,
        html=payload.get("html"),
        collapse_id=data.get("collapse_id") if isinstance(data.get("collapse_id"), str) else None,
        expires_at=delivery_log.as_utc(row.expires_at),
        app=row.app,
    )


def backoff_s(attempt: int, retry_after_s: float | None, settings: Settings) -> float:
    """Exponential backoff with full jitter, never sooner than Retry-After, capped."""
    delay = random.uniform(0, settings.retry_base_s * 2 ** (attempt - 1))
    if retry_after_s:
        delay = max(delay, retry_after_s)
    return min(delay, settings.retry_max_s)


def status_after(kind: OutcomeKind, attempts: int, max_attempts: int) -> Status:
    """Where a delivery goes after an attempt: sent; scheduled again while a retryable one has attempts left; failed."""
    if kind is OutcomeKind.OK:
        return Status.SENT
    if kind in (OutcomeKind.RETRY, OutcomeKind.MISCONFIGURED) and attempts < max_attempts:
        return Status.SCHEDULED
    return Status.FAILED


def send_deliveries(r: redis.Redis, ids: Sequence[int], claim_id: str, settings: Settings) -> SendReport:
    """Send the deliveries we hold leases for, grouped by provider, and record each outcome.

    No database transaction is open while a provider is called: the rows are read in one short
    transaction and the outcomes recorded in another (a slow provider must not pin a connection
    `idle in transaction`). Each acceptance is marked sent in Redis as its response arrives
    (dedup.SentMarks), so a worker killed mid-batch leaves the accepted deliveries marked: the
    sweeper's re-drive finds the mark and records it instead of sending it again.
    """
    with transaction() as session:
        rows = delivery_log.load(session, ids, statuses=[Status.SENDING.value])
    leases = dedup.renew(r, [row.idempotency_key for row in rows], claim_id, settings.lease_ttl_s,
                         settings.sent_marker_ttl_s)
    # The last check before the provider: what waited past its expiry in the send queue is not sent
    # (a key already marked sent was accepted in time: recovered below, never expired).
    now = datetime.now(timezone.utc)
    expired = [row for row, lease in zip(rows, leases)
               if lease == dedup.CLAIMED and expiry.is_expired(row.expires_at, now)]
    if expired:
        with transaction() as session:
            expire(session, r, expired, Status.SENDING, claim_id)
        gone = {row.id for row in expired}
        kept = [(row, lease) for row, lease in zip(rows, leases) if row.id not in gone]
        rows, leases = [row for row, _ in kept], [lease for _, lease in kept]
    report = SendReport()
    # One group per provider and app: each app's deliveries go out with that app's credentials.
    by_provider: dict[tuple[str, str | None], list[Row]] = defaultdict(list)
    recovered: list[Row] = []
    for row, lease in zip(rows, leases):
        if lease == dedup.CLAIMED:
            by_provider[(row.provider or "", row.app)].append(row)
        elif lease == dedup.ALREADY_SENT:
            recovered.append(row)  # accepted by an earlier run of this task whose record did not commit
            report.outcomes.append((row.notification_id, summary.SENT))
        else:
            report.outcomes.append((row.notification_id, summary.DUPLICATE))
    results: list[tuple[Row, Outcome, str]] = []
    calls: list[tuple[str, float]] = []  # (provider, seconds) per send_batch call, for metrics
    marks = dedup.SentMarks(r, settings.sent_marker_ttl_s)
    fallbacks = settings.fallback_providers()
    with marks:
        _send_groups(by_provider, results, calls, marks, fallbacks)
    if marks.failed is not None:
        log.warning("dedup: marking accepted deliveries sent failed (%s); recorded in the database only", marks.failed)
    with transaction(durable=True) as session:
        _record(session, r, results, claim_id, settings, report, calls)
        _record_recovered(session, recovered)
    return report


def _send_groups(by_provider: dict[tuple[str, str | None], list[Row]], results: list[tuple[Row, Outcome, str]],
                 calls: list[tuple[str, float]], marks: dedup.SentMarks, fallbacks: dict[str, str]) -> None:
    """Send each (provider, app) group, failing over what the primary could not take; append to `results`."""
    for (name, app), group in by_provider.items():
        outcomes = _send_with(name, group, calls, marks, app)
        used = [name] * len(group)
        # Provider failover: what the primary could not take now goes to the fallback at once.
        fallback = fallbacks.get(name)
        transient = [i for i, o in enumerate(outcomes) if o.kind in (OutcomeKind.RETRY, OutcomeKind.MISCONFIGURED)]
        if fallback and transient:
            log.warning("%s failing (%s); %d deliveries fail over to %s",
                        name, outcomes[transient[0]].reason, len(transient), fallback)
            for i, o in zip(transient, _send_with(fallback, [group[i] for i in transient], calls, marks, app)):
                outcomes[i], used[i] = o, fallback
        results.extend(zip(group, outcomes, used))


def _record_recovered(session: Session, rows: Sequence[Row]) -> None:
    delivery_log.set_status(
        session, [row.id for row in rows], Status.SENT.value, only_from=[Status.SENDING.value],
        sent_at=datetime.now(timezone.utc), reason="provider accepted it before a worker crash; recorded on recovery",
    )


def _send_with(name: str, rows: list[Row], calls: list[tuple[str, float]], marks: dedup.SentMarks,
               app: str | None = None) -> list[Outcome]:
    deliveries = [to_delivery(row) for row in rows]
    try:
        provider = get_provider(name, app)
    except Exception as exc:  # noqa: BLE001 - unknown provider or app, unreadable key file, bad settings
        if app and app != DEFAULT_APP:
            # Only this app's deliveries: the other apps' groups of the batch go out as usual.
            reason = f"misconfigured: {app}: {name}: {_describe(exc)}"
        else:
            reason = f"provider {name}: {exc}"
        log.error("provider %s cannot be used: %s", name, reason)
        return [Outcome(OutcomeKind.MISCONFIGURED, reason=reason)] * len(rows)
    started = time.perf_counter()

    def on_outcome(index: int, outcome: Outcome) -> None:
        # Each acceptance is marked sent the moment its answer arrives (see send_deliveries).
        if outcome.kind is OutcomeKind.OK:
            marks.add(rows[index].idempotency_key)

    outcomes = provider.send_batch(deliveries, on_outcome=on_outcome)
    calls.append((name, time.perf_counter() - started))
    if app and app != DEFAULT_APP:
        # Our own setup refused for this app (a key the provider rejects, credentials that do not load).
        outcomes = [Outcome(o.kind, reason=f"misconfigured: {app}: {o.reason}", retry_after_s=o.retry_after_s)
                    if o.kind is OutcomeKind.MISCONFIGURED else o for o in outcomes]
    return outcomes


def _describe(exc: Exception) -> str:
    """An exception as a reason: a missing key file names its path, never its content."""
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror or type(exc).__name__}: {exc.filename}"
    return str(exc) or type(exc).__name__


def _record(
    session: Session,
    r: redis.Redis,
    results: list[tuple[Row, Outcome, str]],
    claim_id: str,
    settings: Settings,
    report: SendReport,
    calls: Sequence[tuple[str, float]] = (),
) -> None:
    now = datetime.now(timezone.utc)
    changes, opt_outs = [], []
    tally = counters.Tally()
    for row, o, provider in results:
        attempts = row.attempts + 1
        change = {"_id": row.id, "attempts": attempts, "provider": provider}
        status = status_after(o.kind, attempts, settings.max_attempts)
        if status is Status.SENT:
            # The reason of an earlier retry ("retry 2 of 5 after: …") no longer describes the row.
            reason = f"sent on attempt {attempts}" if attempts > 1 else None
            if row.last_error == IN_FLIGHT_RESENT:
                reason = f"sent; {IN_FLIGHT_RESENT}"
            change |= {"status": Status.SENT.value, "sent_at": now, "provider_message_id": o.message_id,
                       "reason": reason}
        elif status is Status.SCHEDULED:
            if o.kind is OutcomeKind.MISCONFIGURED:
                log.error("provider %s misconfigured: %s (delivery %s will retry)", row.provider, o.reason, row.id)
            delay = backoff_s(attempts, o.retry_after_s, settings)
            # The wait lives in the database (durable); the release beat puts it back on a queue.
            change |= {
                "status": Status.SCHEDULED.value, "last_error": o.reason,
                # Never past the expiry: the release then ends it `expired` "while retrying".
                "scheduled_at": expiry.cap(now + timedelta(seconds=delay), row.expires_at),
                "reason": f"retry {attempts + 1} of {settings.max_attempts} after: {o.reason}",
            }
        else:
            reason = o.reason or o.kind.value
            if o.kind in (OutcomeKind.RETRY, OutcomeKind.MISCONFIGURED):
                # An app's own misconfiguration leads its reason, so it reads as the app's, not the provider's.
                reason = (f"{reason} (gave up after {attempts} attempts)" if reason.startswith("misconfigured: ")
                          else f"gave up after {attempts} attempts: {reason}")
            elif o.kind is OutcomeKind.TOKEN_INVALID:
                if _delete_token(session, row.target, o.invalid_since):
                    reason = f"device token invalid, token deleted: {reason}"
                else:
                    reason = (f"device token invalid when sent, token kept: registered again after "
                              f"the provider's timestamp {o.invalid_since:%Y-%m-%dT%H:%M:%SZ}: {reason}")
            elif o.kind is OutcomeKind.UNSUBSCRIBED:
                reason = f"recipient unsubscribed at the provider, {row.channel} turned off: {reason}"
                opt_outs.append((row.user_id, row.channel))
            change |= {"status": Status.FAILED.value, "failed_at": now, "reason": reason, "last_error": o.reason}
        counters.tally_send(tally, channel=row.channel, provider=provider, status=change["status"],
                            lane=Priority.of(row.priority).lane, kind=o.kind.value, reason=o.reason,
                            latency_s=_latency_s(row, now) if status is Status.SENT and attempts == 1 else None)
        for name in ("reason", "last_error"):
            # Transport errors quote URLs and addresses (https://…/3/device/<token>): none is stored.
            if change.get(name):
                change[name] = redact_text(change[name], row.target)
        changes.append(change)
    # Only rows still `sending`: a webhook may already have moved one on (delivered, failed).
    delivery_log.record_each(session, changes, only_from=[Status.SENDING.value])
    _opt_out(session, opt_outs)
    # Every answer is recorded: the attempt flags go, and so do the leases of what will be retried (a
    # retry claims afresh) or failed; an accepted delivery's key says `sent` and stays.
    dedup.release(r, [row.idempotency_key for row, _, _ in results], claim_id)
    counters.record_sends(r, (), calls, tally)
    report.outcomes.extend((row.notification_id, summary.send_outcome(o.kind, c["status"]))
                           for (row, o, _), c in zip(results, changes))
    # The caller drops these users' cached records once the transaction has committed.
    report.changed_users = {user for user, _ in opt_outs} | {
        row.user_id for row, o, _ in results if o.kind is OutcomeKind.TOKEN_INVALID
    }


def _latency_s(row: Row, now: datetime) -> float:
    """Accepted (or due, when deferred by send_at or quiet hours) to sent, for the latency histogram."""
    start = delivery_log.as_utc(row.created_at)
    due = delivery_log.as_utc(row.scheduled_at)
    if due is not None and due > start:
        start = due
    return (now - start).total_seconds()


def _delete_token(session: Session, token: str, since: datetime | None) -> bool:
    """Delete a dead token; after an APNs 410, only if it was registered before the provider's
    timestamp (a token registered again since then is alive). True when it is gone."""
    stmt = delete(DeviceToken).where(DeviceToken.token == token)
    if since is not None:
        stmt = stmt.where(DeviceToken.created_at < since)
    if session.execute(stmt).rowcount:
        return True
    return since is None or session.scalar(select(DeviceToken.id).where(DeviceToken.token == token)) is None


def _opt_out(session: Session, opt_outs: list[tuple[str, str]]) -> None:
    for user_id, channel in opt_outs:
        column = {"email": "email_enabled", "sms": "sms_enabled", "push": "push_enabled"}[channel]
        pref = session.get(UserPreferences, user_id)
        if pref is None:
            session.add(UserPreferences(user_id=user_id, **{column: False}))
        else:
            setattr(pref, column, False)


def cancel_stranded(session: Session, r: redis.Redis, notification_id: str, ttl_s: int) -> list[int]:
    """Cancel a notification's `sending` deliveries that no worker holds (their worker died, or their
    task fails whole); return their ids. One whose lease a live worker holds is in flight: left alone.

    The cancel takes the delivery's lease first, so no sweeper re-drive can claim and send it after."""
    rows = session.execute(
        select(NotificationLog.id, NotificationLog.idempotency_key).where(
            NotificationLog.notification_id == notification_id, NotificationLog.status == Status.SENDING.value)
    ).all()
    states = dedup.claim(r, [row.idempotency_key for row in rows], f"cancel:{notification_id}", ttl_s)
    free = [row.id for row, state in zip(rows, states) if state in (dedup.CLAIMED, dedup.RECLAIMED)]
    return delivery_log.set_status(session, free, Status.SUPPRESSED.value, only_from=[Status.SENDING.value],
                                   reason="cancelled by producer")
