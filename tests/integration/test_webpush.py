"""Web Push end to end: browsers registered through the API and the CLI, pushes sent by real workers to
the sandbox's push service, which checks the VAPID JWT and decrypts each payload with the browser's key."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

import notifier
from notifier.accounts.status import get_status
from notifier.providers import OutcomeKind
from notifier.providers.base import Delivery
from notifier.providers.webpush import WebPushProvider, classify
from notifier.settings import get_settings
from notifier.store.db import session_factory
from notifier.store.models import DeviceToken
from sandbox.keys import ensure_ec_key
from sandbox.webpush import public_key_b64
from tests.integration.api_fixture import api  # noqa: F401 - fixture
from tests.integration.environment import TEST_VAR, child_env

ROOT = Path(__file__).resolve().parents[2]


def _stored(endpoint: str) -> DeviceToken | None:
    with session_factory()() as session:
        return session.scalar(select(DeviceToken).where(DeviceToken.token == endpoint))


def _event(unique, user: str, **changes) -> dict:
    return {"notification_id": unique("n"), "user_id": user, "type": "driver_arrived", "category": "transactional",
            "priority": "high", "channels": ["push"], "title": "Your driver is here", "body": "Blue Volvo, AB 12345",
            "data": {"ride": 77, "collapse_id": "ride-77"}} | changes  # fmt: skip


def _settled(nid: str):
    rows = get_status(nid)
    return rows if rows and all(r["status"] not in ("queued", "sending", "scheduled") for r in rows) else None


def _browser(api, sandbox, unique, **mint) -> tuple[str, dict]:
    """A user whose browser subscribed at the sandbox's push service, registered through the API."""
    user, subscription = unique("user"), sandbox.web_push_subscription(**mint)
    response = requests.post(f"{api.url}/v1/users/{user}/web-push-subscriptions", json=subscription,
                             headers=api.auth(), timeout=10)
    assert response.status_code == 204, response.text
    return user, subscription


# ---- the round trip -----------------------------------------------------------------------------------

def test_a_browser_gets_its_push_and_the_sandbox_reads_the_decrypted_payload(api, worker, sandbox, wait_until,
                                                                             unique):
    user, subscription = _browser(api, sandbox, unique)
    endpoint = subscription["endpoint"]
    event = _event(unique, user)

    notifier.send_notification.delay(event)

    [row] = wait_until(lambda: _settled(event["notification_id"]))
    [message] = sandbox.messages(provider="webpush", target=endpoint)
    assert (row["status"], row["provider"], row["attempts"]) == ("sent", "webpush", 1), row
    assert row["provider_message_id"] == message["id"]
    # The clear text, decrypted by the sandbox with the browser's private key and auth secret (RFC 8291).
    assert message["payload"] == {"notification_id": event["notification_id"], "type": "driver_arrived",
                                  "category": "transactional", "title": "Your driver is here",
                                  "body": "Blue Volvo, AB 12345", "data": {"ride": 77, "collapse_id": "ride-77"}}
    headers = message["headers"]
    assert headers["content-encoding"] == "aes128gcm" and headers["urgency"] == "high"
    assert headers["ttl"] == str(get_settings().webpush_default_ttl_s) and headers["topic"] == "ride-77"
    assert "authorization" not in headers  # a credential: never recorded
    origin = endpoint.split("/wp/")[0]
    assert message["vapid"]["aud"] == origin and message["vapid"]["sub"] == get_settings().vapid_subject
    # The target shown is redacted: never the whole endpoint.
    assert endpoint not in json.dumps(row, default=str)


def test_a_low_priority_push_goes_at_low_urgency(api, worker, sandbox, wait_until, unique):
    user, subscription = _browser(api, sandbox, unique)
    event = _event(unique, user, priority="low", category="social", data={})

    notifier.send_notification.delay(event)

    [row] = wait_until(lambda: _settled(event["notification_id"]))
    [message] = sandbox.messages(provider="webpush", target=subscription["endpoint"])
    assert row["status"] == "sent" and message["headers"]["urgency"] == "low" and "topic" not in message["headers"]


# ---- answers: 410, 429, a bad VAPID key --------------------------------------------------------------

