"""`make bench`: the whole system as deployed, against the naive design, in one run.

Kafka -> bridge -> Celery workers (high and low lanes) -> sandbox APNs, with PostgreSQL and
Redis from `make services`; then the naive 4-task chain on the same services and sandbox.
Prints a table, writes bench/results/<time>.json, and ends with one JSON line of key figures.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def _configure_env(work: Path, topology: str = "single") -> dict[str, str]:
    """Point everything at bench-only databases, so runs never mix with dev or test data.

    topology "cluster": the data Redis is the Redis Cluster and PostgreSQL the two shards behind
    PgBouncer that `make bench-cluster` starts (scripts/services.sh start redis-cluster --pg-shards);
    the broker stays the single Redis (kombu does not speak Redis Cluster)."""
    base_db = os.environ.get("NOTIFIER_DATABASE_URL", "")
    redis_base = os.environ.get("NOTIFIER_REDIS_URL", "")
    if not base_db.startswith("postgresql") or not redis_base.startswith("redis://"):
        sys.exit("bench: run it through `make bench` (needs PostgreSQL, Redis and Kafka from `make services`)")
    host = redis_base.rsplit("/", 1)[0]
    from sandbox.devstack import private_sandbox_env

    os.environ.update(private_sandbox_env())
    os.environ.update({
        "NOTIFIER_DATABASE_URL": base_db.rsplit("/", 1)[0] + "/notifier_bench",
        "NOTIFIER_REDIS_URL": f"{host}/14",
        "NOTIFIER_BROKER_URL": f"{host}/15",
        "NOTIFIER_VAR_DIR": str(work),
        "NOTIFIER_APNS_KEY_PATH": str(work / "sandbox" / "apns_key.p8"),
        "NOTIFIER_APNS_CA_FILE": str(work / "sandbox" / "tls-cert.pem"),
        "NOTIFIER_STAGE_CPU": "1",  # notifier.ops.stage_cpu: each stage's CPU, for the report
    })
    if topology == "cluster":
        cluster, shards = os.environ.get("NOTIFIER_REDIS_CLUSTER_URL"), os.environ.get("NOTIFIER_DATABASE_URLS_SHARDED")
        if not cluster or not shards:
            sys.exit("bench: --topology cluster needs the Redis Cluster and the PostgreSQL shards: run it through "
                     "`make bench-cluster` (scripts/services.sh start redis-cluster --pg-shards)")
        os.environ.update({"NOTIFIER_REDIS_URL": cluster, "NOTIFIER_DATABASE_URLS": shards,
                           "NOTIFIER_DATABASE_URL": shards.split(",")[0]})
    return dict(os.environ)


def _create_database() -> None:
    from sqlalchemy import create_engine, text

    admin = os.environ["NOTIFIER_DATABASE_URL"].rsplit("/", 1)[0] + "/notifier"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        if not conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = 'notifier_bench'")):
            conn.execute(text("CREATE DATABASE notifier_bench"))
    engine.dispose()


def _reset_state() -> None:
    """Empty tables (on every shard), caches, counters and queues: each phase starts from the same place."""
    from sqlalchemy import text

    from notifier.store.db import get_engine, on_shard, shards
    from notifier.store.redis_conn import broker_redis, get_redis

    for shard in shards():
        with on_shard(shard), get_engine().begin() as conn:
            conn.execute(text("TRUNCATE notification_log, idempotency_keys, device_tokens, user_preferences "
                              "RESTART IDENTITY"))
    get_redis().flushdb()  # on a Redis Cluster: every master
    broker_redis().flushdb()


class CpuMeter:
    """CPU seconds (user + system) used by a set of process trees between start() and stop()."""

    def __init__(self, procs: dict) -> None:
        import psutil

        self._roots = {name: psutil.Process(p.pid) for name, p in procs.items()}

    def _sample(self) -> dict[tuple[str, int], float]:
        import psutil

        out = {}
        for name, root in self._roots.items():
            for proc in [root, *root.children(recursive=True)]:
                try:
                    t = proc.cpu_times()
                    out[(name if proc is root else f"{name}_children", proc.pid)] = t.user + t.system
                except psutil.NoSuchProcess:
                    pass
        return out

    def start(self) -> None:
        self._before = self._sample()

    def peak_rss_mb(self) -> dict[str, float]:
        """The largest peak resident set (VmHWM) of any one process of each tree, in MiB."""
        peaks: dict[str, float] = {}
        for name, root in self._roots.items():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil_errors():
                continue
            for proc in procs:
                try:
                    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            peaks[name] = max(peaks.get(name, 0.0), int(line.split()[1]) / 1024)
                except OSError:
                    pass
        return {k: round(v, 1) for k, v in peaks.items()}

    def stop(self) -> dict[str, float]:
        """CPU seconds per named process tree (parents and children)."""
        after = self._sample()
        per: dict[str, float] = {}
        for (name, pid), v in after.items():
            per[name] = per.get(name, 0.0) + v - self._before.get((name, pid), 0.0)
        return per


def psutil_errors():
    import psutil

    return (psutil.NoSuchProcess, psutil.AccessDenied)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _wait_settled(expected_events: set[str], timeout_s: float, prefix: str) -> float:
    """Wait until every event has rows and none is queued or sending; return when that was."""
    from sqlalchemy import func, select

    from notifier.store.db import on_shard, session_factory, shards
    from notifier.store.models import NotificationLog

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        busy = seen = 0
        for shard in shards():  # an event's rows are all on its user's shard
            with on_shard(shard), session_factory()() as s:
                busy += s.scalar(select(func.count()).where(NotificationLog.status.in_(["queued", "sending"]),
                                                            NotificationLog.notification_id.like(prefix + "%")))
                seen += s.scalar(select(func.count(func.distinct(NotificationLog.notification_id)))
                                 .where(NotificationLog.notification_id.like(prefix + "%")))
        if busy == 0 and seen >= len(expected_events):
            return time.time()
        time.sleep(0.25)
    raise TimeoutError(f"{prefix}: not settled after {timeout_s:.0f}s (busy={busy}, events seen={seen})")


def _outcome(prefix: str, events: list[dict], sandbox, started: float, cpu: dict[str, float]) -> dict:
    """Figures of one phase, from the database and what the sandbox accepted."""
    from sqlalchemy import func, select

    from notifier.store.db import on_shard, session_factory, shards
    from notifier.store.models import NotificationLog

    by_status: dict[str, int] = {}
    with_rows: set[str] = set()
    sent_per_shard = []
    for shard in shards():
        with on_shard(shard), session_factory()() as s:
            counts = dict(s.execute(select(NotificationLog.status, func.count())
                                    .where(NotificationLog.notification_id.like(prefix + "%"))
                                    .group_by(NotificationLog.status)).all())
            with_rows |= set(s.scalars(select(NotificationLog.notification_id)
                                       .where(NotificationLog.notification_id.like(prefix + "%")).distinct()))
        for status, n in counts.items():
            by_status[status] = by_status.get(status, 0) + n
        sent_per_shard.append(counts.get("sent", 0))
    messages = [m for m in sandbox.messages(provider="apns") if m["payload"].get("bench_phase") == prefix]
    per_id: dict[str, int] = {}
    for m in messages:
        per_id[m["id"]] = per_id.get(m["id"], 0) + 1
    latency = {"high": [], "low": []}
    last = started
    for m in messages:
        received = m["received_at"]
        last = max(last, received)
        latency[m["payload"]["bench_lane"]].append((received - m["payload"]["bench_produced_at"]) * 1000)
    delivered = len(messages)
    wall = max(last - started, 1e-9)
    cpu_s = sum(cpu.values())
    return {
        "events": len(events),
        "deliveries": delivered,
        "by_status": by_status,
        "wall_s": round(wall, 3),
        "throughput_per_s": round(delivered / wall, 1),
        "cpu_s": round(cpu_s, 3),
        "cpu_us_per_delivery": round(cpu_s / max(delivered, 1) * 1e6, 1),
        **{f"cpu_us_{name}": round(v / max(delivered, 1) * 1e6, 1) for name, v in sorted(cpu.items())},
        "p50_high_ms": round(_percentile(latency["high"], 0.50), 1),
        "p99_high_ms": round(_percentile(latency["high"], 0.99), 1),
        "p50_low_ms": round(_percentile(latency["low"], 0.50), 1),
        "p99_low_ms": round(_percentile(latency["low"], 0.99), 1),
        "duplicates": sum(n - 1 for n in per_id.values() if n > 1),
        "lost": len({e["notification_id"] for e in events} - with_rows) + by_status.get("queued", 0)
        + by_status.get("sending", 0),
        "sent_per_shard": sent_per_shard,
    }


def _stamp(event: dict, phase: str) -> dict:
    """Mark an event with its phase and the moment it is handed to Kafka (or Celery)."""
    return event | {"data": (event.get("data") or {}) | {"bench_phase": phase, "bench_produced_at": time.time()}}


def _prepare(sandbox, n_events: int, prefix: str, high_share: float):
    """Fresh state, the users and events of one phase, and their dead tokens armed at the sandbox."""
    from sqlalchemy import insert

    from bench.workload import build
    from notifier.store.db import shard_for, transaction
    from notifier.store.models import DeviceToken, UserPreferences

    _reset_state()
    workload = build(None, n_events, prefix=prefix, high_share=high_share)
    for model, rows in ((UserPreferences, workload.prefs), (DeviceToken, workload.devices)):
        by_shard: dict[int, list[dict]] = {}
        for row in rows:  # a user's rows live on the shard of their id
            by_shard.setdefault(shard_for(row["user_id"]), []).append(row)
        for shard, part in by_shard.items():
            with transaction(shard=shard) as s:
                s.execute(insert(model), part)
    for token in workload.dead_tokens:
        sandbox.unregister(token)
    return workload


def _wait_for_assignment(logs: dict, starts: dict, timeout_s: float) -> None:
    """Wait until each bridge's log (past `starts`) says it was assigned its partitions."""
    deadline = time.monotonic() + timeout_s
    waiting = dict(logs)
    while waiting and time.monotonic() < deadline:
        for lane, path in list(waiting.items()):
            with path.open("rb") as f:
                f.seek(starts[lane])
                if b"bridge: assigned" in f.read():
                    del waiting[lane]
        time.sleep(0.2)


