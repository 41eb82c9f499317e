"""The long-running roles: workers, the bridge, the API, beat, Flower, the metrics exporter."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from entrypoints.cli.common import command
from entrypoints.cli.errors import CliError


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _celery(argv: list[str]) -> int:
    """Run a Celery command (worker, beat) in this process, so its failures reach main()'s handler
    and the embedded Redis server it may start is stopped when it exits."""
    from tasks.app import app

    return app.start(argv) or 0


def _worker(args: argparse.Namespace) -> int:
    from notifier.queues import QUEUES

    queues = args.queues or ",".join(QUEUES)
    unknown = sorted(set(queues.split(",")) - set(QUEUES))
    if unknown:
        raise CliError(f"unknown queue(s) {', '.join(unknown)}; the queues are {', '.join(QUEUES)}", usage=True)
    concurrency = 1 if args.pool == "solo" else args.concurrency  # solo: this one process
    argv = ["worker", "-Q", queues, "-P", args.pool, "-c", str(concurrency), "-E", "-l", args.loglevel]
    return _celery(argv + [arg for arg in args.extra if arg != "--"])


def _key_value(option: str) -> tuple[str, str]:
    """An argparse type: KEY=VALUE."""
    key, sep, value = option.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {option!r}")
    return key.strip(), value


def _bridge(args: argparse.Namespace) -> int:
    from entrypoints.bridge import run
    from notifier.intake.bridge.messages import DEFAULT_TOPICS, parse_topics
    from notifier.ops import redaction

    redaction.basic_config(args.loglevel)
    config = dict(args.consumer_config)
    return run(
        parse_topics(args.topics.split(",")) if args.topics else DEFAULT_TOPICS,
        group_id=args.group, dead_letter_topic=args.dead_letter_topic, batch_size=args.batch_size,
        batch_ms=args.batch_ms, partitions=args.partitions, consumer_config=config,
        stats_interval_s=args.stats_interval,
    )


def _api(args: argparse.Namespace) -> int:
    import uvicorn

    from notifier.ops.redaction import uvicorn_log_config

    # The access log writes request paths, and /v1/users/{id}/devices/{token} holds a token.
    uvicorn.run("entrypoints.api.app:app", host=args.host, port=args.port, workers=args.workers,
                log_level=args.loglevel.lower(), proxy_headers=True, forwarded_allow_ips=args.forwarded_allow_ips,
                log_config=uvicorn_log_config())
    return 0


def _beat(args: argparse.Namespace) -> int:
    from notifier.settings import get_settings

    schedule = args.schedule or str(get_settings().var_dir / "celerybeat-schedule")
    os.makedirs(os.path.dirname(os.path.abspath(schedule)), exist_ok=True)
    return _celery(["beat", "-l", args.loglevel, "-s", schedule] + [arg for arg in args.extra if arg != "--"])


def _flower(args: argparse.Namespace) -> int:
    from notifier.settings import get_settings

    credentials = get_settings().flower_basic_auth.strip()
    env = dict(os.environ)
    if args.no_auth:
        if credentials:
            raise CliError("--no-auth given but NOTIFIER_FLOWER_BASIC_AUTH is set; drop one", usage=True)
        if args.address not in LOOPBACK:
            raise CliError("--no-auth only on a loopback --address (local development)", usage=True)
        env.pop("FLOWER_BASIC_AUTH", None)
    else:
        pairs = [pair.strip() for pair in credentials.split(",")] if credentials else []
        if not pairs:
            raise CliError("set NOTIFIER_FLOWER_BASIC_AUTH=user:password (Flower shows every task and can "
                           "stop workers), or pass --no-auth for local development", usage=True)
        if not all(user and password for user, _, password in (pair.partition(":") for pair in pairs)):
            raise CliError("NOTIFIER_FLOWER_BASIC_AUTH must be user:password pairs, comma-separated "
                           "(no comma in a password)", usage=True)
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


def register(sub: Any) -> None:
    """Add this group's subcommands."""
    p = command(sub, "worker", help="run a Celery worker on some queues (default: all)",
                description="Run a Celery worker on some queues (default: all). Any other option goes to "
                "Celery's worker unchanged (see `celery worker --help`), e.g. -n high1@%h, "
                "--max-tasks-per-child 1000, --autoscale 8,2.",
                allow_abbrev=False)  # --pid… must reach Celery, not be read as an abbreviation of ours
    p.add_argument("-Q", "--queues", help="comma-separated queues, e.g. push.high,pipeline.high (default: all)")
    p.add_argument("-c", "--concurrency", type=int, default=2,
                   help="worker processes (prefork pool) or threads (threads pool)")
    p.add_argument("-P", "--pool", choices=["prefork", "solo", "threads"], default="prefork",
                   help="prefork: child processes; solo: tasks run in this one process, about 1 ms less CPU "
                        "per task (no hand-off to a child): run several for concurrency; threads: -c tasks at "
                        "once in this one process, each thread with its own provider connections (for the "
                        "send queues: a slow provider's answers are awaited for several batches at once)")
    p.add_argument("-l", "--loglevel", default="INFO", help="log level")
    p.set_defaults(func=_worker, passes_extra=True)

    p = command(sub, "bridge", help="consume events from Kafka and hand them to Celery in batches")
    p.add_argument("--topics", help="comma-separated topics, each NAME or NAME=high|low "
                   "(default notifications.high,notifications.low; a name ending in .high/-high is high lane)")
    p.add_argument("--group", default="notifier-bridge", help="consumer group id")
    p.add_argument("--dead-letter-topic", default="notifications.dead", help="where malformed messages go")
    p.add_argument("--batch-size", type=int, default=500, help="events per Celery task at most")
    p.add_argument("--batch-ms", type=int, default=200, help="hand a batch over this long after its first event")
    p.add_argument("--partitions", type=int, default=4, help="partitions of topics the bridge creates")
    p.add_argument("-X", "--consumer-config", action="append", default=[], metavar="KEY=VALUE", type=_key_value,
                   help="extra librdkafka consumer setting, e.g. -X session.timeout.ms=10000")
    p.add_argument("--stats-interval", type=float, default=60.0, help="seconds between progress log lines")
    p.add_argument("-l", "--loglevel", default="INFO", help="log level")
    p.set_defaults(func=_bridge)

    p = command(sub, "api", help="serve the HTTP API and the provider webhooks (uvicorn)")
    p.add_argument("--host", default="127.0.0.1", help="listen address (0.0.0.0 behind a load balancer)")
    p.add_argument("--port", type=int, default=8000, help="listen port")
    p.add_argument("--workers", type=int, default=1, help="server processes")
    p.add_argument("--forwarded-allow-ips", default="127.0.0.1",
                   help="proxies trusted for X-Forwarded-For/-Proto (comma-separated, * for any)")
    p.add_argument("-l", "--loglevel", default="INFO", help="log level")
    p.set_defaults(func=_api)

    p = command(sub, "beat", help="run Celery beat: release due scheduled deliveries and sweep stuck ones on "
                 "schedule (run exactly one per deployment)", allow_abbrev=False)
    p.add_argument("-s", "--schedule", help="beat's state file (default: <NOTIFIER_VAR_DIR>/celerybeat-schedule)")
    p.add_argument("-l", "--loglevel", default="INFO", help="log level")
    p.set_defaults(func=_beat, passes_extra=True)

    p = command(sub, "flower", help="run Flower, the Celery monitoring web UI, with basic auth from "
                 "NOTIFIER_FLOWER_BASIC_AUTH",
                 description="Run Flower against the notifier's Celery app. It refuses to start without "
                 "NOTIFIER_FLOWER_BASIC_AUTH (user:password) unless --no-auth is given on a loopback address. "
                 "Flower leaves /metrics and /healthcheck open: never expose its port publicly. Options after "
                 "-- go to Flower unchanged.")
    p.add_argument("--address", default="127.0.0.1", help="listen address")
    p.add_argument("--port", type=int, default=5555, help="listen port")
    p.add_argument("--url-prefix", help="serve under this path, behind a reverse proxy (e.g. flower)")
    p.add_argument("--max-tasks", type=int, default=100000, help="tasks Flower keeps in memory")
    p.add_argument("--purge-offline-workers", type=int, default=600, metavar="SECONDS",
                   help="forget workers offline this long (scaled workers come and go)")
    p.add_argument("--read-only", action="store_true", help="disable Flower's controls (shutdown, revoke, apply)")
    p.add_argument("--no-auth", action="store_true", help="start without basic auth (local development only)")
    p.set_defaults(func=_flower, passes_extra=True)

    p = command(sub, "metrics", help="serve the Prometheus metrics exporter (deliveries, retries, queue depths, "
                 "scheduled backlog, bridge lag)",
                 description="Serve GET /metrics in the Prometheus text format, read from Redis, the broker and the "
                 "database at each scrape. It has no authentication: bind it to a private address. One exporter "
                 "serves the whole deployment; `notifier api` serves the same at /metrics to admin keys.")
    p.add_argument("--address", default="127.0.0.1", help="listen address")
    p.add_argument("--port", type=int, default=9808, help="listen port")
    p.add_argument("--once", action="store_true", help="print the metrics once to stdout and exit")
    p.add_argument("-l", "--loglevel", default="INFO", help="log level")
    p.set_defaults(func=_metrics)
