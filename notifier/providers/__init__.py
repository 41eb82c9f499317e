"""Provider adapters, one module each, behind one interface and a registry by name."""
from __future__ import annotations

import importlib
import os
import threading

from notifier.apps import DEFAULT_APP, get_app
from notifier.providers.base import Delivery, OnOutcome, Outcome, OutcomeKind, Provider
from notifier.settings import get_settings

# name -> "module:Class"; a provider is built lazily, once per app per worker process.
REGISTRY: dict[str, str] = {
    "apns": "notifier.providers.apns:ApnsProvider",
    "fcm": "notifier.providers.fcm:FcmProvider",
    "sendgrid": "notifier.providers.sendgrid.adapter:SendgridProvider",
    "smtp": "notifier.providers.smtp:SmtpProvider",
    "twilio": "notifier.providers.twilio.adapter:TwilioProvider",
    "webpush": "notifier.providers.webpush:WebPushProvider",
}

# (provider, app, thread) -> adapter. Each app's adapter holds its own credentials: its own HTTP/2
# connection, its own APNs JWT or FCM access token, so apps never sign for each other. And each
# thread its own adapter: a transport is not thread-safe, and a worker on Celery's threads pool
# (`-P threads -c N`) keeps N batches in flight per process, each on its thread's connection.
_instances: dict[tuple[str, str, int], Provider] = {}
_pid = os.getpid()
_lock = threading.Lock()


def get_provider(name: str, app: str | None = None) -> Provider:
    """Return this process's adapter for provider `name` with `app`'s credentials (None: the default app).

    Raises notifier.apps.Misconfigured when the app cannot send through it (unknown app, no
    credentials for it, a bad section), and whatever the adapter raises when its key cannot be read."""
    global _pid
    if _pid != os.getpid():  # forked: the parent's connections are not ours
        _instances.clear()
        _pid = os.getpid()
    key = (name, app or DEFAULT_APP, threading.get_ident())
    provider = _instances.get(key)
    if provider is None:
        try:
            module, cls = REGISTRY[name].split(":")
        except KeyError:
            raise LookupError(f"unknown provider {name!r}; known: {', '.join(sorted(REGISTRY))}") from None
        adapter = getattr(importlib.import_module(module), cls)
        if key[1] == DEFAULT_APP:
            provider = adapter()
        else:
            settings = get_settings()
            provider = adapter(get_app(key[1], settings).settings_for(name, settings))
        with _lock:
            _instances[key] = provider
    return provider


def close_all() -> None:
    """Close every adapter this process opened (in any of its threads)."""
    with _lock:
        providers = list(_instances.values())
        _instances.clear()
    for provider in providers:
        provider.close()


__all__ = ["Delivery", "OnOutcome", "Outcome", "OutcomeKind", "Provider", "REGISTRY", "get_provider", "close_all"]
