"""Talk to a running sandbox's control API (tests, the demo, developers)."""

from __future__ import annotations

import os
from typing import Any

import requests


class SandboxClient:
    """Inspect what the sandbox accepted and tell it what to break."""

    def __init__(self, control_url: str, *, timeout_s: float = 5.0, token: str | None = None) -> None:
        self.control_url = control_url.rstrip("/")
        self.timeout_s = timeout_s
        self._session = requests.Session()
        token = os.environ.get("NOTIFIER_SANDBOX_CONTROL_TOKEN", "") if token is None else token
        if token:
            self._session.headers["Authorization"] = f"Bearer {token}"

    def messages(self, provider: str | None = "apns", target: str | None = None) -> list[dict[str, Any]]:
        """Return the requests the sandbox accepted, oldest first."""
        params = {k: v for k, v in (("provider", provider), ("target", target)) if v is not None}
        return self._call("GET", "/_sandbox/messages", params=params)

    def reset(self) -> None:
        """Forget records, counters and faults."""
        self._call("POST", "/_sandbox/reset")

    def add_fault(
        self,
        provider: str = "apns",
        target: str = "*",
        *,
        status: int | None = None,
        reason: str | None = None,
        retry_after: int | None = None,
        latency_ms: int | None = None,
        drop: bool = False,
        refuse: bool = False,
        goaway_after: int | None = None,
        count: int | None = 1,
        fraction: float | None = None,
    ) -> dict[str, Any]:
        """Arm a fault for the next `count` matching requests (None: until reset), or a `fraction` of them."""
        spec: dict[str, Any] = {"provider": provider, "target": target, "drop": drop, "refuse": refuse, "count": count}
        for name, value in (
            ("status", status),
            ("reason", reason),
            ("retry_after", retry_after),
            ("latency_ms", latency_ms),
            ("goaway_after", goaway_after),
            ("fraction", fraction),
        ):
            if value is not None:
                spec[name] = value
        return self._call("POST", "/_sandbox/faults", json=spec)

    def unregister(self, token: str, provider: str = "apns") -> dict[str, Any]:
        """Make a device token answer 410 Unregistered until reset."""
        return self.add_fault(provider, token, status=410, reason="Unregistered", count=None)

    _ANY_KEY: Any = object()

    def web_push_subscription(self, application_server_key: Any = _ANY_KEY) -> dict[str, Any]:
        """Subscribe a new browser at the sandbox's push service; return its PushSubscription JSON.

        Bound to the sandbox's VAPID key unless application_server_key names another (None: any key)."""
        spec = {} if application_server_key is self._ANY_KEY else {"application_server_key": application_server_key}
        return self._call("POST", "/_sandbox/webpush/subscriptions", json=spec)

    def web_push_unsubscribe(self, endpoint: str) -> dict[str, Any]:
        """Unsubscribe a browser: its endpoint answers 410 Gone from now on."""
        return self._call("DELETE", "/_sandbox/webpush/subscriptions", json={"endpoint": endpoint})

    def receipt(
        self,
        provider: str,
        event: str,
        *,
        message_id: str | None = None,
        target: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Have the sandbox call the notifier's webhook about an accepted message, signed as the provider signs.

        provider is "sendgrid" (event: delivered, bounce, dropped, deferred, spamreport, ...;
        fields: reason, type, status, response) or "twilio" (event: delivered, undelivered,
        failed, sent, ...; field: error_code). The message is named by its id (X-Message-Id,
        SM... sid) or its target (the latest one). It posts only to the notifier API the sandbox
        is configured with (--sendgrid-event-webhook-url). Returns the webhook's status and answer.
        """
        spec: dict[str, Any] = {"provider": provider, "event": event, **fields}
        for name, value in (("message_id", message_id), ("target", target)):
            if value is not None:
                spec[name] = value
        return self._call("POST", "/_sandbox/receipts", json=spec)

    def receipt_keys(self) -> dict[str, str]:
        """Return the SendGrid Event Webhook URL and the verification key the sandbox signs for."""
        return self._call("GET", "/_sandbox/receipts")

    def faults(self) -> list[dict[str, Any]]:
        return self._call("GET", "/_sandbox/faults")

    def request_count(self, provider: str = "apns") -> int:
        """Return how many requests the provider saw, accepted or not."""
        return self._call("GET", "/_sandbox/requests/count", params={"provider": provider})["count"]

    def connections(self, provider: str = "apns") -> dict[str, int]:
        """Return {"accepted": n, "open": m} for the provider's server."""
        return self._call("GET", "/_sandbox/connections", params={"provider": provider})

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/_sandbox/health")

    def close(self) -> None:
        self._session.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._session.request(method, self.control_url + path, timeout=self.timeout_s, **kwargs)
        if response.status_code >= 400:
            raise SandboxError(response.status_code, response.json().get("error", response.text))
        return response.json()


class SandboxError(Exception):
    """The control API refused a call."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
