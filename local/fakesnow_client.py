"""`aurora-sync` as a client of `fake_snowflake_server`: `python -m local.fakesnow_client <arguments>`.

Tests whose `aurora-sync` processes load fakesnow's HTTP server run them through this, so dlt sends one statement
per request (patch 1 of `local.fakesnow_adapter`, which the test process applies to itself). Tests and the local
demo only; production runs `aurora-sync` itself.
"""

from __future__ import annotations

import os
import sys

from local.fakesnow_adapter import client_capabilities
from runner import cli


def main(argv: list[str]) -> int:
    with client_capabilities():
        return cli.main(argv)


if __name__ == "__main__":
    code = None
    if os.environ.get("AURORA_SYNC_FORK_SERVER"):  # the test suite's (runner.fork_server)
        from runner.fork_server import delegate
        code = delegate(sys.argv, entry="local.fakesnow_client:main")
    sys.exit(main(sys.argv[1:]) if code is None else code)
