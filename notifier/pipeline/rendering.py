"""Render a templated event's deliveries when routing, where the user's locale is known.

Why here and not at intake's validation: the locale that picks the variant is the user's
preference (or the event's own `locale`), read with the recipient when routing; routing runs
at intake, in the same transaction that stores the rows, so each delivery is rendered once,
before anything is queued, and its row holds the finished text (a send reads it as it reads
a producer's title and body; a retry or a re-drive never renders again). Validation has
already rendered the event once in its own (or the default) locale to refuse bad params at the
edge; this rendering is the user's.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from notifier.content import templates
from notifier.intake.events import NotificationEvent
from notifier.pipeline import content_limits
from notifier.settings import get_settings
from notifier.store.models import Status
from notifier.store.recipients import Recipient


def render_channel(event: NotificationEvent, channel: str, recipient: Recipient) -> templates.Rendered | str:
    """The event's template rendered for `channel` in the user's locale, or why it cannot be."""
    try:
        return templates.render(event.template, channel, event.params or {}, event.locale or recipient.locale,
                                timezone=recipient.timezone)
    except templates.TemplateError as exc:
        return f"template could not be rendered: {exc}"


def delivery_fields(rendered: templates.Rendered | str, event: NotificationEvent, channel: str,
                    provider: str | None, payload: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The row's payload with the rendered content (and what rendered it), or `failed` with the reason."""
    if isinstance(rendered, str):
        return {"status": Status.FAILED.value, "reason": rendered, "failed_at": now}
    content = rendered.content()
    fields: dict[str, Any] = {"payload": payload | content | {"template": rendered.record()}}
    problem = content_limits.problem(channel, provider, content, event.data, get_settings().sms_max_segments)
    if problem:
        fields |= {"status": Status.FAILED.value, "reason": problem, "failed_at": now}
    return fields


def preview(template: str, channels: list[str] | None, params: dict[str, Any], locale: str | None = None,
            timezone: str | None = None) -> list[dict[str, Any]]:
    """A template rendered for each channel (all it has when None) as a delivery would be, with the
    limit it would break (push judged as APNs, the stricter); raises TemplateError as intake would refuse."""
    catalog = templates.catalog()
    channels = channels or catalog.channels(template)
    catalog.check(template, channels, params)
    out = []
    for channel in channels:
        rendered = catalog.render(template, channel, params, locale, timezone=timezone)
        content = rendered.content()
        provider = {"push": "apns"}.get(channel)
        entry: dict[str, Any] = {
            "channel": channel, "locale_used": rendered.locale_used, "fallback_chain": list(rendered.fallback_chain),
            "fields": dict(rendered.fields),
            "problem": content_limits.problem(channel, provider, content, None, get_settings().sms_max_segments),
        }
        if channel == "sms":
            size = content_limits.sms_size(content["body"])
            entry["sms"] = {"encoding": size.encoding, "units": size.units, "segments": size.segments}
        out.append(entry)
    return out
