"""The rules every value from outside must pass, one definition for every edge.

The HTTP API, `send_notification.delay`, `notifier.publish`, the Kafka bridge, the Python API
(`register_device`, `set_preferences`) and the CLI all validate through the types and models
here, so each refuses the same values with the same pydantic `ValidationError` naming the
field (HTTP 422, CLI exit 2, a dead letter from the bridge). What they accept can be stored
(PostgreSQL text and JSON columns), queued (Celery's JSON serializer) and sent (HTTP headers,
URL paths, SMTP headers) without a second check downstream.
"""
from __future__ import annotations

import base64
import binascii
import re
import zoneinfo
from datetime import datetime, time, timedelta, timezone
from functools import lru_cache
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec

from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator,
)
from pydantic_core import PydanticCustomError

from notifier.apps import known_app
from notifier.content import locales
from notifier.settings import get_settings
from notifier.store import json_codec

def invalid(message: str) -> PydanticCustomError:
    """The error a rule raises: pydantic reports it as it is, naming the field, without "Value error, "."""
    return PydanticCustomError("invalid_value", message)


# ---- Text.
# A single-line field (ids, type, category, title, app, categories) travels in email headers,
# HTTP headers, log lines and Redis keys: no control character (C0, DEL, C1) and no line or
# paragraph separator (U+2028/9), which str.splitlines and email header folding treat as line
# breaks. Lone surrogates (U+D800–DFFF; in a Python str they are always lone) cannot be encoded
# as UTF-8, and PostgreSQL text refuses NUL.
_NOT_SINGLE_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# A body is many lines: tab, LF and CR (and the Unicode line separators) are fine, other controls not.
_NOT_BODY = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff]")
# Strings anywhere inside `data` are the app's business, but must be storable: no NUL, no lone surrogate.
_NOT_STORABLE = re.compile("[\x00\ud800-\udfff]")


def is_storable(value: str) -> bool:
    """True if a database text column takes `value`: no NUL, no lone surrogate."""
    return _NOT_STORABLE.search(value) is None


def make_storable(value: object, limit: int = 500) -> str:
    """Text from outside (a provider's report) made fit for a column: NUL dropped, lone surrogates replaced, bounded."""
    return str(value)[:limit].replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


def _refuse(char: str, otherwise: str) -> None:
    if char == "\x00":
        raise invalid("NUL characters are not allowed")
    if "\ud800" <= char <= "\udfff":
        raise invalid("not valid Unicode (a lone surrogate)")
    raise invalid(f"{otherwise} (U+{ord(char):04X})")


def single_line(value: str) -> str:
    """Refuse control characters, line breaks, NUL and lone surrogates."""
    bad = _NOT_SINGLE_LINE.search(value)
    if bad:
        _refuse(bad.group(), "must be one line of text: no control character or line break")
    return value


def body_text(value: str) -> str:
    """Refuse NUL, lone surrogates and control characters other than tab and line breaks."""
    bad = _NOT_BODY.search(value)
    if bad:
        _refuse(bad.group(), "no control character other than tab and line breaks")
    return value


Id = Annotated[str, Field(min_length=1, max_length=128), AfterValidator(single_line)]
Name = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(single_line)]
Title = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(single_line)]
Body = Annotated[str, Field(min_length=1, max_length=16_384), AfterValidator(body_text)]
AppId = Annotated[str, Field(min_length=1, max_length=255), AfterValidator(single_line)]


def registered_app(value: str) -> str:
    """Refuse an app the app registry (notifier/apps.py, NOTIFIER_APPS_FILE) does not name."""
    try:
        return known_app(value, get_settings())
    except ValueError as exc:
        raise invalid(str(exc)) from None


RegisteredApp = Annotated[AppId, AfterValidator(registered_app)]

