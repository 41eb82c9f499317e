"""Templates: rendering per locale with plurals and formats, the fallback chain, the sandbox, autoescape,
required params, and the channel limits after rendering. No services: the engine is plain Python."""
from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from notifier.content import locales, templates
from notifier.content.templates import Catalog, TemplateError
from notifier.pipeline import content_limits
from notifier.pipeline.content_limits import sms_size

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = Catalog.load(ROOT / "templates")
SHIPPED_PARAMS = {"order_id": "A-1042", "courier": "Posten", "eta": "2026-12-24", "items": 3, "name": "Kari"}


@pytest.fixture()
def shipped_dir(monkeypatch):
    """NOTIFIER_TEMPLATES_DIR pointing at the shipped examples, for the event model's checks."""
    from notifier.settings import get_settings

    monkeypatch.setenv("NOTIFIER_TEMPLATES_DIR", str(ROOT / "templates"))
    get_settings.cache_clear()
    templates._catalog.cache_clear()
    yield
    get_settings.cache_clear()
    templates._catalog.cache_clear()


def _catalog(tmp_path: Path, files: dict[str, str]) -> Catalog:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return Catalog.load(tmp_path)


# -- rendering in the user's language ----------------------------------------------------------------------

@pytest.mark.parametrize(("locale", "items", "body"), [
    ("en", 1, "Your item is on the way with Posten, arriving December 24, 2026."),
    ("en", 3, "Your 3 items are on the way with Posten, arriving December 24, 2026."),
    ("nb", 1, "Varen din er på vei med Posten og kommer 24. desember 2026."),
    ("nb", 3, "De 3 varene dine er på vei med Posten og kommer 24. desember 2026."),
    ("de", 1, "Ihr Artikel ist mit Posten unterwegs und kommen am 24. Dezember 2026 an."),
    ("de", 3, "Ihre 3 Artikel sind mit Posten unterwegs und kommen am 24. Dezember 2026 an."),
])
def test_the_shipped_template_renders_in_three_locales_with_a_plural_and_a_local_date(locale, items, body):
    rendered = SHIPPED.render("order_shipped", "push", SHIPPED_PARAMS | {"items": items}, locale)
    assert rendered.locale_used == locale
    assert rendered.body == body


@pytest.mark.parametrize(("locale", "text"), [
    ("en", "Anna, Bo, and Cai now follow you. You have 12,345 followers."),
    ("nb", "Anna, Bo og Cai følger deg nå. Du har 12\xa0345 følgere."),
    ("de", "Anna, Bo und Cai folgen dir jetzt. Du hast 12.345 Follower."),
])
def test_numbers_and_lists_follow_the_locale(locale, text):
    rendered = SHIPPED.render("new_followers", "push", {"names": ["Anna", "Bo", "Cai"], "total": 12345}, locale)
    assert rendered.body == text


def test_plural_takes_every_cldr_category_of_the_language(tmp_path):
    catalog = _catalog(tmp_path, {
        "t/sms.en.toml": "text = \"{{ n | plural(one='# file', other='# files') }}\"",
        "t/sms.pl.toml": "text = \"{{ n | plural(one='# plik', few='# pliki', many='# plików', other='# pliku') }}\"",
    })
    assert [catalog.render("t", "sms", {"n": n}, "pl").text for n in (1, 3, 5, 22, 1.5)] == [
        "1 plik", "3 pliki", "5 plików", "22 pliki", "1,5 pliku"]
    assert catalog.render("t", "sms", {"n": 1}, "en").text == "1 file"


def test_times_are_shown_in_the_users_timezone(tmp_path):
    catalog = _catalog(tmp_path, {"t/sms.en.toml": "text = \"at {{ at | time }}\""})
    catalog.variants[("t", "sms")]["nb"] = catalog.variants[("t", "sms")]["en"]
    assert catalog.render("t", "sms", {"at": "2026-07-01T12:30:00Z"}, "en", timezone="Europe/Oslo").text == \
        "at 2:30\u202fPM"
    assert catalog.render("t", "sms", {"at": "2026-07-01T12:30:00Z"}, "en").text == "at 12:30\u202fPM"


# -- the fallback chain ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("wanted", "chain"), [
    ("nb-NO", ("nb-NO", "nb", "en")),
    ("nb_no", ("nb-NO", "nb", "en")),
    ("zh-Hant-TW", ("zh-Hant-TW", "zh-Hant", "zh", "en")),
    ("en-GB", ("en-GB", "en")),
    (None, ("en",)),
])
def test_the_fallback_chain_drops_one_subtag_at_a_time_then_takes_the_default(wanted, chain):
    assert locales.fallback_chain(wanted, "en") == chain


