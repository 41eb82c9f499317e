"""Celery settings, read from the environment through notifier's settings.

Queues are named by workload and lane in one place (notifier.queues.QUEUES); routing reads from it.
"""
from __future__ import annotations

from kombu import Exchange, Queue

from notifier.queues import QUEUES
from notifier.settings import get_settings as _settings
from notifier.store.redis_conn import broker_url as _broker_url

broker_url = _broker_url()
broker_connection_retry_on_startup = True
# A Redis broker hands a dead worker's unacked messages to another after this long (kombu's
# visibility timeout). Short, so nothing is parked for an hour; countdowns and ETAs (at most the
# task retry backoff's 60 s, and the release beat's interval) must stay below it, or Redis
# redelivers them early. The rows behind a lost message are re-driven sooner by the sweeper
# (stuck_after_s); docs/guarantees.md states both bounds.
VISIBILITY_TIMEOUT_S = _settings().visibility_timeout_s
# One URL picks the broker: redis:// (the default) or amqp:// (RabbitMQ). Each gets the options
# that make it keep what it accepted.
BROKER_IS_RABBITMQ = broker_url.split("://", 1)[0] in ("amqp", "amqps", "pyamqp")

if BROKER_IS_RABBITMQ:
    # Quorum queues: replicated, fsynced before the broker confirms, and redelivered when a
    # consumer's channel closes unacked. Each queue gets a topic exchange of its own, because
    # Celery's native delayed delivery (how ETAs and countdowns work on quorum queues: the message
    # waits in broker-side queues with TTLs, not in a worker's memory) cannot route through a
    # direct exchange. https://docs.celeryq.dev/en/stable/getting-started/backends-and-brokers/rabbitmq.html
    task_queues = [
        Queue(name, Exchange(name, type="topic"), routing_key=name, queue_arguments={"x-queue-type": "quorum"})
        for name in QUEUES
    ]
    task_default_queue_type = "quorum"
    task_default_exchange_type = "topic"
    worker_detect_quorum_queues = True  # quorum queues refuse global QoS: prefetch is per consumer
    broker_native_delayed_delivery_queue_type = "quorum"
    # Publisher confirms: delay() returns once RabbitMQ has the message (on disk, for quorum queues).
    broker_transport_options = {"confirm_publish": True}
else:
    broker_transport_options = {"visibility_timeout": VISIBILITY_TIMEOUT_S}
    if _settings().broker_key_prefix:
        broker_transport_options["global_keyprefix"] = _settings().broker_key_prefix
    task_queues = [Queue(name) for name in QUEUES]
task_default_queue = "pipeline.low"
task_create_missing_queues = False

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
task_ignore_result = True
result_backend = None

task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 4

# Beat: the database holds every wait; these release what is due and re-drive what is stuck.
beat_schedule = {
    "release-due": {
        "task": "notifier.release_due",
        "schedule": _settings().release_interval_s,
        "options": {"queue": "scheduler", "expires": 10 * _settings().release_interval_s},
    },
    "sweep": {
        "task": "notifier.sweep",
        "schedule": _settings().sweep_interval_s,
        "options": {"queue": "scheduler", "expires": _settings().sweep_interval_s},
    },
    "callbacks-drain": {
        "task": "notifier.callbacks.drain",
        "schedule": _settings().callback_drain_interval_s,
        "options": {"queue": "callbacks", "expires": 10 * _settings().callback_drain_interval_s},
    },
    "log-maintenance": {  # notification_log's daily partitions and retention (notifier/store/partitions.py)
        "task": "notifier.log_maintenance",
        "schedule": _settings().log_maintenance_interval_s,
        "options": {"queue": "scheduler", "expires": _settings().log_maintenance_interval_s},
    },
}
# Task modules beside tasks.pipeline (which tasks.app autodiscovers).
imports = ("tasks.callbacks", "tasks.log_maintenance")

worker_send_task_events = True
task_send_sent_event = True
worker_hijack_root_logger = False
timezone = "UTC"
enable_utc = True
