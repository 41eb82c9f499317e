"""Callback rules with no services: which URLs and addresses are allowed (SSRF), and the signature."""
from __future__ import annotations

import hashlib
import hmac

import pytest

from notifier.callbacks import signing, urls


@pytest.mark.parametrize(("url", "allow_loopback", "ok"), [
    ("https://hooks.example.com/notifier", False, True),
    ("https://hooks.example.com:8443/a?b=c", False, True),
    ("https://93.184.215.14/hook", False, True),
    ("http://hooks.example.com/notifier", False, False),  # http: only to loopback in tests
    ("http://hooks.example.com/notifier", True, False),
    ("http://127.0.0.1:8080/hook", False, False),  # loopback refused by default
    ("http://127.0.0.1:8080/hook", True, True),
    ("http://localhost:8080/hook", True, True),
    ("https://localhost/hook", False, False),
    ("https://[::1]/hook", False, False),
    ("https://[::ffff:127.0.0.1]/hook", False, False),  # IPv4-mapped loopback
    ("https://169.254.169.254/latest/meta-data", True, False),  # cloud metadata, even in tests
    ("https://10.0.0.8/hook", False, False),
    ("https://192.168.1.1/hook", False, False),
    ("https://100.64.0.1/hook", False, False),  # carrier-grade NAT
    ("https://0.0.0.0/hook", True, False),
    ("https://224.0.0.1/hook", False, False),
    ("https://user:secret@hooks.example.com/", False, False),
    ("https://hooks.example.com/#frag", False, False),
    ("https://hooks.example.com:99999/", False, False),
    ("ftp://hooks.example.com/", False, False),
    ("hooks.example.com/notifier", False, False),
    ("https://", False, False),
    ("https://hooks.example.com/" + "a" * 2100, False, False),
    ("https://hooks.example.com/a b", False, False),
    ("https://bücher.example/hook", False, False),  # IDN: its xn-- form, please
    ("https://xn--bcher-kva.example/hook", False, True),
])
def test_which_urls_may_be_registered(url, allow_loopback, ok):
    if ok:
        assert urls.check_url(url, allow_loopback) == url
    else:
        with pytest.raises(urls.Refused, match="^url: "):
            urls.check_url(url, allow_loopback)


@pytest.mark.parametrize(("address", "allow_loopback", "ok"), [
    ("93.184.215.14", False, True), ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", False, True),
    ("127.0.0.1", False, False), ("127.0.0.1", True, True), ("::1", True, True),
    ("10.0.0.1", True, False), ("172.16.0.1", False, False), ("169.254.169.254", True, False),
    ("fe80::1", False, False), ("fc00::1", False, False), ("::ffff:10.0.0.1", False, False), ("nonsense", True, False),
])
def test_which_addresses_a_callback_may_connect_to(address, allow_loopback, ok):
    assert urls.address_allowed(address, allow_loopback) is ok


def test_loopback_names_resolve_to_a_refused_address_unless_allowed():
    with pytest.raises(urls.Refused):
        urls.resolve("localhost", 443, allow_loopback=False)
    assert urls.resolve("localhost", 443, allow_loopback=True) in ("127.0.0.1", "::1")


def test_the_signature_is_hmac_sha256_over_timestamp_dot_body():
    secret, body = signing.new_secret(), b'{"events":[]}'
    value = signing.header(secret, body, timestamp=1_764_580_000)
    expected = hmac.new(secret.encode(), b"1764580000." + body, hashlib.sha256).hexdigest()
    assert value == f"t=1764580000,v1={expected}"
    assert signing.verify(secret, body, value, now=1_764_580_010) is None


@pytest.mark.parametrize(("change", "why"), [
    ({"secret": "whsec_other"}, "signature does not match"),
    ({"body": b'{"events":[1]}'}, "signature does not match"),
    ({"now": 1_764_580_000 + 301}, "timestamp outside the tolerance"),
    ({"value": "v1=abc"}, "malformed signature header"),
    ({"value": None}, "no signature header"),
])
def test_a_signature_that_does_not_verify_says_why(change, why):
    secret, body = "whsec_right", b'{"events":[]}'
    args = {"secret": secret, "body": body, "value": signing.header(secret, body, timestamp=1_764_580_000),
            "now": 1_764_580_000} | change
    assert signing.verify(args["secret"], args["body"], args["value"], now=args["now"]) == why


@pytest.mark.parametrize(("producer", "ok"), [
    ("key:12", True), ("app:shop", True), ("app:shop_2-eu", True), ("app:Shop.EU", True),
    ("key:", False), ("key:12a", False), ("app:", False), ("shop", False), ("user:1", False), ("app:-shop", False),
])
def test_producer_names(producer, ok):
    from notifier.callbacks import endpoints

    if ok:
        assert endpoints.parse(producer) == producer
    else:
        with pytest.raises(ValueError, match="^producer: "):
            endpoints.parse(producer)
