"""JSON through orjson where it reads and writes what json would, through json where it would not.

orjson costs a third to an eighth of json's CPU, and the hot path reads or writes JSON for every
event and delivery. Where the two differ, json decides: orjson reads an integer beyond 64 bits as a
float (json: the exact integer, which validation then refuses, or which a stored payload keeps),
refuses a lone surrogate's escape (json reads it, and the event's validation names the field),
and refuses to write an integer beyond 64 bits. No value changes by going through here.
"""
from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

import orjson

# 19 digits in a row may be an integer orjson would make a float (its limit is 64 bits): json reads those.
_LONG_DIGITS_STR = re.compile(r"\d{19}")
_LONG_DIGITS_BYTES = re.compile(rb"\d{19}")


def loads(text: str | bytes) -> Any:
    """json.loads's answer (and its ValueError for what is not JSON), mostly at orjson's cost."""
    pattern = _LONG_DIGITS_BYTES if isinstance(text, (bytes, bytearray)) else _LONG_DIGITS_STR
    if pattern.search(text):
        return json.loads(text)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def dumps_compact(value: Any) -> bytes:
    """What json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode() writes (floats may
    be spelled differently: 1e16, not 1e+16), mostly at orjson's cost; a datetime as orjson writes it
    either way (ISO 8601 with its offset)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_isoformat).encode()


def _isoformat(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
