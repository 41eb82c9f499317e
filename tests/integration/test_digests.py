"""Digests through real workers, beat, PostgreSQL, Redis and the APNs sandbox.

The tests run a stack of their own (workers and beat on a broker key prefix of their own) whose
workers hold `social` events in a digest window of a few seconds.
"""
from __future__ import annotations

import os
import signal
import time
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from notifier.accounts.status import get_status
from notifier.store import models
from notifier.store.redis_conn import broker_redis
from sandbox import devstack
from tasks.pipeline import send_notification, send_notifications
from tests.integration.environment import TEST_VAR, child_env
from tests.integration.isolation import isolated_broker, produce
from tests.integration.users import ios_user

TERMINAL = {status.value for status in models.TERMINAL}
WINDOW_S = 5
ACTORS = ("Anna", "Ben", "Carl", "Dana", "Eve")
# At most two social pushes a user an hour: five members would break it, one digest does not.
RATE_LIMITS = '[{"channel": "push", "category": "social", "max_count": 2, "window_s": 3600}]'


def _env(broker: str, window_s: float = WINDOW_S) -> dict[str, str]:
    return child_env() | {"NOTIFIER_BROKER_KEY_PREFIX": broker, "NOTIFIER_DIGEST_CATEGORIES": f"social={window_s}",
                          "NOTIFIER_RATE_LIMITS": RATE_LIMITS}


@pytest.fixture(scope="module")
def stack(sandbox, database):
    """A worker and beat whose workers digest `social` in a window of WINDOW_S seconds."""
    logs = TEST_VAR / "logs" / "digests"
    with isolated_broker("digests") as broker:
        env = _env(broker)
        worker = devstack.start_worker(env, logs / "worker.log")
        beat = devstack.start_beat(env, logs / "beat.log", logs / "beat")
        try:
            yield broker
        finally:
            devstack.stop(beat)
            devstack.stop(worker)


def _liked(unique, user: str, actor: str, **extra) -> dict:
    return {"notification_id": unique("like"), "user_id": user, "type": "post_liked", "category": "social",
            "priority": "normal", "title": f"{actor} liked your post", "body": "Sunset at the lake",
            "data": {"actor": actor, "action": "liked your post", "post": "p-1"}} | extra


def _only(nid: str) -> dict:
    [row] = get_status(nid)
    return row


def _digested_into(nids: list[str]) -> str | None:
    """The digest id all these members name, once every one of them is held; else None."""
    rows = [r for nid in nids for r in get_status(nid)]
    if len(rows) < len(nids) or any(r["status"] != "suppressed" for r in rows):
        return None
    reasons = {r["reason"] for r in rows}
    if len(reasons) != 1 or not next(iter(reasons)).startswith("digested into "):
        return None
    return next(iter(reasons)).removeprefix("digested into ")


def _gauge(name: str) -> float:
    from notifier.ops import exporter

    [line] = [line for line in exporter.render().decode().splitlines() if line.startswith(name + " ")]
    return float(line.split()[1])


def _sent(nid: str):
    rows = get_status(nid)
    return rows if rows and all(r["status"] in TERMINAL for r in rows) else None


