"""The `aws` auth method's login payload: a signed, unsent sts:GetCallerIdentity request.

OpenBao has no AWS auth method and no test can reach STS, so the payload is checked here the way
Vault will replay it: decoded field by field, and its SigV4 signature recomputed independently from
the AWS specification. The full login is verified only on AWS (docs/secrets.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re

import pytest
from botocore.credentials import Credentials

from local.openbao import LocalOpenBao
from runner.errors import classify
from runner.exit_codes import ExitCode
from runner.vault.client import STS_BODY, build_iam_login_payload, connect
from runner.vault.errors import VaultAuthFailed, VaultConfigError
from runner.vault.settings import VaultSettings

ACCESS_KEY = "AKIDEXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<akid>[A-Z0-9]+)/(?P<date>\d{8})/(?P<region>[a-z0-9-]+)/sts/aws4_request, "
    r"SignedHeaders=(?P<signed>[a-z0-9;-]+), Signature=(?P<signature>[0-9a-f]{64})$"
)


def decode(payload: dict[str, str]) -> tuple[str, str, dict[str, str]]:
    url = base64.b64decode(payload["iam_request_url"]).decode()
    body = base64.b64decode(payload["iam_request_body"]).decode()
    headers = {name: values[0] for name, values in json.loads(base64.b64decode(payload["iam_request_headers"])).items()}
    return url, body, headers


def expected_signature(secret_key: str, region: str, url_host: str, body: str, headers: dict[str, str],
                       signed: list[str]) -> str:
    """SigV4 from the AWS documentation, written independently of botocore."""
    lowered = {name.lower(): value.strip() for name, value in headers.items()}
    lowered.setdefault("host", url_host)
    canonical_headers = "".join(f"{name}:{lowered[name]}\n" for name in signed)
    canonical_request = "\n".join(["POST", "/", "", canonical_headers, ";".join(signed),
                                   hashlib.sha256(body.encode()).hexdigest()])
    amz_date = lowered["x-amz-date"]
    scope = f"{amz_date[:8]}/{region}/sts/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()])
    key = f"AWS4{secret_key}".encode()
    for part in (amz_date[:8], region, "sts", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def test_payload_is_a_correctly_signed_get_caller_identity_with_server_id() -> None:
    payload = build_iam_login_payload(Credentials(ACCESS_KEY, SECRET_KEY), "us-east-1", server_id="vault.example.com")
    assert set(payload) == {"iam_http_request_method", "iam_request_url", "iam_request_body", "iam_request_headers"}
    assert payload["iam_http_request_method"] == "POST"
    url, body, headers = decode(payload)
    assert url == "https://sts.amazonaws.com/"
    assert body == STS_BODY == "Action=GetCallerIdentity&Version=2011-06-15"
    assert headers["Content-Type"] == "application/x-www-form-urlencoded; charset=utf-8"
    assert headers["X-Vault-AWS-IAM-Server-ID"] == "vault.example.com"
    assert re.fullmatch(r"\d{8}T\d{6}Z", headers["X-Amz-Date"])
    match = AUTH_RE.match(headers["Authorization"])
    assert match, headers["Authorization"]
    assert (match["akid"], match["region"], match["date"]) == (ACCESS_KEY, "us-east-1", headers["X-Amz-Date"][:8])
    signed = match["signed"].split(";")
    assert signed == sorted(signed) and {"host", "x-amz-date", "x-vault-aws-iam-server-id"} <= set(signed)
    assert match["signature"] == expected_signature(SECRET_KEY, "us-east-1", "sts.amazonaws.com", body, headers,
                                                    signed)
    assert SECRET_KEY not in json.dumps(payload)


def test_task_role_session_token_is_signed_and_regional_endpoints_follow_the_region() -> None:
    credentials = Credentials(ACCESS_KEY, SECRET_KEY, token="FwoGZXIvYXdzEXAMPLESESSIONTOKEN")
    payload = build_iam_login_payload(credentials, "eu-west-1")
    url, body, headers = decode(payload)
    assert url == "https://sts.eu-west-1.amazonaws.com/"
    assert headers["X-Amz-Security-Token"] == "FwoGZXIvYXdzEXAMPLESESSIONTOKEN"
    assert "X-Vault-AWS-IAM-Server-ID" not in headers
    match = AUTH_RE.match(headers["Authorization"])
    assert match and match["region"] == "eu-west-1"
    signed = match["signed"].split(";")
    assert "x-amz-security-token" in signed and "x-vault-aws-iam-server-id" not in signed
    assert match["signature"] == expected_signature(SECRET_KEY, "eu-west-1", "sts.eu-west-1.amazonaws.com", body,
                                                    headers, signed)
    custom = decode(build_iam_login_payload(credentials, "eu-west-1", "https://sts-fips.us-east-1.amazonaws.com"))
    assert custom[0] == "https://sts-fips.us-east-1.amazonaws.com/"


def test_aws_method_needs_a_role() -> None:
    with pytest.raises(VaultConfigError, match="VAULT_ROLE"):
        connect(VaultSettings(addr="http://127.0.0.1:1", auth_method="aws"))


def test_aws_login_posts_to_the_mount_and_explains_a_missing_method(
    bao: LocalOpenBao, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Against OpenBao (no AWS method), the signed request reaches `auth/aws/login` and fails clearly."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    settings = VaultSettings(addr=bao.addr, auth_method="aws", role="aurora-sync", aws_header_value="vault.example")
    with pytest.raises(VaultAuthFailed) as failed:
        connect(settings)
    message = str(failed.value)
    assert "`auth/aws/login` (auth method `aws`)" in message and SECRET_KEY not in message
    assert classify(failed.value)[0] == ExitCode.CONFIG_ERROR
