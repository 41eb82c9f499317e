"""Administration: database migrations and API keys."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from entrypoints.cli.common import command, not_empty
from entrypoints.cli.errors import CliError


def _migrate(args: argparse.Namespace) -> int:
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    from notifier.store import migrate

    revision = args.revision or ("base" if args.down else "head")
    if revision not in ("head", "heads", "base") and not revision.startswith(("+", "-")):
        try:  # a typo is the user's mistake (exit 2), found before the database is touched
            ScriptDirectory.from_config(migrate.alembic_config()).get_revision(revision)
        except CommandError as exc:
            raise CliError(f"unknown revision {revision!r} ({exc}); see alembic/versions/", usage=True) from None
    (migrate.downgrade_every_shard if args.down else migrate.upgrade_every_shard)(revision)
    return 0


def _scopes(value: str) -> frozenset[str]:
    from notifier.accounts.api_keys import parse_scopes

    try:
        return parse_scopes(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _keys(args: argparse.Namespace) -> int:
    from notifier.accounts import api_keys

    if args.keys_command == "create":
        info, key = api_keys.create_key(args.name, args.scope)
        print(f"created {info.scope} key {info.prefix!r} ({info.name}); it is shown only now:", file=sys.stderr)
        print(key)
    elif args.keys_command == "list":
        for info in api_keys.list_keys():
            revoked = f"revoked {info.revoked_at:%Y-%m-%d %H:%M}" if info.revoked_at else "live"
            print(f"{info.prefix}  {info.scope:<24}  {info.created_at:%Y-%m-%d %H:%M}  {revoked:<22}  {info.name}")
    elif not api_keys.revoke_key(args.prefix):
        raise CliError(f"no live key with prefix {args.prefix!r}")
    else:
        print(f"revoked {args.prefix}")
    return 0


def register(sub: Any) -> None:
    """Add this group's subcommands."""
    p = command(sub, "migrate", help="apply database migrations (Alembic) to NOTIFIER_DATABASE_URL "
                                              "(or every shard of NOTIFIER_DATABASE_URLS)")
    p.add_argument("--down", action="store_true", help="migrate down instead (to base unless a revision is given)")
    p.add_argument("revision", nargs="?", help="target revision, e.g. 0003 (default: head, or base with --down)")
    p.set_defaults(func=_migrate)

    p = command(sub, "keys", help="create, list and revoke API keys")
    keys = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    k = command(keys, "create", help="create a key and print it (only this once)")
    k.add_argument("--scope", required=True, type=_scopes,
                   help="comma-separated: send, status, cancel, users (devices and preferences, contacts "
                   "redacted), contacts (users' email and phone), admin (all); the roles producer "
                   "(send,status,users) and admin are accepted too")
    k.add_argument("--name", required=True, type=not_empty, help="who or what uses the key (1 to 128 characters)")
    command(keys, "list", help="list keys (prefix, scope, created, revoked, name)")
    k = command(keys, "revoke", help="revoke a key by its prefix")
    k.add_argument("prefix", help="the key's prefix, as `keys list` shows it")
    p.set_defaults(func=_keys)
