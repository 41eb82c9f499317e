"""Callbacks to producers, through a real API, workers, beat, PostgreSQL, Redis and the sandbox.

The producer's endpoint is a small http.server on loopback in this test. It checks each POST's
Notifier-Signature on its own (HMAC-SHA256 over "<t>.<body>", as Stripe's receivers do), not
with notifier's code, and can be told to fail.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

import notifier
from notifier.accounts.preferences import set_preferences
from notifier.accounts.status import get_status
from notifier.callbacks import signing
from tests.integration.api_fixture import api  # noqa: F401 (fixture)
from tests.integration.users import ios_user


class Receiver:
    """A producer's callback endpoint: records every POST, verifies its signature, fails when told to."""

    def __init__(self) -> None:
        self.secret = ""
        self.posts: list[dict] = []
        self.fail_until = 0.0  # answer 500 until this monotonic time
        self.answer: tuple[int, dict[str, str]] | None = None  # a fixed answer (e.g. a redirect) instead
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, headers = (receiver.answer or
                                   ((500, {}) if time.monotonic() < receiver.fail_until else (200, {})))
                with receiver.lock:
                    receiver.posts.append({"status": status, "body": body, "signature": self.headers.get(
                        "Notifier-Signature"), "verified": verifies(receiver.secret, body,
                                                                    self.headers.get("Notifier-Signature"))})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/notifier-events"

    def accepted_events(self) -> list[dict]:
        with self.lock:
            return [e for p in self.posts if p["status"] == 200 for e in json.loads(p["body"])["events"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def verifies(secret: str, body: bytes, header: str | None, tolerance_s: int = 300) -> bool:
    """A receiver's own check of Notifier-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, t + '.' + body)>."""
    if not header or not secret:
        return False
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    if not fields.get("t", "").isdigit() or abs(time.time() - int(fields["t"])) > tolerance_s:
        return False
    expected = hmac.new(secret.encode(), fields["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields.get("v1", ""))


@pytest.fixture()
def receiver():
    r = Receiver()
    yield r
    r.close()


# An event's app is one of the registry's (tests/integration/apps_setup.py): its devices get the push.
APP = "courier"


def _forget_app_endpoint(api) -> None:
    requests.delete(f"{api.url}/v1/admin/callbacks/apps/{APP}", headers=api.auth(api.admin_key), timeout=10)


def _event(nid: str, user: str, **extra) -> dict:
    return {"notification_id": nid, "user_id": user, "type": "order_shipped", "category": "transactional",
            "priority": "high", "channels": ["push"], "title": "Shipped", "body": "On its way"} | extra


def _by_status(events: list[dict]) -> set[tuple[str, str]]:
    return {(e["notification_id"], e["status"]) for e in events}


def _sendgrid_event(api, delivery: dict, address: str, event: str, **fields) -> None:  # noqa: F811
    body = json.dumps([{"email": address, "timestamp": int(time.time()), "event": event,
                        "sg_event_id": secrets.token_hex(8), "delivery_id": str(delivery["delivery_id"]),
                        "notification_id": delivery["notification_id"]} | fields]).encode()
    answer = requests.post(f"{api.url}/v1/webhooks/sendgrid", data=body, headers=api.sendgrid_headers(body),
                           timeout=10)
    assert answer.status_code == 200 and answer.json()["applied"] == 1, answer.text


def test_terminal_statuses_and_webhook_reports_reach_the_key_s_endpoint_signed(worker, sandbox, api, receiver,  # noqa: F811
                                                                              wait_until, unique):
    # Given the producer key registered a callback (the secret is shown once, never again)
    answer = requests.put(api.url + "/v1/callbacks", json={"url": receiver.url}, headers=api.auth(), timeout=10)
    assert answer.status_code == 200, answer.text
    receiver.secret = answer.json()["secret"]
    assert receiver.secret.startswith("whsec_")
    shown = requests.get(api.url + "/v1/callbacks", headers=api.auth(), timeout=10).json()
    assert shown["url"] == receiver.url and "secret" not in shown

    # When it sends a push that goes out, one to a user who turned push off, and two emails
    sent_user, token = ios_user(unique)
    off_user, _ = ios_user(unique, push_enabled=False)
    mail_user = unique("user")
    address = f"{mail_user}@example.com"
    set_preferences(mail_user, email=address)
    nids = {name: unique(name) for name in ("push", "off", "mail1", "mail2")}
    for name, user, extra in (("push", sent_user, {}), ("off", off_user, {}),
                              ("mail1", mail_user, {"channels": ["email"]}),
                              ("mail2", mail_user, {"channels": ["email"]})):
        posted = requests.post(api.url + "/v1/notifications", json=_event(nids[name], user, **extra),
                               headers=api.auth(), timeout=10)
        assert posted.status_code == 202, posted.text
    # And SendGrid reports the first email delivered and the second bounced
    for name, event, fields in (("mail1", "delivered", {}),
                                ("mail2", "bounce", {"type": "bounce", "reason": "550 no such user"})):
        [delivery] = wait_until(lambda: [d for d in get_status(nids[name]) if d["status"] == "sent"])
        _sendgrid_event(api, delivery, address, event, **fields)

    # Then the endpoint hears of each terminal status, signed with its secret
    expected = {(nids["push"], "sent"), (nids["off"], "suppressed"), (nids["mail1"], "sent"),
                (nids["mail1"], "delivered"), (nids["mail2"], "sent"), (nids["mail2"], "failed")}
    wait_until(lambda: expected <= _by_status(receiver.accepted_events()), timeout_s=30,
               message=f"callbacks received: {_by_status(receiver.accepted_events())}")
    events = receiver.accepted_events()
    print(json.dumps(events[:2], indent=1))
    assert all(p["verified"] for p in receiver.posts)
    assert len({e["id"] for e in events}) == len(events), "an event was delivered twice"
    [off] = [e for e in events if e["notification_id"] == nids["off"]]
    assert off["reason"] == "push disabled by user" and off["channel"] == "push"
    [bounced] = [e for e in events if e["notification_id"] == nids["mail2"] and e["status"] == "failed"]
    assert "550" in bounced["reason"]
    # No target in any callback: no device token, no address
    assert all(token.encode() not in p["body"] and address.encode() not in p["body"] for p in receiver.posts)
    # A signature made with another secret would not verify, with our check or notifier's helper
    post = receiver.posts[0]
    assert not verifies(signing.new_secret(), post["body"], post["signature"])
    assert signing.verify(receiver.secret, post["body"], post["signature"]) is None
    assert signing.verify(signing.new_secret(), post["body"], post["signature"]) == "signature does not match"
    assert not verifies(receiver.secret, post["body"] + b" ", post["signature"])

    metrics = requests.get(api.url + "/metrics", headers=api.auth(api.admin_key), timeout=10).text
    assert 'notifier_callback_events_total{outcome="sent"}' in metrics


def test_an_endpoint_failing_for_a_while_gets_the_events_after_retries_batched(worker, sandbox, api, receiver,  # noqa: F811
                                                                               wait_until, unique):
    # Given an app's callback (for events sent with send_notification(s).delay and app=...)
    app = APP
    answer = requests.put(f"{api.url}/v1/admin/callbacks/apps/{app}", json={"url": receiver.url},
                          headers=api.auth(api.admin_key), timeout=10)
    assert answer.status_code == 200, answer.text
    receiver.secret = answer.json()["secret"]
    # And an endpoint answering 500 for the next few seconds
    receiver.fail_until = time.monotonic() + 4

    # When ten notifications of the app are sent at once
    nids = [unique("n") for _ in range(10)]
    notifier.send_notifications.delay([_event(nid, ios_user(unique, app)[0], app=app) for nid in nids])

    # Then they are delivered while the endpoint fails: callbacks never hold up delivery
    wait_until(lambda: all(get_status(nid) and get_status(nid)[0]["status"] == "sent" for nid in nids),
               timeout_s=30)
    failing_still = time.monotonic() < receiver.fail_until
    # And once it recovers every event arrives, signed, in POSTs carrying several events each
    wait_until(lambda: {(nid, "sent") for nid in nids} <= _by_status(receiver.accepted_events()), timeout_s=40)
    posts = list(receiver.posts)
    refused = [p for p in posts if p["status"] == 500]
    accepted = [p for p in posts if p["status"] == 200]
    print(f"endpoint answered 500 to {len(refused)} POSTs, then accepted {len(accepted)} POSTs "
          f"carrying {len(receiver.accepted_events())} events; deliveries all sent while it failed: {failing_still}")
    assert refused, "the endpoint never saw a failing attempt"
    assert all(p["verified"] for p in posts)
    assert len(accepted) < len(nids) and max(len(json.loads(p["body"])["events"]) for p in accepted) > 1
    assert sorted(e["notification_id"] for e in receiver.accepted_events()) == sorted(nids)
    assert failing_still, "the deliveries waited for the callbacks"
    shown = requests.get(f"{api.url}/v1/admin/callbacks/apps/{app}", headers=api.auth(api.admin_key),
                         timeout=10).json()
    assert (shown["pending"], shown["given_up"]) == (0, 0)
    _forget_app_endpoint(api)


def test_an_endpoint_that_never_accepts_is_given_up_counted_and_visible_and_no_redirect_is_followed(
        worker, sandbox, api, receiver, wait_until, unique):  # noqa: F811
    # Given an app whose endpoint answers every POST with a redirect to another server
    elsewhere = Receiver()
    try:
        receiver.answer = (307, {"Location": elsewhere.url})
        app = APP
        answer = requests.put(f"{api.url}/v1/admin/callbacks/apps/{app}", json={"url": receiver.url},
                              headers=api.auth(api.admin_key), timeout=10)
        receiver.secret = answer.json()["secret"]
        nid = unique("n")
        notifier.send_notification.delay(_event(nid, ios_user(unique, app)[0], app=app))

        # Then after the retry window the event is given up: kept, counted, shown with the last error
        def given_up():
            shown = requests.get(f"{api.url}/v1/admin/callbacks/apps/{app}", headers=api.auth(api.admin_key),
                                 timeout=10).json()
            return shown if shown["given_up"] == 1 else None

        shown = wait_until(given_up, timeout_s=60, interval_s=0.5)
        print(shown)
        assert shown["pending"] == 0 and "307" in shown["last_error"] and "redirect" in shown["last_error"]
        assert len(receiver.posts) >= 2, "it was not retried"
        assert elsewhere.posts == [], "a redirect was followed"
        metrics = requests.get(api.url + "/metrics", headers=api.auth(api.admin_key), timeout=10).text
        assert 'notifier_callback_events_total{outcome="given_up"}' in metrics
        assert 'notifier_callback_outbox_events{state="given_up"}' in metrics
    finally:
        elsewhere.close()
        _forget_app_endpoint(api)


@pytest.mark.parametrize("url", [
    "http://example.com/hook",  # not https
    "https://169.254.169.254/latest/meta-data",  # cloud metadata
    "https://10.1.2.3/hook",  # private network
    "https://user:pass@example.com/hook",  # credentials
    "ftp://example.com/hook",
    "not a url",
])
def test_a_callback_url_that_could_reach_inside_is_refused(api, url):  # noqa: F811
    answer = requests.put(api.url + "/v1/callbacks", json={"url": url}, headers=api.auth(), timeout=10)
    assert answer.status_code == 422 and "url" in answer.text, answer.text
