"""Prometheus metrics: counters written by real workers into Redis, rendered by the exporter.

The exposition is read back with prometheus_client's own parser, so a malformed line fails
here, not in Prometheus.
"""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

import notifier
from notifier.queues import QUEUES
from sandbox import devstack
from notifier.ops import counters, exporter
from notifier.store.redis_conn import broker_redis, get_redis
from notifier.accounts.devices import register_device
from notifier.accounts.preferences import set_preferences
from notifier.accounts.status import get_status
from notifier.ops.exporter import version
from tests.integration.api_fixture import api  # noqa: F401  (fixture)
from tests.integration.environment import TEST_VAR, child_env


def samples(text: str | bytes) -> dict[tuple[str, frozenset], float]:
    """Every sample of an exposition, keyed by (sample name, labels)."""
    text = text.decode() if isinstance(text, bytes) else text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(parsed: dict, name: str, **labels: str) -> float:
    return parsed.get((name, frozenset(labels.items())), 0.0)


def _push_event(nid: str, user: str, **extra) -> dict:
    return {"notification_id": nid, "user_id": user, "type": "order_shipped", "category": "transactional",
            "priority": "high", "channels": ["push"], "title": "Shipped", "body": "On its way"} | extra


def test_pipeline_counts_show_in_the_exposition(worker, wait_until, unique):
    sent = dict(channel="push", provider="apns", status="sent")
    before = samples(exporter.render())

    # Given two iOS users, when each gets a notification now and one more is due in an hour
    nids = []
    for _ in range(2):
        user = unique("user")
        register_device(user, secrets.token_hex(32), "ios")
        nids.append(unique("n"))
        notifier.send_notification.delay(_push_event(nids[-1], user))
    later = unique("n")
    user = unique("user")
    register_device(user, secrets.token_hex(32), "ios")
    send_at = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    notifier.send_notification.delay(_push_event(later, user, send_at=send_at))
    for nid in nids:
        wait_until(lambda: [r for r in get_status(nid) if r["status"] == "sent"], message=f"{nid} never sent")
    wait_until(lambda: [r for r in get_status(later) if r["status"] == "scheduled"], message="never scheduled")

    # Then the exposition parses and shows them
    after = samples(exporter.render())
    assert value(after, "notifier_deliveries_total", **sent) >= value(before, "notifier_deliveries_total", **sent) + 2
    calls = "notifier_provider_batch_seconds_count"
    assert value(after, calls, provider="apns") > value(before, calls, provider="apns")
    assert value(after, "notifier_provider_batch_seconds_bucket", provider="apns", le="+Inf") == value(
        after, calls, provider="apns")
    assert value(after, "notifier_scheduled_deliveries") >= 1
    for queue in QUEUES:
        assert ("notifier_queue_messages", frozenset({("queue", queue)})) in after, queue
    for source in ("redis", "database", "broker"):
        assert value(after, "notifier_metrics_source_up", source=source) == 1


def _terminal(nid: str, status: str):
    return lambda: [r for r in get_status(nid) if r["status"] == status]


