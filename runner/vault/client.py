"""An hvac client built from `VaultSettings`, logged in with the identity the task already has.

* `aws`: the ECS task role's credentials (botocore's default chain reads the container credentials
  endpoint) sign an `sts:GetCallerIdentity` request; Vault replays it to STS to learn who we are.
  Verified only on AWS: OpenBao, which the tests run against, has no AWS auth method.
* `approle`: role_id plus a secret_id, given plain or as a response-wrapping token that we unwrap
  once, after checking it was created by an AppRole `secret-id` endpoint (so a substituted wrapping
  token holding something else is refused).
* `token`: VAULT_TOKEN, for local use.

TLS verification is on unless explicitly disabled; `ca_cert` points at a private CA bundle.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn
from urllib.parse import urlsplit

import hvac
import hvac.exceptions
import requests

from runner import logs

from .errors import (
    VaultAuthFailed,
    VaultError,
    VaultKeyNotFound,
    VaultPathNotFound,
    VaultPermissionDenied,
    VaultTLSError,
    VaultTokenExpired,
    VaultUnreachable,
)
from .settings import VaultSettings

STS_BODY = "Action=GetCallerIdentity&Version=2011-06-15"
SERVER_ID_HEADER = "X-Vault-AWS-IAM-Server-ID"


@dataclass
class AuthInfo:
    """What login returned that we need later (TTL for renewal). The token itself stays in the client."""

    method: str
    ttl: float
    renewable: bool
    policies: list[str] = field(default_factory=list)
    own_token: bool = True  # we created it (aws/approle) and may revoke it; a VAULT_TOKEN we never revoke


LEASE_URL = re.compile(r"(/v1/sys/leases/(?:renew|revoke)/(?:[^\s\"/]+/)*)[^\s\"/]+")  # last segment: the id


class _RedactLeaseIds(logging.Filter):
    """urllib3 logs request URLs at DEBUG; ours carry lease ids (`sys/leases/renew/<lease_id>`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any("/v1/sys/leases/" in str(a) for a in record.args):
            record.args = tuple(LEASE_URL.sub(r"\1…", a) if isinstance(a, str) else a for a in record.args)
        return True


_URLLIB3_LOGGER = logging.getLogger("urllib3.connectionpool")
if not any(isinstance(f, _RedactLeaseIds) for f in _URLLIB3_LOGGER.filters):
    _URLLIB3_LOGGER.addFilter(_RedactLeaseIds())


def make_client(settings: VaultSettings, warn: bool = True) -> hvac.Client:
    """An unauthenticated client. `token=""` stops hvac from falling back to ~/.vault-token."""
    verify: bool | str = settings.tls_verify
    if settings.tls_verify and settings.ca_cert:
        verify = settings.ca_cert
    if not warn:
        pass
    elif not settings.tls_verify:
        logs.event("Vault TLS verification is disabled (VAULT_SKIP_VERIFY / vault.tls_verify)", logging.WARNING)
    elif urlsplit(settings.addr or "").scheme == "http" and urlsplit(settings.addr or "").hostname not in (
        "127.0.0.1", "localhost", "::1"):
        logs.event("Vault address is plain http: tokens and secrets cross the network unencrypted",
                   logging.WARNING, addr=settings.addr)
    return hvac.Client(
        url=settings.addr, token="", namespace=settings.namespace or None, verify=verify, timeout=settings.timeout
    )


def describe(settings: VaultSettings, path: str, dlt_key: str | None = None) -> str:
    where = f"`{path}` (auth method `{settings.method}`"
    if settings.namespace:
        where += f", namespace `{settings.namespace}`"
    if dlt_key:
        where += f", for `{dlt_key}`"
    return where + ")"


def _status(exc: hvac.exceptions.VaultError) -> str:
    code = getattr(exc, "status_code", None)
    return f"HTTP {code}" if code else type(exc).__name__


def _vault_errors(exc: hvac.exceptions.VaultError, secrets: tuple[str | None, ...] = ()) -> str:
    """Vault's own error strings (`invalid role or secret ID`, ...), shown only for login failures."""
    text = "; ".join(str(e) for e in (getattr(exc, "errors", None) or []))[:300]
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


@contextmanager
def translate(
    settings: VaultSettings,
    path: str,
    dlt_key: str | None = None,
    *,
    login: bool = False,
    token_check: Callable[[], bool] | None = None,
) -> Iterator[None]:
    """Re-raise hvac/requests failures as `VaultError`s naming the path and auth method, from None.

    `from None` drops the original exception from the chain: its text may hold URLs with lease ids
    or response fragments, and `--debug` prints chains.
    """
    try:
        yield
    except VaultError:
        raise
    except requests.exceptions.SSLError:
        _raise(VaultTLSError(
            f"TLS verification of Vault at {settings.addr} failed on {describe(settings, path, dlt_key)}: "
            "set `vault.ca_cert` / VAULT_CACERT to the CA bundle that signed Vault's certificate.", path,
            settings.method))
    except requests.exceptions.RequestException as exc:
        _raise(VaultUnreachable(
            f"Cannot reach Vault at {settings.addr} on {describe(settings, path, dlt_key)}: "
            f"{type(exc).__name__}. Check VAULT_ADDR, the network path (security groups, DNS) and that Vault is up.",
            path, settings.method))
    except (hvac.exceptions.VaultDown, hvac.exceptions.VaultNotInitialized, hvac.exceptions.InternalServerError,
            hvac.exceptions.BadGateway, hvac.exceptions.RateLimitExceeded, hvac.exceptions.UnexpectedError) as exc:
        _raise(VaultUnreachable(
            f"Vault at {settings.addr} failed on {describe(settings, path, dlt_key)} ({_status(exc)}: sealed, "
            "overloaded or erroring); retry later.", path, settings.method))
    except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized, hvac.exceptions.InvalidRequest) as exc:
        if login:
            detail = _vault_errors(exc, (settings.secret_id, settings.wrapped_secret_id, settings.token))
            _raise(VaultAuthFailed(
                f"Vault login failed at {describe(settings, path, dlt_key)}: {detail or _status(exc)}. "
                "Check the role and its bindings (role_id/secret_id, or the task role ARN bound to the AWS role).",
                path, settings.method))
        if isinstance(exc, hvac.exceptions.InvalidRequest):
            _raise(VaultError(
                f"Vault rejected the request on {describe(settings, path, dlt_key)} ({_status(exc)}).",
                path, settings.method))
        if token_check is not None and not token_check():
            _raise(VaultTokenExpired(
                f"Vault token expired or was revoked while reading {describe(settings, path, dlt_key)}: "
                "log in again (for `token`, get a new VAULT_TOKEN).", path, settings.method))
        _raise(VaultPermissionDenied(
            f"Vault denied access to {describe(settings, path, dlt_key)}: the token's policies do not allow "
            "reading it. Fix the path in `vault.secrets` or the policy (vault/policies/aurora-sync.hcl).",
            path, settings.method))
    except hvac.exceptions.InvalidPath:
        if login:
            _raise(VaultAuthFailed(
                f"No auth method is mounted at {describe(settings, path, dlt_key)}: check `vault.auth_mount`.",
                path, settings.method))
        _raise(VaultPathNotFound(
            f"Vault has no secret at {describe(settings, path, dlt_key)}: check the path in `vault.secrets` "
            "(KV v2 paths read `<mount>/data/<name>`) and that the secret was written.", path, settings.method))
    except hvac.exceptions.VaultError as exc:
        _raise(VaultError(f"Vault request failed on {describe(settings, path, dlt_key)} ({_status(exc)}).",
                          path, settings.method))


