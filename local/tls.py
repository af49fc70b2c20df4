"""A throwaway certificate authority and TLS for the local PostgreSQL, so tests exercise `verify-full` for real.

`enable_tls(server, names)` signs a server certificate for `names` (DNS names and IP addresses) with a new
self-signed CA, switches `ssl = on` in the cluster and reloads it; it returns the CA's PEM path. Nothing here is
used in production: there the server is Aurora and the CA is the shipped Amazon RDS bundle.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .postgres import LocalPostgres, find_bindir


@dataclass(frozen=True)
class CertificateAuthority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=2))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, encipher_only=False, decipher_only=False),
                               critical=True)
                .sign(key, hashes.SHA256()))
        return cls(key, cert)

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, names: list[str]) -> tuple[bytes, bytes]:
        """A server certificate and its unencrypted key (PEM) for `names`."""
        key = ec.generate_private_key(ec.SECP256R1())
        alt: list[x509.GeneralName] = []
        for name in names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt.append(x509.DNSName(name))
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(alt), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(self.key, hashes.SHA256()))
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return cert.public_bytes(serialization.Encoding.PEM), key_pem


def enable_tls(server: LocalPostgres, names: list[str], ca: CertificateAuthority | None = None) -> Path:
    """Serve TLS with a certificate for `names`; returns the path of the CA certificate clients should trust."""
    assert server.base_dir is not None
    ca = ca or CertificateAuthority.create("aurora-sync test CA")
    cert_pem, key_pem = ca.issue(names)
    tls_dir = server.base_dir / "tls"
    tls_dir.mkdir(exist_ok=True)
    (tls_dir / "server.crt").write_bytes(cert_pem)
    (tls_dir / "server.key").write_bytes(key_pem)
    ca_path = server.base_dir / "ca.pem"
    ca_path.write_bytes(ca.pem())
    (tls_dir / "server.key").chmod(0o600)
    if server.run_as:
        for path in (tls_dir, tls_dir / "server.crt", tls_dir / "server.key"):
            shutil.chown(path, "postgres", "postgres")
    with (server.data_dir / "postgresql.conf").open("a") as fh:
        fh.write(f"\nssl = on\nssl_cert_file = '{tls_dir / 'server.crt'}'\nssl_key_file = '{tls_dir / 'server.key'}'\n"
                 "ssl_min_protocol_version = 'TLSv1.2'\n")
    subprocess.run([*server.run_as, str(find_bindir() / "pg_ctl"), "-D", str(server.data_dir), "reload"],
                   capture_output=True, text=True, check=True)
    _wait_for_tls(server)
    return ca_path


def _wait_for_tls(server: LocalPostgres, timeout: float = 15) -> None:
    """A reload is asynchronous: wait until the server answers a TLS handshake."""
    import psycopg2

    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg2.connect(server.url() + "?sslmode=require", connect_timeout=5).close()
            return
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