def run_pipeline(env: dict, args, sandbox, logs: Path, sandbox_proc, latency_ms: int = 0,
                 profile_dir: Path | None = None) -> dict:
    """The product: Kafka -> bridge -> lane workers -> sandbox (answering `latency_ms` late);
    with `profile_dir`, py-spy samples every process of it meanwhile (bench/profile.py)."""
    from notifier.queues import QUEUES
    from sandbox import devstack
    from notifier.intake.publish import flush, get_producer
    from notifier.intake.events import parse_event

    prefix = f"p{latency_ms}-"
    workload = _prepare(sandbox, args.events, prefix, args.high_share)
    if latency_ms:
        sandbox.add_fault(latency_ms=latency_ms, fraction=1.0)  # every request, until reset
    topics = {"high": f"bench.{int(time.time())}.high", "low": f"bench.{int(time.time())}.low"}
    high = tuple(q for q in QUEUES if q.endswith(".high"))
    low = tuple(q for q in QUEUES if q.endswith(".low")) + ("scheduler",)
    procs = {}
    for lane, queues, concurrency, nice, pool in (("high", high, args.high_concurrency, 0, args.high_pool),
                                                  ("low", low, args.low_concurrency, args.low_nice, args.low_pool)):
        kw = {"queues": queues, "pool": pool, "nice": nice}
        if pool in ("solo", "threads"):  # run as many worker processes as asked for
            if pool == "threads":  # each with --threads tasks at once (one HTTP/2 connection each)
                kw["concurrency"] = args.threads
            for i in range(concurrency):
                procs[f"{lane}_worker{i}"] = devstack.start_worker(env, logs / f"{lane}{i}.log", name=f"{lane}{i}", **kw)
        else:
            procs[f"{lane}_worker"] = devstack.start_worker(env, logs / f"{lane}.log", concurrency=concurrency,
                                                            name=lane, **kw)
    import subprocess

    _create_topics(topics.values(), args.partitions)
    # Bridges per lane, as deployed: a low-lane flood never queues in front of high-lane events; a
    # lane's bridges share one consumer group, so its partitions are spread over them.
    names = [(lane, nice, f"bridge_{lane}" if args.bridges_per_lane == 1 else f"bridge_{lane}{i}")
             for lane, nice in (("high", 0), ("low", args.low_nice)) for i in range(args.bridges_per_lane)]
    bridge_logs = {name: logs / f"{name}.log" for _, _, name in names}
    log_starts = {name: path.stat().st_size if path.exists() else 0 for name, path in bridge_logs.items()}
    groups = {lane: f"bench-{lane}-{int(time.time())}" for lane in ("high", "low")}
    for lane, nice, name in names:
        procs[name] = subprocess.Popen(
            ["nice", "-n", str(nice), sys.executable, "-m", "entrypoints.cli", "bridge", "--topics", topics[lane],
             "--group", groups[lane], "--batch-size", str(args.batch_size),
             "--batch-ms", str(args.batch_ms), *[x for opt in args.kafka for x in ("-X", opt)]],
            env=env, cwd=ROOT, stdout=bridge_logs[name].open("ab"), stderr=subprocess.STDOUT,
        )
    # A bridge's start (imports, joining the group) is not per-delivery work: the meter starts only
    # once each bridge has its partitions, however long a loaded machine takes to get there.
    _wait_for_assignment(bridge_logs, log_starts, timeout_s=120)
    time.sleep(args.warmup_s)  # bridge joins its group, workers warm up
    meter = CpuMeter(procs)
    sandbox_meter = CpuMeter({"sandbox": sandbox_proc})
    profiler = None
    try:
        producer = get_producer()
        if profile_dir is not None:
            from bench.profile import Profiler

            profiler = Profiler(procs, profile_dir)
            profiler.start()
        meter.start()
        sandbox_meter.start()
        requests_before = sandbox.request_count()
        stores_before = _store_counters()
        started = time.time()

        def produce(event: dict) -> None:
            event = _stamp(event, prefix)
            producer.produce(topics[parse_event(event).lane], json.dumps(event).encode(),
                             key=event["user_id"].encode())
            producer.poll(0)

        # The low lane arrives as a burst (a backlog to drain); high-lane events keep arriving
        # at a steady rate meanwhile, as security alerts and receipts do.
        high_events = [e for e in workload.events if parse_event(e).lane == "high"]
        for event in workload.events:
            if parse_event(event).lane == "low":
                produce(event)
        producer.flush(30)
        # The high lane's clock starts now, not at `started`: producing the burst took a while,
        # and catching up on that time would send the first high events as a burst of their own.
        high_started = time.time()
        for i, event in enumerate(high_events):
            produce(event)
            time.sleep(max(0.0, high_started + (i + 1) / args.high_rate - time.time()))
        flush(60)
        _wait_settled({e["notification_id"] for e in workload.events}, args.timeout_s, prefix)
        cpu = meter.stop()
        if profiler is not None:
            profiler.stop()
        sandbox_cpu = sum(sandbox_meter.stop().values())
        requests = sandbox.request_count() - requests_before
        rss = meter.peak_rss_mb()
        outcome = _outcome(prefix, workload.events, sandbox, started, cpu)
        outcome["stages_cpu_us_per_delivery"] = _stages(cpu, outcome["deliveries"])
        outcome["peak_rss_mb"] = _by_kind(rss, max)
        outcome["sandbox_requests"] = requests
        outcome["stores"] = _store_rates(stores_before, _store_counters(), outcome["wall_s"])
        outcome["sandbox_cpu_us_per_request"] = round(sandbox_cpu / max(requests, 1) * 1e6, 1)
        return outcome
    finally:
        for proc in procs.values():
            devstack.stop(proc)


