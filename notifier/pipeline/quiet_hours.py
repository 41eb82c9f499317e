"""Quiet hours: whether a delivery waits, and until which instant."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_TICK = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class QuietDecision:
    """The quiet hours verdict for one delivery."""

    deliver_at: datetime | None  # aware UTC; None = send now
    note: str | None  # e.g. "invalid timezone 'Mars/Base': treated as UTC"


def quiet_hours_release(
    now: datetime, start: time | None, end: time | None, tz_name: str | None
) -> QuietDecision:
    """Decide when a delivery due at `now` may go out, given local quiet hours [start, end).

    DST policy: `now` is inside when its wall-clock time in the zone is, so both
    passes through a repeated (fall-back) hour count by their wall time. The release
    is the first instant after `now` at which the local clock reads `end`: for a
    repeated `end`, its first occurrence (fold=0) unless that is already past; for an
    `end` in a spring-forward gap, the instant the clock jumps over it (02:30 in
    Europe/Oslo -> 03:00 CEST), never earlier than `end` in wall time. A clock falling
    back out of the window does not release early, and when a jump skips the window's
    whole open part (02:45-02:30 on that day) the release is still the jump, though by
    wall time that instant already lies in the next window.
    """
    zone, note = _zone(tz_name)
    if end is None or not _inside(_local(now, zone).time(), start, end):
        return QuietDecision(None, note)
    return QuietDecision(_release(now, end, zone), note)


def is_within(
    now: datetime, start: time | None, end: time | None, tz_name: str | None
) -> bool:
    """Tell whether `now` falls inside quiet hours by local wall-clock time."""
    return _inside(_local(now, _zone(tz_name)[0]).time(), start, end)


def _zone(tz_name: str | None) -> tuple[tzinfo, str | None]:
    """Resolve an IANA name, falling back to UTC with a note when it is unknown."""
    if tz_name is None:
        return UTC, None
    try:
        return ZoneInfo(tz_name), None
    except (ZoneInfoNotFoundError, ValueError):
        return UTC, f"invalid timezone {tz_name!r}: treated as UTC"


def _local(now: datetime, zone: tzinfo) -> datetime:
    """Convert an aware instant to the zone's local time."""
    if now.utcoffset() is None:
        raise ValueError(f"now must be timezone-aware, got {now!r}")
    return now.astimezone(zone)


def _inside(wall: time, start: time | None, end: time | None) -> bool:
    """Tell whether a wall-clock time lies in [start, end), wrapping past midnight."""
    if start is None or end is None or start == end:
        return False
    if start < end:
        return start <= wall < end
    return wall >= start or wall < end


def _release(now: datetime, end: time, zone: tzinfo) -> datetime:
    """Return the first UTC instant after `now` at which the local clock reaches `end`."""
    today = _local(now, zone).date()
    return min(
        instant
        for days in (-1, 0, 1)
        for instant in _instants(datetime.combine(today + timedelta(days), end), zone)
        if instant > now
    )


def _instants(wall: datetime, zone: tzinfo) -> tuple[datetime, ...]:
    """Return the UTC instants at which the local clock reads `wall`, or jumps over it."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if first <= second:  # equal unless `wall` is repeated
        return first, second
    return (_jump(second, first, zone),)  # in a gap, fold=1 reads the later offset


def _jump(before: datetime, after: datetime, zone: tzinfo) -> datetime:
    """Return the first instant on the new offset of the transition between two instants."""
    old_offset = before.astimezone(zone).utcoffset()
    while after - before > _TICK:
        middle = before + (after - before) // 2
        if middle.astimezone(zone).utcoffset() == old_offset:
            before = middle
        else:
            after = middle
    return after
