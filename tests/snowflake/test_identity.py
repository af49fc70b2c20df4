"""The `identity` line names the AWS principal that writes the archive, asked of STS with the same credentials and
endpoint as dlt's filesystem destination (here the local moto server)."""

from __future__ import annotations

import pytest

from local.moto_s3 import LocalS3
from runner import identity

from .conftest import Bucket


def test_aws_principal_comes_from_sts_with_the_archive_credentials(
        s3: LocalS3, bucket: Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {**s3.dlt_env(), "DESTINATION__FILESYSTEM__BUCKET_URL": bucket.url}.items():
        monkeypatch.setenv(key, value)
    fields = identity.aws_identity()
    expected = s3.client("sts").get_caller_identity()
    assert fields == {"aws_principal": expected["Arn"], "aws_account": expected["Account"]}
    secret = s3.dlt_env()["DESTINATION__FILESYSTEM__CREDENTIALS__AWS_SECRET_ACCESS_KEY"]
    assert secret not in repr(fields)

    monkeypatch.setenv("DESTINATION__FILESYSTEM__BUCKET_URL", "/tmp/local-archive")
    assert identity.aws_identity() == {"aws_principal": "not used"}
