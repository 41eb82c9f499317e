"""Pytest fixtures that run the sandbox as a real subprocess.

Import them into a test module or a conftest
(``from tests.integration.sandbox_fixture import sandbox_process, clean_sandbox_process``).
Keys and the TLS certificate are generated at run time in a temporary
directory.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from sandbox.process import SandboxProcess, start_sandbox


@pytest.fixture(scope="session")
def sandbox_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    """One sandbox process for the session; exits cleanly on SIGTERM at the end."""
    process = start_sandbox(tmp_path_factory.mktemp("sandbox"))
    yield process
    assert process.stop() == 0, "sandbox did not exit cleanly on SIGTERM"


@pytest.fixture
def clean_sandbox_process(sandbox_process: SandboxProcess) -> SandboxProcess:
    """The session sandbox with no records, counters or faults left from other tests."""
    sandbox_process.client.reset()
    return sandbox_process


def device_token() -> str:
    """Return a well-formed, random APNs device token (64 hex digits)."""
    return secrets.token_hex(32)
