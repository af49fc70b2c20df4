"""What a scheduled `verify --checksum` costs: seconds per million rows, full pass and a 1/7 rotating pass.

    python -m bench.verify_speed --rows 1000000

Starts a throwaway PostgreSQL, fills the orders-like table of `bench.snapshot_vs_copy` (`--rows`), loads it into
DuckDB with `aurora-sync run --mode snapshot` (a real process), then times `aurora-sync verify --checksum` over it:
a full pass, and `--rotation 7` (one day's slice). Counts always cover every chunk; the checksums, which stream every
row of both sides through Python, are what the rotation divides. Prints one JSON line per pass.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.snapshot_vs_copy import DDL, FILL
from local.postgres import LocalPostgres, execute

PROJECT_ROOT = Path(__file__).resolve().parents[1]
AURORA_SYNC = str(Path(sys.executable).parent / "aurora-sync")


def timed(args: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.monotonic()
    result = subprocess.run([AURORA_SYNC, "--json-logs", *args], env=env, cwd=PROJECT_ROOT, capture_output=True,
                            text=True, check=False)
    return time.monotonic() - started, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-rows", type=int, default=100_000)
    args = parser.parse_args()
    server = LocalPostgres().start()
    try:
        dsn = server.url()
        execute(dsn, DDL, FILL.format(rows=args.rows))
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "SOURCES__POSTGRES__CREDENTIALS": dsn, "SOURCES__POSTGRES__SCHEMAS": '["bench"]',
                   "DESTINATION__DUCKDB__CREDENTIALS": f"{tmp}/replica.duckdb", "DLT_DATA_DIR": f"{tmp}/dlt",
                   "SOURCES__POSTGRES__DEAD_LETTER_URL": f"{tmp}/dead_letter", "RUNTIME__LOG_LEVEL": "WARNING"}
            seconds, result = timed(["run", "--mode", "snapshot"], env)
            if result.returncode:
                print(result.stderr[-3000:], file=sys.stderr)
                return 1
            print(json.dumps({"pass": "load (for reference)", "rows": args.rows, "seconds": round(seconds, 1)}))
            for name, extra in (("full", []), ("rotation 1/7", ["--rotation", "7", "--rotation-phase", "0"])):
                seconds, result = timed(["verify", "--checksum", "--json", "--chunk-rows", str(args.chunk_rows),
                                         *extra], env)
                report = json.loads(result.stdout)
                table = report["tables"][0]
                print(json.dumps({"pass": name, "rows": args.rows, "exit": result.returncode,
                                  "chunks": table["chunks"], "checksummed_chunks": table["checksummed_chunks"],
                                  "seconds": round(seconds, 1),
                                  "seconds_per_million_rows": round(seconds / args.rows * 1e6, 1)}))
    finally:
        server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
