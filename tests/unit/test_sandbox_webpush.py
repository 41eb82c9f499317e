"""The sandbox's push service without the network: what it refuses, as a push service would, and that it
reads back exactly what the notifier's adapter encrypted and signed (pywebpush and py-vapid)."""
from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02

from notifier.providers.base import Delivery
from notifier.providers.webpush import VapidTokens, build_payload
from pywebpush import WebPusher
from sandbox.h2server import ConnectionInfo, Request
from sandbox.state import SandboxState
from sandbox.webpush import WebPushSandbox, public_key_b64

ORIGIN = "https://127.0.0.1:8797"
SUBJECT = "mailto:ops@example.com"


@pytest.fixture
def service():
    vapid_key = ec.generate_private_key(ec.SECP256R1())
    box = WebPushSandbox(SandboxState(), application_server_key=public_key_b64(vapid_key))
    box.origin = ORIGIN
    return box, Vapid02(vapid_key)


def push(box: WebPushSandbox, subscription: dict, vapid: Vapid02, *, claims: dict | None = None,
         headers: dict | None = None, body: bytes | None = None, method: str = "POST"):
    """One request as the notifier's adapter makes it (the pieces each test changes aside)."""
    if body is None:
        payload = build_payload(Delivery(id=1, idempotency_key="k", channel="push", provider="webpush",
                                         target=subscription["endpoint"], priority="high", category="c", type="t",
                                         title="Hi", body="there"))
        body = WebPusher(subscription).encode(payload, "aes128gcm")["body"]
    signed = {"aud": ORIGIN, "sub": SUBJECT, "exp": int(time.time()) + 3600} | (claims or {})
    authorization = vapid.sign(signed)["Authorization"]
    sent = {"authorization": authorization, "ttl": "60", "content-encoding": "aes128gcm"} | (headers or {})
    sent = {k: v for k, v in sent.items() if v is not None}
    path = subscription["endpoint"][len(ORIGIN):]
    return box.handle(Request(method, path, sent, body, 1, ConnectionInfo(1, "test")))


def test_what_the_adapter_sends_is_decrypted_and_recorded_with_the_jwt_claims(service):
    box, vapid = service
    subscription = box.mint(box.application_server_key)

    reply = push(box, subscription, vapid)

    assert reply.status == 201 and dict(reply.headers)["location"].startswith(f"{ORIGIN}/m/")
    [record] = box.state.messages("webpush")
    assert record["target"] == subscription["endpoint"] and record["payload"]["title"] == "Hi"
    assert record["vapid"]["aud"] == ORIGIN and record["vapid"]["sub"] == SUBJECT
    assert "authorization" not in record["headers"]


def test_the_adapters_cached_vapid_header_is_accepted(service):
    box, vapid = service
    subscription = box.mint(box.application_server_key)
    header = VapidTokens(vapid, SUBJECT).authorization(ORIGIN)
    body = WebPusher(subscription).encode(b'{"title":"x"}', "aes128gcm")["body"]
    path = subscription["endpoint"][len(ORIGIN):]

    reply = box.handle(Request("POST", path, {"authorization": header, "ttl": "0", "content-encoding": "aes128gcm"},
                               body, 1, ConnectionInfo(1, "test")))

    assert reply.status == 201


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"claims": {"aud": "https://elsewhere.example"}}, 401),        # aud is not the endpoint's origin
        ({"claims": {"exp": int(time.time()) - 10}}, 401),              # expired
        ({"claims": {"exp": int(time.time()) + 25 * 3600}}, 401),       # more than 24 h ahead (RFC 8292 §2)
        ({"headers": {"authorization": None}}, 401),
        ({"headers": {"authorization": "WebPush abc"}}, 401),          # the pre-RFC scheme
        ({"headers": {"ttl": None}}, 400),                              # RFC 8030 §5.2: TTL is required
        ({"headers": {"urgency": "urgent"}}, 400),
        ({"headers": {"topic": "has spaces"}}, 400),
        ({"headers": {"content-encoding": "aesgcm"}}, 400),
        ({"body": b"\x00" * 100}, 400),                                  # does not decrypt
        ({"body": b"\x00" * 4097}, 413),
        ({"method": "GET"}, 405),
    ],
)
def test_what_a_push_service_refuses_is_refused(service, change, status):
    box, vapid = service
    subscription = box.mint(box.application_server_key)

    assert push(box, subscription, vapid, **change).status == status
    assert box.state.messages("webpush") == []


def test_a_key_other_than_the_subscriptions_is_403_and_an_unbound_subscription_takes_any(service):
    box, _ = service
    other = Vapid02(ec.generate_private_key(ec.SECP256R1()))

    assert push(box, box.mint(box.application_server_key), other).status == 403
    assert push(box, box.mint(None), other).status == 201


def test_a_bad_sub_is_401_and_an_unknown_or_revoked_subscription_404_and_410(service):
    box, vapid = service
    subscription = box.mint(box.application_server_key)

    assert push(box, subscription, Vapid02(vapid.private_key, conf={"no-strict": True}),
                claims={"sub": "ops"}).status == 401
    assert push(box, subscription | {"endpoint": f"{ORIGIN}/wp/unknown"}, vapid).status == 404
    box.control("DELETE", b'{"endpoint": "%s"}' % subscription["endpoint"].encode())
    assert push(box, subscription, vapid).status == 410
