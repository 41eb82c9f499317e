"""Fixtures every test may use; no environment, no services (the integration conftest sets those up)."""
from __future__ import annotations

import os
import time
from typing import Callable

import pytest


@pytest.fixture()
def wait_until() -> Callable:
    """Poll a condition until it holds or the timeout ends; returns the last value."""

    def _wait(condition: Callable, timeout_s: float = 30.0, interval_s: float = 0.1, message: str = ""):
        deadline = time.monotonic() + timeout_s
        value = condition()
        while not value and time.monotonic() < deadline:
            time.sleep(interval_s)
            value = condition()
        assert value, message or f"condition not met within {timeout_s}s"
        return value

    return _wait


@pytest.fixture()
def unique() -> Callable[[str], str]:
    """Unique ids per test, so tests sharing one database never see each other's rows."""
    counter = iter(range(1_000_000))

    def _make(prefix: str) -> str:
        return f"{prefix}-{os.getpid()}-{time.monotonic_ns()}-{next(counter)}"

    return _make

