"""`aurora-sync` as a client of `fake_snowflake_server`: `python -m local.fakesnow_client <arguments>`.

Tests whose `aurora-sync` processes load fakesnow's HTTP server run them through this, so dlt sends one statement
per request (patch 1 of `local.fakesnow_adapter`, which the test process applies to itself). Tests and the local
demo only; production runs `aurora-sync` itself.
"""

from __future__ import annotations

import sys

from local.fakesnow_adapter import client_capabilities
from runner import cli


def main(argv: list[str]) -> int:
    with client_capabilities():
        return cli.main(argv)


if __name__ == "__main__":
    from runner.fork_server import delegate_or_run  # forked from the test suite's server when it runs one

    sys.exit(delegate_or_run("local.fakesnow_client:main", main))
