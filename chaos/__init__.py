"""`make chaos`: a fault campaign against the whole stack, on private services, on loopback.

Development tooling, outside the product package: it starts its own Redis, PostgreSQL and
Kafka (configured as scripts/services.sh configures the shared ones, on other ports, with data
under var/chaos/), its own sandbox, bridges and Celery workers, drives events through Kafka,
breaks one thing per scenario and measures what was lost, stuck or sent twice.
"""
