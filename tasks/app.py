"""The Celery app, configured only from celeryconfig.py."""
import redis
from celery import Celery
from kombu.transport import redis as kombu_redis


def _survive_redis_restart() -> None:
    """Let a worker outlive a Redis broker restart that finds it holding unacked messages.

    Celery 5.7.0 answers a lost broker connection with `connection.collect()` and then
    `connection.close()` (celery/celery#10242, "prevent graceful shutdown regression in connection
    recovery", which added the close). On the Redis transport, collect() ends with
    `transport.client = None`; when the channel was blocked in BRPOP, its first close stops at the
    failed read before marking itself closed, so the second close runs it again: it drops its
    pools, tries to restore the unacked messages through a new pool, and `_connparams` reads
    `self.connection.client.hostname` from None. That AttributeError is no connection error, so
    Celery's ignore_errors lets it through and the worker exits ("Unrecoverable error"). Here the
    same situation raises the transport's own connection error, which the close path ignores, as
    it ignores a restore that fails because Redis is down. The messages stay in Redis's unacked
    set and come back after the visibility timeout, as they would have anyway: Redis was down.
    Still present in kombu 5.7.0 and upstream main; remove once kombu's Channel.close no longer
    reconnects from a collected connection. Test: tests/integration/test_broker_restart.py.
    """
    connparams = kombu_redis.Channel._connparams
    if getattr(connparams, "_notifier_guarded", False):
        return

    def _connparams(self, asynchronous=False):
        if self.connection is None or self.connection.client is None:
            raise redis.exceptions.ConnectionError("the broker connection was already closed (collected)")
        return connparams(self, asynchronous=asynchronous)

    _connparams._notifier_guarded = True
    kombu_redis.Channel._connparams = _connparams


def _sub_second_countdowns_on_quorum_queues() -> None:
    """Let an ETA less than a second away be published on RabbitMQ quorum queues.

    With quorum queues Celery routes ETAs through RabbitMQ's native delayed delivery, a ladder of
    queues whose TTLs are whole seconds: it calls `calculate_routing_key(int(countdown), ...)`,
    and kombu refuses 0 ("countdown must be a positive number"), so an ETA 0.3 s away raises in
    the producer (our release of due deliveries hands Celery such ETAs). Here 0 becomes 1: the
    message waits a second in the broker, and the worker honours the rest of its `eta` header as
    for any other ETA. Celery 5.7.0, celery/app/base.py `send_task`; remove when it rounds up itself.
    """
    from celery.app import base

    calculate = base.calculate_routing_key
    if getattr(calculate, "_notifier_guarded", False):
        return

    def calculate_routing_key(countdown: int, routing_key: str) -> str:
        return calculate(max(1, countdown), routing_key)

    calculate_routing_key._notifier_guarded = True
    base.calculate_routing_key = calculate_routing_key


_survive_redis_restart()
_sub_second_countdowns_on_quorum_queues()

app = Celery("notifier")
app.config_from_object("celeryconfig")
app.autodiscover_tasks(["tasks"], related_name="pipeline", force=True)
