"""Bad events and the field each must be refused for: one table for every way in (Python, HTTP)."""


def nested(depth: int, leaf: object = "x") -> dict:
    """A JSON object nested `depth` objects deep (the outermost counts as one)."""
    value: object = leaf
    for _ in range(depth):
        value = {"k": value}
    return value  # type: ignore[return-value]


BAD_EVENTS = [
    ({"user_id": None}, "user_id"),
    ({"priority": "urgent"}, "priority"),
    ({"channels": ["pigeon"]}, "channels"),
    ({"send_at": "2030-01-01T09:00:00"}, "send_at"),
    ({"title": ""}, "title"),
    ({"title": "nul\x00byte"}, "title"),
    ({"colour": "red"}, "colour"),
    ({"data": {"k": "\ud800"}}, "data"),
    ({"data": {"ratio": float("nan")}}, "data"),
    ({"data": {"scores": [1.5, float("inf")]}}, "data"),
    # Finding 4: a line break in a single-line field broke SMTP's message building.
    ({"title": "Hi\r\nBcc: someone@example.com"}, "title"),
    ({"notification_id": "n-1\nx"}, "notification_id"),
    ({"type": "order\rshipped"}, "type"),
    ({"category": "social\u2028x"}, "category"),
    ({"user_id": "u\x1b[31m"}, "user_id"),
    ({"body": "bell\x07"}, "body"),
    # Finding 2: collapse_id travels as an HTTP header (apns-collapse-id).
    ({"data": {"collapse_id": "c2\r\nx-injected: yes"}}, "data"),
    ({"data": {"collapse_id": "café"}}, "data"),
    ({"data": {"collapse_id": "c" * 65}}, "data"),
    ({"data": {"collapse_id": 42}}, "data"),
    # Findings 3 and 5: nesting past the documented depth (16), and a data object too large.
    ({"data": nested(17)}, "data"),
    ({"data": nested(300)}, "data"),
    ({"data": nested(900)}, "data"),  # up to 990 was a 500; json.dumps in a test stack stops near 950
    ({"data": {"k": [[[[[[[[[[[[[[[[["deep"]]]]]]]]]]]]]]]]]}}, "data"),
    ({"data": {"blob": "x" * 17_000}}, "data"),
    # Finding 5: send_at at the ends of the calendar overflowed converting to UTC.
    ({"send_at": "0001-01-01T00:30:00+01:00"}, "send_at"),
    ({"send_at": "9999-12-31T23:59:59-01:00"}, "send_at"),
    ({"send_at": "1999-12-31T23:59:59Z"}, "send_at"),
    ({"send_at": "2999-01-01T00:00:00Z"}, "send_at"),
]

# Values only Python can hand over (no JSON spelling): send_notification.delay and the Python API.
PYTHON_ONLY_BAD_EVENTS = [
    # Finding 6: inside a tuple or a set, NUL and lone surrogates got through.
    ({"data": {"k": ("ok", "nul\x00")}}, "data"),
    ({"data": {"k": ("\ud800",)}}, "data"),
    ({"data": {"k": {"a", "b"}}}, "data"),
    ({"data": {"k": frozenset()}}, "data"),
    ({"data": {"k": b"\xff"}}, "data"),
    ({"data": {"k": bytearray(b"x")}}, "data"),
    ({"data": {"k": object()}}, "data"),
    ({"data": {"k": 10 ** 5000}}, "data"),
    ({"data": {"k": 2 ** 63}}, "data"),
    ({"data": {"k": {1: "int key"}}}, "data"),
    ({"data": nested(5000)}, "data"),
]
