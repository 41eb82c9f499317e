"""Tests for quiet hours: examples first, then properties over zones, windows and DST."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from notifier.pipeline.quiet_hours import QuietDecision, is_within, quiet_hours_release

OSLO = ZoneInfo("Europe/Oslo")
NEW_YORK = ZoneInfo("America/New_York")
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
TICK = timedelta(microseconds=1)
DAY_US = 24 * 60 * 60 * 1_000_000

ZONES = [
    "Europe/Oslo",
    "America/New_York",
    "Australia/Sydney",
    "Asia/Kolkata",
    "Pacific/Chatham",
    "America/St_Johns",
    "UTC",
]

# The instants (UTC) at which the clocks change; test_transitions_are_real checks them.
TRANSITIONS = {
    "Europe/Oslo": [
        datetime(2025, 3, 30, 1, tzinfo=UTC),
        datetime(2025, 10, 26, 1, tzinfo=UTC),
        datetime(2026, 3, 29, 1, tzinfo=UTC),
        datetime(2026, 10, 25, 1, tzinfo=UTC),
    ],
    "America/New_York": [
        datetime(2025, 3, 9, 7, tzinfo=UTC),
        datetime(2025, 11, 2, 6, tzinfo=UTC),
        datetime(2026, 3, 8, 7, tzinfo=UTC),
        datetime(2026, 11, 1, 6, tzinfo=UTC),
    ],
    "Australia/Sydney": [
        datetime(2025, 4, 5, 16, tzinfo=UTC),
        datetime(2025, 10, 4, 16, tzinfo=UTC),
        datetime(2026, 4, 4, 16, tzinfo=UTC),
        datetime(2026, 10, 3, 16, tzinfo=UTC),
    ],
}


def utc(*args: int) -> datetime:
    """Build an aware UTC datetime."""
    return datetime(*args, tzinfo=UTC)


# Examples


def test_inside_a_daytime_window_waits_until_its_end():
    decision = quiet_hours_release(utc(2025, 6, 1, 14), time(13), time(15), "UTC")

    assert decision == QuietDecision(deliver_at=utc(2025, 6, 1, 15), note=None)


def test_outside_the_window_sends_now():
    decision = quiet_hours_release(utc(2025, 6, 1, 16), time(13), time(15), "UTC")

    assert decision == QuietDecision(deliver_at=None, note=None)


@pytest.mark.parametrize(
    ("now", "deliver_at"),
    [
        (utc(2025, 6, 1, 23), utc(2025, 6, 2, 7)),
        (utc(2025, 6, 2, 3), utc(2025, 6, 2, 7)),
        (utc(2025, 6, 1, 12), None),
    ],
)
def test_window_crossing_midnight(now, deliver_at):
    assert quiet_hours_release(now, time(22), time(7), "UTC").deliver_at == deliver_at


@pytest.mark.parametrize(
    ("start", "end", "deliver_at"),
    [(time(22), time(7), utc(2025, 6, 2, 7)), (time(22), time(23), utc(2025, 6, 1, 23))],
)
def test_exactly_at_start_is_inside(start, end, deliver_at):
    assert quiet_hours_release(utc(2025, 6, 1, 22), start, end, "UTC").deliver_at == deliver_at


def test_exactly_at_end_is_outside():
    assert quiet_hours_release(utc(2025, 6, 2, 7), time(22), time(7), "UTC").deliver_at is None


def test_just_before_end_waits_for_end():
    now = utc(2025, 6, 2, 7) - TICK

    assert quiet_hours_release(now, time(22), time(7), "UTC").deliver_at == utc(2025, 6, 2, 7)


def test_window_is_read_in_the_users_timezone():
    now = utc(2025, 1, 15, 21, 30)  # 22:30 in Oslo (CET, +01:00)

    decision = quiet_hours_release(now, time(22), time(7), "Europe/Oslo")

    assert decision == QuietDecision(deliver_at=utc(2025, 1, 16, 6), note=None)


def test_now_in_any_timezone_gives_a_utc_release():
    now = utc(2025, 1, 15, 21, 30).astimezone(ZoneInfo("Asia/Tokyo"))

    deliver_at = quiet_hours_release(now, time(22), time(7), "Europe/Oslo").deliver_at

    assert deliver_at == utc(2025, 1, 16, 6)
    assert deliver_at.utcoffset() == timedelta(0)


def test_no_timezone_means_utc():
    decision = quiet_hours_release(utc(2025, 6, 1, 23), time(22), time(7), None)

    assert decision == QuietDecision(deliver_at=utc(2025, 6, 2, 7), note=None)


@pytest.mark.parametrize(
    "tz_name", ["Mars/Base", "", "../etc/passwd", "/etc/localtime", "Europe", "europe/oslo"]
)
def test_invalid_timezone_is_treated_as_utc_with_a_note(tz_name):
    decision = quiet_hours_release(utc(2025, 6, 1, 23), time(22), time(7), tz_name)

    assert decision.deliver_at == utc(2025, 6, 2, 7)
    assert decision.note == f"invalid timezone {tz_name!r}: treated as UTC"


def test_invalid_timezone_note_reads_plainly():
    decision = quiet_hours_release(utc(2025, 6, 1, 12), time(22), time(7), "Mars/Base")

    assert decision == QuietDecision(None, "invalid timezone 'Mars/Base': treated as UTC")


@pytest.mark.parametrize(
    ("start", "end"), [(time(7), time(7)), (time(0), time(0)), (None, time(7)), (time(22), None)]
)
def test_no_window(start, end):
    now = utc(2025, 6, 1, 7)

    assert quiet_hours_release(now, start, end, "UTC") == QuietDecision(None, None)
    assert not is_within(now, start, end, "UTC")


def test_naive_now_is_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        quiet_hours_release(datetime(2025, 6, 1, 23), time(22), time(7), "UTC")


def test_decision_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        QuietDecision(None, None).note = "changed"  # type: ignore[misc]


# DST examples


def test_end_in_a_spring_forward_gap_releases_when_the_clock_jumps():
    now = datetime(2025, 3, 29, 23, tzinfo=OSLO)  # 02:00-03:00 never happens on 30 March

    deliver_at = quiet_hours_release(now, time(22), time(2, 30), "Europe/Oslo").deliver_at

    assert deliver_at == utc(2025, 3, 30, 1)
    assert deliver_at.astimezone(OSLO).time() == time(3)


def test_ambiguous_end_releases_at_its_first_occurrence():
    now = datetime(2025, 11, 2, 0, 30, tzinfo=NEW_YORK)  # 01:00-02:00 happens twice

    deliver_at = quiet_hours_release(now, time(22), time(1, 30), "America/New_York").deliver_at

    assert deliver_at == utc(2025, 11, 2, 5, 30)  # 01:30 EDT


def test_ambiguous_end_already_past_releases_at_its_second_occurrence():
    now = datetime(2025, 11, 2, 1, 15, fold=1, tzinfo=NEW_YORK)  # 01:15 EST, inside again

    deliver_at = quiet_hours_release(now, time(22), time(1, 30), "America/New_York").deliver_at

    assert deliver_at == utc(2025, 11, 2, 6, 30)  # 01:30 EST


@pytest.mark.parametrize("fold", [0, 1])
def test_both_passes_through_the_repeated_hour_count_by_wall_time(fold):
    now = datetime(2025, 11, 2, 1, 20, fold=fold, tzinfo=NEW_YORK)

    assert is_within(now, time(1, 10), time(1, 40), "America/New_York")
    assert not is_within(now, time(1, 30), time(1, 10), "America/New_York")


def test_clock_falling_back_onto_end_releases_there():
    now = datetime(2025, 11, 2, 1, 45, tzinfo=NEW_YORK)  # EDT; at 02:00 the clock reads 01:00

    deliver_at = quiet_hours_release(now, time(1, 30), time(1), "America/New_York").deliver_at

    assert deliver_at == utc(2025, 11, 2, 6)  # 01:00 EST, not 01:00 the next day


def test_clock_falling_back_past_midnight_reaches_yesterdays_end():
    now = utc(2009, 11, 1, 3, 0, 30)  # 00:00:30 ADT; at 00:01 Goose Bay went back to 23:01 AST

    deliver_at = quiet_hours_release(now, time(0), time(23, 30), "America/Goose_Bay").deliver_at

    assert deliver_at == utc(2009, 11, 1, 3, 30)  # 23:30 AST on 31 October


def test_gap_swallowing_the_open_part_still_releases_at_the_jump():
    now = datetime(2025, 3, 29, 23, tzinfo=OSLO)  # window open only 02:30-02:45, skipped

    deliver_at = quiet_hours_release(now, time(2, 45), time(2, 30), "Europe/Oslo").deliver_at

    assert deliver_at == utc(2025, 3, 30, 1)
    again = quiet_hours_release(deliver_at, time(2, 45), time(2, 30), "Europe/Oslo")
    assert again.deliver_at == utc(2025, 3, 31, 0, 30)  # by wall time 03:00 is in the next window


def test_transitions_are_real():
    for name, instants in TRANSITIONS.items():
        zone = ZoneInfo(name)
        for instant in instants:
            before, after = (instant - TICK).astimezone(zone), instant.astimezone(zone)
            assert before.utcoffset() != after.utcoffset()


# Properties


def wall_inside(now: datetime, start: time | None, end: time | None, zone: ZoneInfo) -> bool:
    """Tell by modular arithmetic whether now's local wall time lies in [start, end)."""
    if start is None or end is None:
        return False
    since_start = (_micros(now.astimezone(zone).time()) - _micros(start)) % DAY_US
    return since_start < (_micros(end) - _micros(start)) % DAY_US


