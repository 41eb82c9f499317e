"""Creating the topics the bridge consumes, when they do not exist yet."""
from __future__ import annotations

import logging
import re
from typing import Iterable

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from notifier.intake.bridge.kafka_log import kafka_logger

log = logging.getLogger(__name__)


def ensure_topics(bootstrap_servers: str, topics: Iterable[str], *, partitions: int = 4,
                  replication_factor: int = 1, timeout_s: float = 30.0) -> None:
    """Create the topics that do not exist yet; an existing topic is left as it is."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers, "logger": kafka_logger()})
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=replication_factor) for t in topics],
        request_timeout=timeout_s,
    )
    for topic, future in futures.items():
        try:
            future.result(timeout_s)
            log.info("bridge: created topic %s (%d partitions)", topic, partitions)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                # Not fatal: the consumer waits for the topic, and Kafka may be starting.
                log.warning("bridge: could not create topic %s: %s", topic, exc.args[0].str())
        except Exception as exc:  # noqa: BLE001 - a timeout, on a broker that is down
            log.warning("bridge: could not create topic %s: %s", topic, exc)
