"""Bad events and the field each must be refused for: one table for every way in (Python, HTTP)."""

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
]