def _micros(moment: time) -> int:
    """Count microseconds since midnight."""
    seconds = (moment.hour * 60 + moment.minute) * 60 + moment.second
    return seconds * 1_000_000 + moment.microsecond


def clock_reaches(end: time, now: datetime, zone: ZoneInfo) -> datetime:
    """Find by brute force the first UTC minute after now when the local clock reaches end.

    Reaching means reading `end` or jumping over it. Exact for minute-resolution `end`
    because every zone in ZONES has whole-minute offsets and transitions.
    """
    moment = now.astimezone(UTC).replace(second=0, microsecond=0) + MINUTE
    while moment < now + 27 * HOUR:
        before = (moment - TICK).astimezone(zone).replace(tzinfo=None)
        at = moment.astimezone(zone).replace(tzinfo=None)
        for day in {before.date(), at.date()}:
            target = datetime.combine(day, end)
            if at == target or before < target <= at:
                return moment
        moment += MINUTE
    raise AssertionError(f"the clock never reads {end} after {now}")


def check_release(now: datetime, start: time, end: time, tz_name: str) -> None:
    """Check every promised property of one decision."""
    zone = ZoneInfo(tz_name)

    decision = quiet_hours_release(now, start, end, tz_name)

    assert decision.note is None
    assert (decision.deliver_at is None) == (not wall_inside(now, start, end, zone))
    assert is_within(now, start, end, tz_name) == wall_inside(now, start, end, zone)
    if decision.deliver_at is None:
        return
    deliver_at = decision.deliver_at
    assert deliver_at.utcoffset() == timedelta(0)
    assert now < deliver_at <= now + 25 * HOUR
    assert deliver_at == clock_reaches(end, now, zone)

    local = deliver_at.astimezone(zone)
    again = quiet_hours_release(deliver_at, start, end, tz_name).deliver_at
    if local.time() == end:
        assert again is None
    else:  # end fell in a gap: deliver_at is the jump, and the clock skipped end
        just_before = (deliver_at - TICK).astimezone(zone)
        assert just_before.utcoffset() < local.utcoffset()
        skipped = datetime.combine(local.date(), end)
        assert just_before.replace(tzinfo=None) < skipped < local.replace(tzinfo=None)
        assert again is None or end < start <= local.time()  # the whole open part was skipped


