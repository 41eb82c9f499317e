"""Kafka runs: create a topic, produce, consume on the real broker."""
from __future__ import annotations

import os
import uuid

import pytest

confluent_kafka = pytest.importorskip("confluent_kafka")
BOOTSTRAP = os.environ.get("NOTIFIER_KAFKA_BOOTSTRAP_SERVERS")
pytestmark = pytest.mark.skipif(
    not BOOTSTRAP,
    reason="Kafka comes from `make services` (make test starts it)",
)


def test_produce_and_consume_round_trip():
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"smoke-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(30)

    producer = Producer({"bootstrap.servers": BOOTSTRAP, "enable.idempotence": True})
    sent = [f"message-{i}".encode() for i in range(10)]
    for value in sent:
        producer.produce(topic, value, key=b"k")
    assert producer.flush(30) == 0

    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"g-{topic}", "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    got = []
    try:
        for _ in range(60):
            msg = consumer.poll(1.0)
            if msg is not None and not msg.error():
                got.append(msg.value())
            if len(got) == len(sent):
                break
    finally:
        consumer.close()
    assert got == sent  # one key -> one partition -> order kept
    admin.delete_topics([topic])[topic].result(30)