def test_intake_filter_send_and_webhook_counts_through_real_workers(worker, sandbox, api, wait_until,  # noqa: F811
                                                                     unique):
    """Every new family, from real traffic: intake, the filter stage, the send tasks and the webhooks."""
    before = samples(exporter.render())

    # Given: an iOS user, a user who turned push off, a user with no device, a dead token, a failing
    # token (500 once), and a user with a phone (5 SMS a week by default).
    ok_user, off_user, bare_user, dead_user, flaky_user, sms_user = (unique("user") for _ in range(6))
    register_device(ok_user, secrets.token_hex(32), "ios")
    register_device(off_user, secrets.token_hex(32), "ios")
    set_preferences(off_user, push_enabled=False)
    dead, flaky = secrets.token_hex(32), secrets.token_hex(32)
    register_device(dead_user, dead, "ios")
    register_device(flaky_user, flaky, "ios")
    sandbox.unregister(dead)
    sandbox.add_fault("apns", flaky, status=500, reason="InternalServerError", count=1)
    set_preferences(sms_user, phone="+4790000001")

    # When they are sent through the pipeline (and one event twice)
    ok, off, bare, gone, retried = (unique("n") for _ in range(5))
    for nid, user in ((ok, ok_user), (off, off_user), (bare, bare_user), (gone, dead_user), (retried, flaky_user)):
        notifier.send_notification.delay(_push_event(nid, user))
    notifier.send_notification.delay(_push_event(ok, ok_user))  # a producer retry: duplicate
    sms = [unique("n") for _ in range(6)]
    for nid in sms:
        notifier.send_notification.delay(_push_event(nid, sms_user, channels=["sms"], priority="low"))
    wait_until(_terminal(ok, "sent"), message="never sent")
    wait_until(_terminal(off, "suppressed"), message="never suppressed")
    wait_until(_terminal(gone, "failed"), message="dead token never failed")
    # (the retry waits `scheduled` for at most NOTIFIER_RETRY_BASE_S, 0.2 s here, before the release
    # beat puts it back: a busy machine's poll can miss that, and find it sent on its second attempt)
    wait_until(lambda: _terminal(retried, "scheduled")() or [
        r for r in get_status(retried) if r["status"] == "sent" and r["attempts"] >= 2
    ], timeout_s=60, message="never rescheduled")
    wait_until(lambda: sum(bool(_terminal(n, "rate_limited")()) for n in sms) == 1, timeout_s=60,
               message="the sixth SMS was not rate limited")

    # And a provider reports on two deliveries
    from tests.integration.test_webhooks import _delivery, _event, _post_sendgrid, _post_twilio

    email = _delivery(unique)
    sms_row = _delivery(unique, channel="sms", provider_message_id="SM" + secrets.token_hex(16))
    assert _post_sendgrid(api, [_event(email, "bounce", type="bounce", reason="550 no such user"),
                                _event(email, "open")]).status_code == 200
    assert _post_twilio(api, {"MessageSid": sms_row.provider_message_id, "MessageStatus": "delivered"}).status_code == 200

    # Then the exporter shows each of them
    after = samples(exporter.render())

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("notifier_events_accepted_total", lane="high") >= 5
    assert delta("notifier_events_accepted_total", lane="low") >= 6
    assert delta("notifier_events_duplicate_total", lane="high") >= 1
    assert delta("notifier_deliveries_accepted_total", lane="high", channel="push") >= 4
    assert delta("notifier_deliveries_accepted_total", lane="low", channel="sms") >= 6
    assert delta("notifier_deliveries_suppressed_total", channel="push", reason="channel_disabled") >= 1
    assert delta("notifier_deliveries_suppressed_total", channel="push", reason="no_target") >= 1
    assert delta("notifier_deliveries_rate_limited_total", channel="sms") >= 1
    errors = dict(channel="push", provider="apns")
    assert delta("notifier_delivery_errors_total", **errors, status="failed", reason="token_invalid") >= 1
    assert delta("notifier_delivery_errors_total", **errors, status="scheduled", reason="provider_5xx") >= 1
    latency = "notifier_accepted_to_sent_seconds"
    assert delta(latency + "_count", lane="high", channel="push") >= 1
    assert delta(latency + "_bucket", lane="high", channel="push", le="+Inf") == delta(
        latency + "_count", lane="high", channel="push")
    assert delta(latency + "_bucket", lane="high", channel="push", le="5.0") >= 1  # the SLO, unloaded
    assert 0 < delta(latency + "_sum", lane="high", channel="push") < 60 * delta(latency + "_count", lane="high",
                                                                                channel="push")
    assert delta("notifier_webhook_reports_total", provider="sendgrid", outcome="bounced") == 1
    assert delta("notifier_webhook_reports_total", provider="sendgrid", outcome="unchanged") >= 1  # the open
    assert delta("notifier_webhook_reports_total", provider="twilio", outcome="delivered") == 1
    assert value(after, "notifier_build_info", version=version(), python=sys.version.split()[0]) == 1
    assert version() != "unknown"