def test_the_window_survives_the_worker_killed_and_the_broker_emptied_inside_it(sandbox, database, wait_until, unique):
    # Given a stack with a longer window, and three members held in it. (First in the module, before the
    # module's stack starts: no other beat of this run could close the window while this one is dead.)
    window_s = 12
    logs = TEST_VAR / "logs" / "digests-restart"
    with isolated_broker("digests-restart") as broker:
        env = _env(broker, window_s)
        worker = devstack.start_worker(env, logs / "worker-1.log", new_session=True)
        beat = devstack.start_beat(env, logs / "beat.log", logs / "beat")
        second = None
        try:
            user, token = ios_user(unique)
            events = [_liked(unique, user, actor) for actor in ACTORS[:3]]
            produce(broker, send_notifications, events)
            nids = [e["notification_id"] for e in events]
            digest_id = wait_until(lambda: _digested_into(nids), timeout_s=20)

            # When, inside the window, the worker is killed (parent and children), beat stops, and every
            # broker key is lost (a Redis restart without data)
            assert get_status(digest_id) == []
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
            killed_at = time.monotonic()
            devstack.stop(beat)
            r = broker_redis()
            for key in r.scan_iter(match=broker + "*"):
                r.delete(key)

            # Then a new worker and beat send the digest once, when the window closes
            # (nothing is left that could close the window meanwhile: it is still open)
            assert get_status(digest_id) == []
            second = devstack.start_worker(env, logs / "worker-2.log")
            beat = devstack.start_beat(env, logs / "beat-2.log", logs / "beat-2")
            [row] = wait_until(lambda: _sent(digest_id), timeout_s=window_s + 40)
            assert row["status"] == "sent" and row["digest_members"] == nids
            time.sleep(2)
            [push] = sandbox.messages(target=token)
            assert push["payload"]["aps"]["alert"]["title"] == "Anna and 2 others liked your post"
            print(f"\ndigest sent {time.monotonic() - killed_at:.1f} s after the worker was killed "
                  f"({window_s} s window)")
        finally:
            devstack.stop(second)
            devstack.stop(beat)
            devstack.stop(worker)


def test_five_social_events_become_one_push_with_the_summary(stack, sandbox, wait_until, unique):
    # Given a user with one iPhone, and five "liked your post" events within the window
    user, token = ios_user(unique)
    events = [_liked(unique, user, actor) for actor in ACTORS]
    produce(stack, send_notifications, events)
    nids = [e["notification_id"] for e in events]

    # Then every member ends `suppressed`, "digested into <one digest id>", and nothing is sent yet
    digest_id = wait_until(lambda: _digested_into(nids), timeout_s=20)
    assert sandbox.messages(target=token) == []
    assert _gauge("notifier_digest_windows") >= 1  # the open window shows in the metrics

    # And once the window closes, exactly one push goes out, with the summary
    [row] = wait_until(lambda: _sent(digest_id), timeout_s=WINDOW_S + 30)
    assert row["status"] == "sent", row
    assert row["digest_members"] == nids
    time.sleep(2)  # a second digest (a re-run of the release) would show up by now
    [push] = sandbox.messages(target=token)
    alert = push["payload"]["aps"]["alert"]
    assert alert["title"] == "Anna and 4 others liked your post"
    assert alert["body"].splitlines() == ["Eve liked your post", "Dana liked your post", "Carl liked your post",
                                          "…and 2 more"]
    assert push["payload"]["digest"] == {"category": "social", "count": 5}
    # The members were not counted against the rate limit (2 an hour): only the digest was
    assert all(_only(nid)["reason"] == f"digested into {digest_id}" for nid in nids)
    member = _only(nids[0])
    print(f"\nmember {nids[0]}: {member['status']}, {member['reason']!r}"
          f"\ndigest {digest_id}: {row['status']}, members {row['digest_members']}"
          f"\npush (sandbox record): {alert} data {push['payload']['digest']}")


def test_a_critical_social_event_bypasses_the_window(stack, sandbox, wait_until, unique):
    # Given a window open with two held members
    user, token = ios_user(unique)
    held = [_liked(unique, user, actor) for actor in ACTORS[:2]]
    produce(stack, send_notifications, held)
    digest_id = wait_until(lambda: _digested_into([e["notification_id"] for e in held]), timeout_s=20)

    # When a critical social event arrives inside the window
    urgent = _liked(unique, user, "Zoe", priority="critical", title="Zoe reported your account")
    produce(stack, send_notification, urgent)

    # Then it is sent at once, on its own, while the window is still open
    [row] = wait_until(lambda: _sent(urgent["notification_id"]), timeout_s=20)
    assert row["status"] == "sent" and row["reason"] is None
    assert get_status(digest_id) == []  # the window has not closed yet
    assert [m["payload"]["aps"]["alert"]["title"] for m in sandbox.messages(target=token)] == [
        "Zoe reported your account"]

    # And the digest of the other two follows when the window closes
    [digest] = wait_until(lambda: _sent(digest_id), timeout_s=WINDOW_S + 30)
    assert digest["status"] == "sent" and digest["digest_members"] == [e["notification_id"] for e in held]
    assert [m["payload"]["aps"]["alert"]["title"] for m in sandbox.messages(target=token)] == [
        "Zoe reported your account", "Anna and Ben liked your post"]


