"""CPU of dlt's configuration resolution, with and without `sources.dlt_speedups`' memos.

    python -m bench.dlt_config [--resolutions 200]

dlt resolves a destination's configuration again each time a run asks for its capabilities or a client (~20 times
per `pipeline.run`), and the Snowflake credentials decode their private key for every connection. Each case runs in
a fresh interpreter, once without the memos and once with them, and prints CPU milliseconds per call. Dummy
credentials from the environment; nothing connects anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = "_BENCH_DLT_CONFIG_CHILD"


def child(memo: bool, resolutions: int) -> dict[str, float]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    if memo:
        import sources  # noqa: F401 - installs the memos
    import dlt
    from dlt.destinations.impl.snowflake import configuration as snowflake_configuration

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.BestAvailableEncryption(b"bench")).decode()
    os.environ.update({"DESTINATION__SNOWFLAKE__CREDENTIALS__DATABASE": "bench",
                       "DESTINATION__SNOWFLAKE__CREDENTIALS__USERNAME": "bench",
                       "DESTINATION__SNOWFLAKE__CREDENTIALS__HOST": "bench-account",
                       "DESTINATION__SNOWFLAKE__CREDENTIALS__PRIVATE_KEY": pem,
                       "DESTINATION__SNOWFLAKE__CREDENTIALS__PRIVATE_KEY_PASSPHRASE": "bench"})
    result = {}
    for name, destination in (("snowflake", dlt.destinations.snowflake(dataset_name="bench")),
                              ("duckdb", dlt.destinations.duckdb(dataset_name="bench"))):
        destination.configuration(None)  # warm: imports and the first resolution
        started = time.process_time()
        for _ in range(resolutions):
            destination.configuration(None)
        result[f"{name} configuration ms"] = (time.process_time() - started) * 1000 / resolutions
    credentials = dlt.destinations.snowflake(dataset_name="bench").configuration(None).credentials
    assert isinstance(credentials, snowflake_configuration.SnowflakeCredentials)
    started = time.process_time()
    connections = max(1, resolutions // 10)
    for _ in range(connections):
        credentials.to_connector_params()  # what dlt does for each connection it opens
    result["snowflake connector params ms"] = (time.process_time() - started) * 1000 / connections
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolutions", type=int, default=200)
    args = parser.parse_args()
    if os.environ.get(CHILD):
        print(json.dumps(child(os.environ[CHILD] == "memo", args.resolutions)))
        return
    rows = {}
    for case in ("without", "memo"):
        out = subprocess.run([sys.executable, "-m", "bench.dlt_config", "--resolutions", str(args.resolutions)],
                             env={**os.environ, CHILD: case}, capture_output=True, text=True, check=True)
        rows[case] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{'CPU ms per call':<34}{'dlt as is':>12}{'memoized':>12}")
    for name in rows["without"]:
        print(f"{name:<34}{rows['without'][name]:>12.2f}{rows['memo'][name]:>12.2f}")


if __name__ == "__main__":
    main()
