"""FCM: every classification row, the OAuth token's life and the message, through the real adapter
over the network to the sandbox; the sandbox's own checks; then the pipeline end to end."""
from __future__ import annotations

import json
import os
import secrets
import stat
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select

import notifier
from sandbox import devstack
from notifier.store.db import session_factory
from notifier.store.models import DeviceToken
from notifier.providers import OutcomeKind
from notifier.providers.base import Delivery
from notifier.providers.fcm import CLASSIFICATION, INVALID_REGISTRATION, FcmProvider, classify
from sandbox.app import SandboxConfig
from sandbox.client import SandboxClient
from sandbox.keys import ensure_fcm_service_account
from notifier.settings import Settings
from notifier.providers.transport import Http2Transport, HttpRequest
from notifier.accounts.devices import register_device
from notifier.accounts.preferences import set_preferences
from notifier.accounts.status import get_status

K = OutcomeKind
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def fcm_token() -> str:
    """A registration token shaped like the ones Android apps get."""
    return f"{secrets.token_urlsafe(16)}:APA91b{secrets.token_urlsafe(100)}"


def delivery(token: str | None = None, **changes: Any) -> Delivery:
    fields: dict[str, Any] = dict(
        id=1, idempotency_key=secrets.token_hex(8), channel="push", provider="fcm", target=token or fcm_token(),
        priority="high", category="transactional", type="order_shipped", title="Shipped", body="On its way",
    )  # fmt: skip
    return Delivery(**(fields | changes))


@dataclass
class PrivateSandbox:
    """A sandbox process of this module's own, and settings that point a sender at it."""

    process: Any
    client: SandboxClient
    settings: Settings
    directory: Path
    env: dict[str, str] = field(default_factory=dict)

    def provider(self, **settings: Any) -> FcmProvider:
        return FcmProvider(self.settings.model_copy(update=settings))

    def account(self) -> dict[str, Any]:
        return json.loads(Path(self.settings.fcm_credentials_path).read_text())

    def counts(self) -> tuple[int, int]:
        """(send requests, token requests) the sandbox has seen."""
        return self.client.request_count("fcm"), self.client.request_count("fcm-token")


def start_private_sandbox(directory: Path, **sandbox_env: str) -> PrivateSandbox:
    """Start a sandbox on free ports of its own, its files in directory."""
    # Every provider's port free, not just ours: the session's sandbox holds the defaults.
    any_port = {f"NOTIFIER_SANDBOX_{name.upper()}": "0" for name in SandboxConfig.__dataclass_fields__
                if name.endswith("_port")}  # fmt: skip
    env = dict(os.environ) | any_port | devstack.private_sandbox_env() | {
        "NOTIFIER_VAR_DIR": str(directory),
        "NOTIFIER_APNS_KEY_PATH": str(directory / "sandbox" / "apns_key.p8"),
        "NOTIFIER_APNS_CA_FILE": str(directory / "sandbox" / "tls-cert.pem"),
        "NOTIFIER_FCM_CREDENTIALS_PATH": "",  # the one in NOTIFIER_VAR_DIR
    } | {f"NOTIFIER_SANDBOX_{k.upper()}": v for k, v in sandbox_env.items()}
    process = devstack.start_sandbox(env, directory / "sandbox.log")
    settings = Settings(
        var_dir=directory,
        fcm_url=env["NOTIFIER_FCM_URL"],
        fcm_credentials_path=None,
        apns_ca_file=env["NOTIFIER_APNS_CA_FILE"],
        sandbox_control_port=int(env["NOTIFIER_SANDBOX_CONTROL_PORT"]),
        send_timeout_s=5.0,
    )
    return PrivateSandbox(process, SandboxClient(settings.sandbox_control_url), settings, directory, env)


@pytest.fixture(scope="module")
def fcm_sandbox(tmp_path_factory: pytest.TempPathFactory):
    sandbox = start_private_sandbox(tmp_path_factory.mktemp("fcm"))
    yield sandbox
    sandbox.client.close()
    devstack.stop(sandbox.process)


