"""The delivery chain as Celery tasks: route -> filter -> dedup -> send_<channel>.

Each task opens a transaction, calls one function in notifier/, commits, and only then
enqueues the next stage on the same lane (high or low), so a queued message never
points at rows that are not there.

Delivery ids are per shard (docs/sharding.md): every stage after intake carries its shard as a
`shard` keyword, sent only when it is not 0, so an unsharded setup's messages are what they
were and a message queued by an older version (no `shard`) means shard 0.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable

from pydantic import TypeAdapter, ValidationError

from notifier.queues import QUEUES, queue_for
from notifier.ops import counters, exporter, stage_cpu
from notifier.pipeline import broker_epoch, digests
from notifier.intake import accept as intake
from notifier.store.db import on_shard, shards, transaction
from notifier.store.delivery_log import insert_ignoring_duplicates, utcnow
from notifier.intake.events import NotificationEvent, describe_errors, parse_event
from notifier.pipeline.filtering import filter_rows
from notifier.pipeline.rate_limits import parse_limits
from notifier.store.recipients import invalidate
from notifier.store.redis_conn import broker_redis, get_redis
from notifier.store.models import Status
from notifier.pipeline.routing import event_row, invalid_event_row
from notifier.pipeline.scheduling import BATCH, Ready, release_due, sweep_stuck
from notifier.pipeline.sending import Claimed, claim_deliveries, claim_rows, send_deliveries
from notifier.pipeline.summary import claim_summary, send_summary, shown_in_args
from notifier.settings import get_settings
from tasks.app import app
from tasks.base import INFRASTRUCTURE_ERRORS, NotifierTask, SendTask


log = logging.getLogger(__name__)


class EventTask(NotifierTask):
    """Accepts events in the producer: validated, then stored durably, before delay() returns.

    What is queued is the filter stage of the stored deliveries, not the raw event: a Celery
    message lost after this point is re-driven from its rows by the sweeper (notifier.intake.accept).
    A worker still routes a raw event that reaches it some other way (`send_task`).
    """

    abstract = True

    def apply_async(self, args=None, kwargs=None, **options: Any):
        if options.get("retries"):
            # Celery re-sending a raw event's route task (Task.retry after an outage): it stays one.
            return super().apply_async(args, kwargs, **options)
        events = [parse_event(e) for e in self.raw_events(args or (), kwargs or {})]
        return accept(events, **options)

    def raw_events(self, args, kwargs) -> list:
        raise NotImplementedError


def _describe_events(events: list[NotificationEvent]) -> str:
    first = events[0]
    text = f"notification_id={first.notification_id} user={first.user_id} type={first.type} priority={first.priority.value}"
    return text if len(events) == 1 else f"{text} (+{len(events) - 1} more events)"


class SingleEventTask(EventTask):
    abstract = True

    def raw_events(self, args, kwargs):
        return [args[0] if args else kwargs["event"]]


_EVENT_LIST = TypeAdapter(list[Any])


class ManyEventsTask(EventTask):
    abstract = True

    def raw_events(self, args, kwargs):
        # A list of events, or a ValidationError saying it is not one (never a TypeError from list()).
        return _EVENT_LIST.validate_python(args[0] if args else kwargs["events"])


def accept(events: list[NotificationEvent], producer: str | None = None, **options: Any):
    """Store validated events' deliveries durably, then queue their filter stage (after the commit).

    Returns the AsyncResult of the last filter task queued, or None when nothing is left to send
    (a repeat, or every delivery suppressed). A broker that refuses the filter task does not undo
    the acceptance: the rows are stored, and the sweeper re-drives them. `producer`: who sent them
    (the HTTP API's key, "key:<id>"), for callbacks; else each event's app."""
    last = None
    # Shard by shard: each part's filter stage is queued as soon as its own transaction commits.
    for shard, part in intake.split_by_shard(events).items():
        result = intake.store_on_shard(shard, part, producer=producer)
        last = _queue_filter(result.queued, part, shard, **options) or last
    return last


def on_shard_kwargs(shard: int) -> dict[str, int]:
    """The task keywords that name a shard: none for shard 0, as every message before sharding."""
    return {"shard": shard} if shard else {}


def _queue_filter(queued: dict[str, list[int]], events: list[NotificationEvent], shard: int = 0, **options: Any):
    options.pop("queue", None)
    last = None
    for lane, ids in queued.items():
        if not ids:
            continue
        try:
            # Flower shows the deliveries and the events they came from: staff search by notification id.
            argsrepr = f"{filter_stage.describe((ids, lane), on_shard_kwargs(shard))} {_describe_events(events)}"
            last = filter_stage.apply_async((ids, lane), on_shard_kwargs(shard), queue=queue_for("pipeline", lane),
                                            argsrepr=argsrepr, **options)
        except Exception as exc:  # noqa: BLE001 - stored is accepted; the sweeper re-drives the rows
            log.warning("intake: %d stored %s-lane deliveries not queued (%s: %s); the sweeper re-drives them",
                        len(ids), lane, type(exc).__name__, exc)
    return last


def _route_and_continue(raw_events: Iterable[dict]) -> None:
    events, invalid = [], []
    for raw in raw_events:
        try:
            events.append(parse_event(raw, published_earlier=True))  # it may have expired while queued
        except ValidationError as exc:
            # Queued without the producer's validation (e.g. a raw send_task): record why, don't drop it.
            invalid.append((raw, describe_errors(exc)))
    if invalid:
        _record_invalid(invalid)
    if not events:
        return
    for shard, part in intake.split_by_shard(events).items():
        _route_on_shard(shard, part)


def _route_on_shard(shard: int, events: list[NotificationEvent]) -> None:
    try:
        result = intake.store_on_shard(shard, events)
    except INFRASTRUCTURE_ERRORS:
        raise  # retried whole by the task (autoretry_for)
    except Exception as exc:
        # A bug of ours must not lose accepted events silently: each gets a terminal row saying so.
        log.exception("route: %d event(s) could not be routed", len(events))
        with transaction(shard=shard) as session:
            insert_ignoring_duplicates(session, [
                event_row(e, Status.FAILED, f"could not be routed: {type(exc).__name__} (see worker log)")
                for e in events
            ])
        raise
    _queue_filter(result.queued, events, shard)


def _record_invalid(invalid: list[tuple[object, str]]) -> None:
    rows = []
    for raw, problem in invalid:
        row = invalid_event_row(raw, problem)
        if row is None:
            log.error("route: invalid event refused, no usable notification_id to record it under: %s", problem)
            continue
        log.error("route: invalid event notification_id=%r refused: %s", row["notification_id"], problem)
        rows.append(row)
    # An invalid event has no trustworthy user: its row lives on shard 0 (get_status asks every shard).
    with transaction(shard=0) as session:
        insert_ignoring_duplicates(session, rows)


@app.task(base=SingleEventTask, name="notifier.send_notification")
def send_notification(event: dict) -> None:
    """Accept one notification event and route it."""
    _route_and_continue([event])


@app.task(base=ManyEventsTask, name="notifier.send_notifications")
def send_notifications(events: list[dict]) -> None:
    """Accept many notification events at once and route them as one batch."""
    _route_and_continue(events)


@app.task(base=NotifierTask, name="notifier.filter", bind=True)
def filter_stage(self, ids: list[int], lane: str, shard: int = 0) -> dict:
    """Apply preferences and schedules; claim what may be sent now (the dedup stage) and hand it to
    its channel's send queue.

    Filter and dedup run in one task and one transaction on this hot path: a task hop, a reading of
    the rows and a commit fewer per batch (docs/operations.md, "Flower"). The result says what the
    dedup stage claimed per channel; the send tasks are this task's children. notifier.dedup stays a
    task of its own for what skips the filter: retries released when due, and the sweeper's re-drives.
    """
    settings = get_settings()
    limits = parse_limits(settings.rate_limits)
    claim_id = self.request.id or "local"
    with on_shard(shard), transaction() as session:
        proceed = filter_rows(session, get_redis(), ids, utcnow(), limits, settings.digest_windows())
        with stage_cpu.measure("dedup"):
            claimed = claim_rows(session, get_redis(), proceed, claim_id, settings.lease_ttl_s)
    _queue_sends(claimed, lane, claim_id, shard)
    return claim_summary(len(ids), claimed.by_channel)


@app.task(base=NotifierTask, name="notifier.dedup", bind=True)
def dedup_stage(self, ids: list[int], lane: str, shard: int = 0) -> dict:
    """Claim each delivery's lease; hand what we hold to its channel's send queue."""
    claim_id = self.request.id or "local"
    with on_shard(shard), transaction() as session:
        claimed = claim_deliveries(session, get_redis(), ids, claim_id, get_settings().lease_ttl_s)
    _queue_sends(claimed, lane, claim_id, shard)
    return claim_summary(len(ids), claimed.by_channel)


def _queue_sends(claimed: Claimed, lane: str, claim_id: str, shard: int) -> None:
    for channel, channel_ids in claimed.by_channel.items():
        send = SEND_TASKS[channel]
        # Flower's search looks at arguments and results, not at a failure's text: the notifications go here.
        argsrepr = f"{send.describe((channel_ids, lane), {})} {shown_in_args(claimed.notification_ids[channel])}"
        send.apply_async((channel_ids, lane, claim_id), on_shard_kwargs(shard), queue=queue_for(channel, lane),
                         argsrepr=argsrepr)


def _send(ids: list[int], lane: str, claim_id: str, shard: int) -> dict:
    # Opens its own short transactions (on this shard): none is held across the provider call.
    with on_shard(shard):
        report = send_deliveries(get_redis(), ids, claim_id, get_settings())
    # Retries wait as `scheduled` rows; release_due puts them back on the queue when due.
    if report.changed_users:
        invalidate(get_redis(), report.changed_users)
    return SendTask.settle(send_summary(len(ids), report.outcomes))


@app.task(base=SendTask, name="notifier.send_push")
def send_push(ids: list[int], lane: str, claim_id: str, shard: int = 0) -> dict:
    """Send push deliveries (APNs, FCM)."""
    return _send(ids, lane, claim_id, shard)


@app.task(base=SendTask, name="notifier.send_email")
def send_email(ids: list[int], lane: str, claim_id: str, shard: int = 0) -> dict:
    """Send email deliveries (SendGrid, SMTP)."""
    return _send(ids, lane, claim_id, shard)


@app.task(base=SendTask, name="notifier.send_sms")
def send_sms(ids: list[int], lane: str, claim_id: str, shard: int = 0) -> dict:
    """Send SMS deliveries (Twilio)."""
    return _send(ids, lane, claim_id, shard)


SEND_TASKS = {"push": send_push, "email": send_email, "sms": send_sms}


def _enqueue(ready: list[Ready], shard: int = 0) -> None:
    """Put one shard's released or re-driven deliveries back on their stage's queue, batched by lane and ETA."""
    groups: dict[tuple, list[int]] = {}
    for item in ready:
        groups.setdefault((item.stage, item.lane, item.eta), []).append(item.id)
    for (stage, lane, eta), ids in groups.items():
        task = filter_stage if stage == "filter" else dedup_stage
        task.apply_async((ids, lane), on_shard_kwargs(shard), queue=queue_for("pipeline", lane), eta=eta)


@app.task(base=NotifierTask, name="notifier.release_due")
def release_due_task() -> int:
    """Release scheduled deliveries that fall due before the next beat (ETA covers the rest), on every shard."""
    return sum(_release_on_shard(shard) for shard in shards())


def _release_on_shard(shard: int) -> int:
    settings = get_settings()
    released = 0
    while True:
        with on_shard(shard), transaction() as session:
            ready = release_due(session, utcnow(), settings.release_interval_s, r=get_redis())
        _enqueue(ready, shard)
        released += len(ready)
        if len(ready) < BATCH:
            return released + close_digest_windows(shard)


def close_digest_windows(shard: int | None = None) -> int:
    """Close the digest windows that are due (on `shard`, or every shard): each becomes its digest's
    deliveries, queued after the commit."""
    if shard is None:
        return sum(close_digest_windows(s) for s in shards())
    closed = 0
    while True:
        with on_shard(shard), transaction() as session:
            done = digests.close_due(session, get_redis(), utcnow())
        _enqueue(done.ready, shard)
        closed += done.windows
        if done.windows < digests.BATCH:
            return closed


@app.task(base=NotifierTask, name="notifier.sweep")
def sweep_task() -> int:
    """Re-drive deliveries stuck in queued/sending (a worker died, a message was lost)."""
    return sweep()


def sweep(older_than_s: float | None = None) -> int:
    """Re-drive stuck deliveries in batches until none is left; return how many were re-driven or failed.

    Several sweeps may run at once: each batch claims its rows with SKIP LOCKED."""
    settings = get_settings()
    broker = broker_redis()
    lost = broker_epoch.went_back(broker)
    busy = set() if lost or broker is None else _busy_queues(broker)
    now, total = utcnow(), 0
    for shard in shards():
        while True:
            with on_shard(shard), transaction() as session:
                swept = sweep_stuck(session, now, settings.stuck_after_s if older_than_s is None else older_than_s,
                                    max_redrives=settings.max_redrives, busy_queues=busy, everything=lost)
            _enqueue(swept.ready, shard)
            done = len(swept.ready) + swept.failed
            total += done
            if swept.failed:
                log.error("sweep: %d deliveries on shard %d re-driven %d times without finishing ended failed",
                          swept.failed, shard, settings.max_redrives)
            if done < BATCH:
                break
    counters.count_stuck(get_redis(), total)
    return total


def _busy_queues(broker) -> set[str]:
    try:
        depths = exporter.queue_depths(broker, QUEUES, get_settings().broker_key_prefix)
    except Exception as exc:  # noqa: BLE001 - unknown depth: sweep as if idle (a duplicate message is harmless)
        log.warning("sweep: queue depths unavailable (%s)", exc)
        return set()
    return {queue for queue, depth in depths.items() if depth}
