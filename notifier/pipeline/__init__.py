"""The pipeline stages: route, filter, dedup, send, schedule."""
