"""Which callback URLs may be registered, and which addresses a callback may connect to (SSRF).

A callback is a request our servers make to a URL a producer chose: without limits it reaches
whatever our network reaches (cloud metadata at 169.254.169.254, databases on private
addresses, admin ports on loopback). So:

- Registered URLs are https, without credentials or a fragment. http is accepted only to a
  loopback host, and only when NOTIFIER_CALLBACK_ALLOW_LOOPBACK is set (tests, development).
- At send time the host is resolved and every address must be public (`is_global`, not
  multicast); loopback only with the same setting. The connection goes to the address checked,
  not to a second lookup, so a DNS answer that changes in between (rebinding) gains nothing.
  TLS still verifies the certificate for the URL's host name.
- Redirects are never followed: a 3xx is a failed attempt.
"""
from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

MAX_URL_CHARS = 2048
LOOPBACK_NAMES = ("localhost",)


class Refused(ValueError):
    """A URL or address a callback may not go to."""


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    return mapped or ip


def is_loopback(value: str) -> bool:
    ip = _ip(value)
    return ip is not None and ip.is_loopback


def address_allowed(value: str, allow_loopback: bool) -> bool:
    """Whether a callback may connect to this IP address."""
    ip = _ip(value)
    if ip is None:
        return False
    if ip.is_loopback:
        return allow_loopback
    return ip.is_global and not ip.is_multicast


def check_url(url: str, allow_loopback: bool) -> str:
    """The URL if it may be registered; Refused (its message names `url`) if not."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS or not url.isprintable() or " " in url:
        raise Refused(f"url: an absolute https URL of at most {MAX_URL_CHARS} printable characters")
    if not url.isascii():
        raise Refused("url: ASCII only (an international host name in its xn-- form, a path percent-encoded)")
    parts = urlsplit(url)
    try:
        parts.port
    except ValueError:
        raise Refused("url: the port is not a number from 0 to 65535") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise Refused("url: must be an absolute https URL (https://host/path)")
    if parts.username is not None or parts.password is not None:
        raise Refused("url: must not carry credentials (user:password@); the signature authenticates us")
    if parts.fragment:
        raise Refused("url: must not have a fragment (#…)")
    host = parts.hostname
    ip = _ip(host)
    loopback = host in LOOPBACK_NAMES or (ip is not None and ip.is_loopback)
    if loopback and not allow_loopback:
        raise Refused("url: loopback hosts are refused (NOTIFIER_CALLBACK_ALLOW_LOOPBACK is for tests only)")
    if parts.scheme == "http" and not loopback:
        raise Refused("url: must be https (http only to a loopback host in tests)")
    if ip is not None and not address_allowed(host, allow_loopback):
        raise Refused("url: the address is not public (private, link-local, reserved or multicast)")
    return url


def resolve(host: str, port: int, allow_loopback: bool) -> str:
    """The address to connect to for `host`: Refused unless every address it resolves to is allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise Refused(f"{host} does not resolve ({getattr(exc, 'strerror', None) or exc})") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    refused = [a for a in addresses if not address_allowed(a, allow_loopback)]
    if not addresses or refused:
        # One bad address is enough to refuse: which one a client picks is not ours to choose.
        raise Refused(f"{host} resolves to an address callbacks may not reach")
    return addresses[0]
