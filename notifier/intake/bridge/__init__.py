"""The Kafka bridge: consume notification events and hand them to Celery in batches.

At-least-once: a partition's offset is committed only once every message before it has
been handed over — enqueued to Celery, or produced to the dead-letter topic and
acknowledged by Kafka. A message consumed twice (after a crash or a rebalance) is
harmless: route() records a repeated notification_id as a `duplicate`, not a second
delivery.

One message never stalls a lane. Only an outage of our infrastructure (notifier.outages)
holds a batch; a batch whose hand-over fails for any other reason is split until the events
at fault are found, and those are dead-lettered. A dead letter carries the original key,
value and headers after ours: source_topic, source_partition, source_offset and error. One
too large for a Kafka record keeps a prefix of its value and says so: truncated=true,
original_size, original_sha256 (and original_key_size/original_key_sha256,
original_headers_dropped when the key or the producer's headers were cut too). A letter
Kafka refuses is retried with backoff while the events behind it flow on; the committed
offset waits at it.

Modules: consumer (the Bridge and its loop), messages (decoding), ledger (offsets),
dead_letters, commits, rebalances, topics, kafka_log.
"""
