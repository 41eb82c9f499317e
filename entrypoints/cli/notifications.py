"""Notifications by hand: send, publish, status, cancel, and the sweeper once."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from entrypoints.cli.common import command, refused
from entrypoints.cli.errors import CliError


def _json_argument(text: str) -> Any:
    """Parse a JSON argument; ValueError saying why (without quoting it) if it is not JSON."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("not JSON: nested too deep") from None
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None


def _send(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from notifier import send_notification
    from notifier.intake.events import describe_errors, parse_event

    try:
        event = parse_event(_json_argument(args.event if args.event != "-" else sys.stdin.read()))
    except ValueError as exc:  # pydantic's ValidationError is a ValueError too
        return refused("send", describe_errors(exc) if isinstance(exc, ValidationError) else str(exc))
    send_notification.delay(event)
    print(f"queued {event.notification_id}")
    return 0


def _publish(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from notifier.intake.publish import flush, publish_many

    from notifier.intake.events import describe_errors

    try:
        if args.file:
            with args.file:
                lines = args.file.read().splitlines()
            events = [_json_argument(line) for line in lines if line.strip()]
        elif args.event:
            events = [_json_argument(args.event if args.event != "-" else sys.stdin.read())]
        else:
            return refused("publish", "give an event (JSON or -) or --file")
    except ValueError as exc:
        return refused("publish", f"nothing published, an event is {exc}")
    failed = []

    def delivered(err, _msg) -> None:
        if err is not None:
            failed.append(err)

    try:
        publish_many(events, topic=args.topic, on_delivery=delivered)
    except ValidationError as exc:
        return refused("publish", f"nothing published, an event is invalid: {describe_errors(exc)}")
    left = flush(30.0)
    if failed or left:
        print(f"{len(failed) + left} of {len(events)} event(s) not acknowledged by Kafka", file=sys.stderr)
        return 1
    print(f"published {len(events)} event(s)")
    return 0


def _status(args: argparse.Namespace) -> int:
    import time

    from notifier.accounts.status import get_status
    from notifier.store.models import TERMINAL

    ended = {status.value for status in TERMINAL}
    deadline = time.monotonic() + (args.wait or 0)
    while True:
        deliveries = get_status(args.notification_id)
        done = bool(deliveries) and all(d["status"] in ended for d in deliveries)
        if done or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    print(json.dumps(deliveries, default=str, indent=2))
    if args.wait and not done:
        raise CliError(f"not every delivery ended within {args.wait:g} s")
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from notifier.accounts.status import cancel_notification

    print(f"cancelled {cancel_notification(args.notification_id)} deliveries")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from notifier.settings import get_settings
    from tasks.pipeline import release_due_task, sweep

    settings = get_settings()
    if args.action == "release":
        print(f"released {release_due_task()} due scheduled deliveries")
        return 0
    older_than = settings.stuck_after_s if args.older_than is None else args.older_than
    if older_than <= settings.lease_ttl_s:
        # A younger `sending` row may still be in a live worker's hands: its lease has not expired.
        raise CliError(f"--older-than must exceed the lease ({settings.lease_ttl_s} s)", usage=True)
    print(f"re-drove {sweep(older_than)} deliveries stuck in queued/sending over {older_than:g} s")
    return 0


def register(sub: Any) -> None:
    """Add this group's subcommands."""
    p = command(sub, "send", help="validate and queue one event (JSON argument, or - for stdin)")
    p.add_argument("event", help="the event as JSON (fields: see README, \"The event\"), or - to read it from stdin")
    p.set_defaults(func=_send)

    p = command(sub, "publish", help="validate events and publish them to Kafka (JSON argument, - for stdin)")
    p.add_argument("event", nargs="?", help="one event as JSON, or - to read it from stdin")
    p.add_argument("--file", type=argparse.FileType("r"), help="events as JSON lines (- for stdin)")
    p.add_argument("--topic", help="topic to publish to (default: by priority, notifications.high or .low)")
    p.set_defaults(func=_publish)

    p = command(sub, "status", help="show every delivery of a notification")
    p.add_argument("notification_id", help="the producer's notification_id")
    p.add_argument("--wait", type=float, metavar="SECONDS",
                   help="first wait up to this long for every delivery to end (sent, failed, suppressed …); "
                   "exit 1 if one has not")
    p.set_defaults(func=_status)

    p = command(sub, "cancel", help="cancel what is not yet sent of a notification")
    p.add_argument("notification_id", help="the producer's notification_id")
    p.set_defaults(func=_cancel)

    p = command(sub, "sweep", help="run the sweeper once: re-drive deliveries stuck in queued/sending and print "
                 "them (or `sweep release`: release due scheduled deliveries once)")
    p.add_argument("action", nargs="?", choices=["stuck", "release"], default="stuck",
                   help="stuck: re-drive stuck deliveries; release: queue scheduled deliveries now due")
    p.add_argument("--older-than", type=float, metavar="SECONDS",
                   help="re-drive what is untouched this long (default NOTIFIER_STUCK_AFTER_S; above the lease TTL)")
    p.set_defaults(func=_sweep)