@pytest.mark.parametrize(("wanted", "used", "tried"), [
    ("nb-NO", "nb", ["nb-NO", "nb"]),
    ("de-AT", "de", ["de-AT", "de"]),
    ("fr-FR", "en", ["fr-FR", "fr", "en"]),
    (None, "en", ["en"]),
])
def test_a_render_records_the_variant_used_and_the_locales_tried(wanted, used, tried):
    rendered = SHIPPED.render("order_shipped", "push", SHIPPED_PARAMS, wanted)
    assert (rendered.locale_used, list(rendered.fallback_chain)) == (used, tried)
    assert rendered.record() == {"name": "order_shipped", "locale": used, "locale_requested": wanted,
                                 "fallback_chain": tried}


@pytest.mark.parametrize("tag", ["xx", "12", "", "en US", "n\u00e9", "x" * 40, "en-"])
def test_a_locale_babel_does_not_know_is_refused(tag):
    with pytest.raises(locales.LocaleError):
        locales.normalize(tag)


# -- refused when accepted, naming what is wrong -------------------------------------------------------------

def test_required_params_are_the_variables_of_every_variant_of_the_channels():
    assert SHIPPED.required_params("order_shipped", ["push"]) == {"order_id", "courier", "eta", "items"}
    assert SHIPPED.required_params("order_shipped") == {"order_id", "courier", "eta", "items", "name"}


@pytest.mark.parametrize(("type_", "channels", "params", "says"), [
    ("nope", ["push"], {}, "no template 'nope'"),
    ("new_followers", ["push", "sms"], {}, "template 'new_followers' has no variant for channel sms"),
    ("order_shipped", ["push"], {"order_id": "1", "items": 1}, "params missing: courier, eta"),
])
def test_check_names_the_template_the_channel_or_the_params(type_, channels, params, says):
    with pytest.raises(TemplateError, match=says):
        SHIPPED.check(type_, channels, params)


BASE = {"notification_id": "n1", "user_id": "u1", "type": "order_shipped", "category": "transactional"}


@pytest.mark.parametrize(("change", "field", "says"), [
    ({"template": "nope", "params": {}}, "template", "no template 'nope'"),
    ({"template": "order_shipped", "channels": ["sms", "push"], "params": {"order_id": "1"}}, "params",
     "params missing: courier, eta, items"),
    ({"template": "new_followers", "channels": ["sms"], "params": {}}, "template", "no variant for channel sms"),
    ({"template": "order_shipped", "channels": ["push"], "params": SHIPPED_PARAMS | {"eta": "soon"}}, "params",
     "date needs an ISO 8601 date"),
    ({"template": "order_shipped", "channels": ["sms"], "params": SHIPPED_PARAMS | {"courier": "x" * 2000}},
     "params", "SMS is 14 segments"),
    ({"template": "order_shipped", "title": "x", "params": {}}, "event", "not both"),
    ({"title": "x"}, "event", "body required"),
    ({"title": "x", "body": "y", "params": {"a": 1}}, "event", "params is for a template only"),
    ({"template": "order_shipped", "locale": "xx", "params": SHIPPED_PARAMS}, "locale", "unknown locale"),
])
def test_an_event_with_a_bad_template_is_refused_naming_the_field(shipped_dir, change, field, says):
    from notifier.intake.events import describe_errors, parse_event

    with pytest.raises(ValidationError) as info:
        parse_event(BASE | change)
    assert f"{field}: " in describe_errors(info.value) and says in describe_errors(info.value)


def test_an_event_with_a_template_needs_only_the_params_of_its_channels(shipped_dir):
    from notifier.intake.events import parse_event

    push_only = {k: v for k, v in SHIPPED_PARAMS.items() if k != "name"}
    event = parse_event(BASE | {"template": "order_shipped", "channels": ["push"], "params": push_only,
                                "locale": "nb_no"})
    assert (event.template, event.locale, event.title) == ("order_shipped", "nb-NO", None)


# -- safety --------------------------------------------------------------------------------------------------

def test_a_sandbox_escape_in_params_is_text(tmp_path):
    catalog = _catalog(tmp_path, {"t/push.en.toml": 'title = "Hi {{ name }}"\nbody = "{{ name }}"'})
    attack = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    rendered = catalog.render("t", "push", {"name": attack}, "en")
    assert rendered.body == attack and rendered.title == f"Hi {attack}"


