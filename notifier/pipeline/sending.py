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

from notifier.intake.events import Priority
from notifier.pipeline import dedup
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


def claim_deliveries(session: Session, r: redis.Redis, ids: Sequence[int], claim_id: str, ttl_s: int) -> Claimed:
    """Take the dedup lease of each queued delivery; move those we hold to `sending`."""
    rows = delivery_log.load(session, ids, statuses=[Status.QUEUED.value], columns=("id", "idempotency_key", "channel"))
    states = dedup.claim(r, [row.idempotency_key for row in rows], claim_id, ttl_s)
    mine = [row for row, state in zip(rows, states) if state in (dedup.CLAIMED, dedup.RECLAIMED)]
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
    # The provider accepted these before a worker died without recording it (found by the sweeper).
    recovered = [row.id for row, state in zip(rows, states) if state == dedup.ALREADY_SENT]
    delivery_log.set_status(
        session, recovered, Status.SENT.value, only_from=["queued"], sent_at=datetime.now(timezone.utc),
        reason="provider accepted it before a worker crash; recorded on recovery",
    )
    held = len(rows) - len(mine) - len(recovered)
    if held:
        log.info("dedup: %d of %d deliveries already claimed elsewhere", held, len(rows))
    return result


@dataclass(slots=True)
class SendReport:
    """What the caller must do after the commit: drop these users' cached records."""

    changed_users: set[str] = field(default_factory=set)


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
        collapse_id=data.get("collapse_id") if isinstance(data.get("collapse_id"), str) else None,
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
    report = SendReport()
    by_provider: dict[str, list[Row]] = defaultdict(list)
    recovered: list[Row] = []
    for row, lease in zip(rows, leases):
        if lease == dedup.CLAIMED:
            by_provider[row.provider or ""].append(row)
        elif lease == dedup.ALREADY_SENT:
            recovered.append(row)  # accepted by an earlier run of this task whose record did not commit
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


def _send_groups(by_provider: dict[str, list[Row]], results: list[tuple[Row, Outcome, str]],
                 calls: list[tuple[str, float]], marks: dedup.SentMarks, fallbacks: dict[str, str]) -> None:
    """Send each provider's group, failing over what the primary could not take; append to `results`."""
    for name, group in by_provider.items():
        outcomes = _send_with(name, group, calls, marks)
        used = [name] * len(group)
        # Provider failover: what the primary could not take now goes to the fallback at once.
        fallback = fallbacks.get(name)
        transient = [i for i, o in enumerate(outcomes) if o.kind in (OutcomeKind.RETRY, OutcomeKind.MISCONFIGURED)]
        if fallback and transient:
            log.warning("%s failing (%s); %d deliveries fail over to %s",
                        name, outcomes[transient[0]].reason, len(transient), fallback)
            for i, o in zip(transient, _send_with(fallback, [group[i] for i in transient], calls, marks)):
                outcomes[i], used[i] = o, fallback
        results.extend(zip(group, outcomes, used))


def _record_recovered(session: Session, rows: Sequence[Row]) -> None:
    delivery_log.set_status(
        session, [row.id for row in rows], Status.SENT.value, only_from=[Status.SENDING.value],
        sent_at=datetime.now(timezone.utc), reason="provider accepted it before a worker crash; recorded on recovery",
    )


def _send_with(name: str, rows: list[Row], calls: list[tuple[str, float]], marks: dedup.SentMarks) -> list[Outcome]:
    deliveries = [to_delivery(row) for row in rows]
    try:
        provider = get_provider(name)
    except Exception as exc:  # noqa: BLE001 - unknown provider, unreadable key file, bad settings
        log.error("provider %s cannot be used: %s", name, exc)
        return [Outcome(OutcomeKind.MISCONFIGURED, reason=f"provider {name}: {exc}")] * len(rows)
    started = time.perf_counter()

    def on_outcome(index: int, outcome: Outcome) -> None:
        # Each acceptance is marked sent the moment its answer arrives (see send_deliveries).
        if outcome.kind is OutcomeKind.OK:
            marks.add(rows[index].idempotency_key)

    outcomes = provider.send_batch(deliveries, on_outcome=on_outcome)
    calls.append((name, time.perf_counter() - started))
    return outcomes


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
                "scheduled_at": now + timedelta(seconds=delay),
                "reason": f"retry {attempts + 1} of {settings.max_attempts} after: {o.reason}",
            }
        else:
            reason = o.reason or o.kind.value
            if o.kind in (OutcomeKind.RETRY, OutcomeKind.MISCONFIGURED):
                reason = f"gave up after {attempts} attempts: {reason}"
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
