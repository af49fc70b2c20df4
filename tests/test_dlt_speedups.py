"""The memoized dlt functions (`sources.dlt_speedups`) answer exactly as dlt's own, and are the ones dlt calls."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dlt.common.configuration.specs import ConnectionStringCredentials, CredentialsConfiguration, base_configuration
from dlt.common.typing import TSecretStrValue, TSecretValue

import sources  # noqa: F401 - installs the memos, as every command does


def test_dlt_resolves_configuration_through_the_memoized_functions() -> None:
    from dlt.common.configuration import resolve
    from dlt.common.configuration.providers import environ
    from dlt.common.libs import cryptography
    from dlt.destinations.impl.snowflake import configuration as snowflake

    memoized = base_configuration.is_secret_hint
    assert memoized is not memoized.__wrapped__  # type: ignore[attr-defined]
    # where dlt 1.31 calls it from, per lookup: a dlt upgrade that binds it elsewhere would lose the speed-up here
    assert resolve.is_secret_hint is memoized and environ.is_secret_hint is memoized
    assert snowflake.decode_private_key is cryptography.decode_private_key
    assert hasattr(snowflake.decode_private_key, "cache_info")


@pytest.mark.parametrize("hint", [
    str, int, TSecretStrValue, TSecretValue, list[str], dict[str, Any], TSecretStrValue | None, str | None,
    # typing.Optional, as dlt's own specs write it: a different object from `X | None`
    Optional[TSecretStrValue], Optional[str], Optional[ConnectionStringCredentials],  # noqa: UP045
    ConnectionStringCredentials, CredentialsConfiguration, Annotated[str, "not a secret"],
])
def test_secret_hints_are_answered_as_dlt_answers_them(hint: Any) -> None:
    memoized = base_configuration.is_secret_hint
    original = memoized.__wrapped__  # type: ignore[attr-defined]
    assert memoized(hint) == original(hint)
    assert memoized(hint) == original(hint)  # and again, from the memo


def test_an_unhashable_hint_is_asked_directly() -> None:
    hint = Annotated[str, {"unhashable": []}]
    with pytest.raises(TypeError):
        hash(hint)
    memoized = base_configuration.is_secret_hint
    assert memoized(hint) == memoized.__wrapped__(hint) is False  # type: ignore[attr-defined]


def test_a_private_key_decodes_as_before_and_a_wrong_passphrase_fails_every_time() -> None:
    from dlt.common.libs import cryptography

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.BestAvailableEncryption(b"right")).decode()
    decoded = cryptography.decode_private_key(pem, "right")
    assert decoded == cryptography.decode_private_key.__wrapped__(pem, "right")  # type: ignore[attr-defined]
    assert cryptography.decode_private_key(pem, "right") == decoded
    for _ in range(2):  # a failure is not remembered as an answer
        with pytest.raises(Exception, match=r"(?i)passphrase|password|decrypt"):
            cryptography.decode_private_key(pem, "wrong")


def test_the_snowflake_connector_gets_the_key_parsed_once_and_signs_with_it_as_with_the_bytes() -> None:
    """dlt's connection parameters carry the parsed key (the connector parsed the DER bytes again for every
    connection); the connector's key-pair login signs the same claims with it, verifiable with the public key."""
    import jwt
    from dlt.common.configuration import resolve_configuration
    from dlt.destinations.impl.snowflake.configuration import SnowflakeCredentials
    from snowflake.connector.auth.keypair import AuthByKeyPair

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.BestAvailableEncryption(b"right")).decode()
    credentials = resolve_configuration(SnowflakeCredentials(), explicit_value={
        "database": "DB", "username": "LOADER", "host": "xy12345", "private_key": pem,
        "private_key_passphrase": "right"})
    params = credentials.to_connector_params()
    parsed = params["private_key"]
    assert isinstance(parsed, rsa.RSAPrivateKey)
    assert credentials.to_connector_params()["private_key"] is parsed  # parsed once, not per connection
    der = parsed.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
    assert der == key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())

    claims = []
    for given in (parsed, der):
        token = AuthByKeyPair(given).prepare(account="xy12345", user="LOADER")
        claims.append(jwt.decode(token, key.public_key(), algorithms=["RS256"]))
    assert claims[0]["iss"] == claims[1]["iss"] and claims[0]["sub"] == claims[1]["sub"] == "XY12345.LOADER"


def test_keys_the_connector_would_not_take_parsed_are_passed_as_they_came() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    from sources.dlt_speedups import parsed_rsa_key

    ec_der = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    assert parsed_rsa_key(ec_der) is ec_der
    assert parsed_rsa_key(b"not a key") == b"not a key"


def test_a_partly_resolved_configuration_does_not_keep_the_callers_data_alive() -> None:
    """dlt keeps the error a partial resolution met in the configuration (and the configuration in its trace); that
    error's traceback held every frame on the stack: a merge's 1M-row table stayed alive through its whole load."""
    import gc
    import weakref

    from dlt.common.configuration import resolve_configuration
    from dlt.common.configuration.specs import BaseConfiguration, configspec

    @configspec
    class Partial(BaseConfiguration):
        never_configured_anywhere_xyz: str = None  # type: ignore[assignment]

    class Rows:
        """Stands for a large table a caller holds while dlt resolves a configuration."""

    def caller() -> tuple[Any, weakref.ref[Rows]]:
        rows = Rows()
        config = resolve_configuration(Partial(), sections=("aurora_sync_test_partial",), accept_partial=True)
        return config, weakref.ref(rows)

    config, rows = caller()
    gc.collect()
    assert config.__exception__ is not None and "never_configured_anywhere_xyz" in str(config.__exception__)
    assert rows() is None  # with dlt as is, the kept error's traceback still holds `caller`'s frame and `rows`
