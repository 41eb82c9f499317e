"""Dead letters: what a letter keeps of a message too large to go whole."""
from __future__ import annotations

import hashlib

from notifier.intake.bridge.dead_letters import DEAD_LETTER_MAX_BYTES, DEAD_LETTER_MIN_BYTES, DeadLetter

def _letter(value: bytes, key: bytes | None = b"user-1", headers=(), max_bytes=DEAD_LETTER_MAX_BYTES) -> DeadLetter:
    return DeadLetter("t.low", 3, 42, key, value, "message is too large", tuple(headers), max_bytes)


def _wire_size(key, value, headers) -> int:
    return len(key or b"") + len(value or b"") + sum(len(k) + len(v) for k, v in headers)

NEAR_BROKER_LIMIT = 1_040_000


def test_a_letter_that_fits_goes_whole_with_its_source_and_the_producers_headers():
    key, value, headers = _letter(b"{bad json", headers=[("trace", b"abc")]).record()
    assert (key, value) == (b"user-1", b"{bad json")
    assert headers == [("source_topic", b"t.low"), ("source_partition", b"3"), ("source_offset", b"42"),
                       ("error", b"message is too large"), ("trace", b"abc")]


def test_a_letter_too_large_to_go_whole_keeps_a_prefix_its_size_and_hash():
    original = bytes(range(256)) * (NEAR_BROKER_LIMIT // 256)
    key, value, headers = _letter(original, headers=[("trace", b"abc")]).record()
    named = dict(headers)
    assert named["truncated"] == b"true"
    assert int(named["original_size"]) == len(original)
    assert named["original_sha256"] == hashlib.sha256(original).hexdigest().encode()
    assert named["source_offset"] == b"42" and named["trace"] == b"abc"
    assert original.startswith(value) and len(value) > DEAD_LETTER_MAX_BYTES - 4096
    assert _wire_size(key, value, headers) <= DEAD_LETTER_MAX_BYTES


def test_huge_keys_and_headers_are_cut_too_and_a_refused_letter_halves_down_to_a_floor():
    letter = _letter(b"x" * 2_000_000, key=b"k" * 500_000, headers=[(f"h{i}", b"v" * 1000) for i in range(600)])
    key, value, headers = letter.record()
    named = dict(headers)
    assert int(named["original_key_size"]) == 500_000 and len(key) <= 1024
    assert int(named["original_headers_dropped"]) > 0
    assert _wire_size(key, value, headers) <= DEAD_LETTER_MAX_BYTES
    sizes = []
    while letter is not None:
        sizes.append(_wire_size(*letter.record()))
        letter = letter.smaller()
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] <= DEAD_LETTER_MIN_BYTES