def test_a_410_deletes_the_subscription(api, worker, sandbox, wait_until, unique):
    user, subscription = _browser(api, sandbox, unique)
    endpoint = subscription["endpoint"]
    sandbox.web_push_unsubscribe(endpoint)  # the user revoked the permission in the browser
    event = _event(unique, user)

    notifier.send_notification.delay(event)

    [row] = wait_until(lambda: _settled(event["notification_id"]))
    assert (row["status"], row["attempts"]) == ("failed", 1), row
    assert "token deleted" in row["reason"] and "webpush 410" in row["reason"]
    assert _stored(endpoint) is None
    assert sandbox.request_count("webpush") >= 1 and sandbox.messages(provider="webpush", target=endpoint) == []


def test_a_429_with_retry_after_is_sent_again_later(api, worker, sandbox, wait_until, unique):
    user, subscription = _browser(api, sandbox, unique)
    endpoint = subscription["endpoint"]
    sandbox.add_fault("webpush", endpoint, status=429, retry_after=1, count=1)
    event = _event(unique, user)

    notifier.send_notification.delay(event)

    [row] = wait_until(lambda: _settled(event["notification_id"]))
    assert (row["status"], row["attempts"]) == ("sent", 2), row
    assert len(sandbox.messages(provider="webpush", target=endpoint)) == 1


def test_a_vapid_key_that_is_not_the_subscriptions_is_misconfigured(api, worker, sandbox, wait_until, unique):
    # The browser subscribed with another applicationServerKey (a key rotated without resubscribing):
    # the push service answers 403 (RFC 8292 §4.2), our configuration to fix, retried, then failed.
    other = ensure_ec_key(TEST_VAR / f"other-vapid-{unique('k')}.pem")
    from cryptography.hazmat.primitives import serialization

    other_key = public_key_b64(serialization.load_pem_private_key(other.read_bytes(), password=None))
    user, subscription = _browser(api, sandbox, unique, application_server_key=other_key)
    event = _event(unique, user)

    notifier.send_notification.delay(event)

    [row] = wait_until(lambda: _settled(event["notification_id"]), timeout_s=60)
    max_attempts = get_settings().max_attempts
    assert (row["status"], row["attempts"]) == ("failed", max_attempts), row
    assert row["reason"].startswith(f"gave up after {max_attempts} attempts: webpush 403")
    assert _stored(subscription["endpoint"]) is not None  # our key is wrong, not the browser's subscription


def test_the_push_service_refuses_a_jwt_signed_by_another_key_than_k_with_401(sandbox, unique):
    # The sandbox checks the signature against the k= key itself, as a push service does (RFC 8292 §3).
    from cryptography.hazmat.primitives.asymmetric import ec
    from py_vapid import Vapid02

    from notifier.providers.transport import Http2Transport, HttpRequest

    subscription = sandbox.web_push_subscription(application_server_key=None)  # any key is taken
    endpoint = subscription["endpoint"]
    signer, presented = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    origin = endpoint.split("/wp/")[0]
    good = Vapid02(signer).sign({"aud": origin, "sub": "mailto:ops@example.com"})["Authorization"]
    forged = good.split(",k=")[0] + ",k=" + public_key_b64(presented)
    with Http2Transport(ca_file=get_settings().apns_ca_file, timeout_s=10) as transport:
        ok, bad = transport.send_all([
            HttpRequest("POST", endpoint, {"authorization": header, "ttl": "60"}, b"")
            for header in (good, forged)])

    assert (ok.status, bad.status) == (201, 401), (ok.body, bad.body)
    assert classify(bad).kind is OutcomeKind.MISCONFIGURED


def test_a_batch_to_many_browsers_of_one_push_service_shares_one_http2_connection(sandbox, unique):
    subscriptions = [sandbox.web_push_subscription() for _ in range(20)]
    by_endpoint = {s["endpoint"]: s["keys"] for s in subscriptions}
    provider = WebPushProvider(get_settings(), subscriptions=lambda endpoints: by_endpoint)
    deliveries = [Delivery(id=i, idempotency_key=unique("k"), channel="push", provider="webpush",
                           target=s["endpoint"], priority="normal", category="social", type="t", title="Hi",
                           body=f"message {i}") for i, s in enumerate(subscriptions)]
    before = sandbox.connections("webpush")["accepted"]
    try:
        first = provider.send_batch(deliveries)
        second = provider.send_batch(deliveries)
    finally:
        provider.close()

    assert {o.kind for o in first + second} == {OutcomeKind.OK}
    assert sandbox.connections("webpush")["accepted"] - before == 1
    for i, s in enumerate(subscriptions):
        assert [m["payload"]["body"] for m in sandbox.messages(provider="webpush", target=s["endpoint"])] == [
            f"message {i}"] * 2


