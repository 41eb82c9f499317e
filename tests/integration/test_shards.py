"""Two PostgreSQL shards, each behind its own PgBouncer in transaction pooling, with real workers and beat.

The shards are two databases of this run's own on the shared PostgreSQL server: that proves the
routing (a user's rows on one database, found from any process by the user id alone); separate
servers on one machine would prove nothing more. Every connection of the workers, beat and this
process goes through PgBouncer (pool_mode = transaction), so a statement that needed session
state (a session advisory lock, a prepared statement, a SET outside a transaction) would break here.
"""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import pytest
import requests
from sqlalchemy import create_engine, text

from sandbox import devstack, pgbouncer
from tests.integration.environment import TEST_VAR, child_env
from tests.integration.api_fixture import serve
from tests.integration.isolation import isolated_broker, produce

pytestmark = pytest.mark.skipif(
    not os.environ.get("NOTIFIER_DATABASE_URL", "").startswith("postgresql") or not pgbouncer.available(),
    reason="needs PostgreSQL (scripts/services.sh) and Debian's pgbouncer")

SHARDS = 2
# A bigger run for figures: NOTIFIER_TEST_SHARD_USERS=500 (one notification each, one batch).
USERS = int(os.environ.get("NOTIFIER_TEST_SHARD_USERS", "24"))


def _admin(url: str):
    return create_engine(url, isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="module")
def sharded(sandbox, database):
    """Two shard databases behind a PgBouncer each, migrated by `notifier migrate`; a worker and beat on them."""
    from notifier.settings import get_settings
    from notifier.store import db

    server = database.rsplit("/", 1)[0]  # this run's server URL (direct, for creating and dropping only)
    names = [f"{database.rsplit('/', 1)[1]}_shard{i}" for i in range(SHARDS)]
    admin = _admin(database)
    with admin.connect() as conn:
        for name in names:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    host, port = server.rsplit("@", 1)[1].split(":")
    bouncers, urls = [], []
    logs = TEST_VAR / "logs" / "shards"
    previous = os.environ.get("NOTIFIER_DATABASE_URLS")
    try:
        for i, name in enumerate(names):
            proc, listen = pgbouncer.start(TEST_VAR / f"pgbouncer-{i}", (host, int(port)))
            bouncers.append(proc)
            urls.append(f"postgresql+psycopg2://notifier:notifier@127.0.0.1:{listen}/{name}")
        os.environ["NOTIFIER_DATABASE_URLS"] = ",".join(urls)
        get_settings.cache_clear()
        with isolated_broker("shards") as broker:
            env = child_env() | {"NOTIFIER_BROKER_KEY_PREFIX": broker}
            # The operator's command, once, for every shard.
            subprocess.run([sys.executable, "-m", "entrypoints.cli", "migrate"], env=env, check=True,
                           capture_output=True, timeout=120)
            # The API on the port the sandbox posts its receipts to, trusting the sandbox's signatures.
            api_env = env | {"NOTIFIER_SENDGRID_WEBHOOK_PUBLIC_KEY_PATH": str(
                get_settings().var_dir / "sandbox" / "sendgrid_webhook_public_key")}
            for name in ("NOTIFIER_SENDGRID_WEBHOOK_PUBLIC_KEY", "NOTIFIER_API_PUBLIC_URL"):
                api_env.pop(name, None)
            receipts_port = urlsplit(os.environ["NOTIFIER_SANDBOX_SENDGRID_EVENT_WEBHOOK_URL"]).port
            with serve(api_env, "api-shards.log", port=receipts_port) as api_url:
                env["NOTIFIER_TWILIO_STATUS_CALLBACK_URL"] = api_url + "/v1/webhooks/twilio"
                worker = devstack.start_worker(env, logs / "worker.log")
                beat = devstack.start_beat(env, logs / "beat.log", logs / "beat")
                try:
                    yield {"broker": broker, "urls": urls, "bouncers": bouncers, "api": api_url}
                finally:
                    devstack.stop(beat)
                    devstack.stop(worker)
    finally:
        if previous is None:
            os.environ.pop("NOTIFIER_DATABASE_URLS", None)
        else:
            os.environ["NOTIFIER_DATABASE_URLS"] = previous
        get_settings.cache_clear()
        db.dispose_engines()
        for url in urls:
            db._engines.pop(url, None)
            db._factories.pop(url, None)
        for proc in bouncers:
            pgbouncer.stop(proc)
        with admin.connect() as conn:
            for name in names:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _users(unique, n: int = USERS) -> list[tuple[str, str]]:
    from notifier.accounts.devices import register_device

    users = []
    for _ in range(n):
        user, token = unique("user"), secrets.token_hex(32)
        register_device(user, token, "ios")
        users.append((user, token))
    return users


