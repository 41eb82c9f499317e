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
import time
from contextlib import contextmanager
from typing import Iterator

import redis

log = logging.getLogger(__name__)

KEY = "bench:stage_cpu"  # field <stage> -> CPU seconds, <stage>:n -> steps measured
ENABLED = os.environ.get("NOTIFIER_STAGE_CPU") == "1"
_depth = 0  # a stage inside another (routing inside a retried route task) is counted once, by the outer


@contextmanager
def measure(stage: str) -> Iterator[None]:
    global _depth
    if not ENABLED or _depth:
        yield
        return
    _depth += 1
    started = time.thread_time()
    try:
        yield
    finally:
        spent = time.thread_time() - started
        _depth -= 1
        _flush(stage, spent)


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
