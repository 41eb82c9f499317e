"""Email (SendGrid, SMTP) and SMS (Twilio): every classification row through the real adapters and the
sandbox over the network, then the pipeline end to end, failover to SMTP, and delivery receipts.

Nothing is patched: the adapters speak HTTP/SMTP to the sandbox process, which answers as the
provider would (its own checks, its magic numbers, or an injected fault).
"""
from __future__ import annotations

import dataclasses
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest

from sandbox import devstack
from notifier.store.db import session_factory
from notifier.store.models import UserPreferences
from notifier.providers import OutcomeKind
from notifier.providers.base import Delivery
from notifier.providers.sendgrid.adapter import CLASSIFICATION as SENDGRID_TABLE
from notifier.providers.sendgrid.adapter import SendgridProvider
from notifier.providers.smtp import CLASSIFICATION as SMTP_TABLE
from notifier.providers.smtp import SmtpProvider, message_id
from notifier.providers.twilio.adapter import CLASSIFICATION as TWILIO_TABLE
from notifier.providers.twilio.adapter import TwilioProvider
from sandbox.tls import TlsIdentity
from notifier.settings import Settings, get_settings
from notifier.accounts.preferences import set_preferences
from notifier.accounts.status import get_status
from notifier.store import models
from tasks.pipeline import send_notification
from tests.integration.api_fixture import serve
from tests.integration.isolation import isolated_broker, produce
from tests.integration.environment import TEST_VAR, child_env

K = OutcomeKind
TERMINAL = {status.value for status in models.TERMINAL}
PROVIDERS = {"sendgrid": SendgridProvider, "smtp": SmtpProvider, "twilio": TwilioProvider}


@dataclass
class Row:
    """One classification row: how to provoke the answer, and what the adapter must make of it."""

    id: str
    kind: OutcomeKind
    reason: str  # a part of the outcome's reason
    fault: dict[str, Any] | None = None  # armed at the sandbox for this row's target
    fault_target: str | None = None  # ... or for this one (an SMTP AUTH fault matches the login)
    target: str | None = None  # a target that provokes the answer by itself (magic number, bad address)
    settings: dict[str, Any] = field(default_factory=dict)  # our own configuration, wrong on purpose
    delivery: dict[str, Any] = field(default_factory=dict)
    requests: int = 1  # requests the sandbox sees: the adapter never retries by itself
    retry_after: float | None = None
    documents: int | None = None  # the classification table row this proves

    def __str__(self) -> str:
        return self.id


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _delivery(unique, channel: str, target: str, **extra) -> Delivery:
    nid = unique("n")
    return Delivery(id=abs(hash(nid)) % 10**9, notification_id=nid, idempotency_key=f"{nid}:{channel}:0123456789abcdef",
                    channel=channel,
                    provider="", target=target, priority="high", category="transactional", type="receipt",
                    title=extra.pop("title", "Your receipt"), body=extra.pop("body", "Order #1042: 3 items."), **extra)


def _run_row(sandbox, unique, provider: str, row: Row, default_target: str, channel: str):
    """Given the row's setup, when its adapter sends one delivery, then return (outcome, requests seen)."""
    target = row.target if row.target is not None else default_target
    if row.fault:
        sandbox.add_fault(provider, row.fault_target or target, **row.fault)
    settings = Settings(**row.settings)
    adapter = PROVIDERS[provider](settings)
    before = sandbox.request_count(provider)
    try:
        [outcome] = adapter.send_batch([_delivery(unique, channel, target, **row.delivery)])
    finally:
        adapter.close()
    return outcome, sandbox.request_count(provider) - before


def _check(outcome, seen: int, row: Row) -> None:
    assert outcome.kind is row.kind, outcome
    assert row.reason in (outcome.reason or outcome.message_id or ""), outcome
    assert seen == row.requests
    if row.retry_after is not None:
        assert outcome.retry_after_s == pytest.approx(row.retry_after, abs=1.5)


# ---- SendGrid v3 Mail Send: one row per documented status (notifier.providers.sendgrid.adapter.CLASSIFICATION)

