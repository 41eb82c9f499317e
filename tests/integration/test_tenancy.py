"""Tenancy: what each API key may do and see, and one notification_id per event.

Against a real `notifier api` process, real workers, PostgreSQL and the sandbox (finding 8
of issue 10: any producer key read and changed every user's contact details and devices,
and reusing another producer's notification_id for another user was delivered).
"""
from __future__ import annotations

import secrets
import subprocess
import sys
import threading
import time

import pytest
import requests
from sqlalchemy import create_engine, text

from notifier.accounts import api_keys
from sandbox import devstack
from notifier.store import migrate
from notifier.store.db import session_factory
from notifier.intake.events import NotificationEvent
from notifier.accounts.preferences import get_preferences
from notifier.store.redis_conn import get_redis
from notifier.pipeline.routing import CANCEL_PREFIX, CONFLICT_REASON, route
from notifier.accounts.devices import register_device
from notifier.accounts.preferences import set_preferences
from notifier.accounts.status import get_status
from tests.integration.api_fixture import api  # noqa: F401  (fixture)
from tests.integration.environment import child_env

ALL = ("send", "status", "cancel", "users", "contacts", "admin")


def _key(unique, *scopes: str) -> dict[str, str]:
    _, key = api_keys.create_key(unique("tenancy"), ",".join(scopes))
    return {"Authorization": f"Bearer {key}"}


def _victim(unique) -> tuple[str, str, str, str]:
    """A user with an email address, a phone number and an iOS device."""
    user, token = unique("victim"), secrets.token_hex(32)
    email, phone = f"{unique('ada')}@example.com", "+4791234567"
    set_preferences(user, email=email, phone=phone)
    register_device(user, token, "ios")
    return user, email, phone, token


def _event(nid: str, user: str, **changes) -> dict:
    return {
        "notification_id": nid, "user_id": user, "type": "order_shipped", "category": "transactional",
        "priority": "high", "channels": ["push"], "title": "Shipped", "body": "Your order is on its way",
    } | changes


# ---- scopes


def test_a_key_that_only_sends_can_read_or_change_nobodys_data(api, unique):
    # Given user A with contact details and a device, and a key that may only send
    user, email, phone, token = _victim(unique)
    sender = _key(unique, "send")
    base = f"{api.url}/v1/users/{user}"

    # When it tries to read A's preferences, change A's email, and move A's device token to itself
    read = requests.get(f"{base}/preferences", headers=sender, timeout=10)
    write = requests.put(f"{base}/preferences", json={"email": "attacker@evil.example"}, headers=sender, timeout=10)
    moved = requests.put(f"{api.url}/v1/users/{unique('attacker')}/devices/{token}", json={"platform": "ios"},
                         headers=sender, timeout=10)
    forgotten = requests.delete(f"{base}/devices/{token}", headers=sender, timeout=10)

    # Then every one is refused, naming the scope it needs, and A's data is as it was
    assert [r.status_code for r in (read, write, moved, forgotten)] == [403, 403, 403, 403]
    assert "users" in read.json()["detail"] and email not in read.text
    prefs = get_preferences(user)
    assert (prefs["email"], prefs["phone"]) == (email, phone)
    with session_factory()() as session:
        owner = session.execute(text("SELECT user_id FROM device_tokens WHERE token = :t"), {"t": token}).scalar()
    assert owner == user


def test_a_producer_key_sees_contact_details_only_redacted(api, unique):
    # Given user A, and a key made with the old producer role (send, status, users)
    user, email, phone, _ = _victim(unique)

    # When it reads A's preferences, and changes one (the answer shows them all)
    read = requests.get(f"{api.url}/v1/users/{user}/preferences", headers=api.auth(api.producer_key), timeout=10)
    changed = requests.put(f"{api.url}/v1/users/{user}/preferences", json={"sms_enabled": False},
                           headers=api.auth(api.producer_key), timeout=10)

    # Then it sees enough to tell addresses apart, never the address or the number
    for response in (read, changed):
        assert response.status_code == 200, response.text
        assert email not in response.text and phone not in response.text
        assert response.json()["email"] == f"{email[0]}…@example.com"
        assert response.json()["phone"] == f"…{phone[-4:]}"


def test_the_contacts_scope_reads_them_whole(api, unique):
    user, email, phone, _ = _victim(unique)
    for scopes in (("contacts",), ("users", "contacts"), ("admin",)):
        read = requests.get(f"{api.url}/v1/users/{user}/preferences", headers=_key(unique, *scopes), timeout=10)
        assert read.status_code == 200, (scopes, read.text)
        assert (read.json()["email"], read.json()["phone"]) == (email, phone), scopes
    # contacts alone reads; it does not write
    write = requests.put(f"{api.url}/v1/users/{user}/preferences", json={"sms_enabled": False},
                         headers=_key(unique, "contacts"), timeout=10)
    assert write.status_code == 403


