"""The API's documentation as served by `notifier api`: offline pages, error answers, examples, version.

/docs and /redoc must work on a machine without internet: every script, style and icon they load
comes from the API itself (the fastapi-offline package), no page names another host.
"""
from __future__ import annotations

import re
from importlib import metadata
from urllib.parse import urljoin, urlsplit

import pytest
import requests

from tests.integration.api_fixture import api  # noqa: F401  (fixture)

ASSET = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|(?:url)\s*:\s*["']([^"']+)["']""")
EXTERNAL = re.compile(r"""(?:https?:)?//[A-Za-z0-9.-]+""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_doc_pages_and_every_asset_they_load_come_from_the_api_itself(api, page):  # noqa: F811
    # Given the API serving its documentation
    response = requests.get(api.url + page, timeout=10)
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    html = response.text
    # When every script, style, icon and document the page names is fetched from the same server
    referenced = {a or b for a, b in ASSET.findall(html)}
    assets = {r for r in referenced if r.startswith("/")}
    assert any(a.endswith(".js") for a in assets) and "/openapi.json" in assets, referenced
    for asset in sorted(assets):
        fetched = requests.get(urljoin(api.url, asset), timeout=30)
        # Then each answers 200, with content
        assert fetched.status_code == 200 and fetched.content, asset
    # And the page names no other host: no CDN, no fonts, no validator badge
    assert not EXTERNAL.findall(html), EXTERNAL.findall(html)
    assert referenced == assets, referenced - assets
    if page == "/docs":
        assert '"validatorUrl": null' in html


def test_the_document_gives_the_package_version_errors_and_examples(api):  # noqa: F811
    doc = requests.get(api.url + "/openapi.json", timeout=10).json()
    assert doc["info"]["version"] == metadata.version("notifier")
    paths = doc["paths"]

    def codes(method: str, path: str) -> set[str]:
        return set(paths[path][method]["responses"])

    # Every operation behind an API key documents 401 and 403; each one that takes input, 422;
    # each one with a body, 413; sending, 409.
    assert {"401", "403", "409", "413", "422"} <= codes("post", "/v1/notifications")
    for method, path in [("get", "/v1/notifications/{notification_id}"),
                         ("delete", "/v1/notifications/{notification_id}"),
                         ("delete", "/v1/users/{user_id}/devices/{token}"), ("get", "/v1/users/{user_id}/preferences")]:
        assert {"401", "403", "422"} <= codes(method, path), (method, path)
    for method, path in [("put", "/v1/users/{user_id}/devices/{token}"), ("put", "/v1/users/{user_id}/preferences")]:
        assert {"401", "403", "413", "422"} <= codes(method, path), (method, path)
    assert {"401", "403"} <= codes("get", "/metrics")
    unauthorized = paths["/v1/notifications"]["post"]["responses"]["401"]["content"]["application/json"]
    assert unauthorized["schema"] == {"$ref": "#/components/schemas/Problem"}

    # The main operations carry examples: sending, status, devices, preferences
    send = paths["/v1/notifications"]["post"]["requestBody"]["content"]["application/json"]["examples"]
    assert {"order_shipped", "security_code", "weekly_digest"} <= set(send)
    status = paths["/v1/notifications/{notification_id}"]["get"]["responses"]["200"]["content"]["application/json"]
    assert status["example"]["deliveries"][0]["task_url"].endswith(status["example"]["deliveries"][0]["task_id"])
    assert paths["/v1/users/{user_id}/devices/{token}"]["put"]["requestBody"]["content"]["application/json"]["examples"]
    prefs = paths["/v1/users/{user_id}/preferences"]
    assert prefs["put"]["requestBody"]["content"]["application/json"]["examples"]
    assert prefs["get"]["responses"]["200"]["content"]["application/json"]["example"]["user_id"]


def test_the_documented_errors_are_the_answers_given(api):  # noqa: F811
    send = api.url + "/v1/notifications"
    example = {"notification_id": "docs-example", "user_id": "u", "type": "t", "category": "transactional",
               "title": "T", "body": "B"}
    from notifier.accounts import api_keys

    _, status_only = api_keys.create_key("tests: docs", "status")
    doc = requests.get(api.url + "/openapi.json", timeout=10).json()
    answers = {
        401: requests.post(send, json=example, timeout=10),
        403: requests.post(send, json=example, headers=api.auth(status_only), timeout=10),
        413: requests.post(send, data=b'{"title": "' + b"x" * 200_000 + b'"}', timeout=10,
                           headers=api.auth() | {"Content-Type": "application/json"}),
        422: requests.post(send, json={k: v for k, v in example.items() if k != "title"}, headers=api.auth(),
                           timeout=10),
    }
    for code, response in answers.items():
        assert response.status_code == code, (code, response.text)
        documented = doc["paths"]["/v1/notifications"]["post"]["responses"][str(code)]["content"]
        if code == 413:  # the body limit answers before any handler: plain text, as documented
            assert response.headers["content-type"].startswith("text/plain") and "text/plain" in documented
            continue
        body = response.json()
        assert isinstance(body["detail"], list if code == 422 else str), body
    # title is required unless a template is given: the model-level error names it
    assert answers[422].json()["detail"][0]["loc"][0] == "body" and "title" in answers[422].json()["detail"][0]["msg"]
