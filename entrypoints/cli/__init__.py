"""The `notifier` command: one subcommand per role.

One module per group of commands (admin, development, processes, notifications, templates, users, vapid, …), each
with its handlers and a register() that adds its subcommands. Failures are reported in one
line by main() (entrypoints/cli/errors.py), never as a traceback unless --debug asks for it.
"""
from __future__ import annotations

import signal
import sys
from importlib.metadata import PackageNotFoundError, version

from entrypoints.cli import admin, callbacks, development, notifications, processes, replay, templates, users, vapid
from entrypoints.cli.common import Parser
from entrypoints.cli.errors import describe, one_line

GROUPS = (admin, development, processes, notifications, templates, users, vapid, replay, callbacks)


def _version() -> str:
    try:
        return version("notifier")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def build_parser() -> Parser:
    parser = Parser(prog="notifier", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"notifier {_version()}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure instead of one line")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return parser


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    # SystemExit unwinds like Ctrl-C does, so atexit hooks run (the embedded Redis server this
    # command started is stopped); Python's default for SIGTERM ends the process without them.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passes_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    if argv is None and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # a real command, not a test's call
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.debug:
            raise
        message, status = describe(exc)
        print(f"{getattr(args, 'prog', 'notifier')}: error: {one_line(message)}", file=sys.stderr)
        return status
