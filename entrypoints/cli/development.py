"""Development tools: the provider sandbox and the demo (they need the sandbox extra)."""
from __future__ import annotations

import argparse
from typing import Any

from entrypoints.cli.common import command, refused


def _sandbox(args: argparse.Namespace) -> int:
    try:
        from sandbox.__main__ import main
    except ImportError as exc:  # h2 or aiosmtpd: the optional extra is not installed
        return refused("sandbox", f"the sandbox needs its extra: pip install 'notifier[sandbox]' ({exc})")

    return main(args.extra) or 0


def _demo(args: argparse.Namespace) -> int:
    from sandbox.demo import main

    return main()


def register(sub: Any) -> None:
    """Add this group's subcommands."""
    p = command(sub, "sandbox", help="run the local provider sandbox (see `notifier sandbox -- --help`)",
                       description="Run local servers that speak the providers' wire protocols, and the control API. "
                                   "Options after the word sandbox go to the sandbox (e.g. --apns-port 8791).")
    p.set_defaults(func=_sandbox, passes_extra=True)

    p = command(sub, "demo", help="send a handful of notifications end to end on the embedded setup")
    p.set_defaults(func=_demo)
