"""The shipped Amazon RDS CA bundle is the pinned file, parses as X.509, and holds only RDS CA certificates."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from cryptography import x509

from sources.postgres import ca_bundle


def test_bundle_matches_its_pinned_sha256_and_the_documented_one() -> None:
    digest = hashlib.sha256(ca_bundle.BUNDLE_PATH.read_bytes()).hexdigest()
    assert digest == ca_bundle.BUNDLE_SHA256, "bundle changed: run the update procedure in docs/security.md"
    assert digest in (ca_bundle.BUNDLE_PATH.parents[3] / "docs" / "security.md").read_text()


def test_bundle_is_a_set_of_amazon_rds_ca_certificates() -> None:
    pem = ca_bundle.BUNDLE_PATH.read_bytes()
    certs = x509.load_pem_x509_certificates(pem)
    assert len(certs) == pem.count(b"-----BEGIN CERTIFICATE-----") == 115
    assert ca_bundle.check_rds_cas(pem) == 115
    names = {c.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value for c in certs}
    # the current generation of regional roots Aurora serves: rds-ca-rsa2048-g1 (default), rsa4096, ecc384
    for name in ("Amazon RDS us-east-1 Root CA RSA2048 G1", "Amazon RDS eu-west-1 Root CA RSA4096 G1",
                 "Amazon RDS eu-central-1 Root CA ECC384 G1"):
        assert name in names
    valid = [c for c in certs if c.not_valid_after_utc > dt.datetime.now(dt.UTC)]
    assert len(valid) >= 80, "most roots expired: refresh the bundle (docs/security.md)"


def test_update_procedure_refuses_a_certificate_that_is_not_an_rds_ca(tmp_path, monkeypatch) -> None:
    from local.tls import CertificateAuthority

    shipped = ca_bundle.BUNDLE_PATH
    foreign = tmp_path / "foreign.pem"
    foreign.write_bytes(CertificateAuthority.create("not RDS").pem())
    monkeypatch.setattr(ca_bundle, "BUNDLE_PATH", tmp_path / "out.pem")
    with pytest.raises(ValueError, match="not an Amazon RDS CA certificate"):
        ca_bundle.main([str(foreign)])
    assert not (tmp_path / "out.pem").exists()
    # the shipped bundle, fed back through the procedure, comes out byte for byte the same
    monkeypatch.setattr(ca_bundle, "BUNDLE_PATH", tmp_path / "again.pem")
    assert ca_bundle.main([str(shipped)]) == 0
    assert (tmp_path / "again.pem").read_bytes() == shipped.read_bytes()