def _raise(error: VaultError) -> NoReturn:
    raise error from None


def token_is_valid(client: hvac.Client) -> bool:
    """Tells an expired/revoked token (lookup-self fails) from a policy that lacks a path."""
    try:
        client.auth.token.lookup_self()
        return True
    except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized):
        return False
    except Exception:
        return True  # unknown: report the original permission problem


def require_key(data: dict[str, Any], key: str, settings: VaultSettings, path: str, dlt_key: str | None) -> Any:
    if key not in data:
        raise VaultKeyNotFound(
            f"The Vault secret at {describe(settings, path, dlt_key)} has no key `{key}`"
            f" (keys present: {', '.join(sorted(map(str, data))) or 'none'}).", path, settings.method)
    return data[key]


def login(client: hvac.Client, settings: VaultSettings) -> AuthInfo:
    """Authenticate `client` with the configured method; the token lands in the client only."""
    settings.validate()
    method = settings.method
    if method == "token":
        client.token = settings.token
        path = "auth/token/lookup-self"
        try:
            with translate(settings, path):
                data = client.auth.token.lookup_self()["data"]
        except (VaultPermissionDenied, VaultTokenExpired):
            raise VaultTokenExpired(
                f"Vault rejected the token at {describe(settings, path)}: it is expired, revoked or unknown. "
                "Get a new VAULT_TOKEN.", path, method) from None
        info = AuthInfo(method, float(data.get("ttl") or 0), bool(data.get("renewable")),
                        list(data.get("policies") or []), own_token=False)
    else:
        path = f"auth/{settings.mount}/login"
        if method == "approle":
            secret_id = settings.secret_id or unwrap_secret_id(client, settings)
            with translate(settings, path, login=True):
                response = client.auth.approle.login(settings.role_id, secret_id, mount_point=settings.mount)
        else:
            payload = build_iam_login_payload(aws_credentials(settings), settings.aws_region,
                                              settings.aws_sts_endpoint, settings.aws_header_value)
            payload["role"] = settings.role
            with translate(settings, path, login=True):
                response = client.adapter.login(f"/v1/{path}", json=payload)
        auth = response["auth"]
        info = AuthInfo(method, float(auth.get("lease_duration") or 0), bool(auth.get("renewable")),
                        list(auth.get("policies") or []))
    logs.event("vault login", phase="vault", auth_method=method, addr=settings.addr, namespace=settings.namespace,
               token_ttl_s=info.ttl, policies=",".join(info.policies))
    return info


