"""Task policy in one place: a base class every notifier task uses."""
from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.exceptions import Retry
from celery.signals import after_setup_logger, after_setup_task_logger, worker_process_init, worker_process_shutdown

from notifier.ops import redaction, stage_cpu
from notifier.pipeline import summary
from notifier.store import task_context
from notifier.store.db import dispose_engines
from notifier.outages import OUTAGE_ERRORS

# Our own infrastructure failing (the database, Redis or the broker unreachable, a deadlock or
# serialization failure between two transactions, a database the code does not fit): the task
# is retried whole, with backoff, instead of failing and losing its events. Provider outcomes
# never land here. One list for the tasks and the bridge: notifier.outages says what is in it.
INFRASTRUCTURE_ERRORS = OUTAGE_ERRORS


class NotifierTask(Task):
    """Base task: late acks (set in celeryconfig), JSON args, short reprs for Flower."""

    abstract = True
    # acks_late and reject_on_worker_lost: celeryconfig's task_acks_late and
    # task_reject_on_worker_lost, which Celery copies onto every task of the app.
    # Provider retries are decided per delivery by notifier.pipeline.sending; Celery's retry covers only
    # our infrastructure being down, for up to about 1.5 hours (countdowns stay under the
    # broker's visibility timeout).
    autoretry_for = INFRASTRUCTURE_ERRORS
    retry_backoff = 2
    retry_backoff_max = 60
    retry_jitter = True
    max_retries = 100
    # Flower shows a task's result as Celery's repr of it, cut at this many characters (1024 by
    # default): room for a summary and summary.MAX_SHOWN notification ids.
    resultrepr_maxsize = 4096

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # The rows this task writes carry its id; its result names the notifications it handled.
        with task_context.running(self.request.id) as record:
            result = self._run_redacted(*args, **kwargs)
        if record is None or not record.notification_ids:
            return result
        if result is None:
            return summary.notifications(record.notification_ids)
        if isinstance(result, dict) and "notifications" not in result:
            return result | summary.notifications(record.notification_ids)
        return result

    def _run_redacted(self, *args: Any, **kwargs: Any) -> Any:
        try:
            with stage_cpu.measure(self.name):
                return super().__call__(*args, **kwargs)
        except Retry as retry:
            # Its text (worker log, Flower) quotes the exception retried for.
            if retry.exc is not None and redaction.redacted_exception(retry.exc) is not retry.exc:
                retry.exc = redaction.redacted_exception(retry.exc)
                retry.excs = repr(retry.exc)
            raise
        except Exception as exc:
            # What leaves a task is logged by the worker, sent to Flower in its failure event and
            # kept by a result backend: pycurl's errors quote https://…/3/device/<token>.
            safe = redaction.redacted_exception(exc)
            if safe is exc:
                raise
            raise safe from None

    def apply_async(self, args=None, kwargs=None, **options: Any):
        if "argsrepr" not in options:
            options["argsrepr"] = self.describe(args or (), kwargs or {})
        if "kwargsrepr" not in options:
            # describe() covers keyword arguments too; Celery's default repr would show their values.
            options["kwargsrepr"] = "{}" if not kwargs else "{" + ", ".join(f"{k!r}: …" for k in kwargs) + "}"
        return super().apply_async(args, kwargs, **options)

    def describe(self, args, kwargs) -> str:
        """What Flower shows as the task's arguments: ids and counts, never addresses or tokens."""
        ids = args[0] if args else kwargs.get("ids")
        if not isinstance(ids, (list, tuple)):
            return "()"
        head = ",".join(str(i) for i in ids[:5])
        more = f",…+{len(ids) - 5}" if len(ids) > 5 else ""
        lane = args[1] if len(args) > 1 else kwargs.get("lane")
        shard = kwargs.get("shard")  # only when sharded and not 0 (tasks.pipeline.on_shard_kwargs)
        return (f"deliveries=[{head}{more}] n={len(ids)}" + (f" lane={lane}" if lane else "")
                + (f" shard={shard}" if shard else ""))


class DeliveriesNotSent(Exception):
    """A send batch of which no delivery was sent: each failed or waits, `scheduled`, for its retry.

    Raised after every outcome is recorded, so that the task ends in Celery's FAILURE state, which
    Flower shows and counts (its workers page: Failed). Nothing is retried or redelivered because
    of it: see SendTask."""


class SendTask(NotifierTask):
    """A send stage: its result summarises the batch's deliveries; a batch that sent nothing fails.

    Why a FAILURE and not a custom state: Flower knows a task's state only from the worker's
    events, and a custom state (`update_state`) travels through a result backend, which we do not
    keep; a failed task is what Flower counts and what `celery events` and alerting see. The
    failure is only a report: the deliveries' retries live in the database (`scheduled` rows),
    never in Celery. So this exception is not in autoretry_for (no Celery retry), it is expected
    (`throws`: logged as one line, without a traceback), and the message is acknowledged like a
    success (`acks_on_failure`: Celery's default, pinned here so that no global setting turns a
    report into a redelivery; one would not break the guarantees, as a second run finds the rows
    recorded and skips them, but it would be a needless second task). docs/operations.md, "Flower"."""

    abstract = True
    throws = (DeliveriesNotSent,)
    acks_on_failure = True

    @staticmethod
    def settle(result: dict[str, Any]) -> dict[str, Any]:
        """The task's result, or DeliveriesNotSent when nothing of the batch was sent."""
        if summary.nothing_sent(result):
            raise DeliveriesNotSent(summary.describe(result))
        return result


@after_setup_logger.connect
@after_setup_task_logger.connect
def _redacted_logs(logger: logging.Logger, **_: Any) -> None:
    """Every line a worker or beat writes goes through the redaction filter."""
    redaction.install(logger)


@worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    """A forked worker child gets its own database pool and its own push transports."""
    dispose_engines()
    from notifier.providers import get_provider

    for name in ("apns", "fcm"):  # one HTTP/2 transport per process, ready before the first batch
        try:
            get_provider(name)
        except Exception as exc:  # noqa: BLE001 - not configured here: the send path reports it per delivery
            logging.getLogger(__name__).warning("provider %s not ready in this worker: %s", name, exc)


@worker_process_shutdown.connect
def _close_providers(**_: Any) -> None:
    from notifier.providers import close_all

    close_all()