SENDGRID_ROWS = [
    Row("202 accepted", K.OK, "", documents=202),
    Row("400 invalid recipient", K.FAILED, "sendgrid 400 Does not contain a valid address. "
        "(personalizations.0.to.0.email)", target="not-an-address", documents=400),
    Row("400 missing from", K.FAILED, "The from object must be provided", settings={"email_from": ""}),
    Row("401 wrong API key", K.MISCONFIGURED, "sendgrid 401 The provided authorization grant is invalid",
        settings={"sendgrid_api_key": "SG.wrong"}, documents=401),
    Row("403 forbidden", K.MISCONFIGURED, "sendgrid 403", fault={"status": 403}, documents=403),
    Row("404 wrong URL", K.MISCONFIGURED, "sendgrid 404",
        settings={"sendgrid_url": get_settings().sendgrid_url + "/wrong"}, documents=404),
    Row("405", K.MISCONFIGURED, "sendgrid 405", fault={"status": 405}, documents=405),
    Row("413 too large", K.FAILED, "sendgrid 413", fault={"status": 413}, documents=413),
    Row("415", K.MISCONFIGURED, "sendgrid 415", fault={"status": 415}, documents=415),
    Row("429 at X-RateLimit-Reset", K.RETRY, "sendgrid 429 too many requests",
        fault={"status": 429, "retry_after": 30}, retry_after=30, documents=429),
    Row("500", K.RETRY, "sendgrid 500", fault={"status": 500}, documents=500),
    Row("502", K.RETRY, "sendgrid 502", fault={"status": 502}, documents=502),
    Row("503", K.RETRY, "sendgrid 503", fault={"status": 503}, documents=503),
    Row("504", K.RETRY, "sendgrid 504", fault={"status": 504}, documents=504),
    Row("5xx not in the table", K.RETRY, "sendgrid 599", fault={"status": 599}),
    Row("4xx not in the table", K.FAILED, "sendgrid 422", fault={"status": 422}),
    Row("timeout", K.RETRY, "sendgrid transport: ReadTimeout", fault={"latency_ms": 1500},
        settings={"send_timeout_s": 0.3}),
    Row("connection dropped", K.RETRY, "sendgrid transport: ConnectionError", fault={"drop": True}),
    Row("connection refused", K.RETRY, "sendgrid transport: ConnectionError", requests=0,
        settings={"sendgrid_url": f"http://127.0.0.1:{_closed_port()}"}),
]


def test_every_sendgrid_table_row_has_a_test():
    assert {r.documents for r in SENDGRID_ROWS} >= set(SENDGRID_TABLE)


@pytest.mark.parametrize("row", SENDGRID_ROWS, ids=str)
def test_sendgrid_outcome(sandbox, unique, row):
    outcome, seen = _run_row(sandbox, unique, "sendgrid", row, f"{unique('sg')}@example.com", "email")
    _check(outcome, seen, row)


def test_sendgrid_request_carries_custom_args_from_and_bearer_key(sandbox, unique):
    # Given a delivery
    d = _delivery(unique, "email", f"{unique('sg')}@example.com")
    # When SendGrid accepts it
    [outcome] = SendgridProvider().send_batch([d])
    # Then the X-Message-Id is its message id, and the request is what the webhooks rely on
    [record] = sandbox.messages("sendgrid", d.target)
    assert outcome.message_id == record["id"]
    body = record["payload"]
    assert body["personalizations"][0]["custom_args"] == {
        "delivery_id": str(d.id), "notification_id": d.idempotency_key.split(":")[0]}
    assert body["from"] == {"email": get_settings().email_from, "name": get_settings().email_from_name}
    assert (body["subject"], body["content"]) == (d.title, [{"type": "text/plain", "value": d.body}])
    assert "authorization" not in record["headers"]  # the sandbox never keeps the key


def test_sendgrid_batch_goes_out_over_kept_alive_connections(sandbox, unique):
    adapter = SendgridProvider()
    before = sandbox.connections("sendgrid")["accepted"]
    outcomes = adapter.send_batch([_delivery(unique, "email", f"{unique('sg')}@example.com") for _ in range(40)])
    outcomes += adapter.send_batch([_delivery(unique, "email", f"{unique('sg')}@example.com") for _ in range(40)])
    adapter.close()
    assert all(o.kind is K.OK for o in outcomes)
    assert sandbox.connections("sendgrid")["accepted"] - before <= get_settings().provider_http_concurrency


# ---- Twilio Messages API: one row per error code (notifier.providers.twilio.adapter.CLASSIFICATION)

