"""`aurora-sync` as a client of `fake_snowflake_server`: `python -m local.fakesnow_client <arguments>`.

Tests whose `aurora-sync` processes load fakesnow's HTTP server run them through this, so dlt sends one statement
per request (patch 1 of `local.fakesnow_adapter`, which the test process applies to itself). Tests and the local
demo only; production runs `aurora-sync` itself.
"""

from __future__ import annotations

import sys

from local.fakesnow_adapter import client_capabilities
from runner import cli

if __name__ == "__main__":
    with client_capabilities():
        code = cli.main(sys.argv[1:])
    sys.exit(code)
