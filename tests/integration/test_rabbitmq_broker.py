"""RabbitMQ as the broker: quorum queues, and ETAs through native delayed delivery.

Runs when NOTIFIER_BROKER_URL is an amqp:// URL (`make test` runs this module and
tests/integration/test_pipeline.py a second time that way); skipped on Redis.
"""
from __future__ import annotations

import os
import secrets
import subprocess
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import pytest

from celeryconfig import BROKER_IS_RABBITMQ
from notifier.queues import QUEUES
from notifier.store.db import session_factory
from notifier.intake.events import parse_event
from notifier.pipeline.routing import route
from notifier.accounts.devices import register_device
from notifier.accounts.status import get_status
from notifier.store.redis_conn import broker_url
from tasks.pipeline import filter_stage

pytestmark = pytest.mark.skipif(not BROKER_IS_RABBITMQ, reason="the broker is not RabbitMQ")


def test_every_queue_is_a_quorum_queue_on_a_topic_exchange(worker):
    ctl = os.environ.get("NOTIFIER_RABBITMQCTL")
    if not ctl:
        pytest.skip("NOTIFIER_RABBITMQCTL (from scripts/services.sh) is not set")
    vhost = urlsplit(broker_url()).path.lstrip("/")
    queues = subprocess.run([ctl, "list_queues", "-p", vhost, "--no-table-headers", "name", "type"],
                            check=True, capture_output=True, text=True).stdout
    types = dict(line.split() for line in queues.splitlines() if line.strip())
    assert {name: types.get(name) for name in QUEUES} == {name: "quorum" for name in QUEUES}
    exchanges = subprocess.run([ctl, "list_exchanges", "-p", vhost, "--no-table-headers", "name", "type"],
                               check=True, capture_output=True, text=True).stdout
    kinds = dict(line.split() for line in exchanges.splitlines() if len(line.split()) == 2)
    assert {name: kinds.get(name) for name in QUEUES} == {name: "topic" for name in QUEUES}


def test_an_eta_less_than_a_second_away_is_published_and_honoured(worker, sandbox, wait_until, unique):
    # Given a routed delivery (as the release of due deliveries hands on, with an ETA 0.4 s away)
    user, token = unique("user"), secrets.token_hex(32)
    register_device(user, token, "ios")
    event = {"notification_id": unique("n"), "user_id": user, "type": "t", "category": "transactional",
             "priority": "high", "channels": ["push"], "title": "T", "body": "B"}
    with session_factory()() as session, session.begin():
        ids = route(session, [parse_event(event)]).queued["high"]
    eta = datetime.now(timezone.utc) + timedelta(seconds=0.4)

    # When it is queued with that ETA (Celery routes it through RabbitMQ's delay queues)
    filter_stage.apply_async((ids, "high"), queue="pipeline.high", eta=eta)

    # Then it is sent soon after the ETA, not before, and well before the sweeper would step in
    [row] = wait_until(lambda: [r for r in get_status(event["notification_id"]) if r["status"] == "sent"],
                       timeout_s=6)
    sent_at = row["sent_at"] if row["sent_at"].tzinfo else row["sent_at"].replace(tzinfo=timezone.utc)
    assert sent_at >= eta
    assert len(sandbox.messages(target=token)) == 1
