"""Replay: send failed deliveries again, once the operator has fixed the cause (a key, an outage).

Policy:
- Only `failed` deliveries that no provider ever accepted are eligible: a row with `sent_at`
  (sent, then reported bounced or failed) and a key whose dedup lease says `sent` are never
  sent again. Whole-event rows (an invalid event) have nothing to send.
- A replay moves its rows `failed` -> `queued` in one guarded UPDATE (… WHERE status =
  'failed', the candidates locked with SKIP LOCKED), so two replays at once take each row once.
  The row keeps its idempotency key; its attempts and re-drives start again, so a replay gets
  the full retry budget, and it records who replayed it, when, why, and how many times.
- The rows start again at the filter stage: a user who turned the channel off since is not
  sent to, quiet hours hold, and rate limits count the replay like any send.
- At most `limit` rows per replay (settings: replay_limit_default, replay_limit_max); the
  oldest failures first. A dry run counts and samples what would be replayed and changes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal, Sequence

import redis
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from notifier.intake.events import Channel, Priority
from notifier.intake.validation import Id, single_line
from notifier.pipeline import dedup
from notifier.pipeline.routing import NO_CHANNEL, NO_TARGET
from notifier.providers import REGISTRY
from notifier.store.delivery_log import LOG
from notifier.store.models import Status

SAMPLE_SIZE = 10


_PROVIDERS = tuple(sorted(REGISTRY))


class Selection(BaseModel):
    """Which failed deliveries to replay (every criterion given must hold), and the operator's note."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    notification_ids: list[Id] = Field([], max_length=1000, description="Only these notifications' deliveries.")
    since: AwareDatetime | None = Field(None, description="Failed at or after this instant.")
    until: AwareDatetime | None = Field(None, description="Failed before this instant.")
    provider: Literal[_PROVIDERS] | None = None  # type: ignore[valid-type]
    channel: Channel | None = None
    reason: Annotated[str, AfterValidator(single_line)] | None = Field(
        None, min_length=1, max_length=200, description="A substring of the failure's reason, any letter case.")
    why: Annotated[str, AfterValidator(single_line)] = Field(
        min_length=1, max_length=500, description="Why it is replayed (the fix), recorded on each row.")
    limit: int | None = Field(None, ge=1, description="Most deliveries to replay; default and maximum in settings.")
    dry_run: bool = Field(False, description="Count and sample what would be replayed; change nothing.")

    @model_validator(mode="after")
    def _narrowed(self) -> "Selection":
        if not (self.notification_ids or self.since or self.until or self.provider or self.channel or self.reason):
            raise ValueError("name at least one of notification_ids, since, until, provider, channel, reason "
                             "(a replay of every failure is not a default)")
        if self.since and self.until and self.since >= self.until:
            raise ValueError("until must be after since")
        return self

    def bounded_limit(self, default: int, maximum: int) -> int:
        """The limit to use; ValueError naming `limit` above the maximum."""
        if self.limit is not None and self.limit > maximum:
            raise ValueError(f"limit: at most {maximum} deliveries per replay (NOTIFIER_REPLAY_LIMIT_MAX)")
        return self.limit or min(default, maximum)


@dataclass(slots=True)
class ReplayResult:
    """What a replay did (or, in a dry run, would do)."""

    dry_run: bool
    limit: int
    matched: int  # eligible failed deliveries the selection matches, before the limit
    replayed: list[int] = field(default_factory=list)  # ids moved to queued (dry run: that would be)
    marked_sent: list[int] = field(default_factory=list)  # refused: a provider accepted them already
    sample: list[dict[str, Any]] = field(default_factory=list)
    queued: dict[str, list[int]] = field(default_factory=dict)  # lane -> ids, to enqueue after the commit

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "limit": self.limit, "matched": self.matched,
                "replayed": len(self.replayed), "delivery_ids": self.replayed,
                "refused_already_sent": self.marked_sent, "sample": self.sample}


def _eligible(selection: Selection) -> list:
    conditions = [LOG.c.status == Status.FAILED.value, LOG.c.sent_at.is_(None),
                  LOG.c.channel != NO_CHANNEL, LOG.c.target != NO_TARGET]
    if selection.notification_ids:
        conditions.append(LOG.c.notification_id.in_(sorted(set(selection.notification_ids))))
    if selection.since is not None:
        conditions.append(LOG.c.failed_at >= selection.since)
    if selection.until is not None:
        conditions.append(LOG.c.failed_at < selection.until)
    if selection.provider is not None:
        conditions.append(LOG.c.provider == selection.provider)
    if selection.channel is not None:
        conditions.append(LOG.c.channel == selection.channel.value)
    if selection.reason is not None:
        conditions.append(LOG.c.reason.icontains(selection.reason.strip(), autoescape=True))
    return conditions


SAMPLE_COLUMNS = ("id", "notification_id", "user_id", "channel", "provider", "failed_at", "attempts", "replays",
                  "reason")


def _sample(rows: Sequence[Any]) -> list[dict[str, Any]]:
    # No target: the sample is printed and returned over HTTP; the reason was redacted when stored.
    return [{("delivery_id" if c == "id" else c): getattr(row, c) for c in SAMPLE_COLUMNS}
            for row in rows[:SAMPLE_SIZE]]


def replay(session: Session, r: redis.Redis, selection: Selection, *, by: str, limit: int,
           now: datetime) -> ReplayResult:
    """Move up to `limit` eligible failed deliveries back to `queued` (the caller enqueues `queued` after
    the commit), recording the replay on each row; a dry run only counts and samples them."""
    dry_run, why = selection.dry_run, selection.why
    conditions = _eligible(selection)
    matched = session.scalar(select(func.count()).select_from(LOG).where(*conditions)) or 0
    result = ReplayResult(dry_run=dry_run, limit=limit, matched=matched)
    candidates = select(*[LOG.c[c] for c in SAMPLE_COLUMNS], LOG.c.idempotency_key).where(*conditions).order_by(
        LOG.c.failed_at, LOG.c.id).limit(limit)
    if not dry_run:
        # Two replays at once: the second skips the rows the first holds, and the guard below
        # (status still `failed`) stops a row the first has moved on already.
        candidates = candidates.with_for_update(skip_locked=True)
    rows = list(session.execute(candidates))
    sent = dedup.marked_sent(r, [row.idempotency_key for row in rows])
    result.marked_sent = [row.id for row, marked in zip(rows, sent) if marked]
    rows = [row for row, marked in zip(rows, sent) if not marked]
    result.sample = _sample(rows)
    if dry_run:
        result.replayed = [row.id for row in rows]
        return result
    if not rows:
        return result
    stmt = (
        update(LOG)
        .where(LOG.c.id.in_([row.id for row in rows]), LOG.c.status == Status.FAILED.value, LOG.c.sent_at.is_(None))
        .values(status=Status.QUEUED.value, attempts=0, redrives=0, scheduled_at=None, updated_at=now,
                replayed_at=now, replayed_by=by, replay_reason=why, replays=LOG.c.replays + 1,
                reason=f"replayed by {by}: {why}")
        .returning(LOG.c.id, LOG.c.priority)
    )
    for id_, priority in session.execute(stmt):
        result.replayed.append(id_)
        result.queued.setdefault(Priority.of(priority).lane, []).append(id_)
    return result
