"""Templates end to end: producers send template + params, each user reads it in their language.

Through the real intake, Celery workers, PostgreSQL, Redis and the sandbox (APNs over HTTP/2,
SendGrid, Twilio); the clear text is read back from what the sandbox received. The refusals
are proved at each edge: send_notification.delay, the HTTP API and the Kafka bridge.
"""
from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from pydantic import ValidationError
from sqlalchemy import select

import notifier
from notifier.accounts.preferences import get_preferences, set_preferences
from notifier.accounts.status import get_status
from notifier.pipeline.rendering import preview
from notifier.store.db import session_factory
from notifier.store.models import NotificationLog
from tests.integration.api_fixture import api  # noqa: F401  (fixture)
from tests.integration.test_bridge import _produce, _read, bridges, needs_kafka, topics  # noqa: F401  (fixtures)
from tests.integration.users import ios_user

ROOT = Path(__file__).resolve().parents[2]
PARAMS = {"order_id": "A-1042", "courier": "Posten", "eta": "2026-12-24", "items": 3}


def _event(unique, user: str, channels: list[str], **extra) -> dict:
    return {"notification_id": unique("n"), "user_id": user, "type": "order_shipped", "category": "transactional",
            "priority": "high", "channels": channels, "template": "order_shipped", "params": PARAMS} | extra


def _rows(nid: str) -> list[NotificationLog]:
    with session_factory()() as session:
        return list(session.scalars(select(NotificationLog).where(NotificationLog.notification_id == nid)))


def _sent(wait_until, nid: str) -> list[dict]:
    return wait_until(lambda: [r for r in get_status(nid) if r["status"] == "sent"] or None,
                      message=f"{nid} never sent: {get_status(nid)}")


def test_one_template_reaches_three_users_each_in_their_language_with_the_plural_and_the_chain_recorded(
        worker, sandbox, wait_until, unique):
    # Given three users whose preferred locales are en, nb-NO (no variant: falls back to nb) and de
    users = {locale: ios_user(unique, locale=locale) for locale in ("en", "nb-NO", "de")}
    counts = {"en": 1, "nb-NO": 3, "de": 3}

    # When a producer sends each the same template with params, not text
    nids = {}
    for locale, (user, _) in users.items():
        event = _event(unique, user, ["push"], params=PARAMS | {"items": counts[locale]})
        notifier.send_notification.delay(event)
        nids[locale] = event["notification_id"]

    # Then each APNs request carries the text in the user's language, its plural and its date format
    alerts = {}
    for locale, (user, token) in users.items():
        _sent(wait_until, nids[locale])
        [message] = sandbox.messages(provider="apns", target=token)
        alerts[locale] = message["payload"]["aps"]["alert"]
    assert alerts == {
        "en": {"title": "Order A-1042 has shipped",
               "body": "Your item is on the way with Posten, arriving December 24, 2026."},
        "nb-NO": {"title": "Ordre A-1042 er sendt",
                  "body": "De 3 varene dine er på vei med Posten og kommer 24. desember 2026."},
        "de": {"title": "Bestellung A-1042 ist unterwegs",
               "body": "Ihre 3 Artikel sind mit Posten unterwegs und kommen am 24. Dezember 2026 an."},
    }
    # ... and the delivery row records the variant used and the locales tried (nb-NO -> nb)
    [row] = _rows(nids["nb-NO"])
    assert row.payload["template"] == {"name": "order_shipped", "locale": "nb", "locale_requested": "nb-NO",
                                       "fallback_chain": ["nb-NO", "nb"]}
    assert row.payload["title"] == "Ordre A-1042 er sendt"
    [row] = _rows(nids["de"])
    assert row.payload["template"]["fallback_chain"] == ["de"]


def test_the_events_own_locale_wins_and_an_unknown_one_falls_back_to_the_default(worker, sandbox, wait_until, unique):
    user, token = ios_user(unique, locale="de")
    first = _event(unique, user, ["push"], locale="nb")
    second = _event(unique, user, ["push"], locale="fr-CA")
    notifier.send_notification.delay(first)
    notifier.send_notification.delay(second)
    _sent(wait_until, first["notification_id"])
    _sent(wait_until, second["notification_id"])
    [a] = _rows(first["notification_id"])
    [b] = _rows(second["notification_id"])
    assert (a.payload["template"]["locale"], a.payload["title"]) == ("nb", "Ordre A-1042 er sendt")
    assert b.payload["template"]["fallback_chain"] == ["fr-CA", "fr", "en"]
    assert b.payload["title"] == "Order A-1042 has shipped"
    assert len(sandbox.messages(provider="apns", target=token)) == 2


