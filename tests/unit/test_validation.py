"""Validation rules: every refusal names its field; nothing unstorable or unbounded gets through."""
from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from notifier.intake.bridge.messages import BadMessage, decode_event
from notifier.intake.events import parse_event
from notifier.intake.validation import MAX_DATA_DEPTH, SEND_AT_MAX_AHEAD
from tests.bad_events import BAD_EVENTS, PYTHON_ONLY_BAD_EVENTS, nested

GOOD = {"notification_id": "n-1", "user_id": "u-1", "type": "order_shipped", "category": "transactional",
        "title": "Shipped", "body": "Your order\nis on its way"}


def _fields(exc: ValidationError) -> set[str]:
    return {str(e["loc"][0]) for e in exc.errors() if e["loc"]}


@pytest.mark.parametrize(("change", "field"), BAD_EVENTS + PYTHON_ONLY_BAD_EVENTS)
def test_a_bad_event_is_a_validation_error_naming_the_field(change, field):
    event = {k: v for k, v in (GOOD | change).items() if v is not None}
    with pytest.raises(ValidationError) as info:
        parse_event(event)
    assert field in _fields(info.value)


def test_finding_2_collapse_id_must_be_short_printable_ascii():
    # Given collapse ids that would inject a header, or not encode as one
    for bad in ("c2\r\nx-injected: yes", "café", "c" * 65, " padded", "tab\tin"):
        with pytest.raises(ValidationError) as info:
            parse_event(GOOD | {"data": {"collapse_id": bad}})
        assert "collapse_id" in str(info.value)
    # while a 64-byte printable one is kept as it is
    assert parse_event(GOOD | {"data": {"collapse_id": "order-1042 shipped" + "x" * 46}}).data["collapse_id"]


def test_finding_3_a_message_nested_too_deep_for_json_is_a_bad_message_not_a_crash():
    value = b'{"notification_id": "n", "data": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    with pytest.raises(BadMessage, match="not JSON"):
        decode_event(value, "low")


def test_finding_3_and_5_data_nested_past_the_limit_is_refused_and_up_to_it_accepted():
    assert parse_event(GOOD | {"data": nested(MAX_DATA_DEPTH)}).data == nested(MAX_DATA_DEPTH)
    for depth in (MAX_DATA_DEPTH + 1, 300, 990, 5000, 100_000):
        with pytest.raises(ValidationError) as info:
            parse_event(GOOD | {"data": nested(depth)})
        assert "nested" in str(info.value)


@pytest.mark.parametrize(("change", "field"), BAD_EVENTS)
def test_finding_3_the_bridge_dead_letters_what_the_rules_refuse(change, field):
    event = {k: v for k, v in (GOOD | change).items() if v is not None}
    with pytest.raises(BadMessage) as info:
        decode_event(json.dumps(event).encode(), "low")
    assert info.value.reason.startswith(field) or f"; {field}" in info.value.reason, info.value.reason


def test_finding_4_no_line_break_in_single_line_fields_but_the_body_may_hold_them():
    for field in ("title", "notification_id", "user_id", "type", "category"):
        for bad in ("a\r\nb", "a\nb", "a\rb", "a\u2028b", "a\x85b", "a\x00b"):
            with pytest.raises(ValidationError) as info:
                parse_event(GOOD | {field: bad})
            assert field in _fields(info.value), (field, bad)
    assert parse_event(GOOD | {"body": "line one\r\nline two\n\tend"}).body == "line one\r\nline two\n\tend"


@pytest.mark.parametrize("send_at", ["0001-01-01T00:30:00+01:00", "9999-12-31T23:59:59-01:00",
                                     "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"])
def test_finding_5_send_at_at_the_ends_of_the_calendar_is_a_validation_error(send_at):
    with pytest.raises(ValidationError) as info:
        parse_event(GOOD | {"send_at": send_at})
    assert _fields(info.value) == {"send_at"}


def test_finding_6_a_data_object_that_holds_itself_is_refused():
    data: dict = {}
    data["again"] = data
    with pytest.raises(ValidationError, match="nested"):
        parse_event(GOOD | {"data": data})


def test_finding_6_tuples_become_lists_and_what_json_cannot_hold_is_refused():
    assert parse_event(GOOD | {"data": {"k": (1, ("a", None))}}).data == {"k": [1, ["a", None]]}
    for bad in ({"a"}, b"x", 1 + 2j, object(), float("-inf"), ("\x00",), ("\udfff",)):
        with pytest.raises(ValidationError):
            parse_event(GOOD | {"data": {"k": bad}})


def test_send_at_within_the_range_is_kept_in_utc():
    from datetime import datetime, timezone

    ahead = datetime.now(timezone.utc) + SEND_AT_MAX_AHEAD
    assert parse_event(GOOD | {"send_at": "2000-01-01T01:00:00+01:00"}).send_at == datetime(2000, 1, 1, tzinfo=timezone.utc)
    with pytest.raises(ValidationError):
        parse_event(GOOD | {"send_at": (ahead.replace(microsecond=0) + SEND_AT_MAX_AHEAD / 100).isoformat()})