@pytest.mark.parametrize(
    ("method", "path", "body", "needs"),
    [
        ("POST", "/v1/notifications", "event", "send"),
        ("GET", "/v1/notifications/{nid}", None, "status"),
        ("DELETE", "/v1/notifications/{nid}", None, "cancel"),
        ("PUT", "/v1/users/{user}/devices/{token}", {"platform": "ios"}, "users"),
        ("DELETE", "/v1/users/{user}/devices/{token}", None, "users"),
        ("PUT", "/v1/users/{user}/preferences", {"push_enabled": True}, "users"),
        ("GET", "/metrics", None, "admin"),
    ],
)
def test_each_route_needs_its_own_scope(api, unique, method, path, body, needs):
    user, nid, token = unique("user"), unique("n"), secrets.token_hex(32)
    url = api.url + path.format(nid=nid, user=user, token=token)
    payload = _event(nid, user) if body == "event" else body
    others = [s for s in ALL if s not in (needs, "admin")]

    without = requests.request(method, url, json=payload, headers=_key(unique, *others), timeout=10)
    with_it = requests.request(method, url, json=payload, headers=_key(unique, needs), timeout=10)

    assert without.status_code == 403 and needs in without.json()["detail"]
    assert with_it.status_code not in (401, 403), with_it.text


def _notifier(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "entrypoints.cli", *argv], env=child_env(), capture_output=True,
                          text=True, timeout=60, cwd=devstack.ROOT)


def test_keys_create_takes_a_list_of_scopes_and_names_an_unknown_one(database, unique):
    made = _notifier("keys", "create", "--scope", "send,status", "--name", unique("cli"))
    assert made.returncode == 0, made.stderr
    info = api_keys.verify_key(made.stdout.strip())
    assert info is not None and info.scopes == {"send", "status"}

    refused = _notifier("keys", "create", "--scope", "send,teleport", "--name", unique("cli"))
    assert refused.returncode == 2
    assert "'teleport'" in refused.stderr and "contacts" in refused.stderr and "Traceback" not in refused.stderr

    listed = _notifier("keys", "list")
    assert "send,status" in listed.stdout


def test_migration_maps_the_old_roles_without_widening_them(tmp_path):
    # Given keys made before scopes (revision 0002): a producer, an admin, and a role nobody knows
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    migrate.upgrade(url, "0002")
    engine = create_engine(url)
    with engine.begin() as conn:
        for n, (name, scope) in enumerate((("p", "producer"), ("a", "admin"), ("x", "superuser"))):
            conn.execute(text("INSERT INTO api_keys (name, scope, prefix, key_hash) VALUES (:n, :s, :p, :h)"),
                         {"n": name, "s": scope, "p": f"pfx{n}", "h": "0" * 64})

    # When the database is migrated to scopes, and back
    migrate.upgrade(url)
    with engine.connect() as conn:
        scopes = dict(conn.execute(text("SELECT name, scopes FROM api_keys")).all())
    migrate.downgrade(url, "0002")
    with engine.connect() as conn:
        roles = dict(conn.execute(text("SELECT name, scope FROM api_keys")).all())

    # Then a producer keeps send, status and users but not contacts; admin stays admin; the unknown gets
    # nothing, on the way up and on the way down
    assert scopes == {"p": "send,status,users", "a": "admin", "x": ""}
    assert roles == {"p": "producer", "a": "admin", "x": ""}


# ---- one notification_id, one event


def _sent_to(sandbox, token: str) -> int:
    return len(sandbox.messages(provider="apns", target=token))


def test_a_different_event_under_an_accepted_id_is_recorded_as_conflicting_and_never_delivered(
        worker, sandbox, wait_until, unique):
    # Given producer 1's notification to user A, sent
    import notifier

    a_user, _, _, a_token = _victim(unique)
    b_user, _, _, b_token = _victim(unique)
    nid = unique("n")
    notifier.send_notification.delay(_event(nid, a_user))
    wait_until(lambda: [r for r in get_status(nid) if r["status"] == "sent"], message="A's never sent")

    # When producer 2 sends another user an event under the same notification_id (Python API: no edge check)
    notifier.send_notification.delay(_event(nid, b_user, title="Your security code", body="123456"))

    # Then it is recorded as a duplicate that conflicts with the accepted event, and B's device got nothing
    rows = wait_until(lambda: [r for r in get_status(nid) if r["status"] == "duplicate"] and get_status(nid),
                      message="the conflicting event left no row")
    [dup] = [r for r in rows if r["status"] == "duplicate"]
    assert dup["user_id"] == b_user and "conflicts with the accepted event" in dup["reason"]
    assert sorted(r["status"] for r in rows) == ["duplicate", "sent"]
    time.sleep(1.0)  # a delivery to B, had one been queued, would have reached the sandbox by now
    assert _sent_to(sandbox, b_token) == 0 and _sent_to(sandbox, a_token) == 1


