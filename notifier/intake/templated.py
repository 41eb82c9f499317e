"""The rules for an event that names a template instead of a title and body, at every edge.

Refused when the event is accepted, never found at send time: a template that does not exist,
one without a variant for a channel the event goes to, params it needs and lacks, and params it
cannot render (a word where it formats a number) or a result over a channel's limits in the
event's locale (or the default one). The user's own locale is known when routing: a rendering
over a limit there fails that delivery with the reason (notifier.pipeline.content_limits).
"""
from __future__ import annotations

from typing import Any

from notifier.content import templates
from notifier.intake.validation import invalid
from notifier.settings import get_settings


CONTENT_FIELDS = ("title", "body", "template", "params", "locale")


def not_both(raw: Any) -> Any:
    """Refuse a template given together with a title or body."""
    if isinstance(raw, dict) and raw.get("template") is not None:
        content_given({name: raw.get(name) for name in CONTENT_FIELDS})
    return raw


def content_given(raw: dict[str, Any]) -> dict[str, Any]:
    """Require title and body, or a template (not both); params and locale only with a template."""
    has = {name for name in CONTENT_FIELDS if raw.get(name) is not None}
    if "template" in has:
        if has & {"title", "body"}:
            raise invalid(f"give either template and params, or title and body; not both "
                          f"({' and '.join(sorted(has & {'title', 'body'}))} given)")
        return raw
    if has & {"params", "locale"}:
        named = sorted(has & {"params", "locale"})
        verb = "is" if len(named) == 1 else "are"
        raise invalid(f"{' and '.join(named)} {verb} for a template only: give template too")
    lacking = [name for name in ("title", "body") if name not in has]
    if lacking:
        raise invalid(f"{' and '.join(lacking)} required: give title and body, or template and params")
    return raw


def _channels(data: dict[str, Any]) -> list[str] | None:
    """The channels the event goes to: its own, or its category's defaults; None when those failed validation."""
    if "channels" not in data or "category" not in data:
        return None
    if data["channels"]:
        return [c.value for c in data["channels"]]
    from notifier.pipeline.routing import DEFAULT_CHANNELS  # routing imports the event model

    return list(DEFAULT_CHANNELS.get(data["category"], DEFAULT_CHANNELS["*"]))


def check_template(template: str | None, data: dict[str, Any]) -> str | None:
    """Check the template exists and has a variant for every channel the event goes to."""
    channels = _channels(data)
    if template is not None and channels is not None:
        try:
            templates.catalog().check_variants(template, channels)
        except templates.TemplateError as exc:
            raise invalid(str(exc)) from None
    return template


def check_params(params: dict[str, Any] | None, data: dict[str, Any]) -> dict[str, Any] | None:
    """Check `params` hold every value the template needs, and render it once per channel to prove they fit."""
    template = data.get("template")
    channels = _channels(data) if template is not None else None
    if channels is None:
        return params  # no template, or one refused already (its error names it)
    params = params or {}
    catalog = templates.catalog()
    missing = sorted(catalog.required_params(template, channels) - set(params))
    if missing:
        raise invalid(f"params missing: {', '.join(missing)} (template {template!r} needs them)")
    from notifier.pipeline import content_limits  # pipeline imports the event model

    max_segments = get_settings().sms_max_segments
    for channel in channels:
        try:
            rendered = catalog.render(template, channel, params, data.get("locale"))
        except templates.TemplateError as exc:
            raise invalid(str(exc)) from None
        problem = content_limits.problem(channel, None, rendered.content(), data.get("data"), max_segments)
        if problem:
            raise invalid(f"template {template!r} ({channel}, {rendered.locale_used}): {problem}")
    return params
