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

    return main(args.extra) or 0


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


def _bridge(args: argparse.Namespace) -> int:
    import logging

    from notifier.bridge import DEFAULT_TOPICS, Bridge, parse_topics

    logging.basicConfig(level=args.loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = dict(option.split("=", 1) for option in args.consumer_config)
    bridge = Bridge(
        parse_topics(args.topics.split(",")) if args.topics else DEFAULT_TOPICS,
        group_id=args.group, dead_letter_topic=args.dead_letter_topic, batch_size=args.batch_size,
        batch_ms=args.batch_ms, partitions=args.partitions, consumer_config=config,
        stats_interval_s=args.stats_interval,
    )
    return bridge.run()


def _publish(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from notifier.publish import flush, publish_many

    if args.file:
        if args.file == "-":
            lines = sys.stdin.read().splitlines()
        else:
            with open(args.file) as f:
                lines = f.read().splitlines()
        events = [json.loads(line) for line in lines if line.strip()]
    elif args.event:
        events = [json.loads(args.event if args.event != "-" else sys.stdin.read())]
    else:
        print("notifier publish: give an event (JSON or -) or --file", file=sys.stderr)
        return 2
    failed = []

    def delivered(err, _msg) -> None:
        if err is not None:
            failed.append(err)

    try:
        publish_many(events, topic=args.topic, on_delivery=delivered)
    except ValidationError as exc:
        print(f"not published, an event is invalid: {exc}", file=sys.stderr)
        return 2
    left = flush(30.0)
    if failed or left:
        print(f"{len(failed) + left} of {len(events)} event(s) not acknowledged by Kafka", file=sys.stderr)
        return 1
    print(f"published {len(events)} event(s)")
    return 0


def _status(args: argparse.Namespace) -> int:
    from notifier.users import get_status

    print(json.dumps(get_status(args.notification_id), default=str, indent=2))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from notifier.users import cancel_notification

    print(f"cancelled {cancel_notification(args.notification_id)} deliveries")
    return 0


def _api(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run("notifier.api.app:app", host=args.host, port=args.port, workers=args.workers,
                log_level=args.loglevel.lower(), proxy_headers=True, forwarded_allow_ips=args.forwarded_allow_ips)
    return 0


def _keys(args: argparse.Namespace) -> int:
    from notifier import api_keys

    if args.keys_command == "create":
        info, key = api_keys.create_key(args.name, args.scope)
        print(f"created {info.scope} key {info.prefix!r} ({info.name}); it is shown only now:", file=sys.stderr)
        print(key)
    elif args.keys_command == "list":
        for info in api_keys.list_keys():
            revoked = f"revoked {info.revoked_at:%Y-%m-%d %H:%M}" if info.revoked_at else "live"
            print(f"{info.prefix}  {info.scope:<8}  {info.created_at:%Y-%m-%d %H:%M}  {revoked:<22}  {info.name}")
    elif not api_keys.revoke_key(args.prefix):
        print(f"no live key with prefix {args.prefix!r}", file=sys.stderr)
        return 1
    else:
        print(f"revoked {args.prefix}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="notifier", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("migrate", help="apply database migrations (Alembic) to NOTIFIER_DATABASE_URL")
    p.add_argument("--down", action="store_true", help="migrate down instead (default to base)")
    p.add_argument("revision", nargs="?", help="target revision (default head)")
    p.set_defaults(func=_migrate)

    p = sub.add_parser("sandbox", help="run the local provider sandbox (see `notifier sandbox -- --help`)",
                       description="Run local servers that speak the providers' wire protocols, and the control API. "
                                   "Options after the word sandbox go to the sandbox (e.g. --apns-port 8791).")
    p.set_defaults(func=_sandbox, passes_extra=True)

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

    p = sub.add_parser("bridge", help="consume events from Kafka and hand them to Celery in batches")
    p.add_argument("--topics", help="comma-separated topics, each NAME or NAME=high|low "
                   "(default notifications.high,notifications.low; a name ending in .high/-high is high lane)")
    p.add_argument("--group", default="notifier-bridge", help="consumer group id")
    p.add_argument("--dead-letter-topic", default="notifications.dead", help="where malformed messages go")
    p.add_argument("--batch-size", type=int, default=500, help="events per Celery task at most")
    p.add_argument("--batch-ms", type=int, default=200, help="hand a batch over this long after its first event")
    p.add_argument("--partitions", type=int, default=4, help="partitions of topics the bridge creates")
    p.add_argument("-X", "--consumer-config", action="append", default=[], metavar="KEY=VALUE",
                   help="extra librdkafka consumer setting, e.g. -X session.timeout.ms=10000")
    p.add_argument("--stats-interval", type=float, default=60.0, help="seconds between progress log lines")
    p.add_argument("-l", "--loglevel", default="INFO")
    p.set_defaults(func=_bridge)

    p = sub.add_parser("publish", help="validate events and publish them to Kafka (JSON argument, - for stdin)")
    p.add_argument("event", nargs="?", help="one event as JSON, or - to read it from stdin")
    p.add_argument("--file", help="events as JSON lines (- for stdin)")
    p.add_argument("--topic", help="topic to publish to (default: by priority, notifications.high or .low)")
    p.set_defaults(func=_publish)

    p = sub.add_parser("status", help="show every delivery of a notification")
    p.add_argument("notification_id")
    p.set_defaults(func=_status)

    p = sub.add_parser("cancel", help="cancel what is not yet sent of a notification")
    p.add_argument("notification_id")
    p.set_defaults(func=_cancel)

    p = sub.add_parser("api", help="serve the HTTP API and the provider webhooks (uvicorn)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="server processes")
    p.add_argument("--forwarded-allow-ips", default="127.0.0.1",
                   help="proxies trusted for X-Forwarded-For/-Proto (comma-separated, * for any)")
    p.add_argument("-l", "--loglevel", default="INFO")
    p.set_defaults(func=_api)

    p = sub.add_parser("keys", help="create, list and revoke API keys")
    keys = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    k = keys.add_parser("create", help="create a key and print it (only this once)")
    k.add_argument("--scope", choices=["producer", "admin"], required=True,
                   help="producer: send, status, devices, preferences; admin: also cancel")
    k.add_argument("--name", required=True, help="who or what uses the key")
    keys.add_parser("list", help="list keys (prefix, scope, created, revoked, name)")
    k = keys.add_parser("revoke", help="revoke a key by its prefix")
    k.add_argument("prefix")
    p.set_defaults(func=_keys)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passes_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
