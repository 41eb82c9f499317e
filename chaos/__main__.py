"""`python -m chaos` (`make chaos`): run the fault scenarios, print a table and a JSON line.

Every scenario runs on a fresh stack (bridges, workers, beat) against private Redis,
PostgreSQL and Kafka started here (loopback ports picked free; data in var/chaos/), and a
private sandbox. Exit 0 only when no scenario lost an event, sent again a delivery whose
acceptance had been heard (a request in flight when its worker died is sent again, and its row
says so: docs/guarantees.md) or failed to dead-letter a malformed message; 1 when one did; 2
when the campaign itself could not run.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var" / "chaos"

# As tests/conftest.py tightens them: the sweeper re-drives within seconds, so drains fit a campaign.
TIMERS = {
    "NOTIFIER_RELEASE_INTERVAL_S": "0.5", "NOTIFIER_SWEEP_INTERVAL_S": "1", "NOTIFIER_LEASE_TTL_S": "4",
    "NOTIFIER_STUCK_AFTER_S": "8", "NOTIFIER_RETRY_BASE_S": "0.2", "NOTIFIER_RETRY_MAX_S": "2",
}
COLUMNS = (("scenario", 22), ("events", 7), ("lost", 6), ("stuck", 6), ("dup", 5), ("dup_answered", 13), ("drain_s", 8),
           ("crashes", 8), ("notes", 0))


def parse_args(argv: list[str] | None):
    from chaos.scenarios import SCENARIOS

    p = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.splitlines()[0])
    p.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), metavar="NAME",
                   help=f"run only this one (repeatable): {', '.join(SCENARIOS)}")
    p.add_argument("--events", type=int, default=1500, help="events per scenario (default 1500)")
    p.add_argument("--rate", type=float, default=300.0, help="events produced per second (default 300)")
    p.add_argument("--burst-rate", type=float, default=1500.0,
                   help="events per second where a scenario needs a backlog (redis-kill-backlog; default 1500)")
    p.add_argument("--poison", type=int, default=200, help="malformed messages in the poison scenario")
    p.add_argument("--large", type=int, default=4, help="of which ~1 MB (default 4)")
    p.add_argument("--drain-timeout", type=float, default=120.0,
                   help="seconds after the last event before the unsettled count as lost (default 120)")
    p.add_argument("--quiet", type=float, default=30.0,
                   help="stop waiting earlier when the log has not changed for this long (default 30)")
    p.add_argument("--high-share", type=float, default=0.2, help="share of events in the high lane")
    args = p.parse_args(argv)
    if args.events < 1 or args.rate <= 0 or args.events > 50_000:
        p.error("--events: 1 to 50000; --rate: above 0")
    if args.quiet <= float(TIMERS["NOTIFIER_STUCK_AFTER_S"]) + 2:
        p.error("--quiet must exceed NOTIFIER_STUCK_AFTER_S (+2 s): the sweeper must get its chance")
    return args


def configure_env(services) -> dict[str, str]:
    """Point this process and every child at the private services and a private sandbox."""
    from sandbox.devstack import private_sandbox_env

    run_dir = VAR / "run"
    for name in [k for k in os.environ if k.startswith("NOTIFIER_")]:
        del os.environ[name]  # nothing of a developer's shell (say, .services/env) leaks into the campaign
    os.environ.update({
        "NOTIFIER_DATABASE_URL": services.postgres.url(),
        "NOTIFIER_REDIS_URL": services.redis.url(0),
        "NOTIFIER_BROKER_URL": services.redis.url(1),
        "NOTIFIER_KAFKA_BOOTSTRAP_SERVERS": services.kafka.bootstrap,
        "NOTIFIER_VAR_DIR": str(run_dir),
        "NOTIFIER_APNS_KEY_PATH": str(run_dir / "sandbox" / "apns_key.p8"),
        "NOTIFIER_APNS_CA_FILE": str(run_dir / "sandbox" / "tls-cert.pem"),
        **TIMERS,
        **private_sandbox_env(),
    })
    return dict(os.environ)


def header(args, services, scenarios: list[str]) -> None:
    from chaos.services import settings_of
    from notifier.settings import get_settings

    s = get_settings()
    print(f"chaos: {len(scenarios)} scenario(s), {args.events} events each at {args.rate:.0f}/s "
          f"({args.high_share:.0%} high lane), drain deadline {args.drain_timeout:.0f} s (or {args.quiet:.0f} s quiet)")
    print(f"chaos: timers: stuck_after_s={s.stuck_after_s} lease_ttl_s={s.lease_ttl_s} "
          f"sweep_interval_s={s.sweep_interval_s} release_interval_s={s.release_interval_s} "
          f"retry_base_s={s.retry_base_s} retry_max_s={s.retry_max_s} max_attempts={s.max_attempts}")
    from celeryconfig import VISIBILITY_TIMEOUT_S

    print(f"chaos: broker visibility_timeout={VISIBILITY_TIMEOUT_S} s")
    print(f"chaos: redis {services.redis.url(0).rsplit('/', 1)[0]} (services.sh's redis.conf): "
          + "; ".join(line for line in settings_of(services.redis.conf)
                      if not line.split()[0] in ("bind", "port", "logfile", "dir")))
    print(f"chaos: postgres 127.0.0.1:{services.postgres.port} (services.sh's lines): "
          + "; ".join(settings_of(services.postgres.conf))
          + f"; synchronous_commit is {services.postgres.setting('synchronous_commit')}, "
          f"fsync {services.postgres.setting('fsync')}")
    print(f"chaos: kafka {services.config.kafka_version} on {services.kafka.bootstrap} (services.sh's "
          f"server.properties, heap {' '.join(services.config.kafka_heap_opts)})", flush=True)


def reset_state(services, sandbox) -> None:
    """Empty every table, both Redis databases and the sandbox: a scenario starts from nothing."""
    import redis
    from sqlalchemy import create_engine, text

    engine = create_engine(services.postgres.url())
    with engine.begin() as conn:
        tables = conn.scalars(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                                   "AND tablename <> 'alembic_version'")).all()
        if tables:
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
    engine.dispose()
    redis.Redis.from_url(services.redis.url(0)).flushall()
    sandbox.reset()


def run_scenario(name: str, args, env, services, sandbox) -> dict:
    """Start a stack, produce the load under the scenario's fault, wait for the drain, measure."""
    from chaos import measure
    from chaos.load import Load, make_events, poison_messages, register_users
    from chaos.scenarios import SCENARIOS, Run
    from chaos.stack import Stack

    func, options = SCENARIOS[name]
    prefix = f"{name}-{int(time.time())}"
    topics = {"high": f"chaos.{prefix}.high", "low": f"chaos.{prefix}.low"}
    dead_letters = f"chaos.{prefix}.dead"
    print(f"chaos: {name}: {func.__doc__.splitlines()[0]}", flush=True)
    reset_state(services, sandbox)
    users = register_users(prefix, max(20, args.events // 10))  # ~10 pushes a user: far below the daily limit
    events = make_events(prefix, args.events, users, high_share=args.high_share)
    stack = Stack(env, VAR / "logs" / prefix, topics, dead_letters, group=f"chaos-{prefix}")
    ledger = measure.Ledger(services.postgres.url())
    rate = args.burst_rate if options.get("burst") else args.rate * options.get("rate_factor", 1.0)
    load = Load(events, topics, rate, poison_messages(args.poison, args.large) if options.get("poison") else [])
    run = Run(name, prefix, stack, services, sandbox, load, env["NOTIFIER_BROKER_URL"], ledger)
    try:
        t0 = time.monotonic()
        stack.start()
        print(f"chaos:   stack up in {time.monotonic() - t0:.0f} s", flush=True)
        func(run)
        since = load.last_ack or time.time()
        groups = {topics[lane]: f"chaos-{prefix}-{lane}" for lane in topics}
        drain = measure.wait_drained(ledger, prefix, set(load.acked), since, timeout_s=args.drain_timeout,
                                     quiet_s=args.quiet,
                                     intake_done=lambda: measure.kafka_lag(services.kafka.bootstrap, groups) == 0)
        messages = run.saved_messages + sandbox.messages("apns")
        dup_ids, extra_requests = measure.provider_duplicates(messages, prefix)
        in_flight = dup_ids & ledger.in_flight_resent(prefix)
        state = drain.state
        settled = state.settled_events if state else set()
        with_rows = state.events if state else set()
        result = {
            "scenario": name,
            "events": len(load.acked),
            "not_acked_by_kafka": len(events) - len(load.acked),
            "produce_rate": round(len(events) / max(1e-3, (load.finished or time.time()) - load.started)),
            "lost": len(load.acked - settled),
            "lost_no_row": len(load.acked - with_rows),
            "stuck": state.not_terminal_rows if state else None,
            "duplicates": len(dup_ids),
            "duplicate_requests": extra_requests,
            # In flight when a worker died (sent, answer never read) and sent again, as the row says;
            # the rest would be acceptances we had heard of and sent again: those must be 0.
            "duplicates_in_flight": len(in_flight),
            "duplicates_answered": len(dup_ids - in_flight),
            "accepted_by_apns": measure.accepted_deliveries(messages, prefix),
            "drain_s": drain.seconds,
            "waited_s": drain.waited_s,
            "by_status": state.by_status if state else {},
            "crashes": stack.crashes(),
            "log_mb": round(stack.log_bytes() / 1e6, 1),
            "notes": run.notes,
        }
        if options.get("poison"):
            result["poison"] = len(load.poison)
            result["poison_acked"] = load.poison_acked
            result["poison_refused_by_producer"] = load.poison_refused
            deadline = time.monotonic() + 15  # dead letters are produced asynchronously: give them a moment
            while True:
                result["dead_lettered"] = measure.count_dead_letters(services.kafka.bootstrap, dead_letters)
                if result["dead_lettered"] >= load.poison_acked or time.monotonic() > deadline:
                    break
                time.sleep(1)
            result["dead_letter_missing"] = max(0, load.poison_acked - max(0, result["dead_lettered"]))
        return result
    finally:
        stack.stop()
        ledger.close()


def row(result: dict) -> str:
    notes = []
    if result.get("error"):
        notes.append(f"ERROR {result['error']}")
    if result.get("drain_s") is None and "error" not in result:
        notes.append(f"not drained after {result.get('waited_s')} s")
    if result.get("lost_no_row"):
        notes.append(f"{result['lost_no_row']} without a row")
    if result.get("duplicate_requests"):
        notes.append(f"{result['duplicate_requests']} extra APNs requests, "
                     f"{result.get('duplicates_in_flight', 0)} deliveries resent after a kill with them in flight")
    if result.get("not_acked_by_kafka"):
        notes.append(f"{result['not_acked_by_kafka']} never acked by Kafka")
    if "poison" in result:
        notes.append(f"{result['dead_lettered']}/{result['poison_acked']} poison dead-lettered")
    if result.get("log_mb", 0) > 20:
        notes.append(f"logs {result['log_mb']} MB")
    crashes = sum((result.get("crashes") or {}).values())
    values = {**result, "drain_s": "-" if result.get("drain_s") is None else f"{result['drain_s']:.1f}",
              "dup": result.get("duplicates", "-"), "dup_answered": result.get("duplicates_answered", "-"),
              "crashes": crashes, "notes": "; ".join(notes)}
    return " ".join(f"{values.get(col, '-')!s:<{width}}" if width else str(values.get(col, ""))
                    for col, width in COLUMNS)


def table_header() -> str:
    return " ".join(f"{col:<{width}}" if width else col for col, width in COLUMNS)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from chaos.scenarios import SCENARIOS
    from chaos.services import Services

    scenarios = args.scenario or list(SCENARIOS)
    # SIGTERM (a CI timeout, a developer's kill) unwinds like Ctrl-C, so every finally below runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    services = Services(VAR / "services")
    sandbox_proc = None
    results: list[dict] = []
    started = time.monotonic()
    try:
        print(f"chaos: starting private Redis :{services.redis.port}, PostgreSQL :{services.postgres.port} and "
              f"Kafka :{services.kafka.port} (controller :{services.kafka.controller_port}) under {services.home}",
              flush=True)
        services.start()
        env = configure_env(services)
        from notifier.store import migrate
        from sandbox import devstack
        from sandbox.client import SandboxClient
        from sandbox.keys import ensure_dev_keys
        from notifier.settings import get_settings

        migrate.upgrade(services.postgres.url())
        settings = get_settings()
        ensure_dev_keys(settings.apns_key_path.parent)
        sandbox_proc = devstack.start_sandbox(env, VAR / "logs" / "sandbox.log")
        sandbox = SandboxClient(settings.sandbox_control_url, timeout_s=30)
        header(args, services, scenarios)
        for name in scenarios:
            try:
                result = run_scenario(name, args, env, services, sandbox)
            except Exception as exc:  # noqa: BLE001 - one broken scenario must not hide the others
                traceback.print_exc()
                result = {"scenario": name, "error": f"{type(exc).__name__}: {exc}"[:300]}
                _revive(services)
            results.append(result)
            print(table_header())
            print(row(result), flush=True)
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        return 2
    finally:
        import logging

        # The producer's threads would report every failed reconnect to the stopping Kafka.
        logging.getLogger("notifier.kafka").setLevel(logging.CRITICAL)
        if sandbox_proc is not None:
            from sandbox import devstack

            devstack.stop(sandbox_proc)
        services.stop()

    print(f"\nchaos: {len(results)} scenario(s) in {time.monotonic() - started:.0f} s")
    print(table_header())
    for result in results:
        print(row(result))
    lost = sum(r.get("lost", 0) or 0 for r in results)
    duplicates = sum(r.get("duplicates", 0) or 0 for r in results)
    answered = sum(r.get("duplicates_answered", 0) or 0 for r in results)
    dead_letter_missing = sum(r.get("dead_letter_missing", 0) for r in results)
    errors = [r["scenario"] for r in results if "error" in r]
    print(json.dumps({"scenarios": results, "lost": lost, "duplicates": duplicates, "duplicates_answered": answered,
                      "duplicates_in_flight": duplicates - answered,
                      "dead_letter_missing": dead_letter_missing, "errors": errors}, default=str))
    if errors:
        return 2
    # A request in flight when its worker died is sent again (docs/guarantees.md: the one window no
    # client closes) and its row says so; any other duplicate, or any loss, fails the campaign.
    return 1 if lost or answered or dead_letter_missing else 0


def _revive(services) -> None:
    """After a scenario failed, start again whatever private service it left down."""
    from chaos.services import port_open

    for service, port, start in ((services.redis, services.redis.port, services.redis.start),
                                 (services.postgres, services.postgres.port, services.postgres.restart),
                                 (services.kafka, services.kafka.port, services.kafka.restart)):
        if not port_open(port):
            try:
                start()
            except Exception as exc:  # noqa: BLE001
                print(f"chaos: could not start {type(service).__name__.lower()} again: {exc}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