TWILIO_ROWS = [
    Row("201 created", K.OK, "SM"),
    Row("20003 wrong auth token", K.MISCONFIGURED, "twilio 401 20003 Authenticate",
        settings={"twilio_auth_token": "wrong"}, documents=20003),
    Row("20404 unknown messaging service", K.MISCONFIGURED, "twilio 404 20404",
        settings={"twilio_messaging_service_sid": "MG" + "1" * 32}, documents=20404),
    Row("20429 too many requests, Retry-After", K.RETRY, "twilio 429 20429 Too Many Requests",
        fault={"status": 429, "retry_after": 7}, retry_after=7, documents=20429),
    Row("20500", K.RETRY, "twilio 500 20500", fault={"status": 500}, documents=20500),
    Row("20503", K.RETRY, "twilio 503 20503", fault={"status": 503}, documents=20503),
    Row("21211 invalid To (not E.164)", K.FAILED, "twilio 400 21211 Invalid 'To' Phone Number: 12345",
        target="12345", documents=21211),
    Row("21211 invalid To (magic number)", K.FAILED, "twilio 400 21211", target="+15005550001"),
    Row("21212 invalid From", K.MISCONFIGURED, "twilio 400 21212", settings={"twilio_from": "+15005550001"},
        documents=21212),
    Row("21408 region not enabled", K.FAILED, "twilio 400 21408", target="+15005550003", documents=21408),
    Row("21602 empty body", K.FAILED, "twilio 400 21602 Message body is required",
        delivery={"title": "", "body": ""}, documents=21602),
    Row("21603 no From", K.MISCONFIGURED, "twilio 400 21603", settings={"twilio_from": ""}, documents=21603),
    Row("21604 no To", K.FAILED, "twilio 400 21604", target="", documents=21604),
    Row("21606 From not ours", K.MISCONFIGURED, "twilio 400 21606", settings={"twilio_from": "+15005550007"},
        documents=21606),
    Row("21610 replied STOP", K.UNSUBSCRIBED, "twilio 400 21610 Attempt to send to unsubscribed recipient",
        target="+15005550004", documents=21610),
    Row("21611 From queue full", K.RETRY, "twilio 400 21611", settings={"twilio_from": "+15005550008"},
        documents=21611),
    Row("21612 unreachable", K.FAILED, "twilio 400 21612", target="+15005550002", documents=21612),
    Row("21614 not a mobile number", K.FAILED, "twilio 400 21614 'To' number is not a valid mobile number",
        target="+15005550009", documents=21614),
    Row("21617 body too long", K.FAILED, "twilio 400 21617", fault={"reason": "21617"}, documents=21617),
    Row("other 4xx code", K.FAILED, "twilio 400 21999", fault={"status": 400, "reason": "21999"}),
    Row("other 5xx", K.RETRY, "twilio 502", fault={"status": 502}),
    Row("timeout", K.RETRY, "twilio transport: ReadTimeout", fault={"latency_ms": 1500},
        settings={"send_timeout_s": 0.3}),
    Row("connection refused", K.RETRY, "twilio transport: ConnectionError", requests=0,
        settings={"twilio_url": f"http://127.0.0.1:{_closed_port()}"}),
]


def test_every_twilio_table_row_has_a_test():
    assert {r.documents for r in TWILIO_ROWS} >= set(TWILIO_TABLE)


@pytest.mark.parametrize("row", TWILIO_ROWS, ids=str)
def test_twilio_outcome(sandbox, unique, row):
    number = f"+4791{time.monotonic_ns() % 10**6:06d}"
    outcome, seen = _run_row(sandbox, unique, "twilio", row, number, "sms")
    _check(outcome, seen, row)


def test_twilio_request_is_the_documented_form_with_status_callback(sandbox, unique):
    # Given a public API URL, and a body longer than one SMS may be
    adapter = TwilioProvider(Settings(api_public_url="https://notify.example.test"))
    d = _delivery(unique, "sms", f"+4792{time.monotonic_ns() % 10**6:06d}", body="x" * 2000)
    # When Twilio accepts it
    [outcome] = adapter.send_batch([d])
    adapter.close()
    # Then the SID is the message id and the form carries From, the callback and a body cut to 1600
    [record] = sandbox.messages("twilio", d.target)
    assert outcome.message_id == record["id"] and record["id"].startswith("SM")
    form = record["payload"]
    assert form["From"] == get_settings().twilio_from
    assert form["StatusCallback"] == "https://notify.example.test/v1/webhooks/twilio"
    assert len(form["Body"]) == 1600 and form["Body"].startswith(d.title + "\n") and form["Body"].endswith("…")


# ---- SMTP: one row per reply code (notifier.providers.smtp.CLASSIFICATION)

AUTH_LOGIN = get_settings().smtp_username
OTHER_CA = TlsIdentity().write_ca(TEST_VAR / "not-the-sandbox-ca.pem")