def unwrap_secret_id(client: hvac.Client, settings: VaultSettings) -> str:
    """Unwrap a response-wrapped secret_id after checking where the wrapping token came from."""
    wrapping_token = settings.wrapped_secret_id or ""
    path = "sys/wrapping/unwrap"
    try:
        with translate(settings, "sys/wrapping/lookup", login=True):
            info = client.adapter.post("/v1/sys/wrapping/lookup", json={"token": wrapping_token})["data"]
    except VaultAuthFailed:
        raise VaultAuthFailed(
            f"The wrapped secret_id (VAULT_WRAPPED_SECRET_ID) is invalid, expired or already used, checked at "
            f"{describe(settings, 'sys/wrapping/lookup')}: a wrapping token unwraps once; issue a new one.",
            path, settings.method) from None
    creation_path = str(info.get("creation_path", ""))
    if not (creation_path.startswith(f"auth/{settings.mount}/role/") and creation_path.endswith("/secret-id")):
        raise VaultAuthFailed(
            f"The wrapped secret_id was not created by `auth/{settings.mount}/role/<role>/secret-id` "
            f"(it came from `{creation_path}`): refusing to use it.", path, settings.method)
    saved, client.token = client.token, wrapping_token
    try:
        with translate(settings, path, login=True):
            data = client.adapter.post(f"/v1/{path}")["data"]
    finally:
        client.token = saved
    return str(data["secret_id"])


def aws_credentials(settings: VaultSettings) -> Any:
    """The task role's credentials from botocore's default chain (container endpoint on ECS)."""
    import botocore.session

    try:
        credentials = botocore.session.get_session().get_credentials()
        frozen = credentials.get_frozen_credentials() if credentials is not None else None
    except Exception as exc:  # botocore's provider chain: container endpoint, IMDS, profile errors
        raise VaultAuthFailed(
            f"Could not get AWS credentials for Vault login at `auth/{settings.mount}/login` (auth method `aws`): "
            f"{type(exc).__name__}.", f"auth/{settings.mount}/login", "aws") from None
    if frozen is None:
        raise VaultAuthFailed(
            f"No AWS credentials for Vault login at `auth/{settings.mount}/login` (auth method `aws`): on ECS the "
            "task needs a task role; locally use VAULT_AUTH_METHOD=token or approle.",
            f"auth/{settings.mount}/login", "aws")
    return frozen


def sts_url(region: str, endpoint: str | None = None) -> str:
    """Vault's default STS endpoint is the global one, which only accepts us-east-1 signatures."""
    if endpoint:
        return endpoint if endpoint.endswith("/") else endpoint + "/"
    return "https://sts.amazonaws.com/" if region == "us-east-1" else f"https://sts.{region}.amazonaws.com/"


def build_iam_login_payload(
    credentials: Any, region: str = "us-east-1", sts_endpoint: str | None = None, server_id: str | None = None
) -> dict[str, str]:
    """The body of `POST auth/aws/login` for the IAM method: a signed, unsent sts:GetCallerIdentity.

    Signed with botocore's SigV4 (the reference implementation) rather than hvac's `iam_login`, which
    hard-codes the global STS endpoint; Vault replays exactly these method, URL, headers and body.
    """
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    url = sts_url(region, sts_endpoint)
    headers = {
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
        "Host": urlsplit(url).netloc,
    }
    if server_id:
        headers[SERVER_ID_HEADER] = server_id
    request = AWSRequest(method="POST", url=url, data=STS_BODY, headers=headers)
    SigV4Auth(credentials, "sts", region).add_auth(request)
    signed_headers = {name: [value] for name, value in request.headers.items()}

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return {
        "iam_http_request_method": "POST",
        "iam_request_url": b64(url),
        "iam_request_body": b64(STS_BODY),
        "iam_request_headers": b64(json.dumps(signed_headers)),
    }


def connect(settings: VaultSettings) -> tuple[hvac.Client, AuthInfo]:
    """A logged-in client. Raises `VaultError`s only."""
    settings.validate()
    client = make_client(settings)
    return client, login(client, settings)
