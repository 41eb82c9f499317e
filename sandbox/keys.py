"""Create the development signing keys the sandbox and the local notifier share.

Keys are generated at run time under a git-ignored directory (``var/``); a key is
never committed.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

APNS_KEY_FILE = "apns_key.p8"
FCM_CREDENTIALS_FILE = "fcm-service-account.json"


def ensure_dev_keys(directory: str | os.PathLike[str]) -> Path:
    """Create ``apns_key.p8`` (EC P-256, PKCS8 PEM) in directory unless it exists; return its path."""
    return ensure_ec_key(Path(directory) / APNS_KEY_FILE)


def ensure_ec_key(path: str | os.PathLike[str]) -> Path:
    """Create an EC P-256 private key in PKCS8 PEM at path unless a file is already there."""
    path = Path(path)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Write aside, then link into place: a concurrent starter either wins whole or
    # keeps the key already there, and nobody reads a half-written file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path


def ensure_fcm_service_account(
    path: str | os.PathLike[str], token_uri: str, *, project_id: str = "sandbox-project"
) -> Path:
    """Create a Google-style service-account key JSON (RSA 2048) at path, or point an existing one at token_uri.

    The file has the fields of a key downloaded from the Firebase console
    (Project settings → Service accounts); ``token_uri`` names the sandbox's token
    endpoint instead of Google's. An existing key is kept, so a sender that read it
    keeps signing with the key the sandbox trusts.
    """
    path = Path(path)
    try:
        account = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        account = None
    if isinstance(account, dict) and account.get("private_key") and account.get("client_email"):
        if account.get("token_uri") == token_uri and account.get("project_id") == project_id:
            return path
        account |= {"token_uri": token_uri, "project_id": project_id}
        _write_private(path, json.dumps(account, indent=2).encode(), replace=True)
        return path
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    email = f"firebase-adminsdk-{secrets.token_hex(3)}@{project_id}.iam.gserviceaccount.com"
    account = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": secrets.token_hex(20),
        "private_key": pem,
        "client_email": email,
        "client_id": str(secrets.randbelow(10**21)).zfill(21),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": f"https://www.googleapis.com/robot/v1/metadata/x509/{email.replace('@', '%40')}",
        "universe_domain": "googleapis.com",
    }
    _write_private(path, json.dumps(account, indent=2).encode(), replace=False)
    return path


def _write_private(path: Path, data: bytes, *, replace: bool) -> None:
    """Write a 0600 file aside, then move it into place (replace) or link it there unless one exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    except FileExistsError:
        pass  # a concurrent starter made one first: keep it
    finally:
        tmp.unlink(missing_ok=True)
