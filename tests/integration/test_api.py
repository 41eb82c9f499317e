"""The HTTP API against a real `notifier api` process, real Celery workers, PostgreSQL and the sandbox."""
from __future__ import annotations

import json
import secrets
from datetime import datetime, timedelta, timezone

import pytest
import requests

from tests.integration.api_fixture import api, free_port, serve  # noqa: F401  (fixture)
from tests.integration.environment import child_env
from notifier.accounts import api_keys
from notifier.store.redis_conn import broker_redis
from tests.bad_events import BAD_EVENTS


def _event(nid: str, user: str, **changes) -> dict:
    return {
        "notification_id": nid, "user_id": user, "type": "order_shipped", "category": "transactional",
        "priority": "high", "channels": ["push"], "title": "Shipped", "body": "Your order is on its way",
    } | changes


def _statuses(api, nid: str) -> list[dict]:
    response = requests.get(f"{api.url}/v1/notifications/{nid}", headers=api.auth(), timeout=10)
    return response.json()["deliveries"] if response.status_code == 200 else []


def _register_ios(api, user: str) -> str:
    token = secrets.token_hex(32)
    response = requests.put(f"{api.url}/v1/users/{user}/devices/{token}", json={"platform": "ios"},
                            headers=api.auth(), timeout=10)
    assert response.status_code == 204, response.text
    return token


def test_post_then_get_shows_the_delivery_sent_with_its_target_redacted(api, worker, sandbox, wait_until, unique):
    # Given a user with an iOS device registered over the API
    user, nid = unique("user"), unique("n")
    token = _register_ios(api, user)

    # When a producer posts one notification
    response = requests.post(f"{api.url}/v1/notifications", json=_event(nid, user), headers=api.auth(), timeout=10)

    # Then it is accepted, and GET shows its one delivery sent by APNs
    assert response.status_code == 202, response.text
    assert response.json() == {"notification_id": nid}
    sent = wait_until(lambda: [d for d in _statuses(api, nid) if d["status"] == "sent"], message="never sent")
    deliveries = _statuses(api, nid)
    assert len(deliveries) == 1
    assert sent[0]["channel"] == "push" and sent[0]["provider"] == "apns" and sent[0]["attempts"] == 1
    assert sent[0]["sent_at"] and sent[0]["provider_message_id"]
    # and the device token never appears in full, only enough to tell it apart
    body = requests.get(f"{api.url}/v1/notifications/{nid}", headers=api.auth(), timeout=10).text
    assert token not in body
    assert sent[0]["target"] == "…" + token[-4:]
    assert len(sandbox.messages(provider="apns", target=token)) == 1


def test_posting_the_same_notification_twice_delivers_it_once(api, worker, sandbox, wait_until, unique):
    user, nid = unique("user"), unique("n")
    token = _register_ios(api, user)

    first = requests.post(f"{api.url}/v1/notifications", json=_event(nid, user), headers=api.auth(), timeout=10)
    wait_until(lambda: any(d["status"] == "sent" for d in _statuses(api, nid)), message="never sent")
    second = requests.post(f"{api.url}/v1/notifications", json=_event(nid, user), headers=api.auth(), timeout=10)

    assert (first.status_code, second.status_code) == (202, 202)
    statuses = wait_until(lambda: sorted(d["status"] for d in _statuses(api, nid)) == ["duplicate", "sent"]
                          and _statuses(api, nid), message="the repeat was not recorded as duplicate")
    assert len(statuses) == 2
    assert len(sandbox.messages(provider="apns", target=token)) == 1, "one request reached APNs"


@pytest.mark.parametrize(("change", "field"), BAD_EVENTS)
def test_bad_event_is_422_naming_the_field_and_queues_nothing(api, change, field):
    broker = broker_redis()
    before = {q: broker.llen(q) for q in ("pipeline.high", "pipeline.low")}
    event = {k: v for k, v in (_event("n-bad", "u1") | change).items() if v is not None}
    body = json.dumps(event)  # ensure_ascii: a lone surrogate travels as \ud800

    response = requests.post(f"{api.url}/v1/notifications", data=body, timeout=10,
                             headers=api.auth() | {"Content-Type": "application/json"})

    assert response.status_code == 422, response.text
    assert any(e["loc"][:2] == ["body", field] for e in response.json()["detail"]), response.json()
    assert {q: broker.llen(q) for q in before} == before


def test_an_event_already_expired_is_422_naming_expires_at(api):
    response = requests.post(f"{api.url}/v1/notifications", json=_event("n-late", "u1") | {
        "expires_at": "2020-01-01T00:00:00Z"}, headers=api.auth(), timeout=10)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"][:2] == ["body", "expires_at"] and "in the past" in error["msg"]


