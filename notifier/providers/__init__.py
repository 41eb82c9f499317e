"""Provider adapters, one module each, behind one interface and a registry by name."""
from __future__ import annotations

import importlib
import os

from notifier.providers.base import Delivery, OnOutcome, Outcome, OutcomeKind, Provider

# name -> "module:Class"; a provider is built lazily, once per worker process.
REGISTRY: dict[str, str] = {
    "apns": "notifier.providers.apns:ApnsProvider",
    "fcm": "notifier.providers.fcm:FcmProvider",
    "sendgrid": "notifier.providers.sendgrid.adapter:SendgridProvider",
    "smtp": "notifier.providers.smtp:SmtpProvider",
    "twilio": "notifier.providers.twilio.adapter:TwilioProvider",
    "webpush": "notifier.providers.webpush:WebPushProvider",
}

_instances: dict[str, Provider] = {}
_pid = os.getpid()


def get_provider(name: str) -> Provider:
    """Return this process's adapter for provider `name`."""
    global _pid
    if _pid != os.getpid():  # forked: the parent's connections are not ours
        _instances.clear()
        _pid = os.getpid()
    provider = _instances.get(name)
    if provider is None:
        try:
            module, cls = REGISTRY[name].split(":")
        except KeyError:
            raise LookupError(f"unknown provider {name!r}; known: {', '.join(sorted(REGISTRY))}") from None
        provider = _instances[name] = getattr(importlib.import_module(module), cls)()
    return provider


def close_all() -> None:
    """Close every adapter this process opened."""
    for provider in _instances.values():
        provider.close()
    _instances.clear()


__all__ = ["Delivery", "OnOutcome", "Outcome", "OutcomeKind", "Provider", "REGISTRY", "get_provider", "close_all"]
