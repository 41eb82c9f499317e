"""`python -m bench --profile`: py-spy on every measured process, summarised per function.

py-spy samples a running process from outside (no code of ours changes, nothing to turn off),
so the profile is of the very run whose figures the JSON line reports. Each process kind's
samples are folded into the functions that spend them (self) and the calls that contain them
(inclusive), written next to the report as <report>.profile.txt, with the raw stacks
(flamegraph-ready "collapsed" format) beside it.
"""
from __future__ import annotations

import shutil
import sys
import signal
import subprocess
from collections import Counter
from pathlib import Path

RATE = 200  # samples per second: enough for a 10 s phase, light enough not to be what is measured


class Profiler:
    def __init__(self, procs: dict[str, subprocess.Popen], out_dir: Path) -> None:
        self._procs = procs
        self._dir = out_dir
        self._spies: dict[str, subprocess.Popen] = {}

    def start(self) -> None:
        binary = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        self._dir.mkdir(parents=True, exist_ok=True)
        for name, proc in self._procs.items():
            self._spies[name] = subprocess.Popen(
                [binary, "record", "--pid", str(proc.pid), "--rate", str(RATE), "--format", "raw", "--nonblocking",
                 "--output", str(self._dir / f"{name}.collapsed")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )

    def stop(self) -> None:
        for spy in self._spies.values():
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for spy in self._spies.values():
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()


def _kind(name: str) -> str:
    return name.rstrip("0123456789")


def summarise(out_dir: Path, top: int = 25) -> str:
    """Per process kind: the functions with the most samples on CPU, self and inclusive, as text."""
    kinds: dict[str, tuple[Counter, Counter, int]] = {}
    for path in sorted(out_dir.glob("*.collapsed")):
        own, inclusive, total = kinds.setdefault(_kind(path.stem), (Counter(), Counter(), 0))
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = stack.split(";")
            total += n
            own[_short(frames[-1])] += n
            for frame in {_short(f) for f in frames}:
                inclusive[frame] += n
        kinds[_kind(path.stem)] = (own, inclusive, total)
    lines = []
    for kind, (own, inclusive, total) in kinds.items():
        lines.append(f"== {kind}: {total} samples on CPU at {RATE}/s")
        lines.append("   self %   function")
        lines += [f"   {n / total * 100:6.1f}   {f}" for f, n in own.most_common(top)]
        lines.append("   incl %   function")
        lines += [f"   {n / total * 100:6.1f}   {f}" for f, n in inclusive.most_common(top)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    """'send_batch (notifier/providers/apns.py:120)' -> 'send_batch (notifier/providers/apns.py)'."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"