@pytest.mark.parametrize("source", [
    "{{ ''.__class__ }}",
    "{{ name.__class__.__mro__ }}",
    "{{ (name | attr('__class__')) }}",
    "{{ name.upper.__globals__ }}",
])
def test_a_sandbox_escape_in_a_template_is_refused_when_rendered(tmp_path, source):
    catalog = _catalog(tmp_path, {"t/push.en.toml": f'title = "x"\nbody = "{source}"'})
    with pytest.raises(TemplateError, match="refused by the sandbox|no attribute|unsafe"):
        catalog.render("t", "push", {"name": "a"}, "en")


def test_a_template_sees_no_globals_only_its_params(tmp_path):
    catalog = _catalog(tmp_path, {"t/push.en.toml": 'title = "x"\nbody = "{{ range(3) | list }} {{ lipsum() }}"'})
    assert catalog.required_params("t") == {"range", "lipsum"}  # names it must be sent, not functions it gets
    with pytest.raises(TemplateError, match="params missing: lipsum, range"):
        catalog.render("t", "push", {}, "en")


def test_html_is_autoescaped_and_text_is_not():
    rendered = SHIPPED.render("order_shipped", "email", SHIPPED_PARAMS | {"name": "<script>alert(1)</script>"}, "en")
    assert "<p>Hello &lt;script&gt;alert(1)&lt;/script&gt;,</p>" in rendered.html
    assert "<script>" not in rendered.html
    assert rendered.text.startswith("Hello <script>alert(1)</script>,")
    assert rendered.content()["title"] == "Order A-1042 has shipped"


def test_a_broken_directory_names_each_problem_and_refuses_that_template(tmp_path):
    catalog = _catalog(tmp_path, {
        "no_default/push.nb.toml": 'title = "x"\nbody = "y"',
        "bad_syntax/push.en.toml": 'title = "{{ x"\nbody = "y"',
        "bad_field/push.en.toml": 'title = "x"\nbody = "y"\nsubject = "z"',
        "bad_name/fax.en.toml": 'text = "x"',
        "good/sms.en.toml": 'text = "ok"',
    })
    assert set(catalog.broken) == {"no_default", "bad_syntax", "bad_field", "bad_name"}
    assert "no variant in the default locale en" in catalog.broken["no_default"][0]
    assert "line 1" in catalog.broken["bad_syntax"][0]
    assert "unknown subject" in catalog.broken["bad_field"][0]
    with pytest.raises(TemplateError, match="template 'bad_syntax' is broken"):
        catalog.check("bad_syntax", ["push"], {})
    assert catalog.render("good", "sms", {}).text == "ok"


# -- channel limits after rendering --------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "encoding", "units", "segments"), [
    ("a" * 160, "GSM-7", 160, 1),
    ("a" * 161, "GSM-7", 161, 2),
    ("a" * 306, "GSM-7", 306, 2),
    ("a" * 307, "GSM-7", 307, 3),
    ("€" * 80, "GSM-7", 160, 1),  # an extension character takes two septets
    ("€" * 81, "GSM-7", 162, 2),
    ("Hei på deg, Åse", "GSM-7", 15, 1),  # æøå are GSM 03.38
    ("ş" * 70, "UCS-2", 70, 1),
    ("ş" * 71, "UCS-2", 71, 2),
    ("ş" * 134, "UCS-2", 134, 2),
    ("ş" * 135, "UCS-2", 135, 3),
    ("a" * 100 + "😀", "UCS-2", 102, 2),  # one emoji makes the whole text UCS-2; it is two UTF-16 units
])
def test_sms_segments_are_counted_per_encoding(text, encoding, units, segments):
    assert sms_size(text) == content_limits.SmsSize(encoding, units, segments)


@pytest.mark.parametrize(("channel", "provider", "content", "says"), [
    ("email", "sendgrid", {"title": "Two\nlines", "body": "x"}, "email subject must be one line"),
    ("push", "apns", {"title": "t", "body": "x" * 4100}, "APNs payload is 4159 bytes after rendering; at most 4096"),
    ("sms", "twilio", {"title": "", "body": "a" * 1531}, "SMS is 11 segments (GSM-7, 1531 septets)"),
    ("push", "fcm", {"title": "t", "body": "x" * 4100}, None),  # FCM shortens its own (APNs' limit is APNs')
    ("sms", "twilio", {"title": "", "body": "a" * 1530}, None),
])
def test_a_rendered_delivery_over_its_channels_limit_says_which(channel, provider, content, says):
    found = content_limits.problem(channel, provider, content, {}, max_sms_segments=10)
    assert found == says if says is None else says in found
