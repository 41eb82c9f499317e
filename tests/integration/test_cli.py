"""The `notifier` command: every role has a subcommand whose --help says what it is for,
and the operator commands for devices and preferences work against the real database.
"""
from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys

import pytest

from entrypoints import cli
from sandbox import devstack
from notifier.accounts.preferences import get_preferences
from tests.integration.environment import child_env

# Each subcommand, and words its --help must contain to say what it is for.
PURPOSES = {
    "api": "HTTP API",
    "beat": "beat",
    "bridge": "Kafka",
    "callbacks": "callback URLs",
    "cancel": "cancel",
    "demo": "notifications",
    "dev": "local loop",
    "devices": "device tokens",
    "flower": "Flower",
    "keys": "API keys",
    "metrics": "Prometheus",
    "migrate": "migrations",
    "preferences": "preferences",
    "publish": "publish them to Kafka",
    "replay": "failed deliveries again",
    "sandbox": "wire protocols",
    "send": "queue one event",
    "status": "every delivery",
    "sweep": "stuck",
    "templates": "notification templates",
    "vapid": "VAPID key of Web Push",
    "worker": "Celery worker",
}
NESTED = {
    ("keys", "create"): "create a key",
    ("keys", "list"): "list keys",
    ("keys", "revoke"): "revoke",
    ("devices", "register"): "register",
    ("devices", "unregister"): "forget",
    ("devices", "list"): "list a user's devices",
    ("vapid", "generate"): "make a new P-256 key pair",
    ("vapid", "show"): "print the public key",
    ("preferences", "get"): "print a user's preferences",
    ("preferences", "set"): "change some",
    ("templates", "list"): "params it needs",
    ("templates", "check"): "broken file",
    ("templates", "render"): "as a delivery would be",
    ("callbacks", "set"): "signing secret",
    ("callbacks", "list"): "pending and given-up",
    ("callbacks", "remove"): "stop",
}


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, "--help"])
    assert exit_.value.code == 0, argv
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def test_every_role_has_a_subcommand():
    subcommands = set(cli.build_parser()._subparsers._group_actions[0].choices)
    assert subcommands == set(PURPOSES)


@pytest.mark.parametrize("command", sorted(PURPOSES))
def test_subcommand_help_exits_0_and_names_its_purpose(capsys, command):
    text = _help(capsys, command)
    assert f"usage: notifier {command}" in text
    assert PURPOSES[command].lower() in text.lower(), text


@pytest.mark.parametrize(("command", "action"), sorted(NESTED))
def test_action_help_exits_0_and_names_its_purpose(capsys, command, action):
    assert NESTED[(command, action)].lower() in _help(capsys, command, action).lower()


def test_the_installed_entry_point_lists_every_subcommand():
    result = subprocess.run([sys.executable, "-m", "entrypoints.cli", "--help"], capture_output=True, text=True,
                            timeout=60, cwd=devstack.ROOT)
    assert result.returncode == 0
    for command in PURPOSES:
        assert re.search(rf"^ +{command}(\s|$)", result.stdout, re.MULTILINE), command


def _notifier(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "entrypoints.cli", *argv], env=child_env(), capture_output=True,
                          text=True, timeout=60, cwd=devstack.ROOT)


def test_devices_register_list_unregister(database, unique):
    user, token = unique("user"), secrets.token_hex(32)

    registered = _notifier("devices", "register", user, token, "--platform", "ios", "--app", "courier")
    assert registered.returncode == 0, registered.stderr
    unknown = _notifier("devices", "register", user, token, "--platform", "ios", "--app", "nope")
    assert unknown.returncode == 2 and "unknown app 'nope'" in unknown.stderr, unknown.stderr
    assert token not in registered.stdout and token[-4:] in registered.stdout

    listed = _notifier("devices", "list", user)
    assert listed.returncode == 0, listed.stderr
    [line] = listed.stdout.splitlines()
    assert token not in line and f"…{token[-4:]}" in line and "ios" in line and "courier" in line
    assert token in _notifier("devices", "list", user, "--show-tokens").stdout

    assert _notifier("devices", "unregister", user, token).returncode == 0
    assert _notifier("devices", "list", user).stdout == ""
    gone = _notifier("devices", "unregister", user, token)
    assert gone.returncode == 1 and "no such device" in gone.stderr


def test_preferences_set_then_get(database, unique):
    user = unique("user")
    changed = _notifier("preferences", "set", user, "--push-enabled", "false", "--email", "ada@example.com",
                        "--quiet-start", "22:00", "--quiet-end", "07:00", "--timezone", "Europe/Oslo",
                        "--opted-out-categories", "marketing, social")
    assert changed.returncode == 0, changed.stderr
    shown = json.loads(_notifier("preferences", "get", user).stdout)
    assert shown == json.loads(changed.stdout)
    assert (shown["push_enabled"], shown["email"], shown["quiet_start"], shown["quiet_end"], shown["timezone"]) == (
        False, "ada@example.com", "22:00:00", "07:00:00", "Europe/Oslo")
    assert shown["opted_out_categories"] == ["marketing", "social"]
    assert get_preferences(user)["push_enabled"] is False  # the database, not only the command's echo

    cleared = _notifier("preferences", "set", user, "--email", "", "--opted-out-categories", "")
    assert cleared.returncode == 0, cleared.stderr
    assert (get_preferences(user)["email"], get_preferences(user)["opted_out_categories"]) == (None, [])


def test_preferences_set_refuses_what_the_api_refuses(database, unique):
    user = unique("user")
    bad = _notifier("preferences", "set", user, "--timezone", "Mars/Olympus_Mons", "--phone", "12345")
    assert bad.returncode == 2
    assert "timezone" in bad.stderr and "phone" in bad.stderr
    assert get_preferences(user)["timezone"] is None
    assert _notifier("preferences", "set", user).returncode == 2  # nothing to change