@pytest.fixture
def box(fcm_sandbox: PrivateSandbox) -> PrivateSandbox:
    """The module's sandbox with no records, counters or faults left from other tests."""
    fcm_sandbox.client.reset()
    return fcm_sandbox


@pytest.fixture
def fcm(box: PrivateSandbox):
    """A fresh adapter (its own access token and connection) pointed at the module's sandbox."""
    provider = box.provider()
    yield provider
    provider.close()


# --- the classification table, one row per test -----------------------------------------------

@dataclass(frozen=True)
class Row:
    case: str
    fault: dict[str, Any] | None  # armed for the delivery's token, count 1 unless it says
    kind: OutcomeKind
    covers: tuple[int, str] | None  # the CLASSIFICATION row this case proves
    requests: int  # send requests the sandbox saw: 1 = not retried; 2 = resent once
    token_requests: int = 1
    retry_after_s: float | None = None
    token: str | None = None  # a token of this exact text instead of a good one
    settings: dict[str, Any] = field(default_factory=dict)


ROWS = [
    Row("200 accepted", None, K.OK, None, 1),
    Row("404 UNREGISTERED", {"reason": "UNREGISTERED"}, K.TOKEN_INVALID, (404, "UNREGISTERED"), 1),
    Row("403 SENDER_ID_MISMATCH", {"reason": "SENDER_ID_MISMATCH"}, K.TOKEN_INVALID, (403, "SENDER_ID_MISMATCH"), 1),
    Row("400 INVALID_ARGUMENT about the registration token", None, K.TOKEN_INVALID, (400, INVALID_REGISTRATION), 1,
        token="not-a-registration-token"),
    Row("400 INVALID_ARGUMENT", {"reason": "INVALID_ARGUMENT"}, K.FAILED, (400, "INVALID_ARGUMENT"), 1),
    Row("401 THIRD_PARTY_AUTH_ERROR", {"reason": "THIRD_PARTY_AUTH_ERROR"}, K.MISCONFIGURED,
        (401, "THIRD_PARTY_AUTH_ERROR"), 1),
    Row("401 UNAUTHENTICATED: new token, resent once", {"reason": "UNAUTHENTICATED"}, K.OK,
        (401, "UNAUTHENTICATED"), 2, 2),
    Row("401 ACCESS_TOKEN_EXPIRED: new token, resent once", {"reason": "ACCESS_TOKEN_EXPIRED"}, K.OK,
        (401, "ACCESS_TOKEN_EXPIRED"), 2, 2),
    Row("401 CREDENTIALS_MISSING: new token, resent once", {"reason": "CREDENTIALS_MISSING"}, K.OK,
        (401, "CREDENTIALS_MISSING"), 2, 2),
    Row("401 again with the new token", {"reason": "UNAUTHENTICATED", "count": 2}, K.MISCONFIGURED,
        (401, "UNAUTHENTICATED"), 2, 2),
    Row("429 QUOTA_EXCEEDED with Retry-After", {"reason": "QUOTA_EXCEEDED", "retry_after": 7}, K.RETRY,
        (429, "QUOTA_EXCEEDED"), 1, retry_after_s=7),
    Row("429 QUOTA_EXCEEDED without Retry-After", {"reason": "QUOTA_EXCEEDED"}, K.RETRY,
        (429, "QUOTA_EXCEEDED"), 1, retry_after_s=60),
    Row("429 ErrorInfo RATE_LIMIT_EXCEEDED", {"reason": "RATE_LIMIT_EXCEEDED", "retry_after": 30}, K.RETRY,
        (429, "RATE_LIMIT_EXCEEDED"), 1, retry_after_s=30),
    Row("429 RESOURCE_EXHAUSTED", {"reason": "RESOURCE_EXHAUSTED"}, K.RETRY, (429, "RESOURCE_EXHAUSTED"), 1,
        retry_after_s=60),
    Row("500 INTERNAL", {"reason": "INTERNAL"}, K.RETRY, (500, "INTERNAL"), 1),
    Row("503 UNAVAILABLE with Retry-After", {"status": 503, "retry_after": 3}, K.RETRY, (503, "UNAVAILABLE"), 1,
        retry_after_s=3),
    Row("403 PERMISSION_DENIED", {"reason": "PERMISSION_DENIED"}, K.MISCONFIGURED, (403, "PERMISSION_DENIED"), 1),
    Row("403 PERMISSION_DENIED, scope insufficient", {"reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT"},
        K.MISCONFIGURED, (403, "PERMISSION_DENIED"), 1),
    Row("404 NOT_FOUND: another project", None, K.MISCONFIGURED, (404, "NOT_FOUND"), 1,
        settings={"fcm_project_id": "someone-elses-project"}),
    Row("502, no code we know", {"status": 502}, K.RETRY, None, 1),
    Row("connection dropped, twice", {"drop": True, "count": 2}, K.RETRY, None, 2),
]


