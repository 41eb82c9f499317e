"""Measure the client CPU that Http2Transport spends per APNs request.

Starts the sandbox in a child process (its CPU is not counted), sends N pushes
in batches through one Http2Transport, and reports this process's CPU time
(time.process_time) per request, plus wall-clock throughput:

    .venv/bin/python bench/transport_bench.py --requests 20000 --batch 200
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandbox.process import start_sandbox  # noqa: E402
from notifier.providers.transport import Http2Transport, HttpRequest  # noqa: E402

PAYLOAD = b'{"aps":{"alert":{"title":"Order shipped","body":"Your order 12345 is on its way"},"sound":"default"}}'


def run(requests: int, batch: int, rounds: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="transport-bench-") as tmp, start_sandbox(tmp) as sandbox:
        headers = {
            "authorization": f"bearer {sandbox.apns_jwt()}",
            "apns-topic": sandbox.config.apns_topic,
            "apns-push-type": "alert",
            "apns-priority": "10",
            "content-type": "application/json",
        }
        base = f"{sandbox.apns_url}/3/device/"
        pushes = [HttpRequest("POST", base + secrets.token_hex(32), headers, PAYLOAD, i) for i in range(requests)]
        batches = [pushes[i : i + batch] for i in range(0, requests, batch)]
        with Http2Transport(ca_file=str(sandbox.cert_path)) as transport:
            # Warm up: TLS handshake, the stream limit opening up, handle pool filled.
            transport.send_all(batches[0])
            cpu_us: list[float] = []
            rates: list[float] = []
            for _ in range(rounds):
                cpu_started, wall_started = time.process_time(), time.perf_counter()
                failed = 0
                for chunk in batches:
                    failed += sum(1 for r in transport.send_all(chunk) if r.status != 200)
                cpu, wall = time.process_time() - cpu_started, time.perf_counter() - wall_started
                if failed:
                    raise SystemExit(f"{failed} requests did not get 200; the figure would be meaningless")
                cpu_us.append(cpu / requests * 1e6)
                rates.append(requests / wall)
        connections = sandbox.client.connections()["accepted"]
    return {
        "requests": requests,
        "batch": batch,
        "rounds": rounds,
        "cpu_us_per_request_best": round(min(cpu_us), 1),
        "cpu_us_per_request_median": round(sorted(cpu_us)[len(cpu_us) // 2], 1),
        "requests_per_s_wall_median": round(sorted(rates)[len(rates) // 2]),
        "connections": connections,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000, help="requests per round (default 20000)")
    parser.add_argument("--batch", type=int, default=200, help="requests per send_all call (default 200)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; best and median are reported (default 3)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = parser.parse_args()
    result = run(args.requests, args.batch, args.rounds)
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"Http2Transport: {result['cpu_us_per_request_median']} µs client CPU per request "
        f"(best {result['cpu_us_per_request_best']}), {result['requests']} requests x {result['rounds']} rounds "
        f"in batches of {result['batch']}, {result['requests_per_s_wall_median']} requests/s wall "
        f"(bounded by the pure-Python sandbox), {result['connections']} connection(s)"
    )


if __name__ == "__main__":
    main()
