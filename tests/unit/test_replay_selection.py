"""Which replays are refused before anything is read: the selection's rules, each naming its field."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from notifier.pipeline.replay import Selection


@pytest.mark.parametrize(("fields", "field"), [
    ({"why": "fixed"}, "name at least one of"),  # every failure is not a default
    ({"provider": "apns"}, "why"),  # the reason for the replay is required
    ({"provider": "apns", "why": " "}, "why"),
    ({"provider": "pigeon", "why": "fixed"}, "provider"),
    ({"channel": "fax", "why": "fixed"}, "channel"),
    ({"since": "2026-12-01T08:00", "why": "fixed"}, "since"),  # no timezone
    ({"since": "2026-12-01T09:00Z", "until": "2026-12-01T08:00Z", "why": "fixed"}, "until must be after since"),
    ({"reason": "a\nb", "why": "fixed"}, "reason"),
    ({"provider": "apns", "why": "fixed", "limit": 0}, "limit"),
    ({"provider": "apns", "why": "fixed", "target": "x"}, "target"),  # no such criterion
])
def test_a_bad_selection_is_refused_naming_the_field(fields, field):
    with pytest.raises(ValidationError, match=field):
        Selection.model_validate(fields)


def test_the_limit_defaults_and_is_bounded():
    selection = Selection(provider="apns", why="fixed")
    assert selection.bounded_limit(100, 1000) == 100
    assert Selection(provider="apns", why="fixed", limit=1000).bounded_limit(100, 1000) == 1000
    with pytest.raises(ValueError, match="^limit: at most 1000"):
        Selection(provider="apns", why="fixed", limit=1001).bounded_limit(100, 1000)
