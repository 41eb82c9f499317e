"""Follow one notification through the HTTP API, on the embedded setup: POST it, watch it
become `sent`, then let the sandbox's SendGrid report the email delivered (a signed webhook).

Run: .venv/bin/python scripts/api_walkthrough.py   (starts and stops everything it needs)
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WORK = ROOT / "var" / "walkthrough"


def show(title: str, response: requests.Response) -> dict:
    print(f"\n$ {response.request.method} {response.request.path_url}  ->  {response.status_code}")
    body = response.json() if response.content else {}
    print(json.dumps(body, indent=2, default=str))
    return body


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    for key in [k for k in os.environ if k.startswith("NOTIFIER_")]:
        del os.environ[key]
    from sandbox.devstack import free_port, private_sandbox_env

    api_port = free_port()
    api_url = f"http://127.0.0.1:{api_port}"
    os.environ.update(private_sandbox_env())
    os.environ.update({
        "NOTIFIER_VAR_DIR": str(WORK),
        "NOTIFIER_API_PUBLIC_URL": api_url,
        "NOTIFIER_SENDGRID_WEBHOOK_PUBLIC_KEY_PATH": str(WORK / "sandbox" / "sendgrid_webhook_public_key"),
        # The sandbox posts receipts only to the API it is configured with.
        "NOTIFIER_SANDBOX_SENDGRID_EVENT_WEBHOOK_URL": api_url + "/v1/webhooks/sendgrid",
    })
    from notifier.store.db import database_url
    from notifier.store.redis_conn import broker_url, redis_url

    os.environ.update({"NOTIFIER_DATABASE_URL": database_url(), "NOTIFIER_REDIS_URL": redis_url(),
                       "NOTIFIER_BROKER_URL": broker_url()})
    env = dict(os.environ)

    import subprocess

    from notifier.accounts import api_keys
    from sandbox import devstack
    from notifier.store import migrate
    from sandbox.client import SandboxClient
    from sandbox.keys import ensure_dev_keys
    from notifier.settings import get_settings

    ensure_dev_keys(WORK / "sandbox")
    migrate.upgrade()
    _, key = api_keys.create_key("walkthrough", "send,status,users")
    auth = {"Authorization": f"Bearer {key}"}
    logs = WORK / "logs"
    procs = []
    try:
        procs.append(devstack.start_sandbox(env, logs / "sandbox.log"))
        procs.append(devstack.start_worker(env, logs / "worker.log"))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "entrypoints.cli", "api", "--host", "127.0.0.1", "--port", str(api_port)],
            env=env, cwd=ROOT, stdout=(logs / "api.log").open("ab"), stderr=subprocess.STDOUT))
        devstack.wait_for_port("127.0.0.1", api_port, proc=procs[-1])
        sandbox = SandboxClient(get_settings().sandbox_control_url)

        token = secrets.token_hex(32)
        show("device", requests.put(f"{api_url}/v1/users/67890/devices/{token}", json={"platform": "ios"},
                                    headers=auth, timeout=10))
        show("preferences", requests.put(f"{api_url}/v1/users/67890/preferences",
                                         json={"email": "ada@example.com"}, headers=auth, timeout=10))
        show("post", requests.post(f"{api_url}/v1/notifications", headers=auth, timeout=10, json={
            "notification_id": "order-1042-shipped", "user_id": "67890", "type": "order_shipped",
            "category": "transactional", "priority": "high", "channels": ["push", "email"],
            "title": "Your order shipped", "body": "Order #1042 is on its way."}))

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = requests.get(f"{api_url}/v1/notifications/order-1042-shipped", headers=auth, timeout=10).json()
            if status.get("deliveries") and all(d["status"] == "sent" for d in status["deliveries"]):
                break
            time.sleep(0.2)
        body = show("status", requests.get(f"{api_url}/v1/notifications/order-1042-shipped", headers=auth,
                                           timeout=10))
        email = next(d for d in body["deliveries"] if d["channel"] == "email")

        print("\n# the sandbox's SendGrid reports the email delivered: a signed Event Webhook to the API")
        answer = sandbox.receipt("sendgrid", "delivered", message_id=email["provider_message_id"])
        print(json.dumps(answer, indent=2))
        show("status", requests.get(f"{api_url}/v1/notifications/order-1042-shipped", headers=auth, timeout=10))
        return 0
    finally:
        for proc in reversed(procs):
            devstack.stop(proc)


if __name__ == "__main__":
    sys.exit(main())