def test_body_that_is_not_json_is_422_and_an_oversized_event_is_413(api):
    bad = requests.post(f"{api.url}/v1/notifications", data=b"{not json", timeout=10,
                        headers=api.auth() | {"Content-Type": "application/json"})
    big = requests.post(f"{api.url}/v1/notifications", json=_event("n-big", "u1", body="x" * 70_000),
                        headers=api.auth(), timeout=10)
    assert bad.status_code == 422
    assert big.status_code == 413


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, 401),
        ({"Authorization": "Bearer ntf_000000000000_not-a-real-key"}, 401),
        ({"Authorization": "Bearer garbage"}, 401),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 401),
    ],
)
def test_missing_or_wrong_key_is_401(api, headers, expected):
    response = requests.get(f"{api.url}/v1/notifications/anything", headers=headers, timeout=10)
    assert response.status_code == expected
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_revoked_key_is_401(api, unique):
    info, key = api_keys.create_key(unique("revoked"), "admin")
    assert requests.get(f"{api.url}/v1/users/u/preferences", headers=api.auth(key), timeout=10).status_code == 200
    assert api_keys.revoke_key(info.prefix)
    assert requests.get(f"{api.url}/v1/users/u/preferences", headers=api.auth(key), timeout=10).status_code == 401


def test_producer_key_may_not_cancel_but_admin_may(api, worker, wait_until, unique):
    # Given a notification deferred by send_at, not yet sent
    user, nid = unique("user"), unique("n")
    _register_ios(api, user)
    later = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    posted = requests.post(f"{api.url}/v1/notifications", json=_event(nid, user, send_at=later),
                           headers=api.auth(), timeout=10)
    assert posted.status_code == 202
    wait_until(lambda: [d["status"] for d in _statuses(api, nid)] == ["scheduled"], message="never scheduled")

    # When a producer key tries to cancel it, it is refused; an admin key cancels it
    refused = requests.delete(f"{api.url}/v1/notifications/{nid}", headers=api.auth(api.producer_key), timeout=10)
    cancelled = requests.delete(f"{api.url}/v1/notifications/{nid}", headers=api.auth(api.admin_key), timeout=10)

    assert refused.status_code == 403
    assert cancelled.status_code == 200 and cancelled.json() == {"notification_id": nid, "cancelled": 1}
    [delivery] = _statuses(api, nid)
    assert delivery["status"] == "suppressed" and "cancelled" in delivery["reason"]


def test_unknown_notification_is_404(api, unique):
    nid = unique("never")
    assert requests.get(f"{api.url}/v1/notifications/{nid}", headers=api.auth(), timeout=10).status_code == 404
    assert requests.delete(f"{api.url}/v1/notifications/{nid}", headers=api.auth(api.admin_key),
                           timeout=10).status_code == 404


def test_device_register_and_unregister(api, unique):
    user, token = unique("user"), secrets.token_hex(32)
    url = f"{api.url}/v1/users/{user}/devices/{token}"

    assert requests.put(url, json={"platform": "pager"}, headers=api.auth(), timeout=10).status_code == 422
    assert requests.put(url, json={"platform": "android", "app": "courier"}, headers=api.auth(),
                        timeout=10).status_code == 204
    unknown = requests.put(url, json={"platform": "android", "app": "nope"}, headers=api.auth(), timeout=10)
    assert unknown.status_code == 422 and "unknown app 'nope'" in unknown.text
    assert requests.delete(url, headers=api.auth(), timeout=10).status_code == 204
    assert requests.delete(url, headers=api.auth(), timeout=10).status_code == 404


def test_preferences_read_defaults_then_change_some(api, unique):
    user = unique("user")
    url = f"{api.url}/v1/users/{user}/preferences"

    defaults = requests.get(url, headers=api.auth(), timeout=10).json()
    changed = requests.put(url, json={"email_enabled": False, "email": "a@example.com", "quiet_start": "22:00",
                                      "quiet_end": "07:00", "timezone": "Europe/Oslo",
                                      "opted_out_categories": ["marketing"]}, headers=api.auth(), timeout=10)
    again = requests.put(url, json={"timezone": None}, headers=api.auth(), timeout=10)

    assert defaults["push_enabled"] is True and defaults["email"] is None
    assert changed.status_code == 200, changed.text
    assert changed.json() | {"timezone": None} == again.json()
    assert again.json()["quiet_start"] == "22:00:00" and again.json()["email_enabled"] is False
    assert requests.get(url, headers=api.auth(), timeout=10).json() == again.json()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"push_enabled": None}, "push_enabled"),
        ({"phone": "12345"}, "phone"),
        ({"email": "not-an-address"}, "email"),
        ({"quiet_start": "25:00"}, "quiet_start"),
        ({"opted_out_categories": None}, "opted_out_categories"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_preferences_are_422_naming_the_field(api, unique, body, field):
    response = requests.put(f"{api.url}/v1/users/{unique('user')}/preferences", json=body, headers=api.auth(),
                            timeout=10)
    assert response.status_code == 422
    assert any(e["loc"][:2] == ["body", field] for e in response.json()["detail"]), response.json()


def test_healthz_is_open_and_checks_dependencies(api):
    response = requests.get(f"{api.url}/healthz", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "redis": "ok", "broker": "ok"}}