def test_every_row_of_the_table_has_a_case():
    assert set(CLASSIFICATION) == {r.covers for r in ROWS if r.covers is not None}


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.case)
def test_each_answer_is_classified_by_its_row(box: PrivateSandbox, row: Row):
    # given a delivery whose token the sandbox answers as the row says
    d = delivery(row.token)
    if row.fault is not None:
        box.client.add_fault("fcm", d.target, **({"count": 1} | row.fault))
    provider = box.provider(**row.settings)

    # when
    try:
        [outcome] = provider.send_batch([d])
    finally:
        provider.close()

    # then the outcome is the row's, and the sandbox saw no retry the row does not allow
    assert outcome.kind is row.kind, outcome
    if row.kind is K.OK:
        [message] = box.client.messages("fcm", target=d.target)
        assert outcome.message_id == message["id"]
        assert outcome.message_id.startswith("projects/sandbox-project/messages/0:")
    elif row.covers is not None:
        assert outcome.reason.startswith(f"fcm {row.covers[0]} {row.covers[1]}"), outcome
    if row.retry_after_s is not None:
        assert outcome.retry_after_s == row.retry_after_s
    assert box.counts() == (row.requests, row.token_requests)


def test_the_resend_after_a_refused_token_is_only_the_refused_ones(box: PrivateSandbox, fcm: FcmProvider):
    # given a batch where one token's answer is 401 ACCESS_TOKEN_EXPIRED and another's 404 UNREGISTERED
    batch = [delivery() for _ in range(5)]
    box.client.add_fault("fcm", batch[1].target, reason="ACCESS_TOKEN_EXPIRED")
    box.client.unregister(batch[3].target, provider="fcm")  # APNs words: 410 Unregistered → 404 UNREGISTERED

    outcomes = fcm.send_batch(batch)

    assert [o.kind for o in outcomes] == [K.OK, K.OK, K.OK, K.TOKEN_INVALID, K.OK]
    assert box.counts() == (6, 2)


# --- one delivery that cannot be sent never holds up its batch-mates (issue 10) -----------------

@pytest.mark.parametrize("token", ["café", "tok en", "tok\r\nx-injected: yes", "tok\x00", ""],
                         ids=["non-ASCII", "space", "CR/LF", "NUL", "empty"])
def test_a_malformed_registration_token_fails_alone_and_is_never_sent(box: PrivateSandbox, fcm: FcmProvider, token):
    batch = [delivery(), delivery(target=token), delivery()]
    outcomes = fcm.send_batch(batch)
    assert [o.kind for o in outcomes] == [K.OK, K.TOKEN_INVALID, K.OK]
    assert "not sent" in outcomes[1].reason and (not token or token not in outcomes[1].reason)
    assert box.counts() == (2, 1)


