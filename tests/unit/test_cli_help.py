"""Every option and argument of every `notifier` subcommand says what it is for, with its default."""
from __future__ import annotations

import argparse

from entrypoints import cli


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_option_has_help():
    missing = [
        f"notifier {' '.join(path)} {'/'.join(action.option_strings) or action.dest}"
        for path, parser in _parsers(cli.build_parser())
        for action in parser._actions
        if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) and not action.help
    ]
    assert missing == []


def test_defaults_are_shown(capsys):
    text = cli.build_parser()._subparsers._group_actions[0].choices["bridge"].format_help()
    assert "(default: 500)" in " ".join(text.split())  # --batch-size
    assert "(default: None)" not in text  # an option without a default says nothing of one