def _event(unique, user: str, **extra) -> dict:
    return {"notification_id": unique("n"), "user_id": user, "type": "order_shipped", "category": "transactional",
            "priority": "high", "channels": ["push"], "title": "Shipped", "body": "On its way"} | extra


def _count(url: str, sql: str, **params) -> int:
    from notifier.store.db import get_engine

    with get_engine(url).connect() as conn:
        return conn.execute(text(sql), params).scalar_one()


def _all_sent(nids: list[str]):
    from notifier.accounts.status import get_status

    rows = [r for nid in nids for r in get_status(nid)]
    return rows if len(rows) == len(nids) and all(r["status"] == "sent" for r in rows) else None


def test_notifier_migrate_ran_on_every_shard(sharded):
    from alembic.script import ScriptDirectory

    from notifier.store import migrate

    head = ScriptDirectory.from_config(migrate.alembic_config()).get_current_head()
    for url in sharded["urls"]:
        assert _count(url, "SELECT count(*) FROM alembic_version WHERE version_num = :v", v=head) == 1


def test_users_spread_over_both_shards_and_every_notification_is_sent(sharded, sandbox, wait_until, unique):
    from notifier.store.db import shard_for
    from tasks.pipeline import send_notifications

    # Given users registered through the API's functions (each on its own shard)
    users = _users(unique)
    home = {user: shard_for(user) for user, _ in users}
    on = [[u for u, s in home.items() if s == shard] for shard in range(SHARDS)]
    assert all(on), f"every shard holds some of {USERS} users: {[len(x) for x in on]}"
    for shard, url in enumerate(sharded["urls"]):
        assert _count(url, "SELECT count(*) FROM device_tokens WHERE user_id = ANY(:u)",
                      u=[u for u, _ in users]) == len(on[shard])

    # When one batch of events for all of them is sent (split by shard at intake)
    events = [_event(unique, user) for user, _ in users]
    produce(sharded["broker"], send_notifications, events)

    # Then every notification reaches `sent`, found by get_status on whichever shard holds it
    started = time.monotonic()
    rows = wait_until(lambda: _all_sent([e["notification_id"] for e in events]), timeout_s=90 + USERS / 5,
                      interval_s=0.5)
    took = time.monotonic() - started
    assert {r["user_id"]: r["shard"] for r in rows} == home
    for user, token in users:
        assert len(sandbox.messages(target=token)) == 1
    # And each shard's log holds exactly its users' deliveries
    nids = [e["notification_id"] for e in events]
    spread = [_count(url, "SELECT count(*) FROM notification_log WHERE notification_id = ANY(:n) "
                     "AND status = 'sent'", n=nids) for url in sharded["urls"]]
    assert spread == [len(x) for x in on]
    print(f"\nshards: {len(rows)} deliveries sent in {took:.1f}s (batch in -> all sent), per shard {spread}")


