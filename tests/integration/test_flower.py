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
    found = wait_until(lambda: flower.api("/api/tasks", search=nid), timeout_s=30,
                       message="Flower search by notification id finds nothing")
    [(root_id, root)] = found.items()
    assert root["name"] == "notifier.filter"
    assert f"notification_id={nid}" in root["args"] and "priority=high" in root["args"]

    # And its chain follows by root id: filter -> dedup -> send_push, each naming the delivery and the lane
    def chain() -> dict[str, dict]:
        tasks = flower.api("/api/tasks", limit=1000)
        mine = {t["name"]: t for t in tasks.values() if t.get("root_id") == root_id}
        return mine if {"notifier.filter", "notifier.dedup", "notifier.send_push"} <= set(mine) else {}

    stages = wait_until(chain, timeout_s=30, message="the chain's tasks never all reached Flower")
    for name in ("notifier.filter", "notifier.dedup", "notifier.send_push"):
        assert f"deliveries=[{delivery['delivery_id']}]" in stages[name]["args"], stages[name]
        assert "lane=high" in stages[name]["args"], stages[name]
        assert stages[name]["kwargs"] == "{}"
    assert stages["notifier.dedup"]["parent_id"] == root_id
    assert stages["notifier.send_push"]["parent_id"] == stages["notifier.dedup"]["uuid"]

    # And nothing Flower holds about any task shows the token, the address or the number
    shown = json.dumps(flower.api("/api/tasks", limit=100000))
    for secret in (token, email, phone):
        assert secret not in shown