minute_times = st.builds(time, st.integers(0, 23), st.integers(0, 59))
small_hours = st.builds(time, st.integers(1, 3), st.integers(0, 59))  # where clocks change
window_times = st.one_of(minute_times, small_hours)
naive_instants = st.datetimes(datetime(2020, 1, 1), datetime(2030, 12, 31, 23, 59))
on_the_minute = naive_instants.map(lambda naive: naive.replace(second=0, microsecond=0))
instants = st.builds(
    lambda naive, shown_in: naive.replace(tzinfo=UTC).astimezone(ZoneInfo(shown_in)),
    st.one_of(naive_instants, on_the_minute),
    st.sampled_from(ZONES),
)
transitions = st.sampled_from([(name, at) for name, ats in TRANSITIONS.items() for at in ats])
near = st.one_of(
    st.timedeltas(min_value=-26 * HOUR, max_value=26 * HOUR),
    st.builds(timedelta, minutes=st.integers(-26 * 60, 26 * 60)),
)
OSLO_SPRING = ("Europe/Oslo", TRANSITIONS["Europe/Oslo"][0])
NEW_YORK_FALL = ("America/New_York", TRANSITIONS["America/New_York"][1])
SYDNEY_SPRING = ("Australia/Sydney", TRANSITIONS["Australia/Sydney"][1])


@settings(max_examples=400, deadline=None)
@given(now=instants, start=minute_times, end=minute_times, tz_name=st.sampled_from(ZONES))
def test_release_properties_anywhere(now, start, end, tz_name):
    check_release(now, start, end, tz_name)


@settings(max_examples=200, deadline=None)
@given(
    day=st.dates(min_value=date(2020, 1, 1), max_value=date(2030, 12, 31)),
    start=minute_times,
    end=minute_times,
    tz_name=st.sampled_from(ZONES),
    at_start=st.booleans(),
    fold=st.integers(0, 1),
)
def test_release_properties_on_the_window_edges(day, start, end, tz_name, at_start, fold):
    wall = datetime.combine(day, start if at_start else end, ZoneInfo(tz_name)).replace(fold=fold)
    check_release(wall.astimezone(UTC), start, end, tz_name)


@settings(max_examples=600, deadline=None)
@given(transition=transitions, offset=near, start=window_times, end=window_times)
@example(transition=OSLO_SPRING, offset=-2 * HOUR, start=time(22), end=time(2, 30))
@example(transition=NEW_YORK_FALL, offset=15 * MINUTE, start=time(22), end=time(1, 30))
@example(transition=NEW_YORK_FALL, offset=-15 * MINUTE, start=time(1, 30), end=time(1))
@example(transition=SYDNEY_SPRING, offset=-3 * HOUR, start=time(2, 45), end=time(2, 30))
def test_release_properties_near_dst_transitions(transition, offset, start, end):
    tz_name, at = transition
    check_release(at + offset, start, end, tz_name)
