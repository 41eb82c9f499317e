"""Hold what the sandbox has seen and what it has been told to break.

Shared by every provider of the sandbox and by the control API. Everything runs
on the sandbox's one event loop thread, so nothing here takes a lock.
"""

from __future__ import annotations

import fnmatch
import random
import re
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


class HasStats(Protocol):
    stats: Any

    def reset_stats(self) -> None: ...


@dataclass(slots=True)
class Fault:
    """One injected fault: what to do to requests whose target matches."""

    provider: str
    target: str = "*"  # fnmatch pattern on the provider's target (device token, address, number)
    status: int | None = None  # answer with this status (and the provider's reason for it) unprocessed
    reason: str | None = None  # ... or with this reason (and its status)
    retry_after: int | None = None  # seconds, in a Retry-After header on that answer
    latency_ms: int = 0  # answer (or drop, or refuse) this much later
    drop: bool = False  # close the connection instead of answering
    refuse: bool = False  # reset the stream with REFUSED_STREAM instead of answering
    goaway_after: int | None = None  # process this request and n-1 more on its connection, then GOAWAY
    count: int | None = 1  # requests left to hit; None: every matching request until reset
    fraction: float | None = None  # hit this share of matching requests instead of a count
    hits: int = 0
    created_at: float = field(default_factory=time.time)  # a 410's timestamp: when the token died
    _match: Any = field(default=None, repr=False)

    def matches(self, target: str) -> bool:
        return self._match(target) is not None

    @property
    def delay_s(self) -> float:
        return self.latency_ms / 1000

    def answers_error(self, ok_status: int) -> bool:
        """True if the fault answers with an error instead of processing (its status, or a reason)."""
        return bool((self.status and self.status != ok_status) or self.reason)

    def retry_after_header(self, name: str = "Retry-After") -> list[tuple[str, str]]:
        return [] if self.retry_after is None else [(name, str(self.retry_after))]

    def public(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "target": self.target,
            "status": self.status,
            "reason": self.reason,
            "retry_after": self.retry_after,
            "latency_ms": self.latency_ms,
            "drop": self.drop,
            "refuse": self.refuse,
            "goaway_after": self.goaway_after,
            "count": self.count,
            "fraction": self.fraction,
            "hits": self.hits,
        }


_FAULT_FIELDS = {
    "provider", "target", "status", "reason", "retry_after", "latency_ms",
    "drop", "refuse", "goaway_after", "count", "fraction",
}  # fmt: skip


def fault_from_json(spec: Any, providers: set[str]) -> Fault:
    """Validate a fault as posted to the control API; raise ValueError naming the bad field."""
    if not isinstance(spec, dict):
        raise ValueError("body: expected a JSON object")
    unknown = set(spec) - _FAULT_FIELDS
    if unknown:
        raise ValueError(f"{sorted(unknown)[0]}: unknown field")
    provider = spec.get("provider")
    if provider not in providers:
        raise ValueError(f"provider: expected one of {sorted(providers)}")
    target = spec.get("target", "*")
    if not isinstance(target, str) or not target:
        raise ValueError("target: expected a non-empty fnmatch pattern")

    def opt_int(name: str, low: int, high: int | None = None) -> int | None:
        value = spec.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            bound = f"{low}..{high}" if high is not None else f">= {low}"
            raise ValueError(f"{name}: expected an integer {bound}")
        return value

    status = opt_int("status", 100, 599)
    reason = spec.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise ValueError("reason: expected a string")
    drop = spec.get("drop", False)
    if not isinstance(drop, bool):
        raise ValueError("drop: expected true or false")
    refuse = spec.get("refuse", False)
    if not isinstance(refuse, bool):
        raise ValueError("refuse: expected true or false")
    fraction = spec.get("fraction")
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
            raise ValueError("fraction: expected a number from 0 to 1")
        fraction = float(fraction)
    count = opt_int("count", 1) if "count" in spec else 1
    fault = Fault(
        provider=provider,
        target=target,
        status=status,
        reason=reason,
        retry_after=opt_int("retry_after", 0),
        latency_ms=opt_int("latency_ms", 0) or 0,
        drop=drop,
        refuse=refuse,
        goaway_after=opt_int("goaway_after", 0),
        count=None if fraction is not None else count,
        fraction=fraction,
    )
    if not (fault.status or fault.reason or fault.latency_ms or fault.drop or fault.refuse
            or fault.goaway_after is not None):
        raise ValueError("fault: set at least one of status, reason, latency_ms, drop, refuse, goaway_after")
    fault._match = re.compile(fnmatch.translate(target)).match
    return fault


class SandboxState:
    """Records of accepted requests, request counters, faults and the servers' connection stats."""

    def __init__(self, *, max_records: int = 100_000, seed: int | None = None) -> None:
        self.records: deque[dict[str, Any]] = deque(maxlen=max_records)
        self.request_counts: Counter[str] = Counter()
        self.faults: dict[str, list[Fault]] = {}
        self.servers: dict[str, HasStats] = {}
        self.endpoints: dict[str, str] = {}
        self._random = random.Random(seed)

    @property
    def providers(self) -> set[str]:
        return set(self.servers)

    def register(self, provider: str, server: HasStats, url: str) -> None:
        self.servers[provider] = server
        self.endpoints[provider] = url

    def count_request(self, provider: str) -> None:
        self.request_counts[provider] += 1

    def fault_for(self, provider: str, target: str) -> Fault | None:
        """The fault that hits this request, if any (the common case, no fault armed, costs one lookup)."""
        return self.take_fault(provider, target) if self.faults else None

    def take_fault(self, provider: str, target: str) -> Fault | None:
        """Return the first fault that hits this request, using up one of its count."""
        return self.take_first(provider, lambda fault: fault.matches(target))

    def take_first(self, provider: str, wanted: Callable[[Fault], bool]) -> Fault | None:
        """Return the first of a provider's faults that is `wanted` and hits now, using up one of its count."""
        faults = self.faults.get(provider)
        if not faults:
            return None
        for fault in list(faults):
            if not wanted(fault):
                continue
            if fault.fraction is not None:
                if self._random.random() >= fault.fraction:
                    continue
            elif fault.count is not None:
                fault.count -= 1
                if fault.count <= 0:
                    faults.remove(fault)
            fault.hits += 1
            return fault
        return None

    def add_fault(self, fault: Fault) -> None:
        self.faults.setdefault(fault.provider, []).append(fault)

    def record(self, provider: str, target: str, message_id: str, headers: dict[str, str], payload: Any,
               credentials: dict[str, str] | None = None, extra: dict[str, Any] | None = None) -> None:
        """Keep an accepted request; `credentials` names what signed it (app, key id, service account)."""
        self.records.append(
            {
                "provider": provider,
                "target": target,
                "id": message_id,
                "headers": headers,
                "payload": payload,
                "received_at": time.time(),
                **({"credentials": credentials} if credentials else {}),
                **(extra or {}),
            }
        )

    def messages(self, provider: str | None = None, target: str | None = None) -> list[dict[str, Any]]:
        return [
            r
            for r in self.records
            if (provider is None or r["provider"] == provider) and (target is None or r["target"] == target)
        ]

    def connections(self, provider: str) -> dict[str, int]:
        stats = self.servers[provider].stats
        return {"accepted": stats.accepted, "open": stats.open}

    def reset(self) -> None:
        """Forget records, counters and faults; open connections stay open."""
        self.records.clear()
        self.request_counts.clear()
        self.faults.clear()
        for server in self.servers.values():
            server.reset_stats()
