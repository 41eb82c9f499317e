"""Make the sandbox's TLS identity: a throwaway CA and a server certificate it signs.

A new identity is made at every start. Clients trust the CA certificate written
to the cert path (``CURLOPT_CAINFO``, ``requests(verify=...)``); no private key
is ever written next to it. The server certificate names localhost, 127.0.0.1
and ::1.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAMES = ("localhost",)
SERVER_IPS = ("127.0.0.1", "::1")


class TlsIdentity:
    """A sandbox CA and the server certificate it signed; hands out server contexts."""

    def __init__(self, extra_names: tuple[str, ...] = ()) -> None:
        """extra_names: more host names the certificate carries (e.g. "sandbox" in the compose stack)."""
        ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca_cert = _ca_certificate(ca_key)
        server_key = ec.generate_private_key(ec.SECP256R1())
        server_cert = _server_certificate(server_key, self.ca_cert, ca_key, extra_names)
        self.ca_pem = self.ca_cert.public_bytes(serialization.Encoding.PEM)
        self._chain_pem = server_cert.public_bytes(serialization.Encoding.PEM) + self.ca_pem
        self._key_pem = server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def write_ca(self, cert_path: str | os.PathLike[str]) -> Path:
        """Write the CA certificate (PEM) that clients must trust; return its path."""
        path = Path(cert_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(self.ca_pem)
        os.replace(tmp, path)
        return path

    def server_context(self, alpn: tuple[str, ...] = ("h2",)) -> ssl.SSLContext:
        """Return a TLS server context presenting the sandbox certificate, offering alpn."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # ssl loads keys only from files: keep the key in a private temporary
        # directory for the instant it takes, so it never outlives this process.
        with tempfile.TemporaryDirectory(prefix="notifier-sandbox-tls-") as tmpdir:
            chain = Path(tmpdir, "chain.pem")
            key = Path(tmpdir, "key.pem")
            chain.write_bytes(self._chain_pem)
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(self._key_pem)
            context.load_cert_chain(chain, key)
        if alpn:
            context.set_alpn_protocols(list(alpn))
        return context


def _validity() -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.timezone.utc)
    return now - datetime.timedelta(hours=1), now + datetime.timedelta(days=30)


def _ca_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "notifier sandbox CA")])
    not_before, not_after = _validity()
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _server_certificate(
    key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
    extra_names: tuple[str, ...] = (),
) -> x509.Certificate:
    not_before, not_after = _validity()
    public = key.public_key()
    alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in (*SERVER_NAMES, *extra_names)]
    alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in SERVER_IPS]
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