SMTP_ROWS = [
    Row("250 accepted", K.OK, "@example.com>"),
    Row("421 closing", K.RETRY, "smtp 421 4.3.2", fault={"status": 421}, documents=421),
    Row("450 mailbox busy", K.RETRY, "smtp 450", fault={"status": 450}, documents=450),
    Row("451 local error", K.RETRY, "smtp 451", fault={"status": 451}, documents=451),
    Row("452 storage", K.RETRY, "smtp 452", fault={"status": 452}, documents=452),
    Row("454 temporary", K.RETRY, "smtp 454", fault={"status": 454}, documents=454),
    Row("other 4xx", K.RETRY, "smtp 471", fault={"status": 471}),
    Row("500 syntax", K.FAILED, "smtp 500", fault={"status": 500}, documents=500),
    Row("501 syntax", K.FAILED, "smtp 501", fault={"status": 501}, documents=501),
    Row("502 not implemented", K.MISCONFIGURED, "smtp 502", fault={"status": 502}, documents=502),
    Row("503 bad sequence", K.FAILED, "smtp 503", fault={"status": 503}, documents=503),
    Row("504 parameter", K.MISCONFIGURED, "smtp 504", fault={"status": 504}, documents=504),
    Row("530 auth required", K.MISCONFIGURED, "smtp 530", requests=0, documents=530,
        fault={"status": 530}, fault_target=AUTH_LOGIN),
    Row("534 mechanism too weak", K.MISCONFIGURED, "smtp 534", requests=0, documents=534,
        fault={"status": 534}, fault_target=AUTH_LOGIN),
    Row("535 auth failed (fault)", K.MISCONFIGURED, "smtp 535 5.7.8", requests=0, documents=535,
        fault={"status": 535}, fault_target=AUTH_LOGIN),
    Row("535 auth failed (wrong password)", K.MISCONFIGURED, "smtp 535 5.7.8 Authentication credentials invalid",
        requests=0, settings={"smtp_password": "wrong"}),
    Row("538 encryption required", K.MISCONFIGURED, "smtp 538", requests=0, documents=538,
        fault={"status": 538}, fault_target=AUTH_LOGIN),
    Row("no STARTTLS: AUTH not offered in the clear", K.MISCONFIGURED, "SMTP AUTH extension not supported",
        requests=0, settings={"smtp_starttls": False}),
    Row("550 mailbox unavailable", K.FAILED, "smtp 550 5.1.1 No such user here",
        fault={"status": 550, "reason": "5.1.1 No such user here"}, documents=550),
    Row("551 not local", K.FAILED, "smtp 551", fault={"status": 551}, documents=551),
    Row("552 storage exceeded", K.FAILED, "smtp 552", fault={"status": 552}, documents=552),
    Row("553 name not allowed", K.FAILED, "smtp 553", fault={"status": 553}, documents=553),
    Row("554 transaction failed", K.FAILED, "smtp 554", fault={"status": 554}, documents=554),
    Row("555 parameters", K.FAILED, "smtp 555", fault={"status": 555}, documents=555),
    Row("other 5xx", K.FAILED, "smtp 559", fault={"status": 559}),
    Row("dropped on a fresh connection", K.RETRY, "smtp disconnected", fault={"drop": True}),
    Row("connection refused", K.RETRY, "smtp transport: ConnectionRefusedError", requests=0,
        settings={"smtp_port": _closed_port()}),
    Row("certificate not trusted", K.MISCONFIGURED, "smtp TLS certificate not trusted", requests=0,
        settings={"smtp_ca_file": str(OTHER_CA)}),
    Row("CA file missing", K.MISCONFIGURED, "does not load", requests=0,
        settings={"smtp_ca_file": str(TEST_VAR / "no-such-ca.pem")}),
]


def test_every_smtp_table_row_has_a_test():
    assert {r.documents for r in SMTP_ROWS} >= set(SMTP_TABLE)


@pytest.mark.parametrize("row", SMTP_ROWS, ids=str)
def test_smtp_outcome(sandbox, unique, row):
    outcome, seen = _run_row(sandbox, unique, "smtp", row, f"{unique('smtp')}@example.com", "email")
    _check(outcome, seen, row)


def test_smtp_reuses_one_connection_and_reconnects_when_dropped(sandbox, unique):
    adapter = SmtpProvider()
    before = sandbox.connections("smtp")["accepted"]
    first = adapter.send_batch([_delivery(unique, "email", f"{unique('smtp')}@example.com") for _ in range(5)])
    # When the server drops the (kept-alive) connection in the middle of the next message
    victim = f"{unique('smtp')}@example.com"
    sandbox.add_fault("smtp", victim, drop=True)
    requests_before = sandbox.request_count("smtp")
    second = adapter.send_batch([_delivery(unique, "email", victim),
                                 _delivery(unique, "email", f"{unique('smtp')}@example.com")])
    adapter.close()
    # Then one connection carried the first batch, and a second one resent the dropped message, once
    assert [o.kind for o in first + second] == [K.OK] * 7
    assert sandbox.connections("smtp")["accepted"] - before == 2
    assert sandbox.request_count("smtp") - requests_before == 3
    assert len(sandbox.messages("smtp", victim)) == 1


