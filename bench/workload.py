"""The benchmark's workload: users with devices and preferences, and a realistic event mix."""
from __future__ import annotations

import random
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from sqlalchemy import insert
from sqlalchemy.orm import Session

from notifier.store.models import DeviceToken, UserPreferences

QUIET_TZ = "Asia/Tokyo"


@dataclass
class Workload:
    events: list[dict]
    dead_tokens: list[str] = field(default_factory=list)
    users: int = 0
    expect: dict[str, int] = field(default_factory=dict)
    prefs: list[dict] = field(default_factory=list)  # the users' rows, for a caller that places them (shards)
    devices: list[dict] = field(default_factory=list)


def _quiet_window_now() -> tuple[str, str]:
    """A quiet-hours window (in QUIET_TZ) that holds now and for the next two hours."""
    local = datetime.now(timezone.utc).astimezone(ZoneInfo(QUIET_TZ))
    start = (local - timedelta(hours=1)).time().replace(microsecond=0)
    end = (local + timedelta(hours=2)).time().replace(microsecond=0)
    return start.isoformat(), end.isoformat()


def build(session: Session | None, n_events: int, *, prefix: str, seed: int = 7, high_share: float = 0.2) -> Workload:
    """Create users (bulk insert into `session`; None: left to the caller in .prefs and .devices) and
    return n_events events over them.

    Mix: 5% of users have push off, 10% opted out of marketing, 5% are in quiet hours,
    2% have a token APNs says is dead; 20% of events are high priority, 3% are duplicates.
    """
    rng = random.Random(seed)
    n_users = max(10, n_events // 8)
    quiet_start, quiet_end = _quiet_window_now()
    prefs, devices, dead = [], [], []
    for i in range(n_users):
        user = f"{prefix}u{i}"
        roll = rng.random()
        row = {"user_id": user, "push_enabled": True, "email_enabled": True, "sms_enabled": True,
               "opted_out_categories": [], "quiet_start": None, "quiet_end": None, "timezone": None}
        if roll < 0.05:
            row["push_enabled"] = False
        elif roll < 0.15:
            row["opted_out_categories"] = ["marketing"]
        elif roll < 0.20:
            row |= {"quiet_start": datetime.strptime(quiet_start, "%H:%M:%S").time(),
                    "quiet_end": datetime.strptime(quiet_end, "%H:%M:%S").time(), "timezone": QUIET_TZ}
        prefs.append(row)
        token = secrets.token_hex(32)
        devices.append({"user_id": user, "token": token, "platform": "ios"})
        if rng.random() < 0.02:
            dead.append(token)
    if session is not None:
        session.execute(insert(UserPreferences), prefs)
        session.execute(insert(DeviceToken), devices)

    events = []
    for i in range(n_events):
        high = rng.random() < high_share
        category = "security" if high and rng.random() < 0.3 else (
            "transactional" if high else rng.choice(["marketing", "social", "transactional"]))
        events.append({
            "notification_id": f"{prefix}e{i}",
            "user_id": f"{prefix}u{rng.randrange(n_users)}",
            "type": "bench",
            "category": category,
            "priority": ("critical" if category == "security" else "high") if high else rng.choice(["normal", "low"]),
            "channels": ["push"],
            "title": "Benchmark",
            "body": "A notification of realistic length, about as long as an order update or a reply.",
            "data": {"bench_lane": "high" if high else "low"},
        })
    duplicates = [dict(e) for e in rng.sample(events, k=int(n_events * 0.03))]
    for d in duplicates:
        events.insert(rng.randrange(len(events)), d)
    return Workload(events=events, dead_tokens=dead, users=n_users, expect={"duplicates": len(duplicates)},
                    prefs=prefs, devices=devices)