def test_the_api_refuses_a_conflicting_id_with_409_and_takes_a_plain_repeat(api, worker, wait_until, unique):
    a_user, b_user, nid = unique("a"), unique("b"), unique("n")
    post = lambda event: requests.post(f"{api.url}/v1/notifications", json=event,  # noqa: E731
                                       headers=api.auth(api.producer_key), timeout=10)
    assert post(_event(nid, a_user)).status_code == 202
    wait_until(lambda: get_status(nid), message="never routed")

    other_user = post(_event(nid, b_user))
    other_content = post(_event(nid, a_user, body="something else"))
    repeat = post(_event(nid, a_user))

    assert (other_user.status_code, other_content.status_code) == (409, 409)
    assert "notification_id" in other_user.json()["detail"]
    assert repeat.status_code == 202
    wait_until(lambda: any(r["status"] == "duplicate" for r in get_status(nid)), message="repeat not recorded")
    [dup] = [r for r in get_status(nid) if r["status"] == "duplicate"]
    assert "already accepted" in dup["reason"] and "conflict" not in dup["reason"]


def _routed(events: list[dict]):
    with session_factory()() as session, session.begin():
        return route(session, [NotificationEvent.model_validate(e) for e in events], get_redis())


def test_a_plain_repeat_reaches_no_device_registered_since(database, clean_redis, unique):
    # Given an event routed to user A's one device
    user, _, _, _ = _victim(unique)
    nid = unique("n")
    first = _routed([_event(nid, user)])
    assert sum(len(ids) for ids in first.queued.values()) == 1
    # When A registers a second device and the same event comes again (a producer retry)
    register_device(user, secrets.token_hex(32), "ios")
    again = _routed([_event(nid, user)])
    # Then the repeat is a duplicate and queues nothing for the new device
    assert again.duplicates == [nid] and not any(again.queued.values())


def test_two_events_under_one_id_in_one_batch_deliver_only_the_first(database, clean_redis, unique):
    a_user, _, _, _ = _victim(unique)
    b_user, _, _, _ = _victim(unique)
    nid = unique("n")
    result = _routed([_event(nid, a_user), _event(nid, b_user)])
    assert sum(len(ids) for ids in result.queued.values()) == 1 and result.duplicates == [nid]
    [dup] = [r for r in get_status(nid) if r["status"] == "duplicate"]
    assert dup["user_id"] == b_user and dup["reason"] == CONFLICT_REASON


def test_two_routers_racing_on_one_id_deliver_only_one_event(database, clean_redis, unique):
    # Given router 1 has routed A's event under an id and not yet committed
    a_user, _, _, _ = _victim(unique)
    b_user, _, _, _ = _victim(unique)
    nid = unique("n")
    first = session_factory()()
    first.begin()
    route(first, [NotificationEvent.model_validate(_event(nid, a_user))], get_redis())
    # When router 2 routes B's event under the same id meanwhile
    outcome = {}
    second = threading.Thread(target=lambda: outcome.update(result=_routed([_event(nid, b_user)])))
    second.start()
    second.join(1.0)
    waited = second.is_alive()
    first.commit()
    first.close()
    second.join(30)
    # Then router 2 waited for router 1, and recorded B's event as conflicting instead of delivering it
    assert waited, "router 2 did not wait for router 1's transaction"
    assert outcome["result"].duplicates == [nid] and not any(outcome["result"].queued.values())
    statuses = {(r["user_id"], r["status"]) for r in get_status(nid)}
    assert statuses == {(a_user, "queued"), (b_user, "duplicate")}


# ---- cancel


def test_cancelling_an_unknown_notification_is_404_and_remembers_nothing(api, unique):
    nid = unique("never")
    response = requests.delete(f"{api.url}/v1/notifications/{nid}", headers=api.auth(api.admin_key), timeout=10)
    assert response.status_code == 404
    assert get_redis().exists(CANCEL_PREFIX + nid) == 0