def test_provider_call_times_fall_into_cumulative_buckets():
    provider = f"test-{uuid.uuid4().hex[:8]}"
    counters.record_sends(get_redis(), [("push", provider, "sent")] * 3 + [("push", provider, "failed"),
                                                                          ("push", provider, "scheduled")],
                         [(provider, 0.004), (provider, 0.2), (provider, 45.0)])
    parsed = samples(exporter.render())
    assert value(parsed, "notifier_deliveries_total", channel="push", provider=provider, status="sent") == 3
    assert value(parsed, "notifier_deliveries_total", channel="push", provider=provider, status="failed") == 1
    assert value(parsed, "notifier_delivery_retries_total", channel="push", provider=provider) == 1
    bucket = "notifier_provider_batch_seconds_bucket"
    assert value(parsed, bucket, provider=provider, le="0.005") == 1
    assert value(parsed, bucket, provider=provider, le="0.25") == 2
    assert value(parsed, bucket, provider=provider, le="30.0") == 2
    assert value(parsed, bucket, provider=provider, le="+Inf") == 3
    assert value(parsed, "notifier_provider_batch_seconds_sum", provider=provider) == pytest.approx(45.204)


def test_sweeper_count_adds_up():
    before = value(samples(exporter.render()), "notifier_sweeper_redriven_total")
    counters.count_stuck(get_redis(), 2)
    counters.count_stuck(get_redis(), 0)
    assert value(samples(exporter.render()), "notifier_sweeper_redriven_total") == before + 2


def test_queue_depth_counts_every_priority_list_under_the_key_prefix():
    broker = broker_redis()
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    keys = [prefix + "push.high", prefix + "push.high\x06\x163", prefix + "email.low"]
    try:
        broker.rpush(keys[0], "a", "b")
        broker.rpush(keys[1], "c")
        broker.rpush(keys[2], "d")
        assert exporter.queue_depths(broker, ["push.high", "email.low", "sms.high"], prefix) == {
            "push.high": 3, "email.low": 1, "sms.high": 0}
    finally:
        broker.delete(*keys)


BOOTSTRAP = os.environ.get("NOTIFIER_KAFKA_BOOTSTRAP_SERVERS")


@pytest.mark.skipif(not BOOTSTRAP, reason="Kafka comes from `make services` (make test starts it)")
def test_bridge_lag_is_log_end_minus_position():
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    topic, group = f"lag-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": BOOTSTRAP})
    for i in range(10):
        producer.produce(topic, f"m{i}".encode())
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": group, "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    consumer.subscribe([topic])
    try:
        got = 0
        for _ in range(60):
            got += len([m for m in consumer.consume(3 - got, 1.0) if not m.error()])
            if got == 3:
                break
        assert got == 3
        assert counters.bridge_lag(consumer) == [(topic, 0, 7)]
        counters.set_bridge_lag(get_redis(), group, counters.bridge_lag(consumer))
    finally:
        consumer.close()
        admin.delete_topics([topic])
    parsed = samples(exporter.render())
    labels = dict(group=group, topic=topic, partition="0")
    assert value(parsed, "notifier_bridge_lag_messages", **labels) == 7
    assert value(parsed, "notifier_bridge_lag_timestamp_seconds", **labels) > 0


def test_api_serves_metrics_to_admin_keys_only(api):  # noqa: F811
    assert requests.get(api.url + "/metrics", timeout=10).status_code == 401
    assert requests.get(api.url + "/metrics", headers=api.auth(api.producer_key), timeout=10).status_code == 403
    response = requests.get(api.url + "/metrics", headers=api.auth(api.admin_key), timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert ("notifier_queue_messages", frozenset({("queue", "push.high")})) in samples(response.text)


def test_standalone_exporter_serves_metrics(database):
    port = devstack.free_port()
    log_path = TEST_VAR / "logs" / "metrics.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "entrypoints.cli", "metrics", "--port", str(port)], env=child_env(),
                            cwd=devstack.ROOT, stdout=log_path.open("ab"), stderr=subprocess.STDOUT)
    try:
        devstack.wait_for_port("127.0.0.1", port, proc=proc)
        response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30)
        assert response.status_code == 200
        parsed = samples(response.text)
        assert all(("notifier_queue_messages", frozenset({("queue", q)})) in parsed for q in QUEUES)
    finally:
        devstack.stop(proc)
