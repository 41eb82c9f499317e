"""The `notifier` command: one subcommand per role.

One module per group of commands (admin, development, processes, notifications, templates, users, vapid, …), each
with its handlers and a register() that adds its subcommands.
"""
from __future__ import annotations

import argparse

from entrypoints.cli import admin, callbacks, development, notifications, processes, replay, templates, users, vapid

GROUPS = (admin, development, processes, notifications, templates, users, vapid, replay, callbacks)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="notifier", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passes_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    return args.func(args)
