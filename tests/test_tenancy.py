"""Tenancy: what each API key may do and see, and one notification_id per event.

Against a real `notifier api` process, real workers, PostgreSQL and the sandbox (finding 8
of issue 10: any producer key read and changed every user's contact details and devices,
and reusing another producer's notification_id for another user was delivered).
"""
from __future__ import annotations

import secrets
import subprocess
import sys

import pytest
import requests
from sqlalchemy import create_engine, text

from notifier import api_keys, devstack, migrate
from notifier.db import session_factory
from notifier.preferences_view import get_preferences
from notifier.users import register_device, set_preferences
from tests.api_fixture import api  # noqa: F401  (fixture)
from tests.conftest import child_env

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
    return subprocess.run([sys.executable, "-m", "notifier.cli", *argv], env=child_env(), capture_output=True,
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

