"""One user at a time: devices and preferences."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from entrypoints.cli.common import command, refused
from entrypoints.cli.errors import CliError


def _devices(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from notifier.accounts import devices
    from notifier.store.db import shard_for, transaction
    from notifier.store.models import DeviceToken
    from notifier.accounts.status import redact

    shown = (lambda token: token) if getattr(args, "show_tokens", False) else (lambda token: redact("push", token))
    if args.devices_command == "register":
        from pydantic import ValidationError

        from notifier.intake.events import describe_errors

        try:
            if args.platform == "web":
                subscription = _subscription(args)
                if isinstance(subscription, str):
                    return refused("devices register", subscription)
                args.token = devices.register_web_push(args.user_id, subscription, args.app)
            elif args.token is None or args.subscription is not None:
                return refused("devices register", "token: give the device token (--subscription is for --platform web)")
            else:
                devices.register_device(args.user_id, args.token, args.platform, args.app)
        except ValidationError as exc:
            return refused("devices register", describe_errors(exc))
        print(f"registered {shown(args.token)} ({args.platform}) for user {args.user_id}")
    elif args.devices_command == "unregister":
        if not devices.unregister_device(args.user_id, args.token):
            raise CliError(f"user {args.user_id} has no such device token")
        print(f"unregistered {shown(args.token)} of user {args.user_id}")
    else:
        with transaction(shard=shard_for(args.user_id)) as session:
            devices = session.scalars(
                select(DeviceToken).where(DeviceToken.user_id == args.user_id).order_by(DeviceToken.id)
            ).all()
        for d in devices:
            last_used = f"{d.last_used_at:%Y-%m-%d %H:%M}" if d.last_used_at else "never"
            print(f"{shown(d.token)}  {d.platform:<8}  registered {d.created_at:%Y-%m-%d %H:%M}  "
                  f"last used {last_used}  {d.app or ''}".rstrip())
        if not devices:
            print(f"user {args.user_id} has no device", file=sys.stderr)
    return 0


def _subscription(args: argparse.Namespace) -> dict | str:
    """The browser's subscription JSON from --subscription (text, @file or - for stdin), or what is wrong."""
    raw = args.subscription
    if raw is None:
        return "subscription: --platform web takes --subscription '<PushSubscription JSON>' (or @file, or -)"
    if args.token is not None:
        return "token: for --platform web the endpoint comes from --subscription; give no token"
    try:
        if raw == "-":
            raw = sys.stdin.read()
        elif raw.startswith("@"):
            with open(raw[1:], encoding="utf-8") as fh:
                raw = fh.read()
        value = json.loads(raw)
    except (OSError, ValueError) as exc:
        return f"subscription: not readable JSON ({type(exc).__name__})"
    if not isinstance(value, dict):
        return "subscription: expected a JSON object {endpoint, keys: {p256dh, auth}}"
    return value


def _preferences(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from notifier.accounts.preferences import get_preferences, update_preferences

    if args.preferences_command == "set":
        from notifier.intake.events import describe_errors
        from notifier.intake.validation import PREFERENCE_FIELDS, PreferencesUpdate  # the API's rules too

        changes = {name: getattr(args, name) for name in sorted(PREFERENCE_FIELDS) if getattr(args, name) is not None}
        if not changes:
            raise CliError("name at least one preference to change (see --help)", usage=True)
        # An empty value clears an optional preference (or empties the opt-out list).
        changes = {name: (None if value == "" else value) for name, value in changes.items()}
        if "opted_out_categories" in changes:
            value = changes["opted_out_categories"] or ""
            changes["opted_out_categories"] = [c.strip() for c in value.split(",") if c.strip()]
        try:
            valid = PreferencesUpdate.model_validate(changes).model_dump(exclude_unset=True)
        except ValidationError as exc:
            return refused("preferences set", describe_errors(exc))
        prefs = update_preferences(args.user_id, **valid)
    else:
        prefs = get_preferences(args.user_id)
    print(json.dumps(prefs, default=str, indent=2))
    return 0


def register(sub: Any) -> None:
    """Add this group's subcommands."""
    p = command(sub, "devices", help="register, unregister or list a user's push device tokens")
    devices = p.add_subparsers(dest="devices_command", required=True, metavar="ACTION")
    d = command(devices, "register", help="register (or move to this user) a device token")
    d.add_argument("user_id", help="the user's id")
    d.add_argument("token", nargs="?", help="the device token (not for --platform web)")
    d.add_argument("--platform", choices=["ios", "android", "web"], required=True,
                   help="ios: APNs (hex token); android: FCM; web: a browser's Push API subscription")
    d.add_argument("--subscription", help="web: the browser's PushSubscription JSON {endpoint, keys: {p256dh, "
                   "auth}}, or @file, or - for stdin")
    d.add_argument("--app", help="the app's id, if the user has several apps")
    d = command(devices, "unregister", help="forget a user's device token")
    d.add_argument("user_id", help="the user's id")
    d.add_argument("token", help="the device token to forget")
    d = command(devices, "list", help="list a user's devices (tokens shortened unless --show-tokens)")
    d.add_argument("user_id", help="the user's id")
    d.add_argument("--show-tokens", action="store_true", help="print whole tokens")
    p.set_defaults(func=_devices)

    p = command(sub, "preferences", help="show or change a user's preferences (channels, quiet hours, opt-outs)")
    prefs = p.add_subparsers(dest="preferences_command", required=True, metavar="ACTION")
    g = command(prefs, "get", help="print a user's preferences as JSON (defaults for a user never seen)")
    g.add_argument("user_id", help="the user's id")
    g = command(prefs, "set", help="change some of a user's preferences and print them all; an empty value clears "
                 "one, e.g. --phone ''")
    g.add_argument("user_id", help="the user's id")
    for channel in ("push", "email", "sms"):
        g.add_argument(f"--{channel}-enabled", dest=f"{channel}_enabled", choices=["true", "false"],
                       help=f"send on {channel} at all")
    g.add_argument("--email", help="email address")
    g.add_argument("--phone", help="phone number, E.164 (+4712345678)")
    g.add_argument("--quiet-start", help="start of quiet hours, HH:MM in --timezone")
    g.add_argument("--quiet-end", help="end of quiet hours, HH:MM (may be past midnight)")
    g.add_argument("--timezone", help="IANA timezone of the quiet hours, e.g. Europe/Oslo")
    g.add_argument("--opted-out-categories", help="comma-separated categories never to send, e.g. marketing,social")
    g.add_argument("--locale", help="BCP 47 locale picking templates' variants, e.g. nb-NO (falls back to nb, then "
                   "the default)")
    p.set_defaults(func=_preferences)
