"""The log's lifecycle rules that need no database: partition names and bounds, the window setting."""
from __future__ import annotations

from datetime import date

import pytest
from pydantic import ValidationError

from notifier.pipeline import routing
from notifier.settings import Settings
from notifier.store import partitions


def test_a_partition_holds_one_utc_day():
    sql = partitions.create_sql(date(2026, 12, 31))
    assert '"notification_log_p20261231" PARTITION OF "notification_log"' in sql
    assert "FROM ('2026-12-31T00:00:00+00:00') TO ('2027-01-01T00:00:00+00:00')" in sql


def test_the_dedup_window_may_not_be_shorter_than_retention():
    with pytest.raises(ValidationError, match="NOTIFIER_DEDUP_WINDOW_DAYS"):
        Settings(log_retention_days=30, dedup_window_days=7)
    assert Settings(log_retention_days=7, dedup_window_days=7).dedup_window_days == 7


def test_repeats_of_one_notification_share_one_key_per_reason():
    # One `duplicate` row per id and reason, however often it repeats.
    assert routing.repeat_key("n1", routing.REPEAT_REASON) == routing.repeat_key("n1", routing.REPEAT_REASON)
    assert routing.repeat_key("n1", routing.REPEAT_REASON) != routing.repeat_key("n1", routing.CONFLICT_REASON)