def test_email_html_is_autoescaped_and_a_sandbox_escape_in_params_arrives_as_text(worker, sandbox, wait_until, unique):
    # Given a German-speaking user with an email address and an iPhone
    address = f"{unique('kari').lower()}@example.com"
    user, token = ios_user(unique, locale="de", email=address)
    attack = "<script>alert(1)</script>{{ ''.__class__.__mro__ }}"

    # When params carry markup and template syntax
    event = _event(unique, user, ["email", "push"], params=PARAMS | {"name": attack, "courier": attack})
    notifier.send_notification.delay(event)
    wait_until(lambda: len(_sent(wait_until, event["notification_id"])) == 2 or None, message="not both sent")

    # Then SendGrid receives the German subject, the text as given and the HTML escaped
    [mail] = sandbox.messages(provider="sendgrid", target=address)
    content = {block["type"]: block["value"] for block in mail["payload"]["content"]}
    assert mail["payload"]["subject"] == "Bestellung A-1042 ist unterwegs"
    assert content["text/plain"].startswith(f"Hallo {attack},")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;{{ &#39;&#39;.__class__.__mro__ }}" in content["text/html"]
    assert "<script>" not in content["text/html"] and "<p>Hallo " in content["text/html"]
    # ... and the push carries the template syntax as inert text, never evaluated
    [push] = sandbox.messages(provider="apns", target=token)
    assert f"mit {attack} unterwegs" in push["payload"]["aps"]["alert"]["body"]
    assert "<class" not in json.dumps(push["payload"])


def test_a_rendering_over_the_sms_segment_cap_in_the_users_language_fails_that_delivery(
        worker, sandbox, wait_until, unique):
    # Given a courier name that fits 10 segments in English (so intake accepts the event) but not in German
    fits_in_english = next(
        n for n in range(1400, 1600)
        if preview("order_shipped", ["sms"], PARAMS | {"courier": "x" * n}, "en")[0]["sms"]["segments"] == 10
        and preview("order_shipped", ["sms"], PARAMS | {"courier": "x" * n}, "de")[0]["sms"]["segments"] == 11)
    phone = "+4791" + "".join(secrets.choice("0123456789") for _ in range(6))
    user = unique("user")
    set_preferences(user, locale="de", phone=phone)

    # When it is sent to a German-speaking user by SMS
    event = _event(unique, user, ["sms"], params=PARAMS | {"courier": "x" * fits_in_english})
    notifier.send_notification.delay(event)

    # Then the delivery fails with the reason, and Twilio never sees it
    [row] = wait_until(lambda: [r for r in get_status(event["notification_id"]) if r["status"] == "failed"] or None)
    assert row["reason"].startswith("SMS is 11 segments (GSM-7, ")
    assert "at most 10 (NOTIFIER_SMS_MAX_SEGMENTS)" in row["reason"]
    assert sandbox.messages(provider="twilio", target=phone) == []


def test_sms_rendered_in_the_users_language_reaches_twilio(worker, sandbox, wait_until, unique):
    phone = "+4792" + "".join(secrets.choice("0123456789") for _ in range(6))
    user = unique("user")
    set_preferences(user, locale="nb", phone=phone)
    event = _event(unique, user, ["sms"], params=PARAMS | {"items": 1})
    notifier.send_notification.delay(event)
    _sent(wait_until, event["notification_id"])
    [sms] = sandbox.messages(provider="twilio", target=phone)
    assert sms["payload"]["Body"] == "Ordre A-1042: 1 vare sendt med Posten, kommer 24. des. 2026."


# -- refused at the edge --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("change", "says"), [
    ({"params": {"order_id": "A-1", "items": 2}}, "params missing: courier, eta"),
    ({"template": "order_cancelled"}, "no template 'order_cancelled'"),
    ({"template": "new_followers", "channels": ["sms"]}, "template 'new_followers' has no variant for channel sms"),
])
def test_send_notification_delay_raises_naming_what_is_missing_and_queues_nothing(unique, change, says):
    from notifier.store.redis_conn import broker_redis

    broker = broker_redis()
    before = {q: broker.llen(q) for q in ("pipeline.high", "pipeline.low")}
    event = _event(unique, unique("user"), ["push"]) | change
    with pytest.raises(ValidationError) as info:
        notifier.send_notification.delay(event)
    assert says in str(info.value)
    assert {q: broker.llen(q) for q in before} == before
    assert _rows(event["notification_id"]) == []