def test_smtp_message_id_is_derived_from_the_idempotency_key(sandbox, unique):
    d = _delivery(unique, "email", f"{unique('smtp')}@example.com")
    adapter = SmtpProvider()
    [a] = adapter.send_batch([d])
    [b] = adapter.send_batch([d])  # a resend after a lost reply
    adapter.close()
    assert a.message_id == b.message_id == message_id(d, "example.com")
    records = sandbox.messages("smtp", d.target)
    assert [r["id"] for r in records] == [a.message_id] * 2
    assert records[0]["payload"]["subject"] == d.title and records[0]["payload"]["body"].strip() == d.body


# ---- One delivery that cannot be sent never holds up its batch-mates (issue 10)

@pytest.mark.parametrize("field", ["title", "notification_id", "target"])
def test_smtp_a_header_value_with_cr_lf_fails_alone_and_the_others_go_once(sandbox, unique, field):
    # Given a batch whose middle delivery would put CR/LF into a header line
    good = [_delivery(unique, "email", f"{unique('smtp')}@example.com") for _ in range(2)]
    bad = _delivery(unique, "email", f"{unique('smtp')}@example.com")
    bad = dataclasses.replace(bad, **{field: getattr(bad, field) + "\r\nBcc: attacker@example.net"})
    adapter = SmtpProvider()
    before = sandbox.request_count("smtp")
    try:
        outcomes = adapter.send_batch([good[0], bad, good[1]])
    finally:
        adapter.close()
    # Then it fails, naming the field, and the others are sent exactly once
    assert [o.kind for o in outcomes] == [K.OK, K.FAILED, K.OK]
    assert outcomes[1].reason == f"smtp: not sent, {field} holds CR or LF (it would become a header line)"
    assert [len(sandbox.messages("smtp", d.target)) for d in good] == [1, 1]
    assert sandbox.request_count("smtp") - before == 2
    assert sandbox.messages("smtp", "attacker@example.net") == []


def test_smtp_a_body_that_cannot_be_encoded_fails_alone(sandbox, unique):
    good = _delivery(unique, "email", f"{unique('smtp')}@example.com")
    bad = _delivery(unique, "email", f"{unique('smtp')}@example.com", body="lone surrogate \ud800")
    adapter = SmtpProvider()
    try:
        outcomes = adapter.send_batch([bad, good])
    finally:
        adapter.close()
    assert [o.kind for o in outcomes] == [K.FAILED, K.OK]
    assert outcomes[0].reason.startswith("smtp: not sent, the message could not be")
    assert sandbox.messages("smtp", bad.target) == [] and len(sandbox.messages("smtp", good.target)) == 1


def test_smtp_on_outcome_fires_after_each_message_and_for_every_delivery_of_a_dead_connection(sandbox, unique):
    batch = [_delivery(unique, "email", f"{unique('smtp')}@example.com") for _ in range(3)]
    adapter = SmtpProvider()
    seen: list[tuple[int, int]] = []  # (index, messages the sandbox had accepted for the batch by then)
    try:
        outcomes = adapter.send_batch(batch, lambda i, o: seen.append(
            (i, sum(len(sandbox.messages("smtp", d.target)) for d in batch))))
    finally:
        adapter.close()
    assert [o.kind for o in outcomes] == [K.OK] * 3
    assert seen == [(0, 1), (1, 2), (2, 3)], "reported as each message is accepted, before the next goes"

    refused = SmtpProvider(Settings(smtp_port=_closed_port()))
    dead: list[tuple[int, OutcomeKind]] = []
    try:
        outcomes = refused.send_batch(batch, lambda i, o: dead.append((i, o.kind)))
    finally:
        refused.close()
    assert dead == [(i, o.kind) for i, o in enumerate(outcomes)] and len(dead) == 3


@pytest.mark.parametrize("provider", ["sendgrid", "twilio"])
def test_http_on_outcome_fires_once_per_delivery_in_completion_order_before_send_batch_returns(
    sandbox, unique, provider
):
    # Given a batch whose first delivery the provider answers slowly
    channel = "email" if provider == "sendgrid" else "sms"
    targets = ([f"{unique('sg')}@example.com" for _ in range(6)] if provider == "sendgrid"
               else [f"+4793{(time.monotonic_ns() + i) % 10**6:06d}" for i in range(6)])
    batch = [_delivery(unique, channel, t) for t in targets]
    sandbox.add_fault(provider, targets[0], latency_ms=800)
    adapter = PROVIDERS[provider]()
    seen: list[tuple[int, OutcomeKind, float]] = []
    started = time.monotonic()
    try:
        outcomes = adapter.send_batch(batch, lambda i, o: seen.append((i, o.kind, time.monotonic() - started)))
    finally:
        adapter.close()
    # Then each delivery was reported once with its outcome, the slow one last, the others long before it
    assert [o.kind for o in outcomes] == [K.OK] * 6
    assert sorted(i for i, _, _ in seen) == list(range(6)) and seen[-1][0] == 0
    assert {i: kind for i, kind, _ in seen} == {i: o.kind for i, o in enumerate(outcomes)}
    assert all(t < 0.7 for i, _, t in seen if i != 0) and seen[-1][2] >= 0.75


