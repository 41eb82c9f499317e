"""Development tools: the provider sandbox, the demo and the local loop (they need the sandbox extra)."""
from __future__ import annotations

import argparse
import os
from typing import Any

from entrypoints.cli.common import Parser, command
from entrypoints.cli.errors import CliError

SANDBOX_DESCRIPTION = ("Run local servers that speak the providers' wire protocols (APNs, FCM, SendGrid, Twilio, "
                       "SMTP), and the control API. It accepts what the notifier is configured to send (the "
                       "NOTIFIER_* settings: keys, certificate, credentials, the Twilio auth token); every "
                       "option also reads NOTIFIER_SANDBOX_<OPTION>.")


def _needs_sandbox_extra(exc: ImportError) -> CliError:
    # h2 or aiosmtpd: the optional extra is not installed
    return CliError(f"this command needs the sandbox extra: pip install 'notifier[sandbox]' ({exc})", usage=True)


def _sandbox(args: argparse.Namespace) -> int:
    try:
        from sandbox.__main__ import main
        from sandbox.devstack import sandbox_env
    except ImportError as exc:
        raise _needs_sandbox_extra(exc) from None

    # One set of NOTIFIER_* settings configures both sides, so a worker and this sandbox agree
    # (an explicit NOTIFIER_SANDBOX_* variable or option still wins).
    os.environ.update({k: v for k, v in sandbox_env(dict(os.environ)).items() if k not in os.environ})
    argv = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    return main(argv, prog="notifier sandbox", description=SANDBOX_DESCRIPTION, parser_class=Parser) or 0


def _demo(args: argparse.Namespace) -> int:
    try:
        from sandbox.demo import main
    except ImportError as exc:
        raise _needs_sandbox_extra(exc) from None
    return main()


def _dev(args: argparse.Namespace) -> int:
    try:
        from sandbox.dev import run
    except ImportError as exc:
        raise _needs_sandbox_extra(exc) from None
    return run(api_port=args.api_port, flower_port=args.flower_port, free_ports=args.free_ports,
               concurrency=args.concurrency)


def register(sub: Any) -> None:
    """Add this group's subcommands."""
    # No -h of its own: --help and every option go to the sandbox's parser.
    p = command(sub, "sandbox", help="run the local provider sandbox (see `notifier sandbox --help`)",
                description=SANDBOX_DESCRIPTION, add_help=False)
    p.set_defaults(func=_sandbox, passes_extra=True)

    p = command(sub, "demo", help="send a handful of notifications end to end on the embedded setup")
    p.set_defaults(func=_demo)

    p = command(sub, "dev", help="run the local loop on the embedded setup: sandbox, worker, beat, API and "
                "Flower, until Ctrl-C",
                description="Run the local loop in one command on the embedded setup (SQLite and an embedded "
                "Redis in NOTIFIER_VAR_DIR, the sandbox as every provider): migrate, then start the sandbox, a "
                "worker for all queues, beat, the API and Flower with matching credentials; print their URLs "
                "and an admin API key; stop everything on Ctrl-C or SIGTERM.")
    p.add_argument("--api-port", type=int, default=8000, help="the API's port")
    p.add_argument("--flower-port", type=int, default=5555, help="Flower's port")
    p.add_argument("--free-ports", action="store_true",
                   help="pick free loopback ports for the API, Flower and the sandbox instead of the defaults "
                   "(8000, 5555, 8790-8796)")
    p.add_argument("-c", "--concurrency", type=int, default=2, help="the worker's processes")
    p.set_defaults(func=_dev)