def _create_topics(topics, partitions: int) -> None:
    """Create the run's topics with `partitions` partitions each (Kafka would make them with one)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": os.environ["NOTIFIER_KAFKA_BOOTSTRAP_SERVERS"]})
    for future in admin.create_topics([NewTopic(t, num_partitions=partitions, replication_factor=1)
                                       for t in topics]).values():
        future.result(30)


def _store_counters() -> dict:
    """Row writes per shard (pg_stat_database) and commands per Redis master (INFO), as counted so far."""
    from sqlalchemy import text

    from notifier.store.db import get_engine, on_shard, shards
    from notifier.store.redis_conn import get_redis

    rows = []
    for shard in shards():
        with on_shard(shard), get_engine().connect() as conn:
            rows.append(conn.execute(text("SELECT tup_inserted + tup_updated + tup_deleted, xact_commit "
                                          "FROM pg_stat_database WHERE datname = current_database()")).one())
    from redis.cluster import RedisCluster

    r = get_redis()
    if isinstance(r, RedisCluster):  # the masters' own figures, per node ({"host:port": {...}})
        per_node = r.info("stats", target_nodes=RedisCluster.PRIMARIES)
    else:
        per_node = {"redis": r.info("stats")}
    return {"rows": [(int(w), int(c)) for w, c in rows],
            "commands": {node: int(v["total_commands_processed"]) for node, v in per_node.items()}}


def _store_rates(before: dict, after: dict, wall_s: float) -> dict:
    """Per shard: row writes/s and commits/s; per Redis node: commands/s, over the run's wall time."""
    wall = max(wall_s, 1e-9)
    return {
        "pg_row_writes_per_s": [round((a[0] - b[0]) / wall) for a, b in zip(after["rows"], before["rows"])],
        "pg_commits_per_s": [round((a[1] - b[1]) / wall) for a, b in zip(after["rows"], before["rows"])],
        "redis_commands_per_s": {node: round((n - before["commands"].get(node, 0)) / wall)
                                 for node, n in sorted(after["commands"].items())},
    }


