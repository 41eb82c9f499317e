"""The app registry: which credentials and sender identity each app's deliveries go out with.

A deployment may serve several apps (a consumer app, a courier app, a white-label build), each
with its own APNs key and topic, Firebase project, email sender and SMS sender. They are named
in one TOML file, NOTIFIER_APPS_FILE (docs/apps.md); the single-app settings (NOTIFIER_APNS_*,
NOTIFIER_FCM_*, NOTIFIER_EMAIL_FROM, NOTIFIER_TWILIO_FROM …) are the implicit app `default`, so a
deployment without the file works as before.

A file, not a table: the credentials themselves are files (an APNs .p8 key, an FCM service-account
JSON) mounted from a secret store, and the registry names them by path, so no key sits in the
database, its backups or its replicas; a change to an app is a reviewed change to configuration,
rolled out like one, not an API call any holder of a key could make.

One app's mistake stays its own: a section that does not validate (a bad topic, an unknown
environment) marks that app with its problem, and its deliveries fail `misconfigured: <app> …`
while the other apps' go out; a key file that is missing or unreadable is found when the app's
provider is built, with the same effect. Only a file that is not TOML at all refuses every app
but `default`.
"""
from __future__ import annotations

import os
import re
import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from notifier.settings import Settings

DEFAULT_APP = "default"
ENVIRONMENTS = ("production", "sandbox")
# App names travel in events, device registrations, log rows and metric labels: short and plain.
APP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# An APNs topic is the app's bundle id (reverse DNS), optionally with a push-type suffix.
_TOPIC = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*(?:\.[A-Za-z0-9-]+)+")
_PROJECT = re.compile(r"[a-z][a-z0-9-]{3,62}")  # a Firebase / Google Cloud project id
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")

# Which section of an app a provider reads; a provider not listed sends with the default settings.
SECTION_OF_PROVIDER = {"apns": "apns", "fcm": "fcm", "sendgrid": "email", "smtp": "email", "twilio": "sms"}
# Sections without which the provider cannot send for the app (email and SMS fall back to the default sender).
REQUIRED_SECTIONS = frozenset({"apns", "fcm"})


class AppsFileError(Exception):
    """The apps file cannot be read or is not TOML: no app but `default` can be used."""


class Misconfigured(Exception):
    """This app cannot send through this provider; the message says why (never a secret)."""


@dataclass(frozen=True, slots=True)
class App:
    """One app: its settings overrides per section, or the problem that keeps it from sending."""

    name: str
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    problem: str | None = None

    def settings_for(self, provider: str, base: Settings) -> Settings:
        """The settings `provider` sends with for this app: `base` with the app's section applied."""
        if self.name == DEFAULT_APP:
            return base
        if self.problem:
            raise Misconfigured(self.problem)
        section_name = SECTION_OF_PROVIDER.get(provider)
        section = self.sections.get(section_name) if section_name else None
        if section is None:
            if section_name in REQUIRED_SECTIONS:
                raise Misconfigured(f"no [{section_name}] credentials in the apps file")
            return base
        overrides = dict(section)
        if section_name == "apns":
            environment = overrides.pop("apns_environment")
            overrides["apns_url"] = (base.apns_development_url or base.apns_url) if environment == "sandbox" \
                else base.apns_url
        return base.model_copy(update=overrides)


def _text(section: dict, key: str, where: str, pattern: re.Pattern | None = None, required: bool = True) -> str | None:
    value = section.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or not value.isprintable():
        raise ValueError(f"{where}.{key}: expected a non-empty string")
    if pattern is not None and not pattern.fullmatch(value):
        raise ValueError(f"{where}.{key}: {value!r} is not valid")
    return value


def _path(section: dict, key: str, where: str, base_dir: Path) -> Path:
    path = Path(_text(section, key, where))  # type: ignore[arg-type]
    return path if path.is_absolute() else base_dir / path  # relative to the apps file


def _only(section: dict, allowed: set[str], where: str) -> None:
    unknown = set(section) - allowed
    if unknown:
        raise ValueError(f"{where}.{sorted(unknown)[0]}: unknown key (known: {', '.join(sorted(allowed))})")


