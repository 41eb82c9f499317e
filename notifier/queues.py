"""The queue table: one queue per workload and lane, plus the scheduler's.

Celery's configuration (celeryconfig.py) declares these queues, tasks/ routes by
`queue_for`, and the metrics exporter reports their depths: all read this one table.
"""
from __future__ import annotations

LANES = ("high", "low")
# Stages route/filter/dedup share one pipeline queue per lane; each channel has its own
# send queue per lane, so a low-lane backlog never sits in front of high-lane work.
WORKLOADS = ("pipeline", "push", "email", "sms")
# callbacks: POSTs to producers' endpoints, apart from delivery, so a slow endpoint never holds up a send.
QUEUES = tuple(f"{w}.{lane}" for w in WORKLOADS for lane in LANES) + ("scheduler", "callbacks")
CALLBACKS_QUEUE = "callbacks"


def queue_for(workload: str, lane: str) -> str:
    """Name the queue for a workload ('pipeline' or a channel) in a lane."""
    name = f"{workload}.{lane}"
    if name not in QUEUES:
        raise ValueError(f"no queue for workload {workload!r} in lane {lane!r}")
    return name
