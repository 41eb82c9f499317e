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

from entrypoints.api.app import create_app
from tests.integration.api_fixture import api  # noqa: F401  (fixture)

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


# ---- Hostile values (tests/integration/bad_events.py), as in tests/integration/test_edges_fuzz.py for the other edges:
# only 422 (or 413), never a 5xx, and what is accepted is storable.

HOSTILE_EXAMPLES = 40


def test_hostile_events_are_accepted_storable_or_422(api, database):
    import json as json_

    from hypothesis import event as tally
    from hypothesis import strategies as st

    from notifier.intake.events import parse_event
    from tests.bad_events import EVENTS, assert_storable, dumps, nested_json

    session = requests.Session()
    bodies = st.one_of(EVENTS.map(lambda e: dumps(e).encode()), st.integers(0, 30_000).map(nested_json),
                       st.binary(max_size=64))

    @given(body=bodies)
    @settings(max_examples=HOSTILE_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(body):
        response = session.post(f"{api.url}/v1/notifications", data=body, timeout=10,
                                headers=api.auth(api.admin_key) | {"Content-Type": "application/json"})
        tally(str(response.status_code))
        # 400: FastAPI's answer to a body its JSON parser gives up on (nested past Python's stack);
        # 409: a generated notification_id already accepted for a different event
        assert response.status_code in (202, 400, 409, 413, 422), response.text
        if response.status_code == 202:
            assert_storable(parse_event(json_.loads(body)))

    check()


def test_hostile_devices_and_preferences_are_accepted_or_422(api, database):
    from urllib.parse import quote

    from hypothesis import event as tally
    from hypothesis import strategies as st

    from tests.bad_events import PREFERENCES, TEXT, dumps, field

    session = requests.Session()
    devices = st.tuples(field("u-fuzz", TEXT), st.one_of(
        st.tuples(st.one_of(st.sampled_from(["ios", "android", "web"]), TEXT), TEXT),
        st.tuples(st.just("ios"), st.binary(min_size=32, max_size=100).map(bytes.hex)),
        st.tuples(st.just("android"), st.from_regex(r"[A-Za-z0-9_:-]{20,200}", fullmatch=True)),
    ))

    @given(device=devices, preferences=PREFERENCES)
    @settings(max_examples=HOSTILE_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(device, preferences):
        user, (platform, token) = device
        try:
            path_user, path_token = quote(user, safe=""), quote(token, safe="")
        except UnicodeEncodeError:  # a lone surrogate has no URL spelling: no client can send it
            return
        # What is asserted is the answer, never its speed: a loaded 2-core CI machine has stalled one
        # of these past 10 s (the same request answered at once when hypothesis replayed it).
        registered = session.put(f"{api.url}/v1/users/{path_user}/devices/{path_token}", json={"platform": platform},
                                 headers=api.auth(api.admin_key), timeout=60)
        changed = session.put(f"{api.url}/v1/users/{path_user}/preferences", data=dumps(preferences),
                              headers=api.auth(api.admin_key) | {"Content-Type": "application/json"}, timeout=60)
        tally(f"device {registered.status_code}, preferences {changed.status_code}")
        # 404/405: a user id or token holding '/' is another path (route not found), never a 5xx
        assert registered.status_code in (204, 404, 405, 413, 414, 422), registered.text
        assert changed.status_code in (200, 404, 405, 413, 414, 422), changed.text

    check()
