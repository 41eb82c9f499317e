"""Digest rules and rendering, with no services: which deliveries wait, and what a digest says."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from notifier.pipeline.digest_rendering import BODY_MAX, TITLE_MAX, render_digest
from notifier.pipeline.digests import DIGEST_TYPE, digest_event, holds
from notifier.settings import Settings

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)
WINDOWS = {"social": 1800.0}


def _row(**overrides):
    return SimpleNamespace(**({"id": 1, "user_id": "u", "type": "post_liked", "channel": "push", "category": "social",
                               "priority": "normal", "scheduled_at": None} | overrides))


@pytest.mark.parametrize(("overrides", "held"), [
    ({}, True),
    ({"priority": "low"}, True),
    ({"priority": "high"}, False),  # never held
    ({"priority": "critical"}, False),  # never held
    ({"category": "transactional"}, False),  # no window configured for it
    ({"type": DIGEST_TYPE}, False),  # a digest is never digested again
    ({"scheduled_at": NOW + timedelta(minutes=5)}, False),  # send_at: waits for its time first
    ({"scheduled_at": NOW - timedelta(minutes=5)}, True),  # released at its time: joins the window then
    ({"scheduled_at": (NOW + timedelta(milliseconds=500)).replace(tzinfo=None)}, True),  # SQLite's naive UTC, due
])
def test_which_deliveries_a_digest_holds(overrides, held):
    assert holds(_row(**overrides), WINDOWS, NOW) is held


def _members(actors):
    return [{"notification_id": f"n{i}", "type": "post_liked", "title": f"{a} liked your post",
             "body": "Sunset at the lake", "params": {"actor": a, "action": "liked your post"}, "created_at": NOW}
            for i, a in enumerate(actors)]


@pytest.mark.parametrize(("actors", "title"), [
    (["Anna", "Ben", "Carl", "Dana", "Eve"], "Anna and 4 others liked your post"),
    (["Anna", "Ben"], "Anna and Ben liked your post"),
    (["Anna", "Anna", "Ben"], "Anna and Ben liked your post"),  # people, not events, are counted
])
def test_social_push_summarises_who_did_what(actors, title):
    rendered = render_digest("social", "push", _members(actors))
    assert (rendered.title, rendered.template) == (title, "social.push.j2")


def test_mixed_actions_fall_back_to_a_count():
    members = _members(["Anna", "Ben"])
    members[1]["params"]["action"] = "commented on your post"
    assert render_digest("social", "push", members).title == "2 new notifications"


def test_a_category_without_a_file_gets_the_built_in_default():
    rendered = render_digest("orders", "push", _members(["A", "B", "C", "D"]))
    assert rendered.template == "built-in"
    assert rendered.title == "4 new orders notifications"
    assert rendered.body.splitlines() == ["D liked your post", "C liked your post", "B liked your post", "…and 1 more"]


def test_html_is_autoescaped_and_text_is_not(tmp_path):
    (tmp_path / "social.email.j2").write_text("{% block title %}{{ members[0].title }}{% endblock %}"
                                              "{% block body %}{{ members[0].title }}{% endblock %}")
    (tmp_path / "social.email.html.j2").write_text("{% block html %}<b>{{ members[0].title }}</b>{% endblock %}")
    members = _members(["<script>x</script>", "B"])
    rendered = render_digest("social", "email", members, directory=tmp_path)
    assert rendered.title == "<script>x</script> liked your post"
    assert rendered.html == "<b>&lt;script&gt;x&lt;/script&gt; liked your post</b>"


@pytest.mark.parametrize("source", [
    # Reaching Python's internals: refused by the sandbox (SecurityError), so the built-in default is used.
    "{% block title %}{{ members.__class__.__mro__[1].__subclasses__() }}{% endblock %}",
    "{% block title %}{{ ''.__class__.__base__.__subclasses__() }}{% endblock %}",
    # A template that does not even parse.
    "{% block title %}{{ members[0].title {% endblock %}",
])
def test_a_template_that_breaks_the_rules_falls_back_to_the_default(tmp_path, source):
    (tmp_path / "social.push.j2").write_text(source)
    rendered = render_digest("social", "push", _members(["A", "B"]), directory=tmp_path)
    assert rendered.template == "built-in" and "social.push.j2 failed" in rendered.note
    assert rendered.title == "2 new social notifications"


def test_rendered_text_is_fit_for_a_delivery(tmp_path):
    (tmp_path / "social.push.j2").write_text("{% block title %}{{ 'x\\n' * 500 }}{% endblock %}"
                                             "{% block body %}{{ 'y\\x00' * 20000 }}{% endblock %}")
    rendered = render_digest("social", "push", _members(["A", "B"]), directory=tmp_path)
    assert "\n" not in rendered.title and len(rendered.title) == TITLE_MAX
    assert "\x00" not in rendered.body and len(rendered.body) == BODY_MAX


def _window():
    return SimpleNamespace(notification_id="digest:social:abc", user_id="u", category="social", channel="push",
                           opened_at=NOW)


def _member_row(i, actor, priority="low", notification_id=None):
    return SimpleNamespace(id=i, notification_id=notification_id or f"n{i}", type="post_liked", priority=priority,
                           created_at=NOW, payload={"title": f"{actor} liked your post", "body": "Sunset",
                                                    "data": {"actor": actor, "action": "liked your post"}})


def test_a_digest_event_summarises_its_members_once_per_notification():
    # The same notification to two devices is two member rows, one member.
    rows = [_member_row(1, "Anna"), _member_row(2, "Anna", notification_id="n1"), _member_row(3, "Ben", "normal")]
    event, extra = digest_event(_window(), rows)
    assert (event.notification_id, event.type, event.priority.value, event.channels[0].value) == (
        "digest:social:abc", DIGEST_TYPE, "normal", "push")
    assert event.title == "Anna and Ben liked your post"
    assert event.data == {"digest": {"category": "social", "count": 2}}
    assert extra["members"] == ["n1", "n3"] and extra["template"] == "social.push.j2"


def test_a_digest_of_one_member_is_that_member_unchanged():
    event, extra = digest_event(_window(), [_member_row(1, "Anna")])
    assert (event.title, event.body, event.data) == ("Anna liked your post", "Sunset",
                                                     {"actor": "Anna", "action": "liked your post"})
    assert event.priority.value == "low" and extra["members"] == ["n1"]


@pytest.mark.parametrize("value", ["social", "social=", "=30", "social=abc", "social=0", "social=-5",
                                   "social=999999999"])
def test_digest_categories_setting_refuses_what_it_cannot_read(value):
    with pytest.raises(ValidationError, match="digest_categories"):
        Settings(digest_categories=value)


def test_digest_categories_setting_reads_category_and_window():
    assert Settings(digest_categories="social=1800, mentions = 60,").digest_windows() == {
        "social": 1800.0, "mentions": 60.0}