# ---- data: what JSON can hold, bounded.
# Depth: 16 containers (the data object itself is one) is far more than any app payload needs and
# far below what breaks anything downstream (pydantic's serializer gives up near 255, Python's
# json near 1000; finding 3 and 5 of issue 10). Size: no more than a whole event may be
# (MAX_EVENT_BYTES: a Kafka message, an API body), so `delay()`, which has no body limit of its
# own, cannot queue data that no other edge would take. (Push carries 4 KiB in all: an app that
# puts more in data for push gets its delivery refused by the provider, not by us.)
MAX_EVENT_BYTES = 64 * 1024
MAX_DATA_DEPTH = 16
MAX_DATA_BYTES = MAX_EVENT_BYTES
# Integers a 64-bit JSON parser reads exactly (Swift, Kotlin, Go, PostgreSQL bigint); Python's own
# json refuses to write integers past 4300 digits, which would fail the task after it was accepted.
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
# collapse_id becomes the apns-collapse-id header and FCM's collapse_key: Apple allows 64 bytes.
# Printable ASCII only (no CR/LF: header injection; no non-ASCII: header encoding), no space at
# either end (HTTP strips it). https://developer.apple.com/documentation/usernotifications/sending-notification-requests-to-apns
COLLAPSE_ID = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,62}[\x21-\x7e])?")


def _short(where: str) -> str:
    # Keys are the producer's: name the place, but never echo a whole long key back.
    return where if len(where) <= 80 else where[:79] + "…"


def json_data(value: dict[str, Any]) -> dict[str, Any]:
    """Check `data` is plain JSON within the bounds; tuples become lists. Raises ValueError naming the key."""
    clean = _json_value(value, "data", 1)
    if "collapse_id" in clean:
        cid = clean["collapse_id"]
        if not isinstance(cid, str) or not COLLAPSE_ID.fullmatch(cid):
            raise invalid("data.collapse_id: at most 64 bytes of printable ASCII (no control characters, "
                             "no space at either end)")
    size = len(json_codec.dumps_compact(clean))  # compact UTF-8, as json.dumps(ensure_ascii=False) writes it
    if size > MAX_DATA_BYTES:
        raise invalid(f"data is {size} bytes as JSON; at most {MAX_DATA_BYTES}")
    return clean