def test_a_message_that_cannot_be_encoded_fails_alone(box: PrivateSandbox, fcm: FcmProvider):
    batch = [delivery(body="lone surrogate \ud800"), delivery(data={"k": "\udfff"}), delivery()]
    outcomes = fcm.send_batch(batch)
    assert [o.kind for o in outcomes] == [K.FAILED, K.FAILED, K.OK]
    assert outcomes[0].reason == "fcm: not sent, the message could not be built (UnicodeEncodeError)"
    assert box.counts() == (1, 1)


def test_a_collapse_key_with_cr_lf_stays_inside_the_json_body(box: PrivateSandbox, fcm: FcmProvider):
    d = delivery(collapse_id="c2\r\nx-injected: yes")
    [outcome] = fcm.send_batch([d])
    [message] = box.client.messages("fcm", d.target)
    assert "x-injected" not in message["headers"]
    assert outcome.kind is K.OK or "collapse" in (outcome.reason or "").lower()


def test_on_outcome_fires_once_per_delivery_in_completion_order_before_send_batch_returns(
    box: PrivateSandbox, fcm: FcmProvider
):
    # given a slow device, a fast one, a malformed token, and one answered 401 until a new access token
    batch = [delivery(), delivery(), delivery("café"), delivery()]
    box.client.add_fault("fcm", batch[0].target, latency_ms=1200)
    box.client.add_fault("fcm", batch[3].target, reason="ACCESS_TOKEN_EXPIRED")
    seen: list[tuple[int, OutcomeKind, float]] = []
    started = time.monotonic()

    outcomes = fcm.send_batch(batch, lambda i, o: seen.append((i, o.kind, time.monotonic() - started)))

    # then each was reported once with its final outcome, before send_batch returned, as it completed
    assert [o.kind for o in outcomes] == [K.OK, K.OK, K.TOKEN_INVALID, K.OK]
    assert [i for i, _, _ in seen] == [2, 1, 0, 3]
    assert {i: kind for i, kind, _ in seen} == {i: o.kind for i, o in enumerate(outcomes)}
    at = {i: t for i, _, t in seen}
    assert at[1] < 1.0 and at[0] >= 1.1


def test_on_outcome_reports_every_delivery_when_no_access_token_can_be_had(box: PrivateSandbox, tmp_path: Path):
    provider = box.provider(fcm_credentials_path=tmp_path / "missing.json")
    seen = []
    try:
        outcomes = provider.send_batch([delivery() for _ in range(3)], lambda i, o: seen.append((i, o.kind)))
    finally:
        provider.close()
    assert [o.kind for o in outcomes] == [K.MISCONFIGURED] * 3
    assert seen == [(0, K.MISCONFIGURED), (1, K.MISCONFIGURED), (2, K.MISCONFIGURED)]


# --- the OAuth2 access token -------------------------------------------------------------------

def test_one_access_token_serves_many_batches(box: PrivateSandbox, fcm: FcmProvider):
    for _ in range(4):
        outcomes = fcm.send_batch([delivery() for _ in range(25)])
        assert {o.kind for o in outcomes} == {K.OK}

    assert box.counts() == (100, 1)
    assert len({m["id"] for m in box.client.messages("fcm")}) == 100


def test_the_token_is_refreshed_before_it_expires_and_an_expired_one_is_refused(tmp_path: Path):
    # given a sandbox whose access tokens live two seconds
    short = start_private_sandbox(tmp_path, fcm_token_ttl_s="2")
    provider = short.provider()
    try:
        assert {o.kind for o in provider.send_batch([delivery() for _ in range(3)])} == {K.OK}
        stale = grant(short).json()["access_token"]

        # when they have expired
        time.sleep(2.2)

        # then the sandbox refuses the old one as Google does
        [resp] = raw_send(short, stale, {"message": {"token": fcm_token()}})
        assert resp.status == 401
        assert json.loads(resp.body)["error"]["details"][0]["reason"] == "ACCESS_TOKEN_EXPIRED"
        assert classify(resp).kind is K.RETRY
        # and the adapter fetched a new token before sending: no request was refused
        before = short.counts()
        assert {o.kind for o in provider.send_batch([delivery() for _ in range(3)])} == {K.OK}
        sent, tokens = short.counts()
        assert sent - before[0] == 3
        assert tokens - before[1] == 1
    finally:
        provider.close()
        short.client.close()
        devstack.stop(short.process)


