"""Callbacks to producers: register, show and remove their URLs (`notifier callbacks`)."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from entrypoints.cli.common import command, refused


def _producer(args: argparse.Namespace) -> str:
    from notifier.callbacks import endpoints

    if args.app:
        return endpoints.for_app(args.app, registering=args.callbacks_command == "set")
    return endpoints.parse(args.producer)


def _callbacks(args: argparse.Namespace) -> int:
    from notifier.callbacks import endpoints

    try:
        if args.callbacks_command == "set":
            endpoint = endpoints.register(_producer(args), args.url)
            print(f"callbacks of {endpoint.producer} go to {endpoint.url}; signing secret (shown only now):",
                  file=sys.stderr)
            print(endpoint.secret)
        elif args.callbacks_command == "list":
            for e in endpoints.list_all():
                print(f"{e.producer:<24} {e.url}  pending {e.pending}  given up {e.given_up}"
                      + (f"  last error: {e.last_error}" if e.last_error else ""))
        elif not endpoints.remove(_producer(args)):
            print("no callback registered for it", file=sys.stderr)
            return 1
    except ValueError as exc:
        return refused("callbacks", str(exc))
    return 0


def register(sub: Any) -> None:
    """Add this group's subcommands."""
    p = command(sub, "callbacks", help="register, list and remove producers' callback URLs")
    actions = p.add_subparsers(dest="callbacks_command", required=True, metavar="ACTION")
    for name, help_ in (("set", "set a producer's callback URL; prints its new signing secret (only this once)"),
                        ("remove", "stop a producer's callbacks")):
        a = command(actions, name, help=help_)
        who = a.add_mutually_exclusive_group(required=True)
        who.add_argument("--app", help="an app's name (events sent with app=NAME)")
        who.add_argument("--producer", help='a producer as stored, e.g. "key:12" for API key 12')
        if name == "set":
            a.add_argument("--url", required=True, help="https URL the signed events are POSTed to")
    command(actions, "list", help="list registered callbacks with their pending and given-up events")
    p.set_defaults(func=_callbacks)
