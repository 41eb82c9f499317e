"""Schemathesis against the served /openapi.json: valid and invalid input, never a 5xx.

Loading the document through Schemathesis also validates it as OpenAPI. Each operation
runs in both generation modes (negative only where it takes input), bounded by
MAX_EXAMPLES, so the whole run stays well under a minute. Webhook requests are signed as
the provider would sign them, so generated events reach the code that applies them.
(Schemathesis' own pytest loader, `from_fixture`, does not run on pytest 9, so each
operation's strategy drives a Hypothesis test here directly.)
"""
from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from notifier.api.app import create_app
from tests.api_fixture import api  # noqa: F401  (fixture)

MAX_EXAMPLES = 50
DOCUMENT = create_app().openapi()
OPERATIONS = sorted((method, path) for path, item in DOCUMENT["paths"].items() for method in item)


def _cases(method: str, path: str) -> list:
    operation = DOCUMENT["paths"][path][method]
    takes_input = bool(operation.get("parameters") or operation.get("requestBody"))
    modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if takes_input else [])
    return [pytest.param(method, path, mode, id=f"{method.upper()} {path} {mode.value}") for mode in modes]


@pytest.fixture(scope="module")
def api_schema(api):
    return schemathesis.openapi.from_url(api.url + "/openapi.json")


def test_served_document_has_every_operation(api_schema):
    served = sorted((op.ok().method, op.ok().path) for op in api_schema.get_all_operations())
    assert served == OPERATIONS


def _signed(api, prepared: requests.PreparedRequest) -> requests.PreparedRequest:
    """Sign a webhook request over exactly the bytes that will be sent."""
    body = prepared.body or b""
    body = body.encode() if isinstance(body, str) else body
    path = urlsplit(prepared.url).path
    if path == "/v1/webhooks/sendgrid":
        headers = api.sendgrid_headers(body)
        del headers["Content-Type"]
        prepared.headers.update(headers)
    elif path == "/v1/webhooks/twilio":
        try:
            params = parse_qsl(body.decode(), keep_blank_values=True)
        except UnicodeDecodeError:
            return prepared
        prepared.headers.update(api.twilio_headers(params))
    return prepared


@pytest.mark.parametrize(("method", "path", "mode"), [c for m, p in OPERATIONS for c in _cases(m, p)])
def test_no_input_makes_the_api_answer_with_a_server_error(api, api_schema, method, path, mode):
    operation = api_schema[path][method]
    session = requests.Session()

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case):
        kwargs = case.as_transport_kwargs(base_url=api.url, headers=api.auth(api.admin_key))
        kwargs.pop("timeout", None)
        prepared = _signed(api, requests.Request(**kwargs).prepare())
        response = session.send(prepared, timeout=10)
        case.validate_response(response, checks=[not_a_server_error])

    check()