def test_the_http_api_refuses_a_bad_template_with_422_naming_it_and_previews_a_good_one(api, unique):  # noqa: F811
    event = _event(unique, unique("user"), ["push"], params={"order_id": "A-1", "items": 2})
    r = requests.post(api.url + "/v1/notifications", json=event, headers=api.auth(), timeout=10)
    assert r.status_code == 422
    [error] = r.json()["detail"]
    assert error["loc"] == ["body", "params"] and "params missing: courier, eta" in error["msg"]
    r = requests.post(api.url + "/v1/notifications", json=event | {"template": "nope"}, headers=api.auth(), timeout=10)
    assert r.status_code == 422 and "no template 'nope'" in r.json()["detail"][0]["msg"]

    # The preview renders without sending, for the locale asked, with the chain it took
    r = requests.post(api.url + "/v1/templates/order_shipped/render", headers=api.auth(), timeout=10,
                      json={"channel": "push", "locale": "nb-NO", "params": PARAMS})
    assert r.status_code == 200, r.text
    [rendering] = r.json()["renderings"]
    assert rendering["locale_used"] == "nb" and rendering["fallback_chain"] == ["nb-NO", "nb"]
    assert rendering["fields"]["body"] == "De 3 varene dine er på vei med Posten og kommer 24. desember 2026."
    r = requests.post(api.url + "/v1/templates/order_shipped/render", headers=api.auth(), timeout=10,
                      json={"params": {"order_id": "A-1"}})
    assert r.status_code == 422 and "params missing: courier, eta, items, name" in r.json()["detail"][0]["msg"]
    r = requests.post(api.url + "/v1/templates/order_shipped/render", timeout=10, json={"params": PARAMS})
    assert r.status_code in (401, 403), "the preview needs a key with the send scope"

    # A user's locale is a preference: normalized, and refused when Babel does not know it
    user = unique("user")
    r = requests.put(api.url + f"/v1/users/{user}/preferences", json={"locale": "nb_no"}, headers=api.auth(),
                     timeout=10)
    assert r.status_code == 200 and r.json()["locale"] == "nb-NO"
    r = requests.put(api.url + f"/v1/users/{user}/preferences", json={"locale": "xx-YY"}, headers=api.auth(),
                     timeout=10)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "locale"]
    assert get_preferences(user)["locale"] == "nb-NO"


@needs_kafka
def test_a_kafka_message_with_a_bad_template_is_dead_lettered_with_the_reason(worker, sandbox, topics, bridges,  # noqa: F811
                                                                           wait_until, unique):
    user, token = ios_user(unique, locale="nb")
    good = _event(unique, user, ["push"])
    lacking = _event(unique, user, ["push"], params={"order_id": "A-1", "items": 2})
    unknown = _event(unique, user, ["push"], template="order_cancelled")
    _produce(topics.high, [(user.encode(), json.dumps(e).encode()) for e in (lacking, good, unknown)])

    bridge = bridges(topics, "--batch-ms", "50")

    dead = _read(topics.dead, 2)
    errors = sorted(dict((k, v.decode()) for k, v in msg.headers())["error"] for msg in dead)
    assert len(errors) == 2, bridge.log()[-3000:]
    assert "params: params missing: courier, eta (template 'order_shipped' needs them)" in errors[0]
    assert "template: no template 'order_cancelled'" in errors[1]
    _sent(wait_until, good["notification_id"])
    [message] = sandbox.messages(provider="apns", target=token)
    assert message["payload"]["aps"]["alert"]["title"] == "Ordre A-1042 er sendt"


def test_the_cli_previews_a_template_and_sets_a_users_locale(database, unique):
    from tests.integration.environment import child_env

    run = [sys.executable, "-m", "entrypoints.cli"]
    out = subprocess.run(run + ["templates", "render", "order_shipped", "--channel", "sms", "--locale", "de-CH",
                                "--params", json.dumps(PARAMS)],
                         capture_output=True, text=True, env=child_env(), cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    [rendering] = json.loads(out.stdout)
    assert rendering["fallback_chain"] == ["de-CH", "de"] and rendering["sms"]["encoding"] == "GSM-7"
    out = subprocess.run(run + ["templates", "render", "order_shipped", "--params", '{"order_id": "1"}'],
                         capture_output=True, text=True, env=child_env(), cwd=ROOT, timeout=60)
    assert out.returncode == 2 and "params missing: courier, eta, items, name" in out.stderr
    user = unique("user")
    out = subprocess.run(run + ["preferences", "set", user, "--locale", "de_at"],
                         capture_output=True, text=True, env=child_env(), cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["locale"] == "de-AT"