# ---- registration -------------------------------------------------------------------------------------

def _keys(sandbox) -> dict:
    return sandbox.web_push_subscription()["keys"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda s: s | {"endpoint": s["endpoint"].replace("https://", "http://")}, ["body", "endpoint"]),
        (lambda s: s | {"endpoint": "https://push.example.com/a b"}, ["body", "endpoint"]),
        (lambda s: s | {"endpoint": "https://push.example.com/" + "x" * 600}, ["body", "endpoint"]),
        (lambda s: s | {"keys": s["keys"] | {"p256dh": s["keys"]["p256dh"][:-4]}}, ["body", "keys", "p256dh"]),
        (lambda s: s | {"keys": s["keys"] | {"p256dh": "A" + s["keys"]["p256dh"][1:]}}, ["body", "keys", "p256dh"]),
        (lambda s: s | {"keys": s["keys"] | {"p256dh": "not base64!"}}, ["body", "keys", "p256dh"]),
        (lambda s: s | {"keys": s["keys"] | {"auth": s["keys"]["auth"] + "AAAA"}}, ["body", "keys", "auth"]),
        (lambda s: s | {"keys": {"p256dh": s["keys"]["p256dh"]}}, ["body", "keys", "auth"]),
        (lambda s: {"endpoint": s["endpoint"]}, ["body", "keys"]),
    ],
)
def test_a_bad_subscription_is_422_naming_the_field_and_not_stored(api, sandbox, unique, change, field):
    user, subscription = unique("user"), sandbox.web_push_subscription()
    bad = change(subscription)

    response = requests.post(f"{api.url}/v1/users/{user}/web-push-subscriptions", json=bad,
                             headers=api.auth(), timeout=10)

    assert response.status_code == 422, response.text
    assert field in [e["loc"] for e in response.json()["detail"]], response.text
    with session_factory()() as session:
        assert session.scalars(select(DeviceToken).where(DeviceToken.user_id == user)).all() == []


def test_a_browser_registers_and_unregisters_through_the_api(api, sandbox, unique):
    user, subscription = unique("user"), sandbox.web_push_subscription()
    url = f"{api.url}/v1/users/{user}/web-push-subscriptions"

    assert requests.post(url, json=subscription | {"app": "courier"}, headers=api.auth(),
                         timeout=10).status_code == 204
    stored = _stored(subscription["endpoint"])
    assert (stored.user_id, stored.platform, stored.app, stored.web_push_keys) == (
        user, "web", "courier", subscription["keys"])
    # A device URL cannot carry an endpoint: PUT .../devices/{token} with platform web says where to go.
    put = requests.put(f"{api.url}/v1/users/{user}/devices/abc", json={"platform": "web"}, headers=api.auth(),
                       timeout=10)
    assert put.status_code == 422 and "web-push-subscriptions" in put.text
    gone = {"endpoint": subscription["endpoint"]}
    assert requests.delete(url, json=gone, headers=api.auth(), timeout=10).status_code == 204
    assert requests.delete(url, json=gone, headers=api.auth(), timeout=10).status_code == 404
    assert _stored(subscription["endpoint"]) is None


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "entrypoints.cli", *args], env=child_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_the_cli_registers_a_browser_and_refuses_bad_keys_naming_the_field(database, sandbox, unique):
    user, subscription = unique("user"), sandbox.web_push_subscription()

    ok = _cli("devices", "register", user, "--platform", "web", "--subscription", json.dumps(subscription))
    bad = _cli("devices", "register", unique("user"), "--platform", "web", "--subscription",
               json.dumps(subscription | {"keys": {"p256dh": subscription["keys"]["p256dh"], "auth": "AAAA"}}))

    assert ok.returncode == 0, ok.stderr
    assert subscription["endpoint"] not in ok.stdout  # shown redacted
    assert _stored(subscription["endpoint"]).user_id == user
    assert bad.returncode == 2 and "keys.auth" in bad.stderr, bad.stderr
