"""The wiring, end to end: real workers, PostgreSQL, Redis, Kafka and the sandbox."""
