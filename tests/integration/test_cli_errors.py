"""Every `notifier` subcommand given bad input: one line on stderr naming the problem, exit 2 for a
usage mistake and 1 for a runtime failure, never a traceback (issue 14).

Each case runs the installed command as a subprocess on the embedded default in a directory of
the test's own, before and after `notifier migrate`, as a new user would meet it. No service is
needed, and nothing may stay running afterwards (the embedded Redis some commands start).
"""
from __future__ import annotations

import pytest

from tests.integration.embedded import kill_redis_servers_in, notifier, redis_servers_in

EVENT = ('{"notification_id": "n1", "user_id": "u1", "type": "t", "category": "transactional", '
         '"title": "Hi", "body": "there"}')

# (argv, exit status, words the one line must hold). Before `notifier migrate`:
BEFORE_MIGRATE = [
    (["status", "x"], 1, ["database not migrated", "notifier migrate"]),
    (["cancel", "x"], 1, ["database not migrated"]),
    (["keys", "list"], 1, ["database not migrated"]),
    (["devices", "list", "u1"], 1, ["database not migrated"]),
    (["preferences", "get", "u1"], 1, ["database not migrated"]),
    (["send", EVENT], 1, ["database not migrated"]),
]
# Bad input whatever the database holds:
BAD_INPUT = [
    (["nosuch"], 2, ["invalid choice", "nosuch"]),
    (["send", "not json"], 2, ["not JSON"]),
    (["send", "{}"], 2, ["notification_id", "user_id", "type", "category"]),
    (["send", '{"notification_id": "n1", "user_id": "u1", "type": "t", "category": "c", "title": "x", '
              '"body": "y", "channels": ["pigeon"]}'], 2, ["channels"]),
    (["publish", "not json"], 2, ["not JSON"]),
    (["publish"], 2, ["give an event"]),
    (["publish", "--file", "/nonexistent/events.jsonl"], 2, ["--file", "/nonexistent/events.jsonl"]),
    (["publish", '{"user_id": "u1"}'], 2, ["notification_id"]),
    (["bridge", "-X", "foo"], 2, ["-X", "KEY=VALUE", "foo"]),
    (["bridge", "--batch-size", "many"], 2, ["--batch-size", "many"]),
    (["migrate", "nosuchrev"], 2, ["unknown revision", "nosuchrev"]),
    (["keys", "create", "--scope", "admin", "--name", ""], 2, ["--name", "empty"]),
    (["keys", "create", "--scope", "root", "--name", "x"], 2, ["--scope", "root"]),
    (["keys"], 2, ["required", "ACTION"]),
    (["worker", "-Q", "nosuch"], 2, ["unknown queue", "nosuch"]),
    (["worker", "-c", "many"], 2, ["-c", "many"]),
    (["worker", "--no-such-celery-option"], 2, ["no-such-celery-option"]),
    (["beat", "--no-such-celery-option"], 2, ["no-such-celery-option"]),
    (["api", "--port", "http"], 2, ["--port", "http"]),
    (["flower"], 2, ["NOTIFIER_FLOWER_BASIC_AUTH"]),
    (["flower", "--no-auth", "--address", "0.0.0.0"], 2, ["loopback"]),
    (["metrics", "--port", "x"], 2, ["--port"]),
    (["sandbox", "--apns-port", "x"], 2, ["--apns-port"]),
    (["dev", "--api-port", "x"], 2, ["--api-port"]),
    (["sweep", "--older-than", "1"], 2, ["--older-than", "lease"]),
    (["sweep", "sideways"], 2, ["sideways"]),
    (["devices", "register", "u1", "not-hex", "--platform", "ios"], 2, ["token"]),
    (["devices", "register", "u1", "abc", "--platform", "web"], 2, ["--platform", "web"]),
    (["preferences", "set", "u1", "--timezone", "Mars/Olympus"], 2, ["timezone"]),
    (["preferences", "set", "u1"], 2, ["at least one"]),
    (["status"], 2, ["notification_id"]),
    (["status", "n1", "--wait", "soon"], 2, ["--wait", "soon"]),
    (["cancel"], 2, ["notification_id"]),
    (["demo", "--bogus"], 2, ["unrecognized", "--bogus"]),
    (["keys", "revoke", "nosuchprefix"], 1, ["no live key", "nosuchprefix"]),
    (["devices", "unregister", "u1", "abc"], 1, ["no such device"]),
]


def _assert_one_line(result, argv, status, words) -> None:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, f"{argv}: {output}"
    assert result.returncode == status, f"{argv}: exit {result.returncode}, {output}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"{argv}: not one line: {result.stderr}"
    assert lines[0].startswith("notifier") and "error:" in lines[0], lines[0]
    for word in words:
        assert word.lower() in lines[0].lower(), f"{argv}: {word!r} not in {lines[0]!r}"


@pytest.fixture()
def var_dir(tmp_path):
    var = tmp_path / "var"
    yield var
    left = redis_servers_in(var)
    kill_redis_servers_in(var)
    assert left == [], "an embedded redis-server outlived the command that started it"


def test_before_migrate_every_command_says_migrate_first(var_dir):
    for argv, status, words in BEFORE_MIGRATE:
        _assert_one_line(notifier(*argv, var_dir=var_dir), argv, status, words)


def test_bad_input_is_one_line_naming_the_problem(var_dir):
    migrated = notifier("migrate", var_dir=var_dir)
    assert migrated.returncode == 0, migrated.stderr
    for argv, status, words in BAD_INPUT:
        _assert_one_line(notifier(*argv, var_dir=var_dir), argv, status, words)


def test_debug_shows_the_traceback(var_dir):
    result = notifier("--debug", "status", "x", var_dir=var_dir)
    assert result.returncode == 1 and "Traceback" in result.stderr and "no such table" in result.stderr


def test_version_and_the_help_the_top_level_points_to(var_dir):
    version = notifier("--version", var_dir=var_dir)
    assert version.returncode == 0 and version.stdout.startswith("notifier 0."), version
    top = notifier("--help", var_dir=var_dir)
    assert "notifier sandbox --help" in top.stdout
    for argv in (["sandbox", "--help"], ["sandbox", "--", "--help"]):
        sandbox = notifier(*argv, var_dir=var_dir)
        assert sandbox.returncode == 0 and "usage: notifier sandbox" in sandbox.stdout, sandbox
        assert "--twilio-auth-token" in sandbox.stdout
    worker = notifier("worker", "--help", var_dir=var_dir)
    assert "--max-tasks-per-child" in " ".join(worker.stdout.split()) and "(default: 2)" in worker.stdout
