"""Intake: validate an event, store its deliveries, publish to and consume from Kafka."""
