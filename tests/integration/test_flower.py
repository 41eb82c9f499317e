"""Flower (`notifier flower`) as a real process against the test broker and a real worker.

Basic auth guards the UI and the API; the task arguments Flower shows name notifications,
lanes and delivery ids, never a device token, email address or phone number.
"""
from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests

import notifier
from sandbox import devstack
from notifier.accounts.devices import register_device
from notifier.accounts.preferences import set_preferences
from notifier.accounts.status import get_status
from tests.integration.environment import TEST_VAR, child_env

ROOT = devstack.ROOT


@dataclass
class Flower:
    url: str
    auth: tuple[str, str]

    def api(self, path: str, **params) -> dict | list:
        response = requests.get(self.url + path, params=params, auth=self.auth, timeout=10)
        response.raise_for_status()
        return response.json()


@pytest.fixture(scope="module")
def flower(worker) -> Iterator[Flower]:
    """`notifier flower` on a free loopback port, with fresh basic-auth credentials."""
    auth = ("ops", secrets.token_urlsafe(12))
    port = devstack.free_port()
    log_path = TEST_VAR / "logs" / "flower.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "entrypoints.cli", "flower", "--address", "127.0.0.1", "--port", str(port)],
        env=child_env() | {"NOTIFIER_FLOWER_BASIC_AUTH": ":".join(auth)},
        cwd=ROOT, stdout=log_path.open("ab"), stderr=subprocess.STDOUT,
    )
    try:
        devstack.wait_for_port("127.0.0.1", port, proc=proc)
        flower = Flower(f"http://127.0.0.1:{port}", auth)
        # Flower answers HTTP before its event receiver listens, and a chain now runs in well under a
        # second: wait until it has seen a task (beat releases due deliveries every half second), so a
        # test's own tasks are not missed.
        deadline = time.monotonic() + 60
        while not flower.api("/api/tasks", taskname="notifier.release_due", limit=1):
            assert time.monotonic() < deadline, "Flower saw no task event within 60 s"
            time.sleep(0.2)
        yield flower
    finally:
        devstack.stop(proc)


