"""Web Push: the VAPID key pair that identifies this deployment to browsers' push services."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from entrypoints.cli.common import command


def _vapid(args: argparse.Namespace) -> int:
    from py_vapid import Vapid02

    from notifier.providers.webpush import application_server_key, load_vapid_key
    from notifier.settings import get_settings

    path = Path(args.key or get_settings().vapid_private_key_file)
    if args.vapid_command == "generate":
        vapid = Vapid02()
        vapid.generate_keys()
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # 0600 and never over an existing key: a new key orphans every subscription made with the old one.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            print(f"notifier vapid generate: {path} exists; a new key would orphan every browser subscribed "
                  "with it (choose another --key)", file=sys.stderr)
            return 1
        with os.fdopen(fd, "wb") as fh:
            fh.write(vapid.private_pem())
        print(f"wrote the VAPID private key to {path} (set NOTIFIER_VAPID_PRIVATE_KEY_FILE={path})", file=sys.stderr)
    else:
        try:
            vapid = load_vapid_key(path)
        except ValueError as exc:
            print(f"notifier vapid show: {exc}", file=sys.stderr)
            return 1
    print(application_server_key(vapid))
    return 0


def register(sub: Any) -> None:
    """Add this group's subcommands."""
    p = command(sub, "vapid", help="make or show the VAPID key of Web Push (browsers subscribe with its public key)")
    actions = p.add_subparsers(dest="vapid_command", required=True, metavar="ACTION")
    for name, text in (("generate", "make a new P-256 key pair, write the private key (PEM, 0600), print the "
                        "public key: the applicationServerKey of PushManager.subscribe()"),
                       ("show", "print the public key (applicationServerKey) of the configured private key")):
        a = command(actions, name, help=text)
        a.add_argument("--key", help="the private key file (default NOTIFIER_VAPID_PRIVATE_KEY_FILE)")
    p.set_defaults(func=_vapid)
