"""Hostile values at every edge but HTTP (that one is in test_api_fuzz.py): only the validation error.

Each edge gets random and hostile values (control characters, lone surrogates, NUL, non-ASCII,
deep and self-similar nesting, huge integers, NaN, bytes, sets, tuples, dates at the ends of
the calendar) and must either refuse them with its validation error (pydantic ValidationError;
BadMessage from the bridge; exit 2 from the CLI) or accept them. Whatever is accepted must be
storable: it round-trips through Celery's JSON serializer and a real PostgreSQL JSON column
(the type of notification_log.payload), and jsonb takes it too.
"""
from __future__ import annotations

import contextlib
import io

from hypothesis import HealthCheck, given, settings
from hypothesis import event as tally
from hypothesis import strategies as st
from pydantic import ValidationError

from entrypoints import cli
from notifier.intake.bridge.messages import BadMessage, decode_event
from notifier.intake.events import parse_event
from tests.bad_events import EVENTS, PREFERENCES, SCALARS, TEXT, assert_storable, dumps, field, nested_json

MAX_EXAMPLES = 60
FUZZ = settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])

# ---- send_notification.delay: the producers' Python edge.


@FUZZ
@given(event=st.one_of(EVENTS, SCALARS))
def test_delay_raises_only_the_validation_error_and_queues_only_what_is_storable(database, event):
    import notifier

    try:
        notifier.send_notification.delay(event)
    except ValidationError:
        tally("refused")
        return
    tally("accepted")
    assert_storable(parse_event(event))


# ---- The Kafka bridge: decode_event.


BRIDGE_VALUES = st.one_of(
    EVENTS.map(lambda e: dumps(e).encode()),
    st.binary(max_size=64),
    st.sampled_from([b"", b"null", b"[]", b"{}", b"\xff\xfe", b"[" * 50_000, b'{"data": ' + b"[" * 20_000]),
    st.integers(0, 20_000).map(nested_json),
)


@FUZZ
@given(value=BRIDGE_VALUES, lane=st.sampled_from(["high", "low"]))
def test_decode_event_refuses_only_with_bad_message_and_accepts_only_what_is_storable(database, value, lane):
    try:
        event = decode_event(value, lane)
    except BadMessage as exc:
        assert "\n" not in exc.reason
        tally("refused")
        return
    tally("accepted")
    assert_storable(event)


# ---- The Python API: register_device and set_preferences.


DEVICES = st.one_of(
    st.tuples(st.one_of(st.sampled_from(["ios", "android", "web"]), TEXT),
              st.one_of(TEXT, st.text("0123456789abcdefABCDEF", min_size=60, max_size=210))),
    st.tuples(st.just("ios"), st.binary(min_size=32, max_size=100).map(bytes.hex)),
    st.tuples(st.just("android"), st.from_regex(r"[A-Za-z0-9_:-]{20,200}", fullmatch=True)),
)


@FUZZ
@given(user=field("u-fuzz", TEXT), device=DEVICES, app=st.one_of(st.none(), TEXT))
def test_register_device_raises_only_the_validation_error(database, user, device, app):
    from notifier.accounts.devices import register_device, unregister_device

    platform, token = device
    try:
        register_device(user, token, platform, app)
    except ValidationError:
        tally("refused")
        return
    tally("accepted")
    assert unregister_device(user, token), "what was accepted was stored as given"



@FUZZ
@given(user=field("u-fuzz", TEXT), changes=PREFERENCES)
def test_set_preferences_raises_only_the_validation_error(database, user, changes):
    from notifier.accounts.preferences import get_preferences
    from notifier.accounts.preferences import set_preferences

    try:
        stored = set_preferences(user, **changes)
    except ValidationError:
        tally("refused")
        return
    tally("accepted")
    assert {k: v for k, v in get_preferences(user).items() if k in stored} == stored


# ---- The CLI: exit 0, or exit 2 with one line; never a traceback.


def _run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse's own usage errors
            code = exc.code
    return code, err.getvalue()


CLI_ARGV = st.one_of(
    EVENTS.map(lambda e: ["send", dumps(e)]),
    st.one_of(TEXT, st.just('{"data": ' + "[" * 30_000)).map(lambda s: ["send", s]),
    st.tuples(st.sampled_from(["ios", "android"]), TEXT, TEXT).map(
        lambda t: ["devices", "register", "--platform", t[0], "--", t[1], t[2]]),
    st.tuples(st.sampled_from(["--email", "--phone", "--timezone", "--quiet-start", "--opted-out-categories"]),
              TEXT).map(lambda t: ["preferences", "set", f"{t[0]}={t[1]}", "--", "u-fuzz"]),
)


@FUZZ
@given(argv=CLI_ARGV)
def test_the_cli_exits_0_or_2_with_one_line(database, argv):
    code, err = _run(argv)
    tally(f"exit {code}")
    assert code in (0, 2), (code, err)
    if code == 2 and not err.startswith("usage:"):
        assert err.count("\n") == 1 and err.startswith("notifier "), err
    assert "Traceback" not in err
