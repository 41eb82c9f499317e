"""No device token, email address or phone number in a log line, a task field or a shown reason.

The rule (notifier.ops.redaction) as a table; then the real outputs: the API's access log
written by a real `notifier api` process, the worker's log and Flower's view of a task
that failed on a token the transport could not send, and a bounce reason quoting the
address in other letter case.
"""
from __future__ import annotations

import io
import json
import secrets
import time

import requests

import notifier
from notifier.store.db import session_factory
from notifier.store.delivery_log import utcnow
from notifier.store.models import DeviceToken
from notifier.accounts.status import notification_status
from notifier.accounts.status import get_status
from tests.integration.api_fixture import api, serve  # noqa: F401  (fixture)
from tests.integration.environment import TEST_VAR, child_env
from tests.integration.test_flower import flower  # noqa: F401  (fixture)



def test_the_api_access_log_shows_no_device_token(database, unique):
    # Given a real `notifier api` writing its log to a file, and a key that manages users
    from notifier.accounts import api_keys

    _, key = api_keys.create_key(unique("redaction"), "users")
    token, user = secrets.token_hex(32), unique("user")
    log_path = TEST_VAR / "logs" / "api-redaction.log"
    with serve(child_env(), "api-redaction.log") as url:
        # When a device is registered and removed (the token is in the URL path)
        auth = {"Authorization": f"Bearer {key}"}
        put = requests.put(f"{url}/v1/users/{user}/devices/{token}", json={"platform": "ios"}, headers=auth,
                           timeout=10)
        gone = requests.delete(f"{url}/v1/users/{user}/devices/{token}", headers=auth, timeout=10)
        assert (put.status_code, gone.status_code) == (204, 204)
    written = log_path.read_text()
    # Then the access log has both requests, with the token cut to its last four characters
    assert f"/v1/users/{user}/devices/…{token[-4:]}" in written, written[-2000:]
    assert token not in written


def _register_raw(user: str, token: str) -> None:
    # Straight into the table: a token stored before the edges validated tokens.
    with session_factory()() as session, session.begin():
        session.add(DeviceToken(user_id=user, token=token, platform="ios", app=None, created_at=utcnow()))


def test_a_token_the_transport_chokes_on_reaches_no_log_line_task_field_or_reason(flower, worker, wait_until,  # noqa: F811
                                                                                    unique):
    # Given a user whose stored iOS token cannot be put in a URL as is (finding 1's token)
    user, nid = unique("user"), unique("n")
    token = "café" + secrets.token_hex(30)
    _register_raw(user, token)
    worker_log = TEST_VAR / "logs" / "worker.log"
    start = worker_log.stat().st_size if worker_log.exists() else 0

    # When a push notification to that user goes through real workers
    notifier.send_notification.delay({
        "notification_id": nid, "user_id": user, "type": "security_code", "category": "security",
        "priority": "high", "channels": ["push"], "title": "Code", "body": "Your code",
    })

    # Then the push task has run and ended (failed whole, or failed the delivery)
    def push_tasks() -> list[dict]:
        tasks = flower.api("/api/tasks", taskname="notifier.send_push", limit=100000)
        return [t for t in tasks.values() if t.get("state") in ("FAILURE", "SUCCESS", "RETRY")
                and any(str(d["delivery_id"]) in (t.get("args") or "") for d in get_status(nid))]

    seen = wait_until(push_tasks, timeout_s=60, message="the push task never ran")
    # And neither Flower (task exceptions and tracebacks), nor the worker's log, nor the delivery
    # as stored or shown holds the token
    shown = json.dumps(flower.api("/api/tasks", limit=100000)) + json.dumps(seen)
    written = worker_log.read_text(errors="replace")[start:]
    rows = json.dumps(get_status(nid), default=str) + json.dumps(notification_status(nid), default=str)
    secret = token[4:]
    assert secret not in shown, shown[max(0, shown.find(secret) - 600):shown.find(secret) + 100]
    assert secret not in written
    assert secret not in rows


def test_a_bounce_quoting_the_address_in_capitals_is_redacted_in_status(api, worker, sandbox, wait_until,  # noqa: F811
                                                                        unique):
    # Given an email sent to a user (SendGrid accepted it)
    from notifier.accounts.preferences import set_preferences

    user, nid = unique("user"), unique("n")
    address = f"{unique('ada')}@example.com"
    set_preferences(user, email=address)
    notifier.send_notification.delay({
        "notification_id": nid, "user_id": user, "type": "receipt", "category": "transactional",
        "priority": "high", "channels": ["email"], "title": "Receipt", "body": "Thanks",
    })
    [row] = wait_until(lambda: [r for r in get_status(nid) if r["status"] == "sent"], timeout_s=30)
    # When SendGrid reports a bounce whose reason quotes the address in capitals
    event = [{"email": address, "event": "bounce", "type": "bounce", "timestamp": int(time.time()),
              "sg_message_id": row["provider_message_id"] + ".x",
              "reason": f"550 5.1.1 <{address.upper()}>: Recipient address rejected",
              "delivery_id": str(row["delivery_id"]), "notification_id": nid}]
    body = json.dumps(event).encode()
    response = requests.post(f"{api.url}/v1/webhooks/sendgrid", data=body, timeout=10,
                             headers=api.sendgrid_headers(body) | {"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    # Then the stored reason and the user's undeliverable reason name no address
    [failed] = wait_until(lambda: [r for r in get_status(nid) if r["status"] == "failed"], timeout_s=30)
    assert address.lower() not in failed["reason"].lower() and "550 5.1.1" in failed["reason"]
    from notifier.accounts.preferences import get_preferences

    reason = get_preferences(user)["email_undeliverable_reason"]
    assert reason and address.lower() not in reason.lower()


def test_a_transport_error_quoting_the_address_is_stored_redacted(worker, sandbox, wait_until, unique):
    # Given SendGrid refusing one address with an error that quotes it in capitals
    from notifier.accounts.preferences import set_preferences

    user, nid = unique("user"), unique("n")
    address = f"{unique('ada')}@example.com"
    set_preferences(user, email=address)
    sandbox.add_fault("sendgrid", address, status=400, reason=f"The email address {address.upper()} is invalid",
                      count=None)
    # When an email to it is sent
    notifier.send_notification.delay({
        "notification_id": nid, "user_id": user, "type": "receipt", "category": "transactional",
        "priority": "high", "channels": ["email"], "title": "Receipt", "body": "Thanks",
    })
    [row] = wait_until(lambda: [r for r in get_status(nid) if r["status"] == "failed"], timeout_s=30)
    # Then the stored reason and last error keep the provider's words but not the address
    stored = f"{row['reason']} {row['last_error']}".lower()
    assert address.lower() not in stored and "is invalid" in stored