def test_a_token_endpoint_outage_retries_the_batch_without_sending(box: PrivateSandbox, fcm: FcmProvider):
    box.client.add_fault("fcm-token", status=503, retry_after=4)

    outcomes = fcm.send_batch([delivery(), delivery()])

    assert [o.kind for o in outcomes] == [K.RETRY, K.RETRY]
    assert "fcm oauth 503" in outcomes[0].reason and outcomes[0].retry_after_s == 4
    assert box.counts() == (0, 1)
    # and the next batch gets a token and goes out
    assert [o.kind for o in fcm.send_batch([delivery()])] == [K.OK]


def test_a_key_the_token_endpoint_does_not_know_is_misconfigured(box: PrivateSandbox, tmp_path: Path):
    # given a key file like ours but with another private key
    account = box.account() | {"private_key": _new_rsa_pem()}
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps(account))
    provider = box.provider(fcm_credentials_path=foreign)

    try:
        outcomes = provider.send_batch([delivery()])
    finally:
        provider.close()

    assert outcomes[0].kind is K.MISCONFIGURED
    assert "invalid_grant" in outcomes[0].reason and "Invalid JWT Signature" in outcomes[0].reason
    assert box.counts() == (0, 1)


def test_without_a_key_file_application_default_credentials_are_used(box: PrivateSandbox, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch):
    # given no key file configured and none in the var dir, and ADC naming a service account
    # (as GOOGLE_APPLICATION_CREDENTIALS does; on GKE or Cloud Run the metadata server would)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(box.settings.fcm_credentials_path))
    provider = box.provider(var_dir=tmp_path, fcm_credentials_path=tmp_path / "sandbox" / "fcm-service-account.json")
    before = box.counts()
    try:
        outcomes = provider.send_batch([delivery(), delivery()])
    finally:
        provider.close()
    # then the token came through ADC from that account's token_uri, and the batch went out
    assert [o.kind for o in outcomes] == [K.OK, K.OK]
    assert box.counts() == (before[0] + 2, before[1] + 1)


def test_a_missing_key_file_is_misconfigured(box: PrivateSandbox, tmp_path: Path):
    provider = box.provider(fcm_credentials_path=tmp_path / "absent.json")
    try:
        [outcome] = provider.send_batch([delivery()])
    finally:
        provider.close()
    assert outcome.kind is K.MISCONFIGURED and "absent.json" in outcome.reason
    assert box.counts() == (0, 0)


# --- the message -------------------------------------------------------------------------------

def test_the_message_carries_priority_ttl_collapse_key_and_string_data(box: PrivateSandbox, fcm: FcmProvider):
    expires = datetime.now(timezone.utc) + timedelta(minutes=10)
    data = {"order": 1042, "paid": True, "items": [{"sku": "A1", "qty": 2}], "note": "gift", "none": None,
            "from": "reserved", "google.x": "reserved"}  # fmt: skip
    high = delivery(priority="critical", data=data, collapse_id="order-1042", expires_at=expires)
    low = delivery(priority="low", data={"background": True, "sync": "inbox"})

    assert [o.kind for o in fcm.send_batch([high, low])] == [K.OK, K.OK]

    [first] = box.client.messages("fcm", target=high.target)
    message = first["payload"]["message"]
    assert message["token"] == high.target
    assert message["notification"] == {"title": "Shipped", "body": "On its way"}
    assert message["data"] == {"order": "1042", "paid": "true", "items": '[{"sku":"A1","qty":2}]',
                               "note": "gift", "none": "null"}  # fmt: skip
    android = message["android"]
    assert android["priority"] == "HIGH" and android["collapse_key"] == "order-1042"
    assert 595 <= int(android["ttl"].removesuffix("s")) <= 600
    assert "authorization" not in first["headers"]
    [second] = box.client.messages("fcm", target=low.target)
    message = second["payload"]["message"]
    assert "notification" not in message  # a background push is data only
    assert message["android"] == {"priority": "NORMAL"}
    assert message["data"] == {"background": "true", "sync": "inbox"}