def test_a_repeat_is_still_a_duplicate(sharded, sandbox, wait_until, unique):
    from notifier.accounts.status import get_status
    from tasks.pipeline import send_notification

    (user, token), = _users(unique, 1)
    event = _event(unique, user)
    produce(sharded["broker"], send_notification, event)
    wait_until(lambda: _all_sent([event["notification_id"]]), timeout_s=60)
    produce(sharded["broker"], send_notification, event)
    rows = wait_until(lambda: len(get_status(event["notification_id"])) == 2 and get_status(event["notification_id"]))
    assert sorted(r["status"] for r in rows) == ["duplicate", "sent"]
    assert len(sandbox.messages(target=token)) == 1


def test_release_and_sweep_cover_both_shards(sharded, sandbox, wait_until, unique):
    from notifier.accounts.status import cancel_notification, get_status
    from notifier.intake import accept as intake
    from notifier.intake.events import parse_event
    from notifier.store.db import shard_for
    from tasks.pipeline import send_notifications

    users = _users(unique, 12)
    one_each = {shard_for(u): (u, t) for u, t in users}
    assert len(one_each) == SHARDS
    picked = [one_each[s] for s in range(SHARDS)]

    # Given, on each shard, a notification due in two seconds (released by beat) ...
    soon = (datetime.now(timezone.utc) + timedelta(seconds=2)).isoformat()
    deferred = [_event(unique, u, send_at=soon) for u, _ in picked]
    # ... one an hour away, cancelled (found on its shard by the id alone) ...
    later = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    cancelled = [_event(unique, u, send_at=later) for u, _ in picked]
    produce(sharded["broker"], send_notifications, deferred + cancelled)
    # ... and one stored with no message queued at all (a lost message: the sweeper's work)
    stranded = [_event(unique, u) for u, _ in picked]
    intake.store([parse_event(e) for e in stranded])

    wait_until(lambda: all(r["status"] == "scheduled" for e in cancelled for r in get_status(e["notification_id"]))
               and all(get_status(e["notification_id"]) for e in cancelled))
    assert [cancel_notification(e["notification_id"]) for e in cancelled] == [1] * SHARDS

    # Then the deferred and the stranded ones are sent on both shards, and the cancelled never
    wait_until(lambda: _all_sent([e["notification_id"] for e in deferred + stranded]), timeout_s=60)
    for e in cancelled:
        [row] = get_status(e["notification_id"])
        assert (row["status"], row["reason"]) == ("suppressed", "cancelled by producer")
    for _, token in picked:
        assert len(sandbox.messages(target=token)) == 2


def test_pgbouncer_pools_in_transaction_mode(sharded):
    # PgBouncer's admin console: every pool serving our clients is in transaction mode.
    for url in sharded["urls"]:
        port = url.rsplit("@", 1)[1].split("/")[0].split(":")[1]
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, dbname="pgbouncer", user="notifier")
        conn.autocommit = True  # the console takes no transactions
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW POOLS")
                cols = [c.name for c in cur.description]
                pools = [dict(zip(cols, r)) for r in cur.fetchall() if r[0] == url.rsplit("/", 1)[1]]
                cur.execute("SHOW STATS")
                cols = [c.name for c in cur.description]
                stats = [dict(zip(cols, r)) for r in cur.fetchall() if r[0] == url.rsplit("/", 1)[1]]
        finally:
            conn.close()
        assert pools and {p["pool_mode"] for p in pools} == {"transaction"}
        [stat] = stats
        print(f"\npgbouncer :{port} {url.rsplit('/', 1)[1]}: transactions {stat['total_xact_count']}, "
              f"queries {stat['total_query_count']}, server connections now {sum(p['sv_active'] + p['sv_idle'] + p['sv_used'] for p in pools)}")
        assert stat["total_xact_count"] > 0


