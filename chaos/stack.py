"""The notifier's own processes for one scenario: bridges per lane, workers per lane and role, beat.

Laid out as docker/compose.yaml deploys them (smaller): a bridge per lane, pipeline and push
workers per lane (solo pool on the high lane, prefork on the low lane), a scheduler worker and
beat. Each process leads its own process group, so a kill takes the whole worker (parent and
children) as a lost machine or an OOM kill would. A supervisor thread restarts a process that
exits on its own, as compose's `restart: unless-stopped` does, and counts it as a crash.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (role, queues, pool, concurrency): the worker groups of compose.yaml that push needs.
WORKERS = (
    ("pipeline-high", "pipeline.high", "solo", 1),
    ("pipeline-low", "pipeline.low", "prefork", 2),
    ("push-high", "push.high", "solo", 1),
    ("push-low", "push.low", "prefork", 2),
    ("scheduler", "scheduler", "prefork", 1),
)
# What says a process is up, in its log.
READY = {"worker": b" ready.", "bridge": b"bridge: assigned", "beat": b"beat: Starting"}


@dataclass
class Role:
    name: str
    argv: list[str]
    ready: bytes
    log: Path
    proc: subprocess.Popen | None = None
    down: bool = False  # taken down on purpose: the supervisor leaves it alone
    crashes: list[int] = field(default_factory=list)  # exit codes of exits nobody asked for
    kills: int = 0


class Stack:
    """Start, kill, pause and stop the processes of one scenario."""

    def __init__(self, env: dict[str, str], logs: Path, topics: dict[str, str], dead_letter_topic: str,
                 group: str) -> None:
        self.env = env
        self.logs = logs
        self.roles: dict[str, Role] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        celery = [sys.executable, "-m", "celery", "-A", "tasks.app"]
        for name, queues, pool, concurrency in WORKERS:
            self._add(name, [*celery, "worker", "-Q", queues, "-P", pool, "-c", str(concurrency),
                             "-n", f"chaos-{name}@%h", "--loglevel", "INFO", "--without-gossip",
                             "--without-mingle", "-E"], READY["worker"])
        for lane, batch_ms in (("high", 20), ("low", 200)):  # as compose.yaml's bridges
            self._add(f"bridge-{lane}", [sys.executable, "-m", "entrypoints.cli", "bridge", "--topics", topics[lane],
                                         "--group", f"{group}-{lane}", "--dead-letter-topic", dead_letter_topic,
                                         "--batch-ms", str(batch_ms), "--stats-interval", "15"], READY["bridge"])
        self._add("beat", [*celery, "beat", "--loglevel", "INFO", "-s", str(logs / "celerybeat-schedule")],
                  READY["beat"])

    def _add(self, name: str, argv: list[str], ready: bytes) -> None:
        self.roles[name] = Role(name, argv, ready, self.logs / f"{name}.log")

    def _spawn(self, role: Role) -> None:
        role.log.parent.mkdir(parents=True, exist_ok=True)
        role.proc = subprocess.Popen(role.argv, env=self.env, cwd=ROOT, stdin=subprocess.DEVNULL,
                                     stdout=role.log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)

    def start(self, timeout_s: float = 120) -> None:
        """Start every process at once, wait until each says it is up, then supervise them."""
        offsets = {}
        for role in self.roles.values():
            offsets[role.name] = role.log.stat().st_size if role.log.exists() else 0
            self._spawn(role)
        deadline = time.monotonic() + timeout_s
        waiting = set(self.roles)
        while waiting:
            for name in list(waiting):
                role = self.roles[name]
                with role.log.open("rb") as f:
                    f.seek(offsets[name])
                    if role.ready in f.read():
                        waiting.discard(name)
                        continue
                if role.proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {role.proc.returncode} while starting; "
                                       f"log:\n{role.log.read_text(errors='replace')[-3000:]}")
            if waiting and time.monotonic() > deadline:
                raise TimeoutError(f"not up after {timeout_s:.0f}s: {', '.join(sorted(waiting))}")
            time.sleep(0.2)
        self._supervisor = threading.Thread(target=self._supervise, name="chaos-supervisor", daemon=True)
        self._supervisor.start()

    def _supervise(self) -> None:
        while not self._stopping.wait(0.5):
            with self._lock:
                for role in self.roles.values():
                    if role.down or role.proc is None or role.proc.poll() is None:
                        continue
                    role.crashes.append(role.proc.returncode)
                    print(f"chaos:   {role.name} exited by itself ({role.proc.returncode}); restarting it",
                          flush=True)
                    self._spawn(role)

    def kill(self, name: str, *, restart_after_s: float | None = 0.0) -> None:
        """SIGKILL a process's whole group; start it again after restart_after_s (None: leave it down)."""
        role = self.roles[name]
        with self._lock:
            role.down = True
            _signal_group(role.proc, signal.SIGKILL)
            role.proc.wait(10)
            role.kills += 1
        if restart_after_s is not None:
            time.sleep(restart_after_s)
            self.restart(name)

    def restart(self, name: str) -> None:
        role = self.roles[name]
        with self._lock:
            self._spawn(role)
            role.down = False

    def pause(self, names: list[str]) -> None:
        """SIGSTOP whole groups: nothing of theirs runs until resume()."""
        for name in names:
            _signal_group(self.roles[name].proc, signal.SIGSTOP)

    def resume(self, names: list[str]) -> None:
        for name in names:
            _signal_group(self.roles[name].proc, signal.SIGCONT)

    def stop(self, timeout_s: float = 20) -> None:
        """SIGTERM every group (warm shutdown), SIGKILL what is left after timeout_s."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(5)
        with self._lock:
            live = [r for r in self.roles.values() if r.proc is not None and r.proc.poll() is None]
            for role in live:
                _signal_group(role.proc, signal.SIGCONT)
                _signal_group(role.proc, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            for role in live:
                try:
                    role.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            for role in self.roles.values():
                if role.proc is not None:
                    _signal_group(role.proc, signal.SIGKILL)  # the group: children a dead parent left behind
                    try:
                        role.proc.wait(5)
                    except subprocess.TimeoutExpired:
                        pass

    def crashes(self) -> dict[str, int]:
        return {r.name: len(r.crashes) for r in self.roles.values() if r.crashes}

    def log_bytes(self) -> int:
        return sum(r.log.stat().st_size for r in self.roles.values() if r.log.exists())


def _signal_group(proc: subprocess.Popen | None, sig: int) -> None:
    if proc is None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
