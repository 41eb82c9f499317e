"""No database transaction is held open across a provider call (a slow provider must not pin
connections `idle in transaction`), through a real worker, PostgreSQL and the sandbox."""
from __future__ import annotations

import secrets
import time

import pytest
from sqlalchemy import text

import notifier
from notifier.store.db import database_url, transaction
from notifier.accounts.devices import register_device
from notifier.accounts.status import get_status


def test_a_slow_provider_holds_no_transaction_open(worker, sandbox, wait_until, unique):
    if not database_url().startswith("postgresql"):
        pytest.skip("pg_stat_activity needs PostgreSQL from `make services`")
    # Given APNs answering one user's push 2 s late
    user, token = unique("user"), secrets.token_hex(32)
    register_device(user, token, "ios")
    sandbox.add_fault("apns", token, latency_ms=2000, count=1)
    nid = unique("n")

    # When the push is sent
    notifier.send_notification.delay({"notification_id": nid, "user_id": user, "type": "t", "category": "security",
                                      "priority": "high", "channels": ["push"], "title": "T", "body": "B"})
    wait_until(lambda: [r for r in get_status(nid) if r["status"] == "sending"], timeout_s=30)
    wait_until(lambda: sandbox.messages(target=token), timeout_s=30)  # the request is at APNs, the answer held

    # Then, while APNs holds the answer, no session of ours sits idle in a transaction longer than a
    # stage's own statements take
    longest = 0.0
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        with transaction() as session:
            age = session.scalar(text(
                "SELECT coalesce(max(extract(epoch FROM now() - xact_start)), 0) FROM pg_stat_activity "
                "WHERE datname = current_database() AND state LIKE 'idle in transaction%' "
                "AND pid <> pg_backend_pid()"))
        longest = max(longest, float(age))
        time.sleep(0.05)
    assert longest < 0.5, f"a transaction stayed idle for {longest:.2f} s across the provider call"

    # And the push is sent once
    wait_until(lambda: [r for r in get_status(nid) if r["status"] == "sent"], timeout_s=30)
    assert len(sandbox.messages(target=token)) == 1