def test_the_api_and_the_providers_receipts_find_deliveries_on_either_shard(sharded, sandbox, wait_until, unique):
    from notifier.accounts import api_keys
    from notifier.accounts.preferences import set_preferences
    from notifier.accounts.status import get_status
    from notifier.store.db import shard_for

    _, key = api_keys.create_key("tests: shards", "producer")  # API keys live on shard 0
    auth = {"Authorization": f"Bearer {key}"}
    # Given, on each shard, a user with an email address and one with a phone number
    people: dict[int, dict[str, str]] = {}
    while len(people) < 2 or any(len(p) < 2 for p in people.values()):
        user = unique("user")
        channel = "email" if "email" not in people.get(shard_for(user), {}) else "sms"
        people.setdefault(shard_for(user), {})[channel] = user
    events = []
    for shard, users in people.items():
        set_preferences(users["email"], email=f"{users['email']}@example.com")
        set_preferences(users["sms"], phone=f"+4795{time.monotonic_ns() % 10**6:06d}")
        for channel, user in users.items():
            events.append((shard, channel, _event(unique, user, channels=[channel], priority="normal")))
    # When each is sent through the HTTP API
    for _, _, event in events:
        answer = requests.post(sharded["api"] + "/v1/notifications", json=event, headers=auth, timeout=30)
        assert answer.status_code == 202, answer.text
    # Then the API finds each on its user's shard
    def all_sent():
        found = [requests.get(f"{sharded['api']}/v1/notifications/{e['notification_id']}", headers=auth,
                              timeout=30).json() for _, _, e in events]
        return found if all(f.get("deliveries") and f["deliveries"][0]["status"] == "sent" for f in found) else None

    found = wait_until(all_sent, timeout_s=60, interval_s=0.5)
    assert [f["deliveries"][0]["shard"] for f in found] == [shard for shard, _, _ in events]
    # And each provider's receipt (SendGrid's Event Webhook, Twilio's StatusCallback) reaches its delivery
    for shard, channel, event in events:
        [row] = get_status(event["notification_id"])
        answer = sandbox.receipt("sendgrid" if channel == "email" else "twilio", "delivered",
                                 message_id=row["provider_message_id"])
        assert answer["status"] == 200 and answer["response"]["applied"] == 1, (shard, channel, answer)
        [row] = get_status(event["notification_id"])
        assert (row["status"], row["shard"]) == ("delivered", shard)


def test_callbacks_reach_the_producer_from_either_shard(sharded, sandbox, wait_until, unique):
    from notifier.accounts import api_keys
    from notifier.store.db import shard_for
    from tests.integration.test_callbacks import Receiver

    _, key = api_keys.create_key("tests: shards callbacks", "producer")
    auth = {"Authorization": f"Bearer {key}"}
    receiver = Receiver()
    try:
        # Given a producer with a callback endpoint (registered on every shard)
        answer = requests.put(sharded["api"] + "/v1/callbacks", json={"url": receiver.url}, headers=auth, timeout=30)
        assert answer.status_code == 200, answer.text
        receiver.secret = answer.json()["secret"]
        # When it sends to users on both shards
        users = _users(unique, 8)
        assert {shard_for(u) for u, _ in users} == set(range(SHARDS))
        events = [_event(unique, u) for u, _ in users]
        for event in events:
            answer = requests.post(sharded["api"] + "/v1/notifications", json=event, headers=auth, timeout=30)
            assert answer.status_code == 202, answer.text
        # Then every delivery's `sent` reaches the producer, signed, drained from each shard's outbox
        wanted = {e["notification_id"] for e in events}
        got = wait_until(lambda: wanted <= {e["notification_id"] for e in receiver.accepted_events()}
                         and receiver.accepted_events(), timeout_s=60, interval_s=0.5)
        assert {e["status"] for e in got if e["notification_id"] in wanted} == {"sent"}
        assert all(p["verified"] for p in receiver.posts)
        shown = requests.get(sharded["api"] + "/v1/callbacks", headers=auth, timeout=30).json()
        assert shown["url"] == receiver.url
    finally:
        receiver.close()