def _json_value(value: Any, where: str, depth: int) -> Any:
    # bool before int (a bool is an int); exact JSON types only, so nothing the JSON encoder
    # would turn into something else (bytes, sets, dates, objects) slips through.
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if _NOT_STORABLE.search(value):
            raise invalid(f"{_short(where)}: NUL characters and lone surrogates are not allowed")
        return value
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise invalid(f"{_short(where)}: integers are 64-bit (±9.2e18); send a larger number as a string")
        return int(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise invalid(f"{_short(where)}: NaN and Infinity are not JSON numbers")
        return float(value)
    if isinstance(value, (dict, list, tuple)):
        if depth > MAX_DATA_DEPTH:
            raise invalid(f"{_short(where)}: nested more than {MAX_DATA_DEPTH} deep")
        if isinstance(value, dict):
            clean = {}
            for key, item in value.items():
                if not isinstance(key, str):
                    raise invalid(f"{_short(where)}: keys must be strings, not {type(key).__name__}")
                if _NOT_STORABLE.search(key):
                    raise invalid(f"{_short(where)}: NUL characters and lone surrogates are not allowed in keys")
                clean[key] = _json_value(item, f"{where}.{key}", depth + 1)
            return clean
        return [_json_value(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
    raise invalid(f"{_short(where)}: {type(value).__name__} is not a JSON type (object, array, string, number, "
                     "boolean, null)")


JsonData = Annotated[dict[str, Any], AfterValidator(json_data)]

# ---- send_at.
# A past send_at means "now", so the floor only catches mistakes (a zero date); a scheduled
# delivery waits as a row, and more than a year ahead is almost always a unit mistake. Checking
# the year first keeps converting to UTC from overflowing at the ends of the calendar.
SEND_AT_EARLIEST = datetime(2000, 1, 1, tzinfo=timezone.utc)
SEND_AT_MAX_AHEAD = timedelta(days=366)


def send_at_in_range(value: datetime | None) -> datetime | None:
    """Refuse a naive send_at or one outside [2000-01-01, now + 366 days]; return it in UTC."""
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise invalid("send_at must carry a timezone offset, e.g. 2026-01-01T09:00:00Z")
    if not 2000 <= value.year <= 9998:
        raise invalid("send_at must be from 2000-01-01 to a year ahead")
    value = value.astimezone(timezone.utc)
    if value < SEND_AT_EARLIEST or value > datetime.now(timezone.utc) + SEND_AT_MAX_AHEAD:
        raise invalid("send_at must be from 2000-01-01 to a year ahead")
    return value


# ---- Expiry (docs/expiry.md).
# A lifetime is at most 28 days: FCM's longest ttl, and far beyond any notification worth sending late.
MAX_TTL_S = 28 * 86400
TtlSeconds = Annotated[int, Field(ge=1, le=MAX_TTL_S, description=f"Lifetime in seconds, 1 to {MAX_TTL_S}.")]


def expires_at_ahead(value: datetime | None, *, past_ok: bool = False) -> datetime | None:
    """Refuse a naive expires_at, one already past (unless `past_ok`), or one more than 28 days ahead; in UTC.

    past_ok: the event was validated when it was published and has waited since (in Kafka, in the
    broker); it is accepted and its deliveries end `expired` rather than lost as a dead letter."""
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise invalid("expires_at must carry a timezone offset, e.g. 2026-01-01T09:00:00Z")
    if not 2000 <= value.year <= 9998:
        raise invalid("expires_at must be in the next 28 days")
    value = value.astimezone(timezone.utc)
    now = datetime.now(timezone.utc)
    if value <= now and not past_ok:
        raise invalid(f"expires_at {value.isoformat()} is in the past: the notification is worthless already")
    if value > now + timedelta(seconds=MAX_TTL_S):
        raise invalid("expires_at must be in the next 28 days")
    return value


# ---- Devices.
# APNs: a device token is bytes, sent as hex in the request path (/3/device/<token>), so it must
# be hex and whole bytes. Today's tokens are 32 bytes (64 hex digits); Apple says they may grow,
# so longer ones are accepted up to 100 bytes (200 hex digits), the limit of the APNs binary
# interface and the largest Apple ever documented. Anything else in a URL path (a '#' ends it, a
# space or CR/LF splits the request line, non-ASCII does not encode) is a token of nobody's.
MIN_APNS_TOKEN_CHARS = 64
MAX_APNS_TOKEN_CHARS = 200
_APNS_TOKEN = re.compile(rf"(?:[0-9a-fA-F]{{2}}){{{MIN_APNS_TOKEN_CHARS // 2},{MAX_APNS_TOKEN_CHARS // 2}}}")
# FCM: registration tokens are opaque (today about 160 characters of [A-Za-z0-9_:-]); Google does
# not document their alphabet, so any printable ASCII is taken except space and the characters
# that end or split a path segment of our own API (PUT /v1/users/{id}/devices/{token}): # / ? %.
MAX_FCM_TOKEN_CHARS = 512
_FCM_TOKEN = re.compile(rf"[\x21-\x7e]{{1,{MAX_FCM_TOKEN_CHARS}}}")
_FCM_FORBIDDEN = re.compile(r"[#/?%]")
# Web Push: the token is the Push API subscription's endpoint, an https URL on the browser vendor's push
# service (https://fcm.googleapis.com/fcm/send/…, https://updates.push.services.mozilla.com/wpush/v2/…,
# https://web.push.apple.com/…), POSTed to as it is (RFC 8030 §5). It must fit the token column (512).
MAX_WEB_PUSH_ENDPOINT_CHARS = 512
Platform = Literal["ios", "android", "web"]
PLATFORMS: tuple[str, ...] = ("ios", "android", "web")


def any_token(value: str) -> str:
    """Refuse what no platform's token can be: empty, over 512, non-ASCII, spaces, controls, # / ? %."""
    if not _FCM_TOKEN.fullmatch(value) or _FCM_FORBIDDEN.search(value):
        raise invalid(f"a device token is 1 to {MAX_FCM_TOKEN_CHARS} printable ASCII characters, "
                         "without spaces or # / ? %")
    return value


def token_for(platform: str, value: str) -> str:
    """Check a token against its platform's shape (APNs: hex; FCM: see any_token; web: an https endpoint)."""
    if platform == "web":
        return web_push_endpoint(value)
    any_token(value)
    if platform == "ios" and not _APNS_TOKEN.fullmatch(value):
        raise invalid(f"an APNs device token is {MIN_APNS_TOKEN_CHARS} to {MAX_APNS_TOKEN_CHARS} hex digits "
                         "(whole bytes)")
    return value


def web_push_endpoint(value: str) -> str:
    """Check a push subscription's endpoint: an absolute https URL of printable ASCII, no credentials or fragment.

    It becomes the request line and the VAPID audience (its origin) of every push: a space or CR/LF
    would split the request, a '#' is dropped by HTTP clients (the push would go elsewhere), and
    user:password@ has no place in a push service's URL (RFC 8030 §5)."""
    if not (value.isascii() and value.isprintable()) or " " in value or "#" in value:
        raise invalid("a push endpoint is an https URL of printable ASCII without spaces or '#'")
    if len(value) > MAX_WEB_PUSH_ENDPOINT_CHARS:
        raise invalid(f"a push endpoint is at most {MAX_WEB_PUSH_ENDPOINT_CHARS} characters")
    try:
        url = urlsplit(value)
        url.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        raise invalid("a push endpoint must be an https URL: it does not parse") from None
    if url.scheme != "https" or not url.hostname:
        raise invalid("a push endpoint must be an https URL with a host (RFC 8030 requires TLS)")
    if url.username is not None or url.password is not None:
        raise invalid("a push endpoint must not carry user:password@")
    return value


# RFC 8291 §3.2: p256dh is the browser's ECDH public key, a P-256 point in uncompressed form (65
# octets, 0x04 || X || Y); auth is a 16-octet secret. Both come base64url-encoded (RFC 4648 §5),
# without padding from PushSubscription.toJSON(); padding is tolerated and dropped.
P256DH_BYTES = 65
AUTH_SECRET_BYTES = 16
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+={0,2}")


def _base64url(value: str, size: int, what: str) -> str:
    """Decode base64url, check the decoded length; return the unpadded text."""
    if not _BASE64URL.fullmatch(value):
        raise invalid(f"{what} must be base64url (A-Z a-z 0-9 - _)")
    text = value.rstrip("=")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, binascii.Error):  # a length no base64 text has: cut short
        raise invalid(f"{what} must be base64url of {size} bytes (RFC 8291)") from None
    if len(raw) != size:
        raise invalid(f"{what} must decode to {size} bytes (RFC 8291), not {len(raw)}")
    return text


def p256dh_key(value: str) -> str:
    """Check keys.p256dh: base64url of an uncompressed P-256 point that lies on the curve."""
    text = _base64url(value, P256DH_BYTES, "p256dh")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if raw[0] != 4:
        raise invalid("p256dh must be an uncompressed P-256 point (its first byte 0x04)")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except ValueError:
        raise invalid("p256dh is not a point on the P-256 curve") from None
    return text


def auth_secret(value: str) -> str:
    """Check keys.auth: base64url of 16 bytes."""
    return _base64url(value, AUTH_SECRET_BYTES, "auth")


class WebPushKeys(BaseModel):
    """The keys of a Push API subscription (PushSubscription.toJSON().keys)."""

    model_config = ConfigDict(extra="forbid")

    p256dh: Annotated[str, Field(max_length=100), AfterValidator(p256dh_key)]
    auth: Annotated[str, Field(max_length=32), AfterValidator(auth_secret)]


class WebPushSubscription(BaseModel):
    """A browser's Push API subscription, as PushSubscription.toJSON() gives it, and the app it is for."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    endpoint: Annotated[str, Field(min_length=1), AfterValidator(web_push_endpoint)]
    keys: WebPushKeys
    # The browser's own expiry of the subscription (ms since the epoch, usually null): not used to send.
    expiration_time: int | None = Field(None, alias="expirationTime")
    app: AppId | None = None


PlatformName = Annotated[Platform, Field(description="ios (APNs), android (FCM) or web (Web Push)")]
AnyToken = Annotated[str, AfterValidator(any_token)]


class Device(BaseModel):
    """A device registration, as register_device takes it (a browser: its endpoint as token, and keys)."""

    model_config = ConfigDict(extra="forbid")

    user_id: Id
    platform: PlatformName
    token: str
    app: RegisteredApp | None = None
    # Validated even when left out (validate_default): a web device without keys is refused by name.
    keys: WebPushKeys | None = Field(None, validate_default=True)

    @field_validator("token")
    @classmethod
    def _token_fits_platform(cls, v: str, info: ValidationInfo) -> str:
        platform = info.data.get("platform")
        return token_for(platform, v) if platform else any_token(v)

    @field_validator("keys")
    @classmethod
    def _keys_for_web_only(cls, v: WebPushKeys | None, info: ValidationInfo) -> WebPushKeys | None:
        platform = info.data.get("platform")
        if platform == "web" and v is None:
            raise invalid("a web device needs its subscription's keys (p256dh and auth)")
        if platform in ("ios", "android") and v is not None:
            raise invalid("only a web device has subscription keys")
        return v


# ---- Preferences.
# Emails: email-validator's syntax check (no DNS lookup), ASCII only: SMTP without the SMTPUTF8
# extension cannot carry a non-ASCII address; an internationalized domain is kept in its ASCII
# (punycode) form. Special-use domains (localhost, .test, .invalid …) are refused: no mail goes there.
# Phones: E.164 syntax, + then 7 to 15 ASCII digits, not starting with 0 (the shortest assigned
# numbers, e.g. Saint Helena's, have 7 digits). Not the phonenumbers library: its per-country plans
# go stale with its metadata, and Twilio answers an unassigned number with a permanent failure
# that ends the delivery `failed` with the reason anyway.
PHONE = re.compile(r"\+[1-9][0-9]{6,14}")


def email_address(value: str) -> str:
    """Check an email address's syntax; return it normalized (domain lower-cased, ASCII)."""
    try:
        result = validate_email(value, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise invalid(f"not a valid email address: {exc}") from None
    return result.ascii_email or result.normalized


def phone_number(value: str) -> str:
    """Check a phone number is E.164: + and 7 to 15 digits."""
    if not PHONE.fullmatch(value):
        raise invalid("must be an E.164 phone number: + and 7 to 15 digits, e.g. +4712345678")
    return value


@lru_cache(maxsize=1)
def _timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def timezone_name(value: str) -> str:
    """Check a timezone is an IANA name this machine's tz database knows."""
    if value not in _timezones():
        raise invalid("must be an IANA timezone name, e.g. Europe/Oslo")
    return value


def _naive_time(value: time) -> time:
    if value.tzinfo is not None:
        raise invalid("is a local time of day in `timezone`: no offset")
    return value


Email = Annotated[str, Field(max_length=320), AfterValidator(email_address)]
Phone = Annotated[str, Field(max_length=16, description="E.164, e.g. +4712345678"), AfterValidator(phone_number)]
TimezoneName = Annotated[str, Field(max_length=64, description="IANA name, e.g. Europe/Oslo"),
                         AfterValidator(timezone_name)]
LocalTime = Annotated[time, AfterValidator(_naive_time)]


def locale_tag(value: str) -> str:
    """Check a locale is a BCP 47 tag Babel knows (CLDR); return it normalized, e.g. nb_no -> nb-NO."""
    try:
        return locales.normalize(value)
    except locales.LocaleError as exc:
        raise invalid(str(exc)) from None


LocaleTag = Annotated[str, Field(max_length=locales.MAX_TAG_CHARS, description="BCP 47, e.g. nb-NO"),
                      AfterValidator(locale_tag)]


class PreferencesUpdate(BaseModel):
    """The preferences to change; fields left out stay as they are, null clears an optional one."""

    model_config = ConfigDict(extra="forbid", title="PreferencesUpdate")

    push_enabled: bool = Field(None)
    email_enabled: bool = Field(None)
    sms_enabled: bool = Field(None)
    email: Email | None = None
    phone: Phone | None = None
    quiet_start: LocalTime | None = None
    quiet_end: LocalTime | None = None
    timezone: TimezoneName | None = None
    opted_out_categories: list[Name] = Field(None, max_length=100)
    locale: LocaleTag | None = None


PREFERENCE_FIELDS = frozenset(PreferencesUpdate.model_fields)


class PreferencesChange(PreferencesUpdate):
    """A preferences update for one user, as set_preferences takes it."""

    user_id: Id