def test_flower_refuses_to_start_without_credentials():
    env = child_env() | {"NOTIFIER_FLOWER_BASIC_AUTH": ""}
    result = subprocess.run([sys.executable, "-m", "entrypoints.cli", "flower", "--port", "1"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "NOTIFIER_FLOWER_BASIC_AUTH" in result.stderr and "--no-auth" in result.stderr


def test_ui_and_api_need_basic_auth(flower):
    for path in ("/", "/tasks", "/api/workers", "/api/tasks"):
        assert requests.get(flower.url + path, timeout=10).status_code == 401, path
        assert requests.get(flower.url + path, auth=("ops", "wrong"), timeout=10).status_code == 401, path
    assert requests.get(flower.url + "/tasks", auth=flower.auth, timeout=10).status_code == 200


def test_metrics_and_healthcheck_stay_open_so_the_port_must_stay_private(flower):
    # Flower serves these without auth (documented in README "Flower"); this keeps the warning true.
    assert requests.get(flower.url + "/healthcheck", timeout=10).status_code == 200
    assert requests.get(flower.url + "/metrics", timeout=10).status_code == 200


def test_api_sees_the_worker(flower, wait_until):
    workers = wait_until(lambda: flower.api("/api/workers", refresh="true"), timeout_s=30,
                         message="Flower lists no worker")
    registered = {name for info in workers.values() for name in info.get("registered", [])}
    assert {"notifier.send_notification", "notifier.filter", "notifier.dedup", "notifier.send_push"} <= registered


def test_a_notification_chain_reads_by_ids_and_never_shows_a_target(flower, worker, wait_until, unique):
    # Given Flower already receives task events (beat's release task shows up every half second)
    wait_until(lambda: flower.api("/api/tasks", taskname="notifier.release_due", limit=1), timeout_s=30,
               message="Flower receives no task events")
    # And a user with an iOS device, an email address and a phone number
    user, token, nid = unique("user"), secrets.token_hex(32), unique("n")
    email, phone = f"{unique('mail')}@example.com", "+4790000001"
    set_preferences(user, email=email, phone=phone)
    register_device(user, token, "ios")

    # When one notification goes through the pipeline
    notifier.send_notification.delay({
        "notification_id": nid, "user_id": user, "type": "order_shipped", "category": "transactional",
        "priority": "high", "channels": ["push"], "title": "Shipped", "body": "On its way",
    })
    [delivery] = wait_until(lambda: [r for r in get_status(nid) if r["status"] == "sent"], timeout_s=30)

    # Then searching Flower for the notification id finds its first task: the filter stage of the deliveries
    # the producer stored (intake routes before delay() returns), its args naming the notification
    # (the later stages name it too: in their results, and the send task in its arguments)
    found = wait_until(lambda: {i: t for i, t in flower.api("/api/tasks", search=nid).items()
                                if t["name"] == "notifier.filter"}, timeout_s=30,
                       message="Flower search by notification id finds nothing")
    [(root_id, root)] = found.items()
    assert f"notification_id={nid}" in root["args"] and "priority=high" in root["args"]

    # And its chain follows by root id: filter (with its dedup stage) -> send_push, each naming the delivery
    # and the lane; the filter task's result says what its dedup stage claimed, per channel
    def chain() -> dict[str, dict]:
        tasks = flower.api("/api/tasks", limit=1000)
        mine = {t["name"]: t for t in tasks.values() if t.get("root_id") == root_id}
        done = mine.get("notifier.filter", {}).get("state") == "SUCCESS"
        return mine if done and {"notifier.filter", "notifier.send_push"} <= set(mine) else {}

    stages = wait_until(chain, timeout_s=30, message="the chain's tasks never all reached Flower")
    for name in ("notifier.filter", "notifier.send_push"):
        assert f"deliveries=[{delivery['delivery_id']}]" in stages[name]["args"], stages[name]
        assert "lane=high" in stages[name]["args"], stages[name]
        assert stages[name]["kwargs"] == "{}"
    assert "'claimed': {'push': 1}" in stages["notifier.filter"]["result"], stages["notifier.filter"]["result"]
    assert nid in stages["notifier.filter"]["result"]
    assert "notifier.dedup" not in stages  # run inside the filter task on this path (docs/operations.md)
    assert stages["notifier.send_push"]["parent_id"] == root_id

    # And nothing Flower holds about any task shows the token, the address or the number
    shown = json.dumps(flower.api("/api/tasks", limit=100000))
    for secret in (token, email, phone):
        assert secret not in shown


# ---- Flower shows the truth: a send batch's summary, its failure, and the way from a delivery to its task.

def _email_event(nid: str, user: str) -> dict:
    return {"notification_id": nid, "user_id": user, "type": "receipt", "category": "transactional",
            "priority": "high", "channels": ["email"], "title": "Receipt", "body": "Thanks"}


def _email_users(unique, sandbox, faults: list[bool]) -> list[tuple[str, str, str]]:
    """(notification id, user, address) per flag; SendGrid answers 500 to a flagged address, every time."""
    made = []
    for fault in faults:
        user, nid, address = unique("user"), unique("n"), f"{unique('mail')}@example.com"
        set_preferences(user, email=address)
        if fault:
            sandbox.add_fault("sendgrid", address, status=500, count=None)
        made.append((nid, user, address))
    return made


def _failed_tasks(flower: Flower) -> int:
    """The Failed count of Flower's workers page, summed over the workers."""
    response = requests.get(flower.url + "/workers", params={"json": 1}, auth=flower.auth, timeout=10)
    response.raise_for_status()
    return sum(worker.get("task-failed", 0) for worker in response.json()["data"])


def _send_email_tasks(flower: Flower, nid: str) -> dict[str, dict]:
    """The send_email tasks Flower's search finds for a notification id, by task id."""
    found = flower.api("/api/tasks", search=nid, limit=1000)
    return {task_id: t for task_id, t in found.items() if t["name"] == "notifier.send_email"}


def test_a_batch_whose_provider_failed_is_a_failed_task_with_its_summary(flower, worker, sandbox, wait_until,
                                                                          unique):
    # Given two users whose email addresses SendGrid answers 500 for, every time
    (nid1, user1, address1), (nid2, user2, address2) = _email_users(unique, sandbox, [True, True])
    failed_before = _failed_tasks(flower)

    # When their notifications go through real workers as one batch
    notifier.send_notifications.delay([_email_event(nid1, user1), _email_event(nid2, user2)])

    # Then each delivery ends failed after the attempts allowed (3 here), each attempt a send_email task
    def failed() -> list[dict]:
        rows = get_status(nid1) + get_status(nid2)
        return rows if [r["status"] for r in rows] == ["failed", "failed"] else []

    rows = wait_until(failed, timeout_s=90, message="the deliveries never ended failed")
    assert all(r["attempts"] == 3 and "sendgrid 500" in r["reason"] for r in rows), rows

    # And the batch's first send task is FAILURE in Flower, found by either notification id, its
    # failure the batch's summary: both deliveries rescheduled, both notifications named
    ids = {str(r["delivery_id"]) for r in rows}

    def batches() -> dict:
        tasks = _send_email_tasks(flower, nid2)
        return {i: t for i, t in tasks.items() if all(d in t["args"] for d in ids) and t["state"] == "FAILURE"}

    found = wait_until(batches, timeout_s=30, message="Flower shows no failed batch")
    batch_id, batch = min(found.items(), key=lambda item: item[1]["received"])  # the first attempt
    assert f"n=2" in batch["args"] and nid1 in batch["args"] and nid2 in batch["args"]
    assert "none of 2 deliveries sent (2 retry)" in batch["exception"], batch["exception"]
    assert '"retry": 2' in batch["exception"] and '"sent": 0' in batch["exception"]
    assert nid1 in batch["exception"] and nid2 in batch["exception"]
    assert batch["result"] is None and batch["retries"] == 0
    assert flower.api(f"/api/task/info/{batch_id}")["state"] == "FAILURE"

    # And each row names the send task that last handled it: a FAILURE whose summary says it gave up
    for row in rows:
        info = wait_until(lambda row=row: _task_info_when_done(flower, row["task_id"]), timeout_s=30,
                          message=f"Flower never saw task {row['task_id']}")
        assert info["name"] == "notifier.send_email" and info["state"] == "FAILURE", info
        assert '"failed": ' in info["exception"] and row["notification_id"] in info["exception"], info
        assert '"failed": 0' not in info["exception"], info

    # And the workers page counts every failed attempt (3 attempts: at least 3 failed tasks)
    wait_until(lambda: _failed_tasks(flower) >= failed_before + 3, timeout_s=30,
               message="Flower's workers page does not count the failed tasks")
    # And no failed task was run again by Celery: SendGrid answered one request per attempt recorded
    # (its fault's hits, per address), also a few seconds after the last one
    time.sleep(2)
    hits = sum(f["hits"] for f in sandbox.faults() if f["target"] in (address1, address2))
    assert hits == sum(r["attempts"] for r in rows) == 6
    tasks = {**_send_email_tasks(flower, nid1), **_send_email_tasks(flower, nid2)}
    assert {t["state"] for t in tasks.values()} == {"FAILURE"} and {t["retries"] for t in tasks.values()} == {0}


def _task_info_when_done(flower: Flower, task_id: str) -> dict | None:
    try:
        info = flower.api(f"/api/task/info/{task_id}")
    except requests.HTTPError:
        return None  # 404: its events have not reached Flower yet
    return info if info.get("state") in ("SUCCESS", "FAILURE") else None


def test_a_batch_that_sent_some_succeeds_with_counts_and_every_stage_names_its_notifications(
        flower, worker, sandbox, wait_until, unique):
    # Given one user whose address SendGrid refuses (500) and one it accepts
    (bad_nid, bad_user, _), (nid, user, _) = _email_users(unique, sandbox, [True, False])

    # When both notifications go as one batch
    notifier.send_notifications.delay([_email_event(bad_nid, bad_user), _email_event(nid, user)])
    wait_until(lambda: [r for r in get_status(nid) if r["status"] == "sent"], timeout_s=60)

    # Then the send task succeeded, its result counting one sent and one rescheduled, naming both
    def batch() -> dict:
        return {i: t for i, t in _send_email_tasks(flower, nid).items() if t["state"] == "SUCCESS"}

    [(batch_id, task)] = wait_until(batch, timeout_s=30, message="Flower shows no successful batch").items()
    assert "'sent': 1" in task["result"] and "'retry': 1" in task["result"], task["result"]
    assert bad_nid in task["result"] and nid in task["result"]
    [sent] = [r for r in get_status(nid) if r["status"] == "sent"]
    assert sent["task_id"] == batch_id

    # And searching Flower for the second notification (the filter task's arguments name only the
    # first) finds every stage of the batch: their results name the notifications they handled
    def stages() -> set[str]:
        names = {t["name"] for t in flower.api("/api/tasks", search=nid, limit=1000).values()}
        return names if {"notifier.filter", "notifier.send_email"} <= names else set()

    wait_until(stages, timeout_s=30, message="Flower's search does not find every stage by notification id")
    found = flower.api("/api/tasks", search=nid, limit=1000)
    [filter_task] = [t for t in found.values() if t["name"] == "notifier.filter"]
    assert nid not in filter_task["args"] and nid in filter_task["result"] and bad_nid in filter_task["result"]


def test_status_cli_and_api_show_the_task_and_its_flower_link(flower, worker, sandbox, wait_until, unique):
    # Given a delivery whose SendGrid call failed (a 500), rescheduled or failed by now
    [(nid, user, _)] = _email_users(unique, sandbox, [True])
    notifier.send_notification.delay(_email_event(nid, user))
    [row] = wait_until(lambda: [r for r in get_status(nid) if r["status"] == "failed"], timeout_s=90)
    task_id = row["task_id"]
    assert task_id and row["task_url"] is None  # no NOTIFIER_FLOWER_URL here
    wait_until(lambda: _task_info_when_done(flower, task_id), timeout_s=30)
    link = f"{flower.url}/task/{task_id}"

    # When staff look it up with NOTIFIER_FLOWER_URL set: through the CLI ...
    env = child_env() | {"NOTIFIER_FLOWER_URL": flower.url + "/"}
    shown = subprocess.run([sys.executable, "-m", "entrypoints.cli", "status", nid], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    [cli_row] = json.loads(shown.stdout)
    # ... and through the HTTP API
    from notifier.accounts import api_keys
    from tests.integration.api_fixture import serve

    _, key = api_keys.create_key("tests: status", "status")
    with serve(env, "api-flower.log") as url:
        answer = requests.get(f"{url}/v1/notifications/{nid}", headers={"Authorization": f"Bearer {key}"},
                              timeout=10)
    assert answer.status_code == 200, answer.text
    [api_row] = answer.json()["deliveries"]

    # Then both show the task and the link to its page in Flower, which shows it failed
    for shown_row in (cli_row, api_row):
        assert (shown_row["task_id"], shown_row["task_url"]) == (task_id, link), shown_row
    page = requests.get(link, auth=flower.auth, timeout=10)
    assert page.status_code == 200 and "FAILURE" in page.text and "notifier.send_email" in page.text
