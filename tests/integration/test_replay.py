"""Replay of failed deliveries, through real workers, PostgreSQL, Redis and the APNs sandbox.

An APNs outage (503 for every attempt a delivery gets) leaves deliveries `failed`; the outage
ends (the sandbox's fault is used up); the operator replays them. Each is sent once more, under
its idempotency key; a delivery that was sent is never sent again.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests
from sqlalchemy import select

import notifier
from notifier.accounts.status import get_status
from notifier.pipeline import dedup
from notifier.pipeline.replay import Selection
from notifier.settings import get_settings
from notifier.store.db import transaction
from notifier.store.models import NotificationLog
from notifier.store.redis_conn import get_redis
from tasks.replay import replay_failed
from tests.integration.api_fixture import api  # noqa: F401 (fixture)
from tests.integration.environment import child_env
from tests.integration.users import ios_user

ROOT = Path(__file__).resolve().parents[2]


def _notifier(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "entrypoints.cli", *argv], env=child_env(), capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def _send(unique, user: str) -> str:
    nid = unique("n")
    notifier.send_notification.delay({"notification_id": nid, "user_id": user, "type": "order_shipped",
                                      "category": "transactional", "priority": "high", "channels": ["push"],
                                      "title": "Shipped", "body": "On its way"})
    return nid


def _status(nid: str) -> str | None:
    rows = get_status(nid)
    return rows[0]["status"] if len(rows) == 1 else None


def _row(nid: str) -> NotificationLog:
    with transaction() as session:
        return session.scalars(select(NotificationLog).where(NotificationLog.notification_id == nid)).one()


def _outage(sandbox, unique, wait_until, n: int) -> list[tuple[str, str]]:
    """n deliveries that failed because APNs answered 503 to every attempt; the outage is over after."""
    attempts = get_settings().max_attempts
    sent = []
    for _ in range(n):
        user, token = ios_user(unique)
        # Exactly as many 503s as a delivery has attempts: it fails, and the fault is then used up.
        sandbox.add_fault("apns", token, status=503, reason="ServiceUnavailable", count=attempts)
        sent.append((_send(unique, user), token))
    for nid, _ in sent:
        wait_until(lambda: _status(nid) == "failed", timeout_s=60, message=f"{nid} did not fail")
    for nid, token in sent:
        assert sandbox.messages(target=token) == []
        assert "ServiceUnavailable" in _row(nid).reason
    return sent


def test_replay_after_an_outage_sends_each_failed_delivery_once_and_never_a_sent_one(worker, sandbox, wait_until,
                                                                                     unique):
    # Given three deliveries failed by an APNs outage, and one sent before it
    user, ok_token = ios_user(unique)
    ok_nid = _send(unique, user)
    wait_until(lambda: _status(ok_nid) == "sent")
    failed = _outage(sandbox, unique, wait_until, 3)
    ids = [a for nid, _ in failed for a in ("--notification-id", nid)]

    # When the operator asks for a dry run: it shows them, and nothing is sent or changed
    before = sandbox.request_count("apns")
    dry = _notifier("replay", *ids, "--provider", "apns", "--reason", "serviceunavailable",
                    "--why", "APNs outage over", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    print(dry.stdout)
    assert dry.stdout.startswith("would replay 3 of 3 matching failed deliveries")
    time.sleep(1.5)
    assert sandbox.request_count("apns") == before
    assert all(_status(nid) == "failed" for nid, _ in failed)

    # And then replays them (the sent one named too)
    run = _notifier("replay", *ids, "--notification-id", ok_nid, "--channel", "push", "--why", "APNs outage over",
                    "--by", "ops-ana")
    assert run.returncode == 0, run.stderr
    print(run.stdout)
    assert run.stdout.startswith("replayed 3 of 3 matching failed deliveries")

    # Then each failed delivery is sent exactly once, under its key, and the replay is on its row
    for nid, token in failed:
        wait_until(lambda: _status(nid) == "sent", timeout_s=30, message=f"{nid} not sent after the replay")
    time.sleep(1.5)  # nothing more arrives later
    for nid, token in failed:
        assert len(sandbox.messages(target=token)) == 1
        row = _row(nid)
        assert (row.replays, row.replayed_by, row.replay_reason) == (1, "cli:ops-ana", "APNs outage over")
        assert row.replayed_at is not None and row.sent_at is not None
    # And the one that was sent is not sent again
    assert len(sandbox.messages(target=ok_token)) == 1 and _row(ok_nid).replays == 0

    # When the same replay runs again, nothing matches: they are sent now
    again = replay_failed(Selection(notification_ids=[nid for nid, _ in failed] + [ok_nid], why="again"),
                          by="test")
    assert (again.matched, again.replayed) == (0, [])
    time.sleep(1)
    assert [len(sandbox.messages(target=token)) for _, token in failed] == [1, 1, 1]


def test_two_replays_at_once_send_each_delivery_once(worker, sandbox, wait_until, unique):
    failed = _outage(sandbox, unique, wait_until, 4)
    selection = Selection(notification_ids=[nid for nid, _ in failed], why="two operators at once")
    results, barrier = [], threading.Barrier(2)

    def run(by: str) -> None:
        barrier.wait()
        results.append(replay_failed(selection, by=by))

    threads = [threading.Thread(target=run, args=(f"op{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(i for r in results for i in r.replayed) == sorted(_row(nid).id for nid, _ in failed)
    for nid, _ in failed:
        wait_until(lambda: _status(nid) == "sent", timeout_s=30)
    time.sleep(1.5)
    assert [len(sandbox.messages(target=token)) for _, token in failed] == [1, 1, 1, 1]
    assert all(_row(nid).replays == 1 for nid, _ in failed)


def test_the_limit_holds_and_the_api_replays_with_an_admin_key(worker, sandbox, wait_until, unique, api):  # noqa: F811
    failed = _outage(sandbox, unique, wait_until, 3)
    body = {"notification_ids": [nid for nid, _ in failed], "why": "fixed", "limit": 2}

    # A producer key may not replay; a limit above the maximum is refused, naming it
    assert requests.post(api.url + "/v1/admin/replay", json=body, headers=api.auth(), timeout=30).status_code == 403
    too_many = requests.post(api.url + "/v1/admin/replay", json=body | {"limit": get_settings().replay_limit_max + 1},
                             headers=api.auth(api.admin_key), timeout=30)
    assert too_many.status_code == 422 and "limit" in too_many.text
    unnarrowed = requests.post(api.url + "/v1/admin/replay", json={"why": "everything"},
                               headers=api.auth(api.admin_key), timeout=30)
    assert unnarrowed.status_code == 422 and "notification_ids" in unnarrowed.text

    # A dry run through the API: the count and a sample, no target in it
    dry = requests.post(api.url + "/v1/admin/replay", json=body | {"dry_run": True},
                        headers=api.auth(api.admin_key), timeout=30)
    assert dry.status_code == 200, dry.text
    assert (dry.json()["matched"], dry.json()["replayed"]) == (3, 2)
    assert all(token not in dry.text for _, token in failed)

    # The replay takes two of the three (oldest failures first)
    answer = requests.post(api.url + "/v1/admin/replay", json=body, headers=api.auth(api.admin_key), timeout=30)
    assert answer.status_code == 200, answer.text
    assert (answer.json()["matched"], answer.json()["replayed"]) == (3, 2)
    replayed = set(answer.json()["delivery_ids"])
    for nid, _ in failed:
        if _row(nid).id in replayed:
            wait_until(lambda: _status(nid) == "sent", timeout_s=30)
    time.sleep(1)
    statuses = sorted(_status(nid) for nid, _ in failed)
    assert statuses == ["failed", "sent", "sent"]
    assert sum(len(sandbox.messages(target=token)) for _, token in failed) == 2
    assert all(_row(nid).replayed_by.startswith("key:") for nid, _ in failed if _row(nid).id in replayed)


def test_a_failed_delivery_whose_key_says_sent_is_never_replayed(worker, sandbox, wait_until, unique):
    # Given a failed delivery whose dedup key says a provider accepted it (its record was lost)
    [(nid, token)] = _outage(sandbox, unique, wait_until, 1)
    get_redis().set(dedup.lease_key(get_redis(), _row(nid).idempotency_key), dedup.SENT, ex=60)

    result = replay_failed(Selection(notification_ids=[nid], why="outage over"), by="test")

    assert result.replayed == [] and result.marked_sent == [_row(nid).id]
    time.sleep(1)
    assert _status(nid) == "failed" and sandbox.messages(target=token) == []
    assert json.loads(json.dumps(result.as_dict(), default=str))["refused_already_sent"] == [_row(nid).id]
