"""Twilio's request signature: base64(HMAC-SHA1(auth token, URL + each POST param name+value, sorted by name)).

https://www.twilio.com/docs/usage/security#validating-requests
"""
from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import urlsplit, urlunsplit


def twilio_signature(auth_token: str, url: str, params: list[tuple[str, str]]) -> str:
    """The X-Twilio-Signature Twilio sends for a form POST of `params` to `url`."""
    data = url + "".join(name + value for name, value in sorted(set(params)))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def _with_and_without_port(url: str) -> list[str]:
    """Twilio may sign the URL with or without the default port: accept either, like its own helpers do."""
    parts = urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    if default is None or not parts.hostname or parts.port not in (None, default):
        return [url]
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    userinfo = parts.netloc.rpartition("@")[0]
    userinfo = userinfo + "@" if userinfo else ""
    bare = urlunsplit(parts._replace(netloc=f"{userinfo}{host}"))
    ported = urlunsplit(parts._replace(netloc=f"{userinfo}{host}:{default}"))
    return [bare, ported]


def verify_twilio(auth_token: str, url: str, params: list[tuple[str, str]], signature: str | None) -> str | None:
    """Check an X-Twilio-Signature; return why it is refused, or None if genuine."""
    if not signature:
        return "missing X-Twilio-Signature header"
    for candidate in _with_and_without_port(url):
        if hmac.compare_digest(twilio_signature(auth_token, candidate, params).encode(), signature.encode()):
            return None
    return "signature does not match"
