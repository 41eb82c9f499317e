"""What a task tells Flower: a send batch's summary, when it counts as failed, the notifications named.

The wiring through real workers and Flower is tests/integration/test_flower.py; these pin the rules.
"""
from __future__ import annotations

import pytest

from notifier.ops.redaction import redacted_exception
from notifier.pipeline import summary
from notifier.pipeline.summary import nothing_sent, send_outcome, send_summary
from notifier.providers.base import OutcomeKind as K
from notifier.store import task_context
from notifier.store.models import Status as S
from tasks.base import INFRASTRUCTURE_ERRORS, DeliveriesNotSent, SendTask
from tasks.pipeline import send_email, send_push, send_sms


@pytest.mark.parametrize(("kind", "status", "outcome"), [
    (K.OK, S.SENT, "sent"),
    (K.RETRY, S.SCHEDULED, "retry"),
    (K.MISCONFIGURED, S.SCHEDULED, "retry"),
    (K.RETRY, S.FAILED, "failed"),  # the last attempt
    (K.FAILED, S.FAILED, "failed"),
    (K.TOKEN_INVALID, S.FAILED, "token_invalid"),
    (K.UNSUBSCRIBED, S.FAILED, "unsubscribed"),
])
def test_each_attempt_has_one_outcome_name(kind, status, outcome):
    assert send_outcome(kind, status.value) == outcome


def test_a_summary_counts_every_outcome_and_what_was_no_longer_sending():
    result = send_summary(5, [("n-1", "sent"), ("n-1", "retry"), ("n-2", "duplicate"), ("n-3", "token_invalid")])
    assert result == {"deliveries": 5, "sent": 1, "retry": 1, "failed": 0, "token_invalid": 1, "unsubscribed": 0,
                      "duplicate": 1, "skipped": 1, "notifications": ["n-1", "n-2", "n-3"]}


@pytest.mark.parametrize(("outcomes", "failed"), [
    ([("n", "retry"), ("n", "retry")], True),  # every delivery rescheduled
    ([("n", "failed"), ("n", "retry"), ("n", "token_invalid")], True),
    ([("n", "unsubscribed")], True),
    ([("n", "retry"), ("n", "duplicate")], True),  # what this task attempted, it did not send
    ([("n", "sent"), ("n", "retry")], False),  # one sent: the batch did its job in part
    ([("n", "duplicate")], False),  # nothing attempted: a repeat of a message, not a failure
    ([], False),  # every delivery already recorded elsewhere (skipped)
])
def test_a_batch_fails_when_it_attempted_and_sent_nothing(outcomes, failed):
    assert nothing_sent(send_summary(len(outcomes) + 1, outcomes)) is failed


def test_notification_ids_are_shown_redacted_and_bounded():
    ids = [f"n-{i:03}" for i in range(summary.MAX_SHOWN + 7)] + ["ada@example.com"]
    shown = summary.notifications(ids + ids)
    assert shown["notifications_more"] == 8 and len(shown["notifications"]) == summary.MAX_SHOWN
    assert summary.notifications(["ada@example.com"]) == {"notifications": ["a…@example.com"]}
    assert summary.shown_in_args(["b", "a"]) == "notifications=[a,b]"
    assert summary.shown_in_args(ids).endswith(",…+8]")


def test_a_batch_that_sent_nothing_raises_a_failure_naming_counts_and_notifications():
    result = send_summary(2, [("n-1", "retry"), ("ada@example.com", "retry")])
    with pytest.raises(DeliveriesNotSent) as raised:
        SendTask.settle(result)
    text = str(raised.value)
    assert text.startswith("none of 2 deliveries sent (2 retry): {")
    assert '"notifications": ["a…@example.com", "n-1"]' in text and "ada@" not in text
    # Already redacted: the task base passes it on as is (a RedactedError would lose `throws`).
    assert redacted_exception(raised.value) is raised.value
    partial = send_summary(2, [("n-1", "sent"), ("n-2", "retry")])
    assert SendTask.settle(partial) is partial


@pytest.mark.parametrize("task", [send_push, send_email, send_sms])
def test_a_failed_send_task_is_acknowledged_and_never_retried_by_celery(task):
    assert task.throws == (DeliveriesNotSent,)  # expected: one log line, no traceback
    assert not issubclass(DeliveriesNotSent, INFRASTRUCTURE_ERRORS)  # no autoretry
    assert task.acks_late and task.acks_on_failure  # acked like a success: no redelivery
    assert task.resultrepr_maxsize >= 4096


def test_the_task_context_is_only_set_inside_a_task():
    assert task_context.current() is None
    with task_context.running("t-1") as record:
        assert task_context.current() is record and record.task_id == "t-1"
        record.note(["n-1", "n-1"])
        with task_context.running(None):
            assert task_context.current() is None
    assert task_context.current() is None and record.notification_ids == {"n-1"}