def _by_kind(per_process: dict[str, float], combine) -> dict[str, float]:
    """Fold high_worker0, high_worker1, high_worker_children… into high_worker."""
    kinds: dict[str, list[float]] = {}
    for name, value in per_process.items():
        kind = name.removesuffix("_children").rstrip("0123456789")
        kinds.setdefault(kind, []).append(value)
    return {k: round(combine(v), 1) for k, v in sorted(kinds.items())}


def _stages(cpu: dict[str, float], deliveries: int) -> dict[str, float]:
    """CPU per delivery of each stage: the bridges (consume, validate, hand over), routing (in the
    bridges), filter, dedup and send task bodies, and Celery's own share of the workers."""
    from notifier.ops import stage_cpu
    from notifier.store.redis_conn import get_redis

    measured = stage_cpu.read(get_redis())
    per = lambda seconds: round(seconds / max(deliveries, 1) * 1e6, 1)  # noqa: E731
    bridges = sum(v for k, v in cpu.items() if k.startswith("bridge"))
    workers = sum(v for k, v in cpu.items() if "worker" in k)
    tasks = {k: v for k, v in measured.items() if k.startswith("notifier.") and not k.endswith(":n")}
    send = sum(v for k, v in tasks.items() if k.startswith("notifier.send_"))
    route = measured.get("route", 0.0)
    # The claim runs inside the filter task on the hot path, measured as its own stage ("dedup").
    dedup = tasks.get("notifier.dedup", 0.0) + measured.get("dedup", 0.0)
    return {
        "bridge": per(bridges - route),
        "route": per(route),
        "filter": per(tasks.get("notifier.filter", 0.0)),
        "dedup": per(dedup),
        "send": per(send),
        "other_tasks": per(sum(tasks.values()) - send - tasks.get("notifier.filter", 0.0)
                           - tasks.get("notifier.dedup", 0.0)),
        "celery_own": per(workers - sum(tasks.values()) - measured.get("dedup", 0.0)),
        "tasks": int(sum(v for k, v in measured.items() if k.endswith(":n") and k.startswith("notifier."))),
    }


