"""API keys: create, verify, list and revoke the bearer keys of the HTTP API.

A key reads `ntf_<prefix>_<secret>`. Only the prefix (to find the row) and a SHA-256 of
the whole key are stored: the secret has 256 random bits, so a plain hash is enough and
a stolen table yields no usable key. The key itself is shown once, when created.

A key holds a set of scopes (notifier.store.models.ApiKeyScope): send, status, cancel, users,
contacts, admin. Each route needs one; admin holds them all. The roles of old, `producer`
and `admin`, are still accepted when creating a key and stand for their scopes (ROLES).
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update

from notifier.store.db import transaction
from notifier.store.delivery_log import utcnow
from notifier.store.models import ApiKey, ApiKeyScope

KEY_PREFIX = "ntf"
SCOPES = tuple(s.value for s in ApiKeyScope)
# The two roles keys had before scopes, as migration 0003 maps them: a producer keeps what it
# could do except reading contact details.
ROLES = {"producer": ("send", "status", "users"), "admin": ("admin",)}


def parse_scopes(scopes: str | Iterable[str]) -> frozenset[str]:
    """The scopes named in `scopes` ("send,status" or a list; a role stands for its scopes); ValueError if unknown."""
    names = scopes.split(",") if isinstance(scopes, str) else list(scopes)
    out: set[str] = set()
    for name in (n.strip() for n in names):
        if name in ROLES:
            out.update(ROLES[name])
        elif name in SCOPES:
            out.add(name)
        else:
            raise ValueError(f"scope must be among {', '.join(SCOPES)} (or a role: {', '.join(ROLES)}), "
                             f"not {name!r}")
    if not out:
        raise ValueError(f"scope: name at least one of {', '.join(SCOPES)}")
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """An API key as the system knows it (never the secret)."""

    id: int
    name: str
    scopes: frozenset[str]
    prefix: str
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def scope(self) -> str:
        """The scopes as written: comma-separated, in the order of ApiKeyScope."""
        return ",".join(s for s in SCOPES if s in self.scopes)

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or ApiKeyScope.ADMIN.value in self.scopes


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _info(row: ApiKey) -> KeyInfo:
    # A scope this code does not know (a newer version wrote it) grants nothing here.
    scopes = frozenset(s for s in row.scopes.split(",") if s in SCOPES)
    return KeyInfo(row.id, row.name, scopes, row.prefix, row.created_at, row.revoked_at)


def create_key(name: str, scope: str | Iterable[str]) -> tuple[KeyInfo, str]:
    """Create a key with these scopes; return it with its secret, which is not stored and cannot be shown again."""
    scopes = parse_scopes(scope)
    if not name or len(name) > 128:
        raise ValueError("name must be 1 to 128 characters")
    prefix = secrets.token_hex(6)
    key = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    with transaction() as session:
        row = ApiKey(name=name, scopes=",".join(s for s in SCOPES if s in scopes), prefix=prefix, key_hash=_hash(key), created_at=utcnow())
        session.add(row)
        session.flush()
        info = _info(row)
    return info, key


def verify_key(key: str) -> KeyInfo | None:
    """Return the live key matching `key`, or None (unknown, malformed or revoked)."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1].isalnum() or len(parts[1]) > 16:
        return None
    with transaction() as session:
        row = session.scalar(select(ApiKey).where(ApiKey.prefix == parts[1]))
        if row is None or row.revoked_at is not None:
            return None
        if not hmac.compare_digest(row.key_hash, _hash(key)):
            return None
        return _info(row)


def list_keys() -> list[KeyInfo]:
    """Every key, revoked ones too, oldest first."""
    with transaction() as session:
        return [_info(row) for row in session.scalars(select(ApiKey).order_by(ApiKey.id))]


def revoke_key(prefix: str) -> bool:
    """Revoke the key with this prefix; True if a live key was revoked."""
    with transaction() as session:
        result = session.execute(
            update(ApiKey).where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None)).values(revoked_at=utcnow())
        )
    return result.rowcount > 0