def test_a_long_body_is_shortened_to_fcms_4096_bytes_never_refused(box: PrivateSandbox, fcm: FcmProvider):
    d = delivery(body="ü" * 5000, data={"order": "1042"})

    [outcome] = fcm.send_batch([d])

    assert outcome.kind is K.OK
    [message] = box.client.messages("fcm", target=d.target)
    notification = message["payload"]["message"]["notification"]
    assert notification["body"].endswith("…")
    size = len(b"order1042") + len(notification["title"].encode()) + len(notification["body"].encode())
    assert 4090 <= size <= 4096


# --- the sandbox's own checks ------------------------------------------------------------------

def grant(box: PrivateSandbox, *, grant_type: str = JWT_BEARER, key_pem: str | None = None,
          **claims: Any) -> requests.Response:
    """Ask the sandbox's token endpoint for an access token with a hand-made assertion."""
    account = box.account()
    now = int(time.time())
    claims = {"iss": account["client_email"], "scope": SCOPE, "aud": GOOGLE_TOKEN_URL,
              "iat": now, "exp": now + 3600} | claims  # fmt: skip
    assertion = jwt.encode(
        {k: v for k, v in claims.items() if v is not None},
        key_pem or account["private_key"],
        algorithm="RS256",
        headers={"kid": account["private_key_id"]},
    )
    return requests.post(account["token_uri"], data={"grant_type": grant_type, "assertion": assertion},
                         verify=box.settings.apns_ca_file, timeout=5)  # fmt: skip


def raw_send(box: PrivateSandbox, access_token: str | None, *bodies: Any, project: str = "sandbox-project",
             method: str = "POST"):
    """Send bodies as they are to the sandbox's send API, one request each."""
    url = f"{box.settings.fcm_url}/v1/projects/{project}/messages:send"
    headers = {"content-type": "application/json"}
    if access_token is not None:
        headers["authorization"] = f"Bearer {access_token}"
    with Http2Transport(ca_file=box.settings.apns_ca_file, timeout_s=5) as transport:
        return transport.send_all([
            HttpRequest(method, url, headers, body if isinstance(body, bytes) else json.dumps(body).encode())
            for body in bodies
        ])


def _new_rsa_pem() -> str:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


