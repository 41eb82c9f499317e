"""Ports for sandboxes and servers: two processes picking at once never get the same one."""
from __future__ import annotations

import os
import subprocess
import sys

from sandbox import devstack
from sandbox.devstack import ROOT, free_port


def test_ports_one_process_picked_are_not_picked_by_another():
    mine = {free_port() for _ in range(300)}
    other = subprocess.run([sys.executable, "-c", "from sandbox.devstack import free_port\n"
                            "print(*[free_port() for _ in range(300)])"],
                           cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    theirs = {int(p) for p in other.stdout.split()}
    assert len(theirs) == 300
    # Without the markers ~7 of 300 x 300 random picks among 12,768 ports would coincide
    assert mine.isdisjoint(theirs)


def test_a_port_held_by_a_process_that_is_gone_is_taken_over():
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    port = 20000 + int(gone) % 12000
    marker = devstack._PICKED / str(port)
    devstack._PICKED.mkdir(exist_ok=True)
    marker.write_text(gone)
    assert devstack._hold(port)
    assert marker.read_text() == str(os.getpid())
    assert not devstack._hold(port)  # now ours: not handed out twice