@pytest.mark.parametrize("provider", ["sendgrid", "twilio", "smtp"])
def test_an_exception_in_on_outcome_is_logged_and_the_batch_goes_on(sandbox, unique, provider, caplog):
    channel = "sms" if provider == "twilio" else "email"
    targets = ([f"+4794{(time.monotonic_ns() + i) % 10**6:06d}" for i in range(4)] if provider == "twilio"
               else [f"{unique('cb')}@example.com" for _ in range(4)])
    adapter = PROVIDERS[provider]()

    def failing(index, outcome):
        raise ConnectionError("the record store is down")

    try:
        outcomes = adapter.send_batch([_delivery(unique, channel, t) for t in targets], failing)
    finally:
        adapter.close()
    assert [o.kind for o in outcomes] == [K.OK] * 4
    assert caplog.text.count("on_outcome callback raised ConnectionError") == 4
    assert all(t not in caplog.text for t in targets)
    assert all(len(sandbox.messages(provider, t)) == 1 for t in targets)


def test_sendgrid_a_request_the_client_cannot_encode_fails_alone(sandbox, unique):
    good = _delivery(unique, "email", f"{unique('sg')}@example.com")
    bad = _delivery(unique, "email", b"not-a-str@example.com")  # what JSON cannot hold
    adapter = SendgridProvider()
    try:
        outcomes = adapter.send_batch([bad, good])
    finally:
        adapter.close()
    assert [o.kind for o in outcomes] == [K.FAILED, K.OK]
    assert outcomes[0].reason.startswith("sendgrid: ") and outcomes[0].reason.endswith("Error)")
    assert sandbox.messages("sendgrid", good.target) and sandbox.messages("sendgrid", "not-a-str@example.com") == []


# ---- Through the pipeline: real workers, real PostgreSQL and Redis


def _user(unique, **prefs) -> str:
    user = unique("user")
    set_preferences(user, **prefs)
    return user


def _event(unique, user: str, channels: list[str], **extra) -> dict:
    return {"notification_id": unique("n"), "user_id": user, "type": "order_shipped", "category": "transactional",
            "priority": "high", "channels": channels, "title": "Shipped", "body": "Order #1042 is on its way."} | extra


def _settled(nid: str, n: int = 1):
    rows = get_status(nid)
    return rows if len(rows) >= n and all(r["status"] in TERMINAL for r in rows) else None


def _prefs(user: str) -> UserPreferences:
    with session_factory()() as session:
        return session.get(UserPreferences, user)


def test_email_through_sendgrid_is_sent_with_its_message_id(worker, sandbox, wait_until, unique):
    address = f"{unique('e2e')}@example.com"
    user = _user(unique, email=address)
    event = _event(unique, user, ["email"])
    send_notification.delay(event)
    [row] = wait_until(lambda: _settled(event["notification_id"]))
    assert (row["status"], row["provider"], row["attempts"]) == ("sent", "sendgrid", 1)
    [record] = sandbox.messages("sendgrid", address)
    assert row["provider_message_id"] == record["id"]
    assert record["payload"]["personalizations"][0]["custom_args"] == {
        "delivery_id": str(row["delivery_id"]), "notification_id": event["notification_id"]}


def test_sms_through_twilio_is_sent_with_its_sid(worker, sandbox, wait_until, unique):
    phone = f"+4793{time.monotonic_ns() % 10**6:06d}"
    user = _user(unique, phone=phone)
    event = _event(unique, user, ["sms"])
    send_notification.delay(event)
    [row] = wait_until(lambda: _settled(event["notification_id"]))
    assert (row["status"], row["provider"]) == ("sent", "twilio")
    [record] = sandbox.messages("twilio", phone)
    assert row["provider_message_id"] == record["id"]
    assert record["payload"]["Body"] == "Shipped\nOrder #1042 is on its way."


def test_sms_recipient_who_replied_stop_is_failed_once_and_sms_turned_off(worker, sandbox, wait_until, unique):
    # Given a user whose number replied STOP at Twilio (the magic number answers 21610)
    user = _user(unique, phone="+15005550004")
    before = sandbox.request_count("twilio")
    event = _event(unique, user, ["sms"])
    # When an SMS is sent
    send_notification.delay(event)
    [row] = wait_until(lambda: _settled(event["notification_id"]))
    # Then the delivery fails without a retry, and SMS is off for the user
    assert row["status"] == "failed" and "21610" in row["reason"] and "sms turned off" in row["reason"]
    assert row["attempts"] == 1 and sandbox.request_count("twilio") - before == 1
    assert _prefs(user).sms_enabled is False
    # And the next SMS is suppressed without asking Twilio
    again = _event(unique, user, ["sms"])
    send_notification.delay(again)
    [row] = wait_until(lambda: _settled(again["notification_id"]))
    assert (row["status"], row["reason"]) == ("suppressed", "sms disabled by user")
    assert sandbox.request_count("twilio") - before == 1


