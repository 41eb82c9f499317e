"""json_codec reads and writes what json does (orjson where the two agree): no value changes on the hot path."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, strategies as st

from notifier.store import json_codec

HOSTILE = [
    '{"n": 123456789012345678901234567890}',  # beyond 64 bits: orjson alone makes it a float
    '{"n": -9223372036854775809}',
    '{"n": 9223372036854775807, "m": 1e16, "f": 0.1}',
    '{"s": "lone \\ud800 surrogate"}',  # orjson refuses it; json reads it
    '{"s": "0123456789012345678901234 digits in a string"}',
    '[1, [2, [3, {"k": null, "t": true}]]]',
    '"\\u2028 é ✓"',
]


@pytest.mark.parametrize("text", HOSTILE)
def test_loads_answers_what_json_answers(text):
    expected = json.loads(text)
    for value in (text, text.encode()):
        got = json_codec.loads(value)
        assert got == expected and type(got) is type(expected)
        assert repr(got) == repr(expected)  # an int stays an int, never an equal-looking float


@pytest.mark.parametrize("text", ["{nope", "", "[1,", "NaN-ish"])
def test_loads_refuses_what_json_refuses(text):
    with pytest.raises(ValueError):
        json_codec.loads(text)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2 ** 80), max_value=2 ** 80) | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@given(JSONISH)
def test_what_dumps_compact_writes_json_reads_back_unchanged(value):
    try:
        text = json_codec.dumps_compact(value)
    except UnicodeEncodeError:  # a lone surrogate in a str: json writes it, no UTF-8 can carry it
        return
    assert json.loads(text) == value
    assert json_codec.loads(text) == value
