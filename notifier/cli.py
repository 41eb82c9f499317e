"""The `notifier` command: one subcommand per role."""
from __future__ import annotations

import argparse
import json
import os
import sys


def _migrate(args: argparse.Namespace) -> int:
    from notifier import migrate

    (migrate.downgrade if args.down else migrate.upgrade)(None, args.revision or ("base" if args.down else "head"))
    return 0


def _sandbox(args: argparse.Namespace) -> int:
    from notifier.sandbox.__main__ import main

    return main() or 0


def _worker(args: argparse.Namespace) -> int:
    from celeryconfig import QUEUES

    queues = args.queues or ",".join(QUEUES)
    argv = ["celery", "-A", "tasks.app", "worker", "-Q", queues, "-c", str(args.concurrency), "-E", "-l", args.loglevel]
    os.execvp(sys.executable, [sys.executable, "-m", *argv])


def _demo(args: argparse.Namespace) -> int:
    from notifier.demo import main

    return main()


def _send(args: argparse.Namespace) -> int:
    from notifier import send_notification

    event = json.loads(args.event if args.event != "-" else sys.stdin.read())
    send_notification.delay(event)
    print(f"queued {event['notification_id']}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from notifier.users import get_status

    print(json.dumps(get_status(args.notification_id), default=str, indent=2))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from notifier.users import cancel_notification

    print(f"cancelled {cancel_notification(args.notification_id)} deliveries")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="notifier", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("migrate", help="apply database migrations (Alembic) to NOTIFIER_DATABASE_URL")
    p.add_argument("--down", action="store_true", help="migrate down instead (default to base)")
    p.add_argument("revision", nargs="?", help="target revision (default head)")
    p.set_defaults(func=_migrate)

    p = sub.add_parser("sandbox", help="run the local provider sandbox (APNs over HTTP/2 + control API)")
    p.set_defaults(func=_sandbox)

    p = sub.add_parser("worker", help="run a Celery worker on some queues (default: all)")
    p.add_argument("-Q", "--queues", help="comma-separated queues, e.g. push.high,pipeline.high")
    p.add_argument("-c", "--concurrency", type=int, default=2, help="worker processes")
    p.add_argument("-l", "--loglevel", default="INFO")
    p.set_defaults(func=_worker)

    p = sub.add_parser("demo", help="send a handful of notifications end to end on the embedded setup")
    p.set_defaults(func=_demo)

    p = sub.add_parser("send", help="validate and queue one event (JSON argument, or - for stdin)")
    p.add_argument("event")
    p.set_defaults(func=_send)

    p = sub.add_parser("status", help="show every delivery of a notification")
    p.add_argument("notification_id")
    p.set_defaults(func=_status)

    p = sub.add_parser("cancel", help="cancel what is not yet sent of a notification")
    p.add_argument("notification_id")
    p.set_defaults(func=_cancel)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
