"""What a day of the log costs on disk: rows and bytes per 1,000 deliveries of the bench mix.

    python -m bench.log_size [events]        (NOTIFIER_DATABASE_URL: a PostgreSQL server; a scratch
                                              database beside it is made and dropped)

Routes the benchmark's event mix (bench/workload.py) through `routing.route` in batches of 250,
then writes each queued delivery's two updates as the send stage does (`queued → sending`, then
`sent` with its provider message id), and measures today's partition and idempotency_keys with
pg_total_relation_size (heap, indexes, TOAST). No workers or providers: this is storage, not speed.
"""
from __future__ import annotations

import json
import os
import secrets
import sys
import time
from datetime import datetime, timedelta, timezone

from sqlalchemy import create_engine, text


def main(n_events: int = 20_000) -> dict:
    base = os.environ["NOTIFIER_DATABASE_URL"]
    name = f"notifier_logsize_{secrets.token_hex(4)}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    os.environ["NOTIFIER_DATABASE_URL"] = url = f"{base.rsplit('/', 1)[0]}/{name}"
    try:
        return _measure(url, n_events)
    finally:
        from notifier.store.db import dispose_engines

        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _measure(url: str, n_events: int) -> dict:
    from bench import workload
    from notifier.intake.events import parse_event
    from notifier.pipeline import routing
    from notifier.store import migrate, partitions
    from notifier.store.db import get_engine, transaction
    from notifier.store.delivery_log import record_each, set_status

    migrate.upgrade(url)
    with transaction() as session:
        work = workload.build(session, n_events, prefix="s")
    queued: list[int] = []
    for i in range(0, len(work.events), 250):
        with transaction() as session:
            result = routing.route(session, [parse_event(e) for e in work.events[i:i + 250]])
            queued += [id_ for ids in result.queued.values() for id_ in ids]
    for i in range(0, len(queued), 250):
        ids = queued[i:i + 250]
        with transaction() as session:
            set_status(session, ids, "sending", only_from=["queued"])
        with transaction() as session:
            now = datetime.now(timezone.utc)
            record_each(session, [{"_id": id_, "status": "sent", "sent_at": now, "attempts": 1,
                                   "provider_message_id": secrets.token_hex(16)} for id_ in ids])
    today = partitions.partition_name(datetime.now(timezone.utc).date())
    with get_engine().connect() as conn:
        conn.execute(text("ANALYZE"))
        rows = conn.execute(text(f'SELECT count(*) FROM "{today}"')).scalar()
        log_bytes = conn.execute(text("SELECT pg_total_relation_size(CAST(:t AS regclass))"), {"t": today}).scalar()
        keys = conn.execute(text("SELECT count(*) FROM idempotency_keys")).scalar()
        key_bytes = conn.execute(text("SELECT pg_total_relation_size('idempotency_keys')")).scalar()
        conn.commit()
        # Packed: without the dead versions the two updates leave (autovacuum lets a partition reuse
        # that space while the day is written; a closed day stays at about the size measured above).
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text(f'VACUUM FULL "{today}"'))
        packed = conn.execute(text("SELECT pg_total_relation_size(CAST(:t AS regclass))"), {"t": today}).scalar()
    # Retention's cost: dropping a day's partition (catalog work), purging a day's keys (a bulk DELETE).
    started = time.perf_counter()
    partitions.drop_expired(get_engine(), datetime.now(timezone.utc).date() + timedelta(days=1), 0)
    drop_s = time.perf_counter() - started
    started = time.perf_counter()
    purged = partitions.purge_keys(get_engine(), datetime.now(timezone.utc) + timedelta(days=1))
    purge_s = time.perf_counter() - started
    deliveries = len(queued)
    per = 1000 / deliveries
    return {"events": len(work.events), "log_rows": rows, "deliveries_sent": deliveries,
            "log_rows_per_1000_deliveries": round(rows * per), "log_bytes_per_1000_deliveries": round(log_bytes * per),
            "log_bytes_packed_per_1000_deliveries": round(packed * per),
            "key_rows_per_1000_deliveries": round(keys * per), "key_bytes_per_1000_deliveries": round(key_bytes * per),
            "bytes_per_delivery_total": round((log_bytes + key_bytes) / deliveries),
            "drop_partition_ms": round(drop_s * 1000, 1), "keys_purged_per_s": round(purged / purge_s)}


if __name__ == "__main__":
    print(json.dumps(main(*(int(a) for a in sys.argv[1:2]))))