def test_quiet_hours_defer_the_digest_not_the_members(stack, sandbox, wait_until, unique):
    # Given a user whose quiet hours (in their own timezone) end WINDOW_S + 6 seconds from now
    tz = "Asia/Kolkata"
    now = datetime.now(timezone.utc)
    local = now.astimezone(ZoneInfo(tz))
    quiet_end = now + timedelta(seconds=WINDOW_S + 6)
    user, token = ios_user(unique, quiet_start=(local - timedelta(hours=1)).time(),
                            quiet_end=quiet_end.astimezone(ZoneInfo(tz)).time(), timezone=tz)
    events = [_liked(unique, user, actor) for actor in ACTORS[:3]]
    produce(stack, send_notifications, events)

    # Then the members are digested at once (not each deferred)
    digest_id = wait_until(lambda: _digested_into([e["notification_id"] for e in events]), timeout_s=20)

    # And the digest, made when the window closes, waits as `scheduled` for the end of quiet hours
    [row] = wait_until(lambda: [r for r in get_status(digest_id) if r["status"] == "scheduled"],
                       timeout_s=WINDOW_S + 30)
    assert "quiet hours" in row["reason"] and tz in row["reason"]
    assert sandbox.messages(target=token) == []

    # And is sent once they are over, not before, once
    [row] = wait_until(lambda: _sent(digest_id), timeout_s=40)
    assert row["status"] == "sent"
    sent_at = row["sent_at"] if row["sent_at"].tzinfo else row["sent_at"].replace(tzinfo=timezone.utc)
    assert sent_at >= quiet_end - timedelta(seconds=1)
    [push] = sandbox.messages(target=token)
    assert push["payload"]["aps"]["alert"]["title"] == "Anna and 2 others liked your post"


def test_a_single_member_goes_out_as_it_came(stack, sandbox, wait_until, unique):
    # Given one social event alone in its window
    user, token = ios_user(unique)
    event = _liked(unique, user, "Anna")
    produce(stack, send_notification, event)
    digest_id = wait_until(lambda: _digested_into([event["notification_id"]]), timeout_s=20)

    # Then the digest carries the producer's own title, body and data, unchanged
    [row] = wait_until(lambda: _sent(digest_id), timeout_s=WINDOW_S + 30)
    assert row["status"] == "sent" and row["digest_members"] == [event["notification_id"]]
    [push] = sandbox.messages(target=token)
    assert push["payload"]["aps"]["alert"] == {"title": "Anna liked your post", "body": "Sunset at the lake"}
    assert push["payload"]["actor"] == "Anna" and push["payload"]["post"] == "p-1"


