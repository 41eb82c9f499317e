"""CPU per pipeline stage, for the benchmark: where a delivery's CPU goes, without a profiler.

Off unless NOTIFIER_STAGE_CPU=1 (the benchmark sets it): then each task body and the intake's
routing add their thread's CPU time (user + system) to a Redis hash, per stage. What a worker
process spends outside its task bodies (consuming, acknowledging, task events, the pool) is
Celery's own cost; the benchmark gets it as the process's CPU minus the sum of its stages.
The flush is one pipelined round trip per measured step, outside the measured time, so it is
counted in "Celery's own" share; a step carries a batch, so that is small beside it.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import redis

log = logging.getLogger(__name__)

KEY = "bench:stage_cpu"  # field <stage> -> CPU seconds, <stage>:n -> steps measured
ENABLED = os.environ.get("NOTIFIER_STAGE_CPU") == "1"
# A stage inside another (routing inside a retried route task, the claim inside the filter task) is
# charged its own time; the outer stage is charged the rest. Per thread (a threads-pool worker runs
# several tasks at once), each entry: CPU its inner stages spent.
_local = threading.local()


@contextmanager
def measure(stage: str) -> Iterator[None]:
    if not ENABLED:
        yield
        return
    _inner = _local.__dict__.setdefault("inner", [])
    _inner.append(0.0)
    started = time.thread_time()
    try:
        yield
    finally:
        spent = time.thread_time() - started
        inner = _inner.pop()
        _flush(stage, spent - inner)
        if _inner:  # its own time and its flush: none of it is the outer stage's
            _inner[-1] += time.thread_time() - started


def _flush(stage: str, spent: float) -> None:
    from notifier.store.redis_conn import get_redis

    try:
        pipe = get_redis().pipeline(transaction=False)
        pipe.hincrbyfloat(KEY, stage, spent)
        pipe.hincrby(KEY, f"{stage}:n", 1)
        pipe.execute()
    except redis.RedisError as exc:  # a benchmark figure is never a reason to fail a step
        log.warning("stage cpu: not recorded (%s)", exc)


def read(r: redis.Redis) -> dict[str, float]:
    """CPU seconds per stage (and steps per stage as '<stage>:n')."""
    return {k.decode() if isinstance(k, bytes) else k: float(v) for k, v in r.hgetall(KEY).items()}