def test_permanent_email_failure_is_not_retried(worker, sandbox, wait_until, unique):
    address = f"{unique('e2e')}@example.com"
    sandbox.add_fault("sendgrid", address, status=400, reason="The to email does not contain a valid address.",
                      count=None)
    user = _user(unique, email=address)
    before = sandbox.request_count("sendgrid")
    event = _event(unique, user, ["email"])
    send_notification.delay(event)
    [row] = wait_until(lambda: _settled(event["notification_id"]))
    assert row["status"] == "failed" and "sendgrid 400 The to email does not contain" in row["reason"]
    time.sleep(1.5)  # longer than a retry's backoff here
    assert sandbox.request_count("sendgrid") - before == 1
    assert _prefs(user).email_enabled is True


def test_transient_sms_failure_is_retried_then_sent(worker, sandbox, wait_until, unique):
    phone = f"+4794{time.monotonic_ns() % 10**6:06d}"
    sandbox.add_fault("twilio", phone, status=503, count=1)
    user = _user(unique, phone=phone)
    before = sandbox.request_count("twilio")
    event = _event(unique, user, ["sms"])
    send_notification.delay(event)
    [row] = wait_until(lambda: _settled(event["notification_id"]), timeout_s=30)
    assert (row["status"], row["attempts"]) == ("sent", 2)
    assert "twilio 503" in row["last_error"]
    assert sandbox.request_count("twilio") - before == 2


# ---- Failover and receipts: a worker of their own (fallbacks on; status callbacks to a local API)


@pytest.fixture(scope="module")
def receipts_api(sandbox, database):
    """`notifier api` trusting the sandbox's webhook signatures (its SendGrid key, the run's Twilio token)."""
    env = child_env()
    for name in ("NOTIFIER_SENDGRID_WEBHOOK_PUBLIC_KEY", "NOTIFIER_API_PUBLIC_URL"):
        env.pop(name, None)
    env["NOTIFIER_SENDGRID_WEBHOOK_PUBLIC_KEY_PATH"] = str(
        get_settings().var_dir / "sandbox" / "sendgrid_webhook_public_key")
    # On the port the sandbox posts receipts to (it posts nowhere else).
    port = urlsplit(os.environ["NOTIFIER_SANDBOX_SENDGRID_EVENT_WEBHOOK_URL"]).port
    with serve(env, "api-receipts.log", port=port) as url:
        yield url


@pytest.fixture(scope="module")
def own_worker(sandbox, database, receipts_api):
    """A worker with SendGrid -> SMTP failover, whose SMS name the local API as their StatusCallback."""
    with isolated_broker("email-sms") as broker:
        env = child_env() | {
            "NOTIFIER_BROKER_KEY_PREFIX": broker,
            "NOTIFIER_PROVIDER_FALLBACKS": "sendgrid:smtp",
            "NOTIFIER_TWILIO_STATUS_CALLBACK_URL": receipts_api + "/v1/webhooks/twilio",
        }
        proc = devstack.start_worker(env, TEST_VAR / "logs" / "email-sms-worker.log", name="email-sms")
        try:
            yield broker
        finally:
            devstack.stop(proc)


def _produce(broker: str, event: dict) -> None:
    produce(broker, send_notification, event)


def test_sendgrid_failing_fails_over_to_smtp(own_worker, sandbox, wait_until, unique):
    # Given SendGrid answering 503 for this address
    address = f"{unique('failover')}@example.com"
    sandbox.add_fault("sendgrid", address, status=503, count=None)
    user = _user(unique, email=address)
    event = _event(unique, user, ["email"])
    # When the email is sent by a worker with NOTIFIER_PROVIDER_FALLBACKS=sendgrid:smtp
    _produce(own_worker, event)
    [row] = wait_until(lambda: _settled(event["notification_id"]))
    # Then SMTP took it at once: sent, by smtp, with the deterministic Message-ID
    assert (row["status"], row["provider"], row["attempts"]) == ("sent", "smtp", 1)
    [record] = sandbox.messages("smtp", address)
    assert row["provider_message_id"] == record["id"]
    assert sandbox.messages("sendgrid", address) == []