def test_holds_and_closes_racing_lose_no_member_and_make_one_digest_per_window(database, clean_redis, unique):
    # Given 200 accepted social events for one user, and windows of 50 ms, so that windows open and
    # close all the time while members are being added (the module's stack, when running, closes
    # some too: one more racing release)
    import threading

    from sqlalchemy import select

    from notifier.intake import accept as intake
    from notifier.intake.events import parse_event
    from notifier.pipeline.digests import close_due
    from notifier.pipeline.filtering import filter_deliveries
    from notifier.store.db import transaction
    from notifier.store.delivery_log import utcnow
    from notifier.store.models import NotificationLog
    from notifier.store.redis_conn import get_redis

    user, _token = ios_user(unique)
    events = [parse_event(_liked(unique, user, f"actor{i}")) for i in range(200)]
    ids = intake.store(events)[0].queued["low"]
    assert len(ids) == 200
    holding = True
    errors: list[BaseException] = []

    def hold(chunk_ids):
        try:
            for i in range(0, len(chunk_ids), 5):
                with transaction() as session:
                    assert filter_deliveries(session, get_redis(), chunk_ids[i:i + 5], utcnow(), (),
                                             {"social": 0.05}) == []
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    def close():
        try:
            while holding:
                with transaction() as session:
                    close_due(session, get_redis(), utcnow())
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    # When four filter workers hold them (five at a time) while three releases close windows
    holders = [threading.Thread(target=hold, args=(ids[k::4],)) for k in range(4)]
    closers = [threading.Thread(target=close) for _ in range(3)]
    for t in holders + closers:
        t.start()
    for t in holders:
        t.join(120)
    time.sleep(0.2)
    holding = False
    for t in closers:
        t.join(60)
    with transaction() as session:
        close_due(session, get_redis(), utcnow())  # the windows opened last
    assert not errors, errors

    # Then every member names a digest, and that digest (one row: one device) lists it; none is in two
    members = [_only(e.notification_id) for e in events]
    assert all(m["status"] == "suppressed" and m["reason"].startswith("digested into ") for m in members)
    digest_ids = {m["reason"].removeprefix("digested into ") for m in members}
    with transaction() as session:
        digests = session.execute(select(NotificationLog.notification_id, NotificationLog.payload).where(
            NotificationLog.notification_id.in_(digest_ids))).all()
    assert sorted(nid for nid, _ in digests) == sorted(digest_ids)  # exactly one row per digest
    listed = [m for _, payload in digests for m in payload["digest"]["members"]]
    assert sorted(listed) == sorted(e.notification_id for e in events)
    for m in members:
        [payload] = [p for nid, p in digests if nid == m["reason"].removeprefix("digested into ")]
        assert m["notification_id"] in payload["digest"]["members"]
    print(f"\n200 members held by 4 racing filters into {len(digest_ids)} digests closed by 3 racing releases")


def test_a_digest_that_cannot_be_made_ends_failed_and_the_other_windows_go_on(database, clean_redis, unique):
    # Given two windows due, one of whose member rows a bug has left without a title
    from sqlalchemy import update

    from notifier.intake import accept as intake
    from notifier.intake.events import parse_event
    from notifier.pipeline.digests import close_due
    from notifier.pipeline.filtering import filter_deliveries
    from notifier.store.db import transaction
    from notifier.store.delivery_log import LOG, utcnow
    from notifier.store.redis_conn import get_redis

    (broken_user, _), (fine_user, _) = ios_user(unique), ios_user(unique)
    broken, fine = parse_event(_liked(unique, broken_user, "Anna")), parse_event(_liked(unique, fine_user, "Ben"))
    ids = intake.store([broken, fine])[0].queued["low"]
    with transaction() as session:
        # An hour's window: only this test's close (two hours on) is due to close it, not the stack's beat.
        filter_deliveries(session, get_redis(), ids, utcnow(), (), {"social": 3600})
        session.execute(update(LOG).where(LOG.c.notification_id == broken.notification_id)
                        .values(payload={"title": "", "body": "", "data": {}}))

    # When the release closes them
    with transaction() as session:
        closed = close_due(session, get_redis(), utcnow() + timedelta(hours=2))

    # Then the broken one's digest says `failed` and why, listing its member; the other is queued to send
    assert closed.windows == 2 and len(closed.ready) == 1
    broken_digest = _only(broken.notification_id)["reason"].removeprefix("digested into ")
    [row] = get_status(broken_digest)
    assert row["status"] == "failed" and row["reason"].startswith("digest could not be made: ValidationError")
    assert row["digest_members"] == [broken.notification_id]
    fine_digest = _only(fine.notification_id)["reason"].removeprefix("digested into ")
    assert [r["status"] for r in get_status(fine_digest)] == ["queued"]