def _parse_app(name: str, spec: Any, base_dir: Path) -> App:
    """One app's sections as settings overrides; ValueError naming the key when one does not validate."""
    where = f"apps.{name}"
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: expected a table")
    _only(spec, {"apns", "fcm", "email", "sms"}, where)
    sections: dict[str, dict[str, Any]] = {}
    if (apns := spec.get("apns")) is not None:
        w = f"{where}.apns"
        _only(apns, {"key_id", "team_id", "key_file", "topic", "environment"}, w)
        environment = apns.get("environment", "production")
        if environment not in ENVIRONMENTS:
            raise ValueError(f"{w}.environment: expected one of {', '.join(ENVIRONMENTS)}")
        sections["apns"] = {
            "apns_key_id": _text(apns, "key_id", w), "apns_team_id": _text(apns, "team_id", w),
            "apns_key_path": _path(apns, "key_file", w, base_dir), "apns_topic": _text(apns, "topic", w, _TOPIC),
            "apns_environment": environment,
        }
    if (fcm := spec.get("fcm")) is not None:
        w = f"{where}.fcm"
        _only(fcm, {"project_id", "credentials_file"}, w)
        sections["fcm"] = {"fcm_project_id": _text(fcm, "project_id", w, _PROJECT),
                           "fcm_credentials_path": _path(fcm, "credentials_file", w, base_dir)}
    if (email := spec.get("email")) is not None:
        w = f"{where}.email"
        _only(email, {"from", "from_name"}, w)
        sections["email"] = {"email_from": _text(email, "from", w)}
        if (from_name := _text(email, "from_name", w, required=False)) is not None:
            sections["email"]["email_from_name"] = from_name
    if (sms := spec.get("sms")) is not None:
        w = f"{where}.sms"
        _only(sms, {"from", "messaging_service_sid"}, w)
        sender = _text(sms, "from", w, _E164, required=False)
        service = _text(sms, "messaging_service_sid", w, re.compile(r"MG[0-9a-fA-F]{32}"), required=False)
        if bool(sender) == bool(service):
            raise ValueError(f"{w}: set one of from, messaging_service_sid")
        sections["sms"] = {"twilio_from": sender or "", "twilio_messaging_service_sid": service or ""}
    return App(name, sections)


def read_apps_file(path: str | os.PathLike[str]) -> dict[str, App]:
    """Read the apps file: every app in it, each with its sections or its problem (never `default`)."""
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise AppsFileError(f"apps file {path}: {exc}") from None
    apps = document.get("apps", {})
    unknown = set(document) - {"apps"}
    if unknown or not isinstance(apps, dict):
        raise AppsFileError(f"apps file {path}: expected only [apps.<name>] tables")
    out: dict[str, App] = {}
    for name, spec in apps.items():
        if name == DEFAULT_APP:
            raise AppsFileError(f"apps file {path}: apps.default is the NOTIFIER_* settings; name it otherwise")
        if not APP_NAME.fullmatch(name):
            raise AppsFileError(f"apps file {path}: app name {name!r}: letters, digits, . _ -, at most 64")
        try:
            out[name] = _parse_app(name, spec, path.parent)
        except ValueError as exc:
            out[name] = App(name, problem=str(exc))
    return out


_lock = threading.Lock()
_cache: tuple[str, int, dict[str, App]] | None = None


def registry(settings: Settings) -> dict[str, App]:
    """Every app this deployment knows, `default` first; re-read when the apps file changes."""
    global _cache
    default = {DEFAULT_APP: App(DEFAULT_APP)}
    if not settings.apps_file:
        return default
    try:
        mtime = os.stat(settings.apps_file).st_mtime_ns
    except OSError as exc:
        raise AppsFileError(f"apps file {settings.apps_file}: {exc.strerror}") from None
    with _lock:
        if _cache is None or _cache[:2] != (settings.apps_file, mtime):
            _cache = (settings.apps_file, mtime, read_apps_file(settings.apps_file))
        return default | _cache[2]


def get_app(name: str | None, settings: Settings) -> App:
    """The app called `name` (None: default); Misconfigured when no such app is registered."""
    name = name or DEFAULT_APP
    if name == DEFAULT_APP:
        return App(DEFAULT_APP)
    try:
        app = registry(settings).get(name)
    except AppsFileError as exc:
        raise Misconfigured(str(exc)) from None
    if app is None:
        raise Misconfigured("not in the apps file (NOTIFIER_APPS_FILE)")
    return app


def known_app(name: str, settings: Settings) -> str:
    """Check an app name against the registry, as intake and device registration do; ValueError names the known."""
    try:
        apps = registry(settings)
    except AppsFileError as exc:
        raise ValueError(f"apps cannot be checked: {exc}") from None
    if name not in apps:
        raise ValueError(f"unknown app {name!r}; registered: {', '.join(apps)}")
    return name
