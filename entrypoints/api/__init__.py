"""The HTTP API: producers that are not Python, operators, and provider webhooks.

Run it with `notifier api`; `entrypoints.api.app:app` is the ASGI application.
"""
