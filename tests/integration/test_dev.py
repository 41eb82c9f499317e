"""`notifier dev`: the local loop in one command on the embedded default. It prints the URLs and an
admin key; a notification POSTed to the API with that key reaches `sent` on email and SMS (the
sandbox accepts the workers' Twilio token); Ctrl-C stops it with exit 0 and nothing left running.
"""
from __future__ import annotations

import re
import signal
import subprocess
import threading
import time

import psutil
import requests

from tests.integration.embedded import BIN, embedded_env, kill_redis_servers_in, redis_servers_in


def _read_until_ready(proc: subprocess.Popen, lines: list[str]) -> None:
    for line in proc.stdout:
        lines.append(line)


def test_dev_runs_the_local_loop_and_stops_clean(tmp_path):
    var_dir = tmp_path / "var"
    proc = subprocess.Popen([str(BIN / "notifier"), "dev", "--free-ports", "-c", "1"], env=embedded_env(var_dir),
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    threading.Thread(target=_read_until_ready, args=(proc, lines), daemon=True).start()
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 240
        while not any("notifier dev: ready" in line for line in lines):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.5)
        output = "".join(lines)
        api = re.search(r"API +(http://\S+)", output).group(1)
        key = re.search(r"API key +(\S+)", output).group(1)
        assert re.search(r"Flower +http://127\.0\.0\.1:\d+ +\(user dev, password \S+\)", output), output
        children = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
        [server] = redis_servers_in(var_dir)
        children.add(server)
        assert len(children) >= 6, output  # sandbox, worker (+ its pool), beat, API, Flower, Redis

        auth = {"Authorization": f"Bearer {key}"}
        prefs = requests.put(f"{api}/v1/users/ada/preferences", headers=auth, timeout=30,
                             json={"email": "ada@example.com", "phone": "+4790000001"})
        assert prefs.status_code == 200, prefs.text
        posted = requests.post(f"{api}/v1/notifications", headers=auth, timeout=30, json={
            "notification_id": "dev-1", "user_id": "ada", "type": "order_shipped", "category": "transactional",
            "priority": "high", "channels": ["email", "sms"], "title": "Shipped", "body": "On its way."})
        assert posted.status_code in (200, 201, 202), posted.text
        deadline = time.monotonic() + 60
        while True:
            deliveries = requests.get(f"{api}/v1/notifications/dev-1", headers=auth, timeout=30).json()["deliveries"]
            if sorted((d["channel"], d["status"]) for d in deliveries) == [("email", "sent"), ("sms", "sent")]:
                break
            assert time.monotonic() < deadline, deliveries
            time.sleep(0.5)

        proc.send_signal(signal.SIGINT)
        assert proc.wait(90) == 0, "".join(lines)
        time.sleep(0.5)
        left = [pid for pid in children if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
        assert left == [], f"left running: {left}\n{''.join(lines)}"
        assert "notifier dev: stopped" in "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in children:
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass
        kill_redis_servers_in(var_dir)
