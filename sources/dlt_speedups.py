"""Two of dlt's pure functions memoized, and the Snowflake key loaded once (what dlt 1.31 lacks;
docs/performance.md#dlts-configuration-cpu).

dlt resolves a destination's whole configuration again each time a run asks for its capabilities or a client:
about 20 times per `pipeline.run`, 2,145 times in one test of the suite. A profile put most of that CPU in
`is_secret_hint`, the typing introspection of the same few field hints (a quarter of a million calls in that test),
and 188 decodings of the same encrypted Snowflake private key at ~40 ms each, one per connection.

Both answers depend only on their arguments: a field's hint is a type, and the key is decoded from the same text
and passphrase. So the results are kept; errors are not (a wrong passphrase fails every time). dlt imports these
functions by name into other modules, so each module that already holds the original gets the memoized one too.

dlt then hands the Snowflake connector the decoded key as DER bytes, which the connector parses again for every
connection it opens (~40 ms of RSA key checks each, hundreds of times in a test, several times per run). The
connector also takes the parsed key object, so dlt's connection parameters carry the one parsed once.

And a leak: a configuration resolved in part (the optional staging configuration of every destination client) keeps
the `ConfigFieldMissingException` it met, traceback and all, and dlt keeps the configuration in its trace of resolved
values until the next resolution of that key. The traceback holds every frame that was on the stack, with their
locals: a merge asking for a client while it held a 1M-row Arrow table kept ~200 MB alive through its whole load.
The error's message is what the trace needs, so once a resolution returns, the kept error lets go of the stack.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

_installed = False


def install() -> None:
    """Idempotent; `sources` runs it on import, before any configuration is resolved."""
    global _installed
    if _installed:
        return
    from dlt.common.configuration.specs import base_configuration
    from dlt.common.libs import cryptography

    _replace(base_configuration, "is_secret_hint", _memoized(base_configuration.is_secret_hint))
    # a handful of keys per process at most: the decoded key is what every connection dlt opens holds anyway
    _replace(cryptography, "decode_private_key", functools.lru_cache(maxsize=8)(cryptography.decode_private_key))
    _pass_parsed_snowflake_keys()
    _keep_errors_without_stacks()
    _installed = True


def _keep_errors_without_stacks() -> None:
    from dlt.common.configuration import resolve

    resolve_configuration = resolve._resolve_configuration

    @functools.wraps(resolve_configuration)
    def resolving(config: Any, *args: Any, **kwargs: Any) -> Any:
        resolved = resolve_configuration(config, *args, **kwargs)
        # returned, not raised: the kept error is no one's to re-raise with its traceback
        error, seen = getattr(resolved, "__exception__", None), set()
        while error is not None and id(error) not in seen:  # a chain set by hand may loop
            seen.add(id(error))
            error.__traceback__ = None
            error = error.__cause__ or error.__context__
        return resolved

    # called by its module-level name inside `resolve` (embedded configurations too), so replacing it there is enough
    resolve._resolve_configuration = resolving


def _pass_parsed_snowflake_keys() -> None:
    from dlt.destinations.impl.snowflake.configuration import SnowflakeCredentials

    to_connector_params = SnowflakeCredentials.to_connector_params

    @functools.wraps(to_connector_params)
    def with_parsed_key(self: SnowflakeCredentials) -> dict[str, Any]:
        params = to_connector_params(self)
        if isinstance(params.get("private_key"), bytes):
            params["private_key"] = parsed_rsa_key(params["private_key"])
        return params

    SnowflakeCredentials.to_connector_params = with_parsed_key  # type: ignore[method-assign]


@functools.lru_cache(maxsize=8)
def parsed_rsa_key(der: bytes) -> Any:
    """The unencrypted DER key dlt decoded, parsed: an RSA key object (what the connector accepts besides bytes), or
    the bytes as they came for any other kind of key."""
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from cryptography.hazmat.primitives.serialization import load_der_private_key

    try:
        key = load_der_private_key(der, password=None)
    except ValueError:  # not what dlt decodes to: the connector reports it as it would have
        return der
    return key if isinstance(key, RSAPrivateKey) else der


def _memoized(function: Callable[[Any], bool]) -> Callable[[Any], bool]:
    cached = functools.lru_cache(maxsize=None)(function)

    @functools.wraps(function)
    def memoized(hint: Any) -> bool:
        try:
            return cached(hint)
        except TypeError:  # an unhashable hint: asked directly
            return function(hint)

    return memoized


def _replace(module: ModuleType, name: str, new: Callable[..., Any]) -> None:
    original = getattr(module, name)
    setattr(module, name, new)  # modules imported from now on bind the new one
    for other in list(sys.modules.values()):  # and those that bound the original already
        if getattr(other, "__name__", "").startswith("dlt") and vars(other).get(name) is original:
            setattr(other, name, new)
