"""APNs answers to outcomes: one row per documented reason, and no answer that raises."""
from __future__ import annotations

import time

import pytest

from notifier.providers import OutcomeKind
from notifier.providers.apns import CLASSIFICATION

ODD_ANSWERS = {"list": b"[1, 2]", "odd reason": b'{"reason": ["BadDeviceToken"]}',
               "odd time": b'{"reason": "Unregistered", "timestamp": "soon"}', "bytes": b"\xff\xfe"}

K = OutcomeKind


@pytest.mark.parametrize("body", list(ODD_ANSWERS.values()), ids=list(ODD_ANSWERS))
def test_an_odd_answer_is_classified_never_raised(body):
    from notifier.providers.apns import classify
    from notifier.providers.transport import HttpRequest, HttpResponse

    status = 410 if b"Unregistered" in body else 400
    outcome = classify(HttpResponse(HttpRequest("POST", "https://x/3/device/00", {}, b""), status, {}, body, None, 0))
    assert outcome.kind in (K.FAILED, K.TOKEN_INVALID) and outcome.reason.startswith(f"apns {status}")


def test_every_documented_reason_has_a_row():
    documented = {
        "BadCollapseId", "BadDeviceToken", "BadExpirationDate", "BadMessageId", "BadPriority", "BadTopic",
        "DeviceTokenNotForTopic", "DuplicateHeaders", "IdleTimeout", "InvalidPushType", "MissingDeviceToken",
        "MissingTopic", "PayloadEmpty", "TopicDisallowed", "BadCertificate", "BadCertificateEnvironment",
        "ExpiredProviderToken", "Forbidden", "InvalidProviderToken", "MissingProviderToken",
        "BadEnvironmentKeyIdInToken", "BadEnvironmentKeyInToken", "BadPath", "MethodNotAllowed", "ExpiredToken",
        "Unregistered", "PayloadTooLarge", "TooManyProviderTokenUpdates", "TooManyRequests",
        "InternalServerError", "ServiceUnavailable", "Shutdown",
    }
    assert {reason for _, reason in CLASSIFICATION} == documented
