"""Replay failed deliveries once their cause is fixed: `notifier replay`."""
from __future__ import annotations

import argparse
import getpass
import json
from typing import Any

from entrypoints.cli.common import command, refused


def _replay(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from notifier.pipeline.replay import Selection
    from tasks.replay import replay_failed

    fields = {"notification_ids": args.notification_id or [], "since": args.since, "until": args.until,
              "provider": args.provider, "channel": args.channel, "reason": args.reason, "why": args.why,
              "limit": args.limit, "dry_run": args.dry_run}
    try:
        selection = Selection.model_validate({k: v for k, v in fields.items() if v is not None})
        result = replay_failed(selection, by=f"cli:{args.by}")
    except ValidationError as exc:
        return refused("replay", "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'selection'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors(include_url=False, include_input=False, include_context=False)))
    except ValueError as exc:
        return refused("replay", str(exc))
    if args.json:
        print(json.dumps(result.as_dict(), default=str, indent=2))
        return 0
    verb = "would replay" if result.dry_run else "replayed"
    print(f"{verb} {len(result.replayed)} of {result.matched} matching failed deliveries (limit {result.limit})")
    if result.marked_sent:
        print(f"refused {len(result.marked_sent)} already accepted by a provider: {result.marked_sent}")
    for row in result.sample:
        print(f"  {row['delivery_id']}  {row['notification_id']}  {row['channel']}/{row['provider']}  "
              f"failed {row['failed_at']:%Y-%m-%d %H:%M:%S}  attempts {row['attempts']}  replays {row['replays']}  "
              f"{row['reason']}")
    if len(result.replayed) > len(result.sample):
        print(f"  … and {len(result.replayed) - len(result.sample)} more")
    return 0


def register(sub: Any) -> None:
    """Add this group's subcommands."""
    p = command(sub, "replay", help="send failed deliveries again (after fixing the cause), under the same keys")
    p.add_argument("--notification-id", action="append", metavar="ID",
                   help="only this notification's deliveries (repeatable)")
    p.add_argument("--since", help="failed at or after this instant (ISO 8601 with a timezone)")
    p.add_argument("--until", help="failed before this instant (ISO 8601 with a timezone)")
    p.add_argument("--provider", help="only deliveries of this provider (apns, fcm, sendgrid, smtp, twilio)")
    p.add_argument("--channel", help="only this channel (push, email, sms)")
    p.add_argument("--reason", help="only failures whose reason contains this text (any letter case)")
    p.add_argument("--why", required=True, help="why they are replayed (the fix); recorded on each row")
    p.add_argument("--limit", type=int, help="most deliveries to replay (default and maximum: NOTIFIER_REPLAY_LIMIT_*)")
    p.add_argument("--dry-run", action="store_true", help="show how many would be replayed, and a sample; send nothing")
    p.add_argument("--by", default=getpass.getuser(), help="who replays (default: the login name)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_replay)