def run_naive(env: dict, args, sandbox, logs: Path) -> dict:
    """The naive design: a 4-task chain per event, no batching."""
    from sandbox import devstack

    prefix = "n-"
    workload = _prepare(sandbox, args.naive_events, prefix, args.high_share)
    import subprocess

    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "bench.naive", "worker", "-Q", "naive",
         "-c", str(args.high_concurrency + args.low_concurrency), "--loglevel", "WARNING",
         "--without-gossip", "--without-mingle"],
        env=env, cwd=ROOT, stdout=(logs / "naive.log").open("ab"), stderr=subprocess.STDOUT,
    )
    try:
        time.sleep(args.warmup_s)
        from bench.naive import submit

        meter = CpuMeter({"naive_worker": worker})
        meter.start()
        started = time.time()
        for event in workload.events:
            submit(_stamp(event, prefix))
        _wait_settled({e["notification_id"] for e in workload.events}, args.timeout_s, prefix)
        cpu = meter.stop()
        return _outcome(prefix, workload.events, sandbox, started, cpu)
    finally:
        devstack.stop(worker)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="events through the product (default 20000)")
    parser.add_argument("--naive-events", type=int, default=2_000, help="events through the naive design")
    parser.add_argument("--high-concurrency", type=int, default=2, help="processes serving the high lane")
    parser.add_argument("--low-concurrency", type=int, default=2, help="processes serving the low lane")
    parser.add_argument("--batch-size", type=int, default=500, help="bridge batch size")
    pools = ["prefork", "solo", "threads"]
    parser.add_argument("--high-pool", choices=pools, default="solo",
                        help="the high lane's Celery pool (default solo, as docker/compose.yaml runs it: one task "
                             "at a time per process, --high-concurrency processes; its batches are small and "
                             "latency matters)")
    parser.add_argument("--low-pool", choices=pools, default="threads",
                        help="the low lane's pool (default threads, as compose's push.low workers: "
                             "--low-concurrency processes, each running --threads tasks at once, so several "
                             "send batches are in flight per process while a provider answers); solo: one task "
                             "at a time per process; prefork: one worker with that many children")
    parser.add_argument("--threads", type=int, default=2, help="tasks at once per worker process of a threads pool")
    parser.add_argument("--high-rate", type=float, default=200.0,
                        help="high-lane events per second, produced while the low-lane burst drains")
    parser.add_argument("--high-share", type=float, default=0.05, help="share of events in the high lane")
    parser.add_argument("--low-nice", type=int, default=19,
                        help="niceness of the low lane's bridge and workers: on one shared machine the kernel "
                             "then serves the high lane first, as separate machines would (0 = off). 19, not "
                             "10: a threads-pool low lane computes while it waits, and at 10 it took enough of "
                             "the two cores to push the high lane's p99 past 1 s under a 100,000-event backlog "
                             "(docs/scaling.md)")
    parser.add_argument("--batch-ms", type=int, default=50, help="bridge batch window")
    parser.add_argument("--kafka", action="append", default=[], metavar="KEY=VALUE",
                        help="librdkafka consumer setting for the bridge (repeatable)")
    parser.add_argument("--warmup-s", type=float, default=4.0)
    parser.add_argument("--timeout-s", type=float, default=600.0)
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--topology", choices=["single", "cluster"], default="single",
                        help="single: one Redis, one PostgreSQL (make bench); cluster: the Redis Cluster and the "
                             "PostgreSQL shards behind PgBouncer (make bench-cluster), 2 bridges per lane and "
                             "6 partitions per topic unless given")
    parser.add_argument("--bridges-per-lane", type=int, default=None, help="bridge processes per lane (1; cluster 2)")
    parser.add_argument("--partitions", type=int, default=None, help="partitions per Kafka topic (1; cluster 6)")
    parser.add_argument("--runs", type=int, default=1,
                        help="runs of the pipeline phase; the JSON line gives the median, min and max (default 1)")
    parser.add_argument("--latency-ms", type=int, default=200,
                        help="then one run with every provider answer this late (0 = skip; default 200)")
    parser.add_argument("--bare-requests", type=int, default=10_000,
                        help="requests of the bare HTTP/2 send measured for overhead_ratio (0 = skip)")
    parser.add_argument("--profile", action="store_true",
                        help="one more run with py-spy sampling every process (not counted in the figures); "
                             "writes <report>.profile.txt: where each process kind spends its CPU")
    args = parser.parse_args(argv)

    cluster = args.topology == "cluster"
    args.bridges_per_lane = args.bridges_per_lane or (2 if cluster else 1)
    args.partitions = args.partitions or (6 if cluster else 1)
    work = (ROOT / "var" / "bench").resolve()
    env = _configure_env(work, args.topology)
    if not cluster:
        _create_database()
    from sandbox import devstack
    from notifier.store import migrate
    from sandbox.client import SandboxClient
    from sandbox.keys import ensure_dev_keys
    from notifier.settings import get_settings

    migrate.upgrade_every_shard()
    settings = get_settings()
    ensure_dev_keys(settings.apns_key_path.parent)
    logs = work / "logs"
    sandbox_proc = devstack.start_sandbox(env, logs / "sandbox.log")
    sandbox = SandboxClient(settings.sandbox_control_url)
    try:
        runs = []
        for _ in range(args.runs):
            sandbox.reset()
            runs.append(run_pipeline(env, args, sandbox, logs, sandbox_proc))
        slow = None
        if args.latency_ms:
            sandbox.reset()
            slow = run_pipeline(env, args, sandbox, logs, sandbox_proc, latency_ms=args.latency_ms)
        profile_dir = None
        if args.profile:
            # Its own run: the samplers' CPU shares the machine, so its figures are not among the runs'.
            profile_dir = work / "profile" / f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}"
            sandbox.reset()
            run_pipeline(env, args, sandbox, logs, sandbox_proc, profile_dir=profile_dir)
        sandbox.reset()
        # The naive design is measured on the single topology only: it is the baseline, not a deployment.
        naive = None if args.skip_naive or cluster else run_naive(env, args, sandbox, logs)
    finally:
        devstack.stop(sandbox_proc)
    # The bare multiplexed send, on the same machine in the same run: what overhead_ratio divides by.
    from bench import transport_bench

    bare = transport_bench.run(args.bare_requests, 200, 3) if args.bare_requests else None
    by_cpu = sorted(runs, key=lambda r: r["cpu_us_per_delivery"])
    product = by_cpu[len(by_cpu) // 2]  # the median run
    for run in runs:
        if bare:
            run["overhead_ratio"] = round(run["cpu_us_per_delivery"] / bare["cpu_us_per_request_median"], 2)

    report = {"time": datetime.now(timezone.utc).isoformat(), "args": vars(args), "pipeline": product,
              "runs": runs, "latency_run": slow, "bare_send": bare, "naive": naive}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"bench-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps(report, indent=2))
    if profile_dir is not None:
        from bench.profile import summarise

        out.with_suffix(".profile.txt").write_text(summarise(profile_dir) + "\n")
        print(f"profile: {out.with_suffix('.profile.txt')} (raw stacks: {profile_dir})")

    rows = [k for k in product if k not in ("by_status", "stages_cpu_us_per_delivery", "peak_rss_mb", "stores")]
    print(f"\n{'figure':<28} {'pipeline':>12} {'+latency':>12} {'naive':>12}")
    for key in rows:
        print(f"{key:<28} {product[key]!s:>12} {(slow or {}).get(key, '-')!s:>12} {(naive or {}).get(key, '-')!s:>12}")
    print(f"CPU per delivery by stage (µs): {product['stages_cpu_us_per_delivery']}")
    print(f"peak RSS per process kind (MiB): {product['peak_rss_mb']}")
    print(f"stores: {product['stores']}")
    print(f"statuses (pipeline): {product['by_status']}")
    if naive:
        print(f"statuses (naive):    {naive['by_status']}")
    if bare:
        print(f"bare HTTP/2 send: {bare['cpu_us_per_request_median']} µs CPU per request (median of 3 rounds)")
    print(f"report: {out}")
    ratio = round(product["throughput_per_s"] / naive["throughput_per_s"], 2) if naive else None
    cpu = [r["cpu_us_per_delivery"] for r in by_cpu]
    print(json.dumps({
        "deliveries": product["deliveries"],
        "throughput_per_s": product["throughput_per_s"],
        "naive_throughput_per_s": naive["throughput_per_s"] if naive else None,
        "ratio": ratio,
        "cpu_us_per_delivery": product["cpu_us_per_delivery"],
        "cpu_us_per_delivery_min_max": [cpu[0], cpu[-1]],
        "bare_send_cpu_us_per_request": bare["cpu_us_per_request_median"] if bare else None,
        "overhead_ratio": product.get("overhead_ratio"),
        "overhead_ratio_min_max": [by_cpu[0].get("overhead_ratio"), by_cpu[-1].get("overhead_ratio")],
        "stages_cpu_us_per_delivery": product["stages_cpu_us_per_delivery"],
        "peak_rss_mb": product["peak_rss_mb"],
        "sandbox_cpu_us_per_request": product["sandbox_cpu_us_per_request"],
        "latency_ms": args.latency_ms or None,
        "latency_throughput_per_s": slow["throughput_per_s"] if slow else None,
        "latency_throughput_share": round(slow["throughput_per_s"] / product["throughput_per_s"], 2) if slow else None,
        "p50_high_ms": product["p50_high_ms"],
        "p99_high_ms": product["p99_high_ms"],
        "p99_low_ms": product["p99_low_ms"],
        "duplicates": sum(r["duplicates"] for r in runs) + (slow["duplicates"] if slow else 0),
        "lost": sum(r["lost"] for r in runs) + (slow["lost"] if slow else 0),
        "topology": args.topology,
        "redis_nodes": len(product["stores"]["redis_commands_per_s"]),
        "pg_shards": len(product["sent_per_shard"]),
        "kafka_partitions": args.partitions,
        "bridges_per_lane": args.bridges_per_lane,
        "sent_per_shard": product["sent_per_shard"],
        **product["stores"],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
