"""One set of rules at every edge: each finding of issue 10 that is about bad input, refused where it enters.

The rules themselves (notifier/intake/validation.py) need no services; the Python API tests use the
real database to show a refused call changes nothing; the CLI tests run `entrypoints.cli.main`.
"""
from __future__ import annotations

import json
import secrets
import zoneinfo

import pytest
from pydantic import ValidationError

from entrypoints import cli
from notifier.intake.validation import MAX_APNS_TOKEN_CHARS
from tests.bad_events import nested

GOOD = {"notification_id": "n-1", "user_id": "u-1", "type": "order_shipped", "category": "transactional",
        "title": "Shipped", "body": "Your order\nis on its way"}


def _fields(exc: ValidationError) -> set[str]:
    return {str(e["loc"][0]) for e in exc.errors() if e["loc"]}


# ---- The event: every bad event in the shared tables is a ValidationError naming its field.


# ---- The Kafka bridge: the same rules, as a dead letter naming the field.


# ---- The Python API: register_device and set_preferences, refused before anything is stored.


APNS = "c85f" * 16


def devices_of(user: str) -> list[str]:
    from sqlalchemy import select

    from notifier.store.db import session_factory
    from notifier.store.models import DeviceToken

    with session_factory()() as session:
        return list(session.scalars(select(DeviceToken.token).where(DeviceToken.user_id == user)))


@pytest.mark.parametrize(
    ("token", "platform"),
    [
        ("café" + APNS, "ios"),                  # finding 1: wedged pycurl's URL setopt
        (APNS + "#x", "ios"),                    # finding 7: libcurl drops the fragment, another device got it
        (APNS[:32] + " " + APNS[32:], "ios"),
        (APNS + "\r\n", "ios"),
        ("\r\n" + APNS, "ios"),
        (APNS[:-1], "ios"),                      # 63 hex digits: not whole bytes
        (APNS[:62], "ios"),                      # shorter than any APNs token
        ("ab" * (MAX_APNS_TOKEN_CHARS // 2 + 1), "ios"),
        ("g" * 64, "ios"),
        ("fcm token with spaces", "android"),
        ("fcm:token#fragment", "android"),
        ("fcm/token", "android"),
        ("fcmtokén", "android"),
        ("x" * 513, "android"),
        ("", "android"),
        (APNS, "web"),                           # a browser's token is an https endpoint
        (APNS, "windows"),
    ],
)
def test_finding_1_and_7_register_device_refuses_bad_tokens_and_stores_nothing(database, unique, token, platform):
    from notifier.accounts.devices import register_device

    user = unique("user")
    with pytest.raises(ValidationError) as info:
        register_device(user, token, platform)
    assert _fields(info.value) & {"token", "platform"}
    assert devices_of(user) == []


def test_register_device_accepts_real_token_shapes(database, unique):
    from notifier.accounts.devices import register_device

    user = unique("user")
    fcm = f"{secrets.token_urlsafe(16)}:APA91b{secrets.token_urlsafe(100)}"
    register_device(user, APNS, "ios")
    register_device(user, APNS.upper() + "00" * 4, "ios", app="courier")
    register_device(user, fcm, "android")
    assert sorted(devices_of(user)) == sorted([APNS, APNS.upper() + "00" * 4, fcm])


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"email": "a@b.c\r\nBcc: victim@example.com"}, "email"),  # finding 6
        ({"email": "not-an-address"}, "email"),
        ({"email": "a@localhost"}, "email"),
        ({"phone": "not a phone"}, "phone"),                      # finding 6
        ({"phone": "+4712345678\n"}, "phone"),
        ({"phone": "+٤٧١٢٣٤٥٦٧٨"}, "phone"),                       # digits, but not ASCII ones
        ({"phone": "+0123456789"}, "phone"),
        ({"timezone": "Mars/Base"}, "timezone"),                  # finding 6
        ({"timezone": "../../etc/passwd"}, "timezone"),
        ({"quiet_start": "25:00"}, "quiet_start"),
        ({"opted_out_categories": ["ok", "bad\r\nline"]}, "opted_out_categories"),
        ({"opted_out_categories": "marketing"}, "opted_out_categories"),
        ({"push_enabled": None}, "push_enabled"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_finding_6_set_preferences_refuses_what_the_http_api_refuses(database, unique, change, field):
    from notifier.accounts.preferences import DEFAULTS, get_preferences
    from notifier.accounts.preferences import set_preferences

    user = unique("user")
    with pytest.raises(ValidationError) as info:
        set_preferences(user, **change)
    assert field in _fields(info.value)
    assert get_preferences(user) | {"user_id": None} == {"user_id": None, **DEFAULTS,
                                                         "email_undeliverable_at": None,
                                                         "email_undeliverable_reason": None}


def test_set_preferences_keeps_good_values(database, unique):
    from datetime import time

    from notifier.accounts.preferences import set_preferences

    prefs = set_preferences(unique("user"), email="Ann@Example.COM", phone="+4712345678", timezone="Europe/Oslo",
                            quiet_start="22:00", quiet_end=time(7), opted_out_categories=("marketing",))
    assert prefs["email"] == "Ann@example.com"  # the domain is case-insensitive; the local part is the owner's
    assert (prefs["phone"], prefs["timezone"]) == ("+4712345678", "Europe/Oslo")
    assert (prefs["quiet_start"], prefs["quiet_end"]) == (time(22), time(7))
    assert prefs["opted_out_categories"] == ["marketing"]
    assert "Europe/Oslo" in zoneinfo.available_timezones()


# ---- The CLI: exit 2 and one line naming the field, never a traceback.


@pytest.mark.parametrize(
    "argv",
    [
        ["send", json.dumps(GOOD | {"title": "a\r\nb"})],
        ["send", json.dumps(GOOD | {"data": nested(300)})],
        ["send", json.dumps(GOOD | {"send_at": "0001-01-01T00:30:00+01:00"})],
        ["send", "{not json"],
        ["send", "[1, 2]"],
        ["send", '{"notification_id": "n", "data": ' + "[" * 30_000 + "]" * 30_000 + "}"],
        ["publish", json.dumps(GOOD | {"data": {"collapse_id": "c2\r\nx-injected: yes"}})],
        ["publish", "{not json"],
        ["devices", "register", "u-1", "café" + APNS, "--platform", "ios"],
        ["devices", "register", "u-1", APNS + "#x", "--platform", "ios"],
        ["preferences", "set", "u-1", "--timezone", "Mars/Base"],
        ["preferences", "set", "u-1", "--email", "a@b.c\r\nBcc: x@example.com"],
    ],
)
def test_the_cli_exits_2_with_one_line_naming_the_problem(database, capsys, argv):
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("notifier "), err
    assert "Traceback" not in err
