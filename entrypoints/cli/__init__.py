"""The `notifier` command: one subcommand per role."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


def _migrate(args: argparse.Namespace) -> int:
    from notifier.store import migrate

    (migrate.downgrade if args.down else migrate.upgrade)(None, args.revision or ("base" if args.down else "head"))
    return 0


def _sandbox(args: argparse.Namespace) -> int:
    try:
        from sandbox.__main__ import main
    except ImportError as exc:  # h2 or aiosmtpd: the optional extra is not installed
        return _refused("sandbox", f"the sandbox needs its extra: pip install 'notifier[sandbox]' ({exc})")

    return main(args.extra) or 0


def _worker(args: argparse.Namespace) -> int:
    from notifier.queues import QUEUES

    queues = args.queues or ",".join(QUEUES)
    concurrency = 1 if args.pool == "solo" else args.concurrency  # solo: this one process
    argv = ["celery", "-A", "tasks.app", "worker", "-Q", queues, "-P", args.pool, "-c", str(concurrency),
            "-E", "-l", args.loglevel]
    os.execvp(sys.executable, [sys.executable, "-m", *argv])


def _demo(args: argparse.Namespace) -> int:
    from sandbox.demo import main

    return main()


def _refused(command: str, problem: str) -> int:
    """Say in one line on stderr why input was refused; exit status 2, as for a usage error."""
    print(f"notifier {command}: {' '.join(problem.split())}", file=sys.stderr)
    return 2


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
        return _refused("send", describe_errors(exc) if isinstance(exc, ValidationError) else str(exc))
    send_notification.delay(event)
    print(f"queued {event.notification_id}")
    return 0


def _bridge(args: argparse.Namespace) -> int:
    from entrypoints.bridge import run
    from notifier.intake.bridge import DEFAULT_TOPICS, parse_topics
    from notifier.ops import redaction

    redaction.basic_config(args.loglevel)
    config = dict(option.split("=", 1) for option in args.consumer_config)
    return run(
        parse_topics(args.topics.split(",")) if args.topics else DEFAULT_TOPICS,
        group_id=args.group, dead_letter_topic=args.dead_letter_topic, batch_size=args.batch_size,
        batch_ms=args.batch_ms, partitions=args.partitions, consumer_config=config,
        stats_interval_s=args.stats_interval,
    )


def _publish(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from notifier.intake.publish import flush, publish_many

    from notifier.intake.events import describe_errors

    try:
        if args.file:
            if args.file == "-":
                lines = sys.stdin.read().splitlines()
            else:
                with open(args.file) as f:
                    lines = f.read().splitlines()
            events = [_json_argument(line) for line in lines if line.strip()]
        elif args.event:
            events = [_json_argument(args.event if args.event != "-" else sys.stdin.read())]
        else:
            return _refused("publish", "give an event (JSON or -) or --file")
    except ValueError as exc:
        return _refused("publish", f"nothing published, an event is {exc}")
    failed = []

    def delivered(err, _msg) -> None:
        if err is not None:
            failed.append(err)

    try:
        publish_many(events, topic=args.topic, on_delivery=delivered)
    except ValidationError as exc:
        return _refused("publish", f"nothing published, an event is invalid: {describe_errors(exc)}")
    left = flush(30.0)
    if failed or left:
        print(f"{len(failed) + left} of {len(events)} event(s) not acknowledged by Kafka", file=sys.stderr)
        return 1
    print(f"published {len(events)} event(s)")
    return 0


def _status(args: argparse.Namespace) -> int:
    from notifier.accounts.status import get_status

    print(json.dumps(get_status(args.notification_id), default=str, indent=2))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from notifier.accounts.status import cancel_notification

    print(f"cancelled {cancel_notification(args.notification_id)} deliveries")
    return 0


def _api(args: argparse.Namespace) -> int:
    import uvicorn

    from notifier.ops.redaction import uvicorn_log_config

    # The access log writes request paths, and /v1/users/{id}/devices/{token} holds a token.
    uvicorn.run("entrypoints.api.app:app", host=args.host, port=args.port, workers=args.workers,
                log_level=args.loglevel.lower(), proxy_headers=True, forwarded_allow_ips=args.forwarded_allow_ips,
                log_config=uvicorn_log_config())
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
        print(f"no live key with prefix {args.prefix!r}", file=sys.stderr)
        return 1
    else:
        print(f"revoked {args.prefix}")
    return 0


def _beat(args: argparse.Namespace) -> int:
    from notifier.settings import get_settings

    schedule = args.schedule or str(get_settings().var_dir / "celerybeat-schedule")
    os.makedirs(os.path.dirname(os.path.abspath(schedule)), exist_ok=True)
    argv = ["celery", "-A", "tasks.app", "beat", "-l", args.loglevel, "-s", schedule]
    os.execvp(sys.executable, [sys.executable, "-m", *argv])


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _flower(args: argparse.Namespace) -> int:
    from notifier.settings import get_settings

    credentials = get_settings().flower_basic_auth.strip()
    env = dict(os.environ)
    if args.no_auth:
        if credentials:
            print("notifier flower: --no-auth given but NOTIFIER_FLOWER_BASIC_AUTH is set; drop one", file=sys.stderr)
            return 2
        if args.address not in LOOPBACK:
            print("notifier flower: --no-auth only on a loopback --address (local development)", file=sys.stderr)
            return 2
        env.pop("FLOWER_BASIC_AUTH", None)
    else:
        pairs = [pair.strip() for pair in credentials.split(",")] if credentials else []
        if not pairs:
            print("notifier flower: set NOTIFIER_FLOWER_BASIC_AUTH=user:password (Flower shows every task and can "
                  "stop workers), or pass --no-auth for local development", file=sys.stderr)
            return 2
        if not all(user and password for user, _, password in (pair.partition(":") for pair in pairs)):
            print("notifier flower: NOTIFIER_FLOWER_BASIC_AUTH must be user:password pairs, comma-separated "
                  "(no comma in a password)", file=sys.stderr)
            return 2
        # Through the environment, not argv: a command line is visible to every user in `ps`.
        env["FLOWER_BASIC_AUTH"] = ",".join(pairs)
    argv = ["celery", "-A", "tasks.app", "flower", f"--address={args.address}", f"--port={args.port}",
            f"--max_tasks={args.max_tasks}", f"--purge_offline_workers={args.purge_offline_workers}"]
    if args.url_prefix:
        argv.append(f"--url_prefix={args.url_prefix}")
    if args.read_only:
        argv.append("--read_only=True")
    argv.extend(arg for arg in args.extra if arg != "--")
    os.execvpe(sys.executable, [sys.executable, "-m", *argv], env)


def _metrics(args: argparse.Namespace) -> int:
    from notifier.ops import exporter, redaction

    if args.once:
        sys.stdout.write(exporter.render().decode())
        return 0
    redaction.basic_config(args.loglevel)
    exporter.serve(args.port, args.address)
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
        print(f"notifier sweep: --older-than must exceed the lease ({settings.lease_ttl_s} s)", file=sys.stderr)
        return 2
    print(f"re-drove {sweep(older_than)} deliveries stuck in queued/sending over {older_than:g} s")
    return 0


def _devices(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from notifier.accounts import devices
    from notifier.store.db import transaction
    from notifier.store.models import DeviceToken
    from notifier.accounts.status import redact

    shown = (lambda token: token) if getattr(args, "show_tokens", False) else (lambda token: redact("push", token))
    if args.devices_command == "register":
        from pydantic import ValidationError

        from notifier.intake.events import describe_errors

        try:
            devices.register_device(args.user_id, args.token, args.platform, args.app)
        except ValidationError as exc:
            return _refused("devices register", describe_errors(exc))
        print(f"registered {shown(args.token)} ({args.platform}) for user {args.user_id}")
    elif args.devices_command == "unregister":
        if not devices.unregister_device(args.user_id, args.token):
            print(f"user {args.user_id} has no such device token", file=sys.stderr)
            return 1
        print(f"unregistered {shown(args.token)} of user {args.user_id}")
    else:
        with transaction() as session:
            devices = session.scalars(
                select(DeviceToken).where(DeviceToken.user_id == args.user_id).order_by(DeviceToken.id)
            ).all()
        for d in devices:
            last_used = f"{d.last_used_at:%Y-%m-%d %H:%M}" if d.last_used_at else "never"
            print(f"{shown(d.token)}  {d.platform:<8}  registered {d.created_at:%Y-%m-%d %H:%M}  "
                  f"last used {last_used}  {d.app or ''}".rstrip())
        if not devices:
            print(f"user {args.user_id} has no device", file=sys.stderr)
    return 0


def _preferences(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from notifier.accounts.preferences import get_preferences, update_preferences

    if args.preferences_command == "set":
        from notifier.intake.events import describe_errors
        from notifier.intake.validation import PREFERENCE_FIELDS, PreferencesUpdate  # the API's rules too

        changes = {name: getattr(args, name) for name in sorted(PREFERENCE_FIELDS) if getattr(args, name) is not None}
        if not changes:
            print("notifier preferences set: name at least one preference to change (see --help)", file=sys.stderr)
            return 2
        # An empty value clears an optional preference (or empties the opt-out list).
        changes = {name: (None if value == "" else value) for name, value in changes.items()}
        if "opted_out_categories" in changes:
            value = changes["opted_out_categories"] or ""
            changes["opted_out_categories"] = [c.strip() for c in value.split(",") if c.strip()]
        try:
            valid = PreferencesUpdate.model_validate(changes).model_dump(exclude_unset=True)
        except ValidationError as exc:
            return _refused("preferences set", describe_errors(exc))
        prefs = update_preferences(args.user_id, **valid)
    else:
        prefs = get_preferences(args.user_id)
    print(json.dumps(prefs, default=str, indent=2))
    return 0


def _command(sub: Any, name: str, *, help: str, **kwargs: Any) -> argparse.ArgumentParser:
    """Add a subcommand whose --help opens with the summary the command list shows."""
    kwargs.setdefault("description", help[:1].upper() + help[1:] + ".")
    return sub.add_parser(name, help=help, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="notifier", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(sub, "migrate", help="apply database migrations (Alembic) to NOTIFIER_DATABASE_URL")
    p.add_argument("--down", action="store_true", help="migrate down instead (default to base)")
    p.add_argument("revision", nargs="?", help="target revision (default head)")
    p.set_defaults(func=_migrate)

    p = _command(sub, "sandbox", help="run the local provider sandbox (see `notifier sandbox -- --help`)",
                       description="Run local servers that speak the providers' wire protocols, and the control API. "
                                   "Options after the word sandbox go to the sandbox (e.g. --apns-port 8791).")
    p.set_defaults(func=_sandbox, passes_extra=True)

    p = _command(sub, "worker", help="run a Celery worker on some queues (default: all)")
    p.add_argument("-Q", "--queues", help="comma-separated queues, e.g. push.high,pipeline.high")
    p.add_argument("-c", "--concurrency", type=int, default=2, help="worker processes (prefork pool)")
    p.add_argument("-P", "--pool", choices=["prefork", "solo"], default="prefork",
                   help="prefork: child processes; solo: tasks run in this one process, about 1 ms less CPU "
                        "per task (no hand-off to a child): run several for concurrency")
    p.add_argument("-l", "--loglevel", default="INFO")
    p.set_defaults(func=_worker)

    p = _command(sub, "demo", help="send a handful of notifications end to end on the embedded setup")
    p.set_defaults(func=_demo)

    p = _command(sub, "send", help="validate and queue one event (JSON argument, or - for stdin)")
    p.add_argument("event")
    p.set_defaults(func=_send)

    p = _command(sub, "bridge", help="consume events from Kafka and hand them to Celery in batches")
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

    p = _command(sub, "publish", help="validate events and publish them to Kafka (JSON argument, - for stdin)")
    p.add_argument("event", nargs="?", help="one event as JSON, or - to read it from stdin")
    p.add_argument("--file", help="events as JSON lines (- for stdin)")
    p.add_argument("--topic", help="topic to publish to (default: by priority, notifications.high or .low)")
    p.set_defaults(func=_publish)

    p = _command(sub, "status", help="show every delivery of a notification")
    p.add_argument("notification_id")
    p.set_defaults(func=_status)

    p = _command(sub, "cancel", help="cancel what is not yet sent of a notification")
    p.add_argument("notification_id")
    p.set_defaults(func=_cancel)

    p = _command(sub, "api", help="serve the HTTP API and the provider webhooks (uvicorn)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="server processes")
    p.add_argument("--forwarded-allow-ips", default="127.0.0.1",
                   help="proxies trusted for X-Forwarded-For/-Proto (comma-separated, * for any)")
    p.add_argument("-l", "--loglevel", default="INFO")
    p.set_defaults(func=_api)

    p = _command(sub, "keys", help="create, list and revoke API keys")
    keys = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    k = _command(keys, "create", help="create a key and print it (only this once)")
    k.add_argument("--scope", required=True, type=_scopes,
                   help="comma-separated: send, status, cancel, users (devices and preferences, contacts "
                   "redacted), contacts (users' email and phone), admin (all); the roles producer "
                   "(send,status,users) and admin are accepted too")
    k.add_argument("--name", required=True, help="who or what uses the key")
    _command(keys, "list", help="list keys (prefix, scope, created, revoked, name)")
    k = _command(keys, "revoke", help="revoke a key by its prefix")
    k.add_argument("prefix")
    p.set_defaults(func=_keys)

    p = _command(sub, "beat", help="run Celery beat: release due scheduled deliveries and sweep stuck ones on "
                 "schedule (run exactly one per deployment)")
    p.add_argument("-s", "--schedule", help="beat's state file (default: <NOTIFIER_VAR_DIR>/celerybeat-schedule)")
    p.add_argument("-l", "--loglevel", default="INFO")
    p.set_defaults(func=_beat)

    p = _command(sub, "flower", help="run Flower, the Celery monitoring web UI, with basic auth from "
                 "NOTIFIER_FLOWER_BASIC_AUTH",
                 description="Run Flower against the notifier's Celery app. It refuses to start without "
                 "NOTIFIER_FLOWER_BASIC_AUTH (user:password) unless --no-auth is given on a loopback address. "
                 "Flower leaves /metrics and /healthcheck open: never expose its port publicly. Options after "
                 "-- go to Flower unchanged.")
    p.add_argument("--address", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5555, help="listen port (default 5555)")
    p.add_argument("--url-prefix", help="serve under this path, behind a reverse proxy (e.g. flower)")
    p.add_argument("--max-tasks", type=int, default=100000, help="tasks Flower keeps in memory (default 100000)")
    p.add_argument("--purge-offline-workers", type=int, default=600, metavar="SECONDS",
                   help="forget workers offline this long (default 600; scaled workers come and go)")
    p.add_argument("--read-only", action="store_true", help="disable Flower's controls (shutdown, revoke, apply)")
    p.add_argument("--no-auth", action="store_true", help="start without basic auth (local development only)")
    p.set_defaults(func=_flower, passes_extra=True)

    p = _command(sub, "metrics", help="serve the Prometheus metrics exporter (deliveries, retries, queue depths, "
                 "scheduled backlog, bridge lag)",
                 description="Serve GET /metrics in the Prometheus text format, read from Redis, the broker and the "
                 "database at each scrape. It has no authentication: bind it to a private address. One exporter "
                 "serves the whole deployment; `notifier api` serves the same at /metrics to admin keys.")
    p.add_argument("--address", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9808, help="listen port (default 9808)")
    p.add_argument("--once", action="store_true", help="print the metrics once to stdout and exit")
    p.add_argument("-l", "--loglevel", default="INFO")
    p.set_defaults(func=_metrics)

    p = _command(sub, "sweep", help="run the sweeper once: re-drive deliveries stuck in queued/sending and print "
                 "them (or `sweep release`: release due scheduled deliveries once)")
    p.add_argument("action", nargs="?", choices=["stuck", "release"], default="stuck",
                   help="stuck (default): re-drive stuck deliveries; release: queue scheduled deliveries now due")
    p.add_argument("--older-than", type=float, metavar="SECONDS",
                   help="re-drive what is untouched this long (default NOTIFIER_STUCK_AFTER_S; above the lease TTL)")
    p.set_defaults(func=_sweep)

    p = _command(sub, "devices", help="register, unregister or list a user's push device tokens")
    devices = p.add_subparsers(dest="devices_command", required=True, metavar="ACTION")
    d = _command(devices, "register", help="register (or move to this user) a device token")
    d.add_argument("user_id")
    d.add_argument("token")
    d.add_argument("--platform", choices=["ios", "android"], required=True,
                   help="ios: APNs (hex token); android: FCM (web push is not delivered yet)")
    d.add_argument("--app", help="the app's id, if the user has several apps")
    d = _command(devices, "unregister", help="forget a user's device token")
    d.add_argument("user_id")
    d.add_argument("token")
    d = _command(devices, "list", help="list a user's devices (tokens shortened unless --show-tokens)")
    d.add_argument("user_id")
    d.add_argument("--show-tokens", action="store_true", help="print whole tokens")
    p.set_defaults(func=_devices)

    p = _command(sub, "preferences", help="show or change a user's preferences (channels, quiet hours, opt-outs)")
    prefs = p.add_subparsers(dest="preferences_command", required=True, metavar="ACTION")
    g = _command(prefs, "get", help="print a user's preferences as JSON (defaults for a user never seen)")
    g.add_argument("user_id")
    g = _command(prefs, "set", help="change some of a user's preferences and print them all; an empty value clears "
                 "one, e.g. --phone ''")
    g.add_argument("user_id")
    for channel in ("push", "email", "sms"):
        g.add_argument(f"--{channel}-enabled", dest=f"{channel}_enabled", choices=["true", "false"],
                       help=f"send on {channel} at all")
    g.add_argument("--email", help="email address")
    g.add_argument("--phone", help="phone number, E.164 (+4712345678)")
    g.add_argument("--quiet-start", help="start of quiet hours, HH:MM in --timezone")
    g.add_argument("--quiet-end", help="end of quiet hours, HH:MM (may be past midnight)")
    g.add_argument("--timezone", help="IANA timezone of the quiet hours, e.g. Europe/Oslo")
    g.add_argument("--opted-out-categories", help="comma-separated categories never to send, e.g. marketing,social")
    p.set_defaults(func=_preferences)
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