def test_a_poison_email_failing_over_to_smtp_fails_alone_and_its_batch_mate_is_sent_once(
    own_worker, sandbox, wait_until, unique
):
    # Given SendGrid down for two addresses, and two events in one batch, one with CR/LF in its title
    # (handed to the route task raw, as a producer skipping validation would)
    from notifier.queues import queue_for
    from tasks.app import app

    innocent, poisoned = (f"{unique('mate')}@example.com" for _ in range(2))
    for address in (innocent, poisoned):
        sandbox.add_fault("sendgrid", address, status=503, count=None)
    good = _event(unique, _user(unique, email=innocent), ["email"])
    bad = _event(unique, _user(unique, email=poisoned), ["email"], title="Shipped\r\nBcc: attacker@example.net")
    with app.connection_for_write(transport_options={"global_keyprefix": own_worker}) as conn:
        app.send_task("notifier.send_notifications", args=[[good, bad]], queue=queue_for("pipeline", "high"),
                      connection=conn)

    # When both fail over to SMTP, the poison one fails alone and its batch-mate is sent by SMTP
    [good_row] = wait_until(lambda: _settled(good["notification_id"]), timeout_s=30)
    [bad_row] = wait_until(lambda: _settled(bad["notification_id"]), timeout_s=30)
    assert (good_row["status"], good_row["provider"]) == ("sent", "smtp")
    assert bad_row["status"] == "failed" and "title" in bad_row["reason"], bad_row
    # Then, even after the sweeper had its chance to re-drive, SMTP got the innocent one exactly once
    time.sleep(get_settings().stuck_after_s + 2)
    assert len(sandbox.messages("smtp", innocent)) == 1
    assert sandbox.messages("smtp", poisoned) == [] and sandbox.messages("smtp", "attacker@example.net") == []
    assert [r["status"] for r in get_status(good["notification_id"])] == ["sent"]


def test_sendgrid_delivered_receipt_marks_the_delivery_delivered(own_worker, receipts_api, sandbox, wait_until,
                                                                 unique):
    # Given an email SendGrid accepted
    address = f"{unique('receipt')}@example.com"
    user = _user(unique, email=address)
    event = _event(unique, user, ["email"])
    _produce(own_worker, event)
    [row] = wait_until(lambda: _settled(event["notification_id"]))
    assert row["status"] == "sent"
    # When SendGrid reports it delivered (signed Event Webhook)
    answer = sandbox.receipt("sendgrid", "delivered", message_id=row["provider_message_id"])
    # Then the API accepted the signature and the delivery is delivered
    assert answer["status"] == 200 and answer["response"] == {"applied": 1, "ignored": 0, "unknown": 0}
    [row] = get_status(event["notification_id"])
    assert row["status"] == "delivered" and row["delivered_at"] is not None


def test_sendgrid_bounce_receipt_fails_the_delivery(own_worker, receipts_api, sandbox, wait_until, unique):
    address = f"{unique('bounce')}@example.com"
    user = _user(unique, email=address)
    event = _event(unique, user, ["email"])
    _produce(own_worker, event)
    wait_until(lambda: _settled(event["notification_id"]))
    answer = sandbox.receipt("sendgrid", "bounce", target=address, reason="550 5.1.1 no such user", type="bounce")
    assert answer["status"] == 200
    [row] = get_status(event["notification_id"])
    assert row["status"] == "failed" and "550 5.1.1 no such user" in row["reason"]
    assert _prefs(user).email_undeliverable_at is not None


def test_twilio_status_callback_marks_the_sms_delivered(own_worker, receipts_api, sandbox, wait_until, unique):
    # Given an SMS Twilio accepted with our StatusCallback
    phone = f"+4795{time.monotonic_ns() % 10**6:06d}"
    user = _user(unique, phone=phone)
    event = _event(unique, user, ["sms"])
    _produce(own_worker, event)
    [row] = wait_until(lambda: _settled(event["notification_id"]))
    [record] = sandbox.messages("twilio", phone)
    assert record["payload"]["StatusCallback"] == receipts_api + "/v1/webhooks/twilio"
    # When Twilio calls it back (signed with the auth token over that URL)
    answer = sandbox.receipt("twilio", "delivered", message_id=row["provider_message_id"])
    # Then the delivery is delivered
    assert answer["status"] == 200 and answer["response"]["applied"] == 1
    [row] = get_status(event["notification_id"])
    assert row["status"] == "delivered"


def test_twilio_undelivered_callback_fails_the_sms_with_its_error_code(own_worker, receipts_api, sandbox,
                                                                       wait_until, unique):
    phone = f"+4796{time.monotonic_ns() % 10**6:06d}"
    user = _user(unique, phone=phone)
    event = _event(unique, user, ["sms"])
    _produce(own_worker, event)
    wait_until(lambda: _settled(event["notification_id"]))
    answer = sandbox.receipt("twilio", "undelivered", target=phone, error_code="30005")
    assert answer["status"] == 200
    [row] = get_status(event["notification_id"])
    assert row["status"] == "failed" and "30005" in row["reason"]
