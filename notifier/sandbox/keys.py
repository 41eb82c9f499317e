"""Create the development signing keys the sandbox and the local notifier share.

Keys are generated at run time under a git-ignored directory (``var/``); a key is
never committed.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

APNS_KEY_FILE = "apns_key.p8"


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
