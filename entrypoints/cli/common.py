"""What every command group shares: adding a subcommand, help with defaults, refusing input in one line."""
from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from entrypoints.cli.errors import one_line


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show an option's default in its help, unless there is none to show (None, False, [])."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, [], argparse.SUPPRESS) or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error in one line (argparse prints the whole usage first)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see `{self.prog} --help`)\n")


def command(sub: Any, name: str, *, help: str, **kwargs: Any) -> argparse.ArgumentParser:
    """Add a subcommand whose --help opens with the summary the command list shows."""
    kwargs.setdefault("description", help[:1].upper() + help[1:] + ".")
    parser = sub.add_parser(name, help=help, **kwargs)
    parser.set_defaults(prog=parser.prog)  # the deepest subcommand's wins: errors name it
    return parser


def refused(command: str, problem: str) -> int:
    """Say in one line on stderr why input was refused; exit status 2, as for a usage error."""
    print(f"notifier {command}: error: {one_line(problem)}", file=sys.stderr)
    return 2


def not_empty(value: str) -> str:
    """An argparse type: a value that must not be empty or only spaces."""
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value
