"""`notifier templates`: list the templates, check the directory, preview a rendering."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from entrypoints.cli.common import command, refused


def _list(args: argparse.Namespace) -> int:
    from notifier.content.templates import catalog

    c = catalog()
    print(f"templates in {c.directory} (default locale {c.default_locale})")
    for type_ in c.types():
        if type_ in c.broken:
            print(f"{type_}: BROKEN: {'; '.join(c.broken[type_])}")
            continue
        channels = ", ".join(f"{ch} ({' '.join(c.locales(type_, ch))})" for ch in c.channels(type_))
        print(f"{type_}: {channels}; params: {', '.join(sorted(c.required_params(type_))) or 'none'}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from notifier.content.templates import catalog

    c = catalog()
    for type_, problems in sorted(c.broken.items()):
        for problem in problems:
            print(f"{c.directory / type_}: {problem}", file=sys.stderr)
    print(f"{len(c.types())} template(s), {sum(len(v) for v in c.variants.values())} variant(s), "
          f"{len(c.broken)} broken")
    return 1 if c.broken else 0


def _render(args: argparse.Namespace) -> int:
    from pydantic import TypeAdapter, ValidationError

    from notifier.content.templates import TemplateError
    from notifier.intake.validation import JsonData, LocaleTag, TimezoneName
    from notifier.pipeline.rendering import preview

    try:
        params: Any = json.loads(args.params)
    except ValueError as exc:
        return refused("templates render", f"--params: not JSON: {exc}")
    try:
        params = TypeAdapter(JsonData).validate_python(params)
        locale = TypeAdapter(LocaleTag | None).validate_python(args.locale)
        tz = TypeAdapter(TimezoneName | None).validate_python(args.timezone)
    except ValidationError as exc:
        return refused("templates render", "; ".join(e["msg"] for e in exc.errors(include_url=False)))
    try:
        rendered = preview(args.type, [args.channel] if args.channel else None, params, locale, tz)
    except TemplateError as exc:
        return refused("templates render", str(exc))
    print(json.dumps(rendered, ensure_ascii=False, indent=2))
    return 1 if any(r["problem"] for r in rendered) else 0


def register(sub: Any) -> None:
    """Add this group's subcommands."""
    p = command(sub, "templates", help="list, check and preview the notification templates (NOTIFIER_TEMPLATES_DIR)")
    t = p.add_subparsers(dest="templates_command", required=True, metavar="ACTION")
    g = command(t, "list", help="list each template's channels, locales and the params it needs")
    g.set_defaults(func=_list)
    g = command(t, "check", help="read every template; exit 1 naming each broken file")
    g.set_defaults(func=_check)
    g = command(t, "render", help="render a template as a delivery would be (exit 1 if over a channel's limit)")
    g.add_argument("type", help="the template's name, e.g. order_shipped")
    g.add_argument("--channel", choices=["push", "email", "sms"], help="one channel (default: every one it has)")
    g.add_argument("--locale", help="BCP 47 locale, e.g. nb-NO (falls back to nb, then the default)")
    g.add_argument("--timezone", help="IANA timezone dates and times are shown in (default UTC)")
    g.add_argument("--params", default="{}", help="the params as a JSON object")
    g.set_defaults(func=_render)
