"""A poison batch (issue 10): 200 push deliveries in one batch, 5 of them poison, through real
workers, PostgreSQL, Redis and the sandbox APNs. The poison is planted below the edges (which
refuse such values): device-token rows written straight into the database, as legacy data
would be, and events handed to the route task raw, as a producer skipping validation would.

Each poison delivery must end `failed` with a reason that does not quote its token, and its
195 batch-mates `sent`, each exactly once: no row left queued or sending, no request resent,
no header injected, nothing delivered to the device a mangled token resembles.
"""
from __future__ import annotations

import secrets
import time
from collections import Counter

from sqlalchemy import select

from notifier.queues import queue_for
from notifier.store import models
from notifier.store.db import session_factory
from notifier.store.models import DeviceToken, NotificationLog
from notifier.settings import get_settings
from notifier.accounts.devices import register_device
from tasks.app import app
from tests.integration.environment import TEST_VAR

TERMINAL = {status.value for status in models.TERMINAL}
BATCH = 200


def _event(nid: str, user: str, **data) -> dict:
    event = {"notification_id": nid, "user_id": user, "type": "order_shipped", "category": "transactional",
             "priority": "high", "channels": ["push"], "title": "Shipped", "body": "On its way"}
    return event | ({"data": data} if data else {})


def _rows(nids: list[str]) -> list[NotificationLog]:
    with session_factory()() as session:
        return list(session.scalars(select(NotificationLog).where(NotificationLog.notification_id.in_(nids))))


def _all_settled(nids: list[str]):
    rows = _rows(nids)
    return rows if len(rows) == len(nids) and all(r.status in TERMINAL for r in rows) else None


def test_a_batch_with_five_poison_deliveries_sends_the_other_195_once(worker, sandbox, wait_until, unique):
    # Given 195 users with good iOS tokens ...
    innocents = [(unique("user"), secrets.token_hex(32)) for _ in range(BATCH - 5)]
    for user, token in innocents:
        register_device(user, token, "ios")
    # ... three with legacy token rows no edge would accept today: non-ASCII, a fragment after an
    # innocent's token (libcurl dropped the fragment: the push reached the innocent), and CR/LF
    poison_tokens = {
        "non-ASCII token": "café" + secrets.token_hex(30),
        "token with #x": innocents[0][1] + "#x",
        "token with CR/LF": innocents[1][1] + "\r\nx-injected: yes",
    }
    poison_users = {case: unique("user") for case in poison_tokens}
    with session_factory()() as session, session.begin():
        for case, token in poison_tokens.items():
            session.add(DeviceToken(user_id=poison_users[case], token=token, platform="ios"))
    # ... and two good devices whose events carry a collapse_id that cannot be a header value
    collapse_ids = {"collapse_id with CR/LF": "c2\r\nx-injected: yes", "non-ASCII collapse_id": "cölläpse"}
    collapse_users = {case: (unique("user"), secrets.token_hex(32)) for case in collapse_ids}
    for user, token in collapse_users.values():
        register_device(user, token, "ios")

    events = [_event(unique("n"), user) for user, _ in innocents]
    poison_nids: dict[str, str] = {}
    for case, user in poison_users.items():
        poison_nids[case] = unique("n")
        events.append(_event(poison_nids[case], user))
    for case, (user, _) in collapse_users.items():
        poison_nids[case] = unique("n")
        events.append(_event(poison_nids[case], user, collapse_id=collapse_ids[case]))
    events.sort(key=lambda _: secrets.randbits(16))  # poison anywhere in the batch
    nids = [e["notification_id"] for e in events]
    assert len(nids) == BATCH

    # When all 200 are handed to the route task in one message, without the producer's validation
    before = sandbox.request_count("apns")
    started = time.monotonic()
    app.send_task("notifier.send_notifications", args=[events], queue=queue_for("pipeline", "high"))

    # Then every delivery reaches a terminal status
    rows = wait_until(lambda: _all_settled(nids), timeout_s=90, interval_s=0.5,
                      message="deliveries left queued/sending/scheduled")
    settled_s = time.monotonic() - started
    by_nid = {r.notification_id: r for r in rows}
    statuses = Counter(r.status for r in rows)
    assert statuses == {"sent": BATCH - 5, "failed": 5}, statuses
    for case, nid in poison_nids.items():
        row = by_nid[nid]
        assert row.status == "failed" and row.reason, (case, row.status, row.reason)
        assert "café" not in row.reason and "x-injected" not in row.reason, (case, row.reason)
        assert all(token[:16] not in row.reason for token in poison_tokens.values()), (case, row.reason)
    for case in poison_tokens:
        assert "device token" in by_nid[poison_nids[case]].reason
    for case in collapse_ids:
        assert "collapse_id" in by_nid[poison_nids[case]].reason

    # And, once the sweeper has had time to re-drive anything it would (stuck-after plus a sweep),
    # the sandbox saw exactly one request per sent delivery: none resent, no poison sent
    time.sleep(get_settings().stuck_after_s + 2)
    assert Counter(r.status for r in _rows(nids)) == statuses, "a re-drive changed a settled row"
    sent_tokens = {token for _, token in innocents}
    accepted = [m for m in sandbox.messages("apns") if m["target"] in sent_tokens]
    assert sandbox.request_count("apns") - before == BATCH - 5
    assert len(accepted) == BATCH - 5
    assert max(Counter(m["id"] for m in accepted).values()) == 1, "an apns-id was sent twice"
    assert Counter(m["target"] for m in accepted) == Counter(sent_tokens), "a device got none, or two"
    # Nothing reached the devices of the collapse-id poison, and no request carried an injected header
    for _, token in collapse_users.values():
        assert sandbox.messages("apns", token) == []
    assert not any("x-injected" in m["headers"] for m in sandbox.messages("apns"))
    # The legacy poison tokens are gone, as APNs's BadDeviceToken would have them
    with session_factory()() as session:
        left = session.scalars(select(DeviceToken.token).where(DeviceToken.token.in_(poison_tokens.values())))
        assert list(left) == []
    # And no poison token was written to the worker's log
    log_text = (TEST_VAR / "logs" / "worker.log").read_text(errors="replace")
    assert poison_tokens["non-ASCII token"] not in log_text and poison_tokens["token with #x"] not in log_text
    print(f"poison batch: {dict(statuses)} settled in {settled_s:.1f}s, "
          f"{sandbox.request_count('apns') - before} provider requests")
    for case, nid in poison_nids.items():
        print(f"  {case}: {by_nid[nid].reason}")
