"""What every command group shares: adding a subcommand, refusing input in one line."""
from __future__ import annotations

import argparse
import sys
from typing import Any


def command(sub: Any, name: str, *, help: str, **kwargs: Any) -> argparse.ArgumentParser:
    """Add a subcommand whose --help opens with the summary the command list shows."""
    kwargs.setdefault("description", help[:1].upper() + help[1:] + ".")
    return sub.add_parser(name, help=help, **kwargs)


def refused(command: str, problem: str) -> int:
    """Say in one line on stderr why input was refused; exit status 2, as for a usage error."""
    print(f"notifier {command}: {' '.join(problem.split())}", file=sys.stderr)
    return 2