TOKEN = fcm_token()
# One row per check: (case, body, expected status, expected google.rpc status, a detail to find).
# https://firebase.google.com/docs/cloud-messaging/error-codes
SEND_CHECKS = [
    ("accepted", {"message": {"token": TOKEN, "notification": {"title": "t", "body": "b"}}}, 200, None, None),
    ("to a topic", {"message": {"topic": "news", "data": {"k": "v"}}}, 200, None, None),
    ("camelCase fields", {"message": {"token": TOKEN, "android": {"collapseKey": "c", "ttl": "3.5s"}}},
     200, None, None),
    ("no target", {"message": {"notification": {"title": "t"}}}, 400, "INVALID_ARGUMENT",
     {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "INVALID_ARGUMENT"}),
    ("two targets", {"message": {"token": TOKEN, "topic": "news"}}, 400, "INVALID_ARGUMENT", "message"),
    ("implausible token", {"message": {"token": "abc"}}, 400, "INVALID_ARGUMENT",
     {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "INVALID_ARGUMENT"}),
    ("data value a number", {"message": {"token": TOKEN, "data": {"a": "x", "b": 12}}}, 400, "INVALID_ARGUMENT",
     "message.data[1].value"),
    ("reserved data key", {"message": {"token": TOKEN, "data": {"from": "x"}}}, 400, "INVALID_ARGUMENT",
     "message.data"),
    ("unknown message field", {"message": {"token": TOKEN, "priority": "high"}}, 400, "INVALID_ARGUMENT",
     "message"),
    ("android priority in lower case", {"message": {"token": TOKEN, "android": {"priority": "high"}}}, 400,
     "INVALID_ARGUMENT", "message.android.priority"),
    ("ttl without its unit", {"message": {"token": TOKEN, "android": {"ttl": "3600"}}}, 400, "INVALID_ARGUMENT",
     "message.android.ttl"),
    ("ttl over four weeks", {"message": {"token": TOKEN, "android": {"ttl": "2419201s"}}}, 400,
     "INVALID_ARGUMENT", "message.android.ttl"),
    ("payload over 4096 bytes", {"message": {"token": TOKEN, "data": {"k": "v" * 4096}}}, 400,
     "INVALID_ARGUMENT", None),
    ("body not JSON", b"hello", 400, "INVALID_ARGUMENT", None),
]


def test_the_send_api_checks_messages_like_fcm(box: PrivateSandbox):
    access_token = grant(box).json()["access_token"]

    responses = raw_send(box, access_token, *(body for _, body, *_ in SEND_CHECKS))

    for (case, _, status, rpc_status, detail), resp in zip(SEND_CHECKS, responses):
        assert resp.status == status, (case, resp.body)
        if status == 200:
            assert json.loads(resp.body)["name"].startswith("projects/sandbox-project/messages/0:"), case
            continue
        error = json.loads(resp.body)["error"]
        assert (error["code"], error["status"]) == (status, rpc_status), case
        if isinstance(detail, dict):
            assert detail in error["details"], case
        elif isinstance(detail, str):
            [bad_request] = [d for d in error["details"] if d["@type"].endswith("google.rpc.BadRequest")]
            assert bad_request["fieldViolations"][0]["field"] == detail, case
    accepted = sum(1 for _, _, status, *_ in SEND_CHECKS if status == 200)
    assert box.counts() == (len(SEND_CHECKS), 1)
    assert len(box.client.messages("fcm")) == accepted


def test_the_send_api_checks_the_caller_and_the_project(box: PrivateSandbox):
    body = {"message": {"token": fcm_token()}}
    good = grant(box).json()["access_token"]
    narrow = grant(box, scope="https://www.googleapis.com/auth/userinfo.email").json()["access_token"]

    [none] = raw_send(box, None, body)
    [unknown] = raw_send(box, "ya29.not-issued-here", body)
    [scoped] = raw_send(box, narrow, body)
    [elsewhere] = raw_send(box, good, body, project="someone-elses-project")
    [dry_run] = raw_send(box, good, {"validate_only": True, **body})

    def error(resp) -> dict:
        return json.loads(resp.body)["error"]

    assert (none.status, error(none)["details"][0]["reason"]) == (401, "CREDENTIALS_MISSING")
    assert (unknown.status, error(unknown)["status"]) == (401, "UNAUTHENTICATED")
    assert (scoped.status, error(scoped)["details"][0]["reason"]) == (403, "ACCESS_TOKEN_SCOPE_INSUFFICIENT")
    assert (elsewhere.status, error(elsewhere)["status"]) == (404, "NOT_FOUND")
    assert dry_run.status == 200
    assert json.loads(dry_run.body)["name"] == "projects/sandbox-project/messages/fake_message_id"
    assert box.client.messages("fcm") == []