def test_healthz_is_503_naming_what_does_not_answer_and_unconfigured_webhooks_are_503(database):
    # Given an API whose Redis does not answer and with no webhook verification keys
    env = child_env() | {"NOTIFIER_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    for name in ("NOTIFIER_SENDGRID_WEBHOOK_PUBLIC_KEY", "NOTIFIER_TWILIO_AUTH_TOKEN"):
        env.pop(name, None)
    with serve(env, "api-degraded.log") as url:
        health = requests.get(f"{url}/healthz", timeout=10)
        sendgrid = requests.post(f"{url}/v1/webhooks/sendgrid", json=[], timeout=10)
        twilio = requests.post(f"{url}/v1/webhooks/twilio", data={"MessageSid": "SM1"}, timeout=10)

    assert health.status_code == 503
    assert health.json()["checks"]["redis"].startswith("error") and health.json()["checks"]["database"] == "ok"
    assert (sendgrid.status_code, twilio.status_code) == (503, 503)


def test_openapi_document_is_served_and_declares_the_bearer_scheme(api):
    doc = requests.get(f"{api.url}/openapi.json", timeout=10).json()
    assert doc["openapi"].startswith("3.")
    assert doc["components"]["securitySchemes"]["ApiKey"] == {
        "type": "http", "scheme": "bearer",
        "description": "An API key from `notifier keys create`, sent as `Authorization: Bearer <key>`.",
    }
    assert {"/v1/notifications", "/v1/notifications/{notification_id}", "/v1/users/{user_id}/devices/{token}",
            "/v1/users/{user_id}/preferences", "/v1/webhooks/sendgrid", "/v1/webhooks/twilio",
            "/healthz"} <= set(doc["paths"])


# ---- Issue 10, findings 1, 5 and 7 at the HTTP edge (the rules: notifier/intake/validation.py).


@pytest.mark.parametrize(
    ("path_token", "platform"),
    [
        ("caf%C3%A9" + "c85f" * 16, "ios"),   # finding 1: answered 204, then wedged every push batch holding it
        ("c85f" * 16 + "%23x", "ios"),        # finding 7: '#x' reached another user's device
        ("c85f" * 8 + "%20" + "c85f" * 8, "ios"),
        ("c85f" * 16 + "%0D%0A", "ios"),
        ("c85f" * 15, "ios"),
        ("fcm%20token", "android"),
        ("c85f" * 16, "web"),
    ],
)
def test_a_token_that_is_not_its_platforms_shape_is_422_and_not_stored(api, unique, path_token, platform):
    user = unique("user")
    url = f"{api.url}/v1/users/{user}/devices/{path_token}"

    response = requests.put(url, json={"platform": platform}, headers=api.auth(), timeout=10)

    assert response.status_code == 422, response.text
    assert {e["loc"][-1] for e in response.json()["detail"]} & {"token", "platform"}, response.json()
    assert requests.delete(url, headers=api.auth(), timeout=10).status_code in (404, 422)


@pytest.mark.parametrize("send_at", ["0001-01-01T00:30:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_finding_5_send_at_at_the_ends_of_the_calendar_is_422_not_500(api, send_at):
    response = requests.post(f"{api.url}/v1/notifications", json=_event("n-cal", "u1", send_at=send_at),
                             headers=api.auth(), timeout=10)
    assert response.status_code == 422, response.text
    assert [e["loc"] for e in response.json()["detail"]] == [["body", "send_at"]]


def test_finding_5_a_body_nested_past_what_json_parses_is_4xx_not_500(api):
    body = b'{"notification_id": "n", "data": {"k": ' + b"[" * 30_000 + b"]" * 30_000 + b"}}"
    response = requests.post(f"{api.url}/v1/notifications", data=body, timeout=10,
                             headers=api.auth() | {"Content-Type": "application/json"})
    assert 400 <= response.status_code < 500, response.text


def _api_log() -> str:
    from tests.integration.environment import TEST_VAR

    return (TEST_VAR / "logs" / "api.log").read_text(errors="replace")


def test_finding_5_a_signed_sendgrid_body_nested_100000_deep_is_4xx_not_500(api):
    body = b"[" * 100_000 + b"]" * 100_000
    response = requests.post(f"{api.url}/v1/webhooks/sendgrid", data=body, headers=api.sendgrid_headers(body),
                             timeout=30)
    assert response.status_code == 400, response.text


def test_finding_5_a_sendgrid_timestamp_of_superscript_two_is_403_and_not_logged_as_a_bad_key(api):
    body = b"[]"
    headers = api.sendgrid_headers(body) | {"X-Twilio-Email-Event-Webhook-Timestamp": "²"}
    before = _api_log().count("bad NOTIFIER_SENDGRID_WEBHOOK_PUBLIC_KEY")

    response = requests.post(f"{api.url}/v1/webhooks/sendgrid", data=body, headers=headers, timeout=10)

    assert response.status_code == 403, response.text
    assert "timestamp is not unix seconds" in response.text
    assert _api_log().count("bad NOTIFIER_SENDGRID_WEBHOOK_PUBLIC_KEY") == before