# (case, changes to the grant, expected OAuth error)
GRANT_CHECKS = [
    ("another grant type", {"grant_type": "client_credentials"}, "unsupported_grant_type"),
    ("signed by another key", {"key_pem": "new"}, "invalid_grant"),
    ("audience is the token_uri", {"aud": "token_uri"}, "invalid_grant"),
    ("another service account", {"iss": "someone@else.iam.gserviceaccount.com"}, "invalid_grant"),
    ("assertion valid for two hours", {"exp": int(time.time()) + 7200}, "invalid_grant"),
    ("assertion expired", {"iat": int(time.time()) - 7200, "exp": int(time.time()) - 3600}, "invalid_grant"),
    ("no scope", {"scope": None}, "invalid_scope"),
]


@pytest.mark.parametrize("case, changes, expected", GRANT_CHECKS, ids=[c[0] for c in GRANT_CHECKS])
def test_the_token_endpoint_checks_the_assertion_like_google(box: PrivateSandbox, case, changes, expected):
    if changes.get("key_pem") == "new":
        changes = changes | {"key_pem": _new_rsa_pem()}
    if changes.get("aud") == "token_uri":
        changes = changes | {"aud": box.account()["token_uri"]}

    resp = grant(box, **changes)

    assert (resp.status_code, resp.json()["error"]) == (400, expected)


def test_the_token_endpoint_issues_bearer_tokens_with_their_lifetime(box: PrivateSandbox):
    resp = grant(box)

    assert resp.status_code == 200
    body = resp.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3599 and body["access_token"].startswith("ya29.")
    assert box.client.request_count("fcm-token") == 1


def test_the_service_account_key_is_private_and_kept_when_repointed(tmp_path: Path):
    path = tmp_path / "sa.json"
    ensure_fcm_service_account(path, "https://127.0.0.1:1/token")
    first = json.loads(path.read_text())

    ensure_fcm_service_account(path, "https://127.0.0.1:2/token")
    second = json.loads(path.read_text())

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first["type"] == "service_account" and first["client_email"].endswith(".iam.gserviceaccount.com")
    assert second == first | {"token_uri": "https://127.0.0.1:2/token"}


# --- end to end: a real worker, the session's sandbox ------------------------------------------

def _user_with_android(unique) -> tuple[str, str]:
    user, token = unique("user"), fcm_token()
    set_preferences(user, push_enabled=True)
    register_device(user, token, "android")
    return user, token


def _event(unique, user: str) -> dict:
    return {"notification_id": unique("n"), "user_id": user, "type": "order_shipped", "category": "transactional",
            "priority": "high", "channels": ["push"], "title": "Shipped", "body": "On its way",
            "data": {"order": 1042}}  # fmt: skip


def _settled(nid: str):
    rows = get_status(nid)
    return rows if rows and all(r["status"] not in ("queued", "sending", "scheduled") for r in rows) else None


def test_an_android_device_gets_its_push_through_fcm(worker, sandbox, wait_until, unique):
    user, token = _user_with_android(unique)
    event = _event(unique, user)

    notifier.send_notification.delay(event)

    [row] = wait_until(lambda: _settled(event["notification_id"]))
    [message] = sandbox.messages(provider="fcm", target=token)
    assert (row["status"], row["provider"], row["attempts"]) == ("sent", "fcm", 1)
    assert row["provider_message_id"] == message["id"]
    assert message["payload"]["message"]["data"] == {"order": "1042"}
    assert message["payload"]["message"]["android"]["priority"] == "HIGH"


def test_an_unregistered_android_token_fails_and_is_deleted(worker, sandbox, wait_until, unique):
    user, token = _user_with_android(unique)
    sandbox.unregister(token, provider="fcm")
    event = _event(unique, user)

    notifier.send_notification.delay(event)

    [row] = wait_until(lambda: _settled(event["notification_id"]))
    assert (row["status"], row["attempts"]) == ("failed", 1)
    assert "token deleted" in row["reason"] and "UNREGISTERED" in row["reason"]
    with session_factory()() as session:
        assert session.scalar(select(DeviceToken).where(DeviceToken.token == token)) is None
