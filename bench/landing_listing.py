"""Does a merge cycle's listing grow with the landing area's history? (issue: merge cost flat over time)

    python -m bench.landing_listing --sizes 1000 10000 100000

Starts moto's S3 server, fills one landing area's index (`_index/<seq>.<load_id>.json`, `pipelines.landing_area`)
with N merged loads, as a follower landing every 2 s writes about 43,000 a day, and marks them merged. Then it runs
idle merge cycles (`merge_landed`: nothing landed since the last cycle) and a busy cycle's listing of the last 50
loads, and reports the LIST requests and seconds of each at every N. Flat means the same numbers at 1k and 100k.
moto filters every key in Python on each LIST (S3 seeks to `StartAfter` in its index), so on moto the seconds of one
bare LIST grow with N; the last column shows that cost apart.
The fill itself (N small PUTs to moto) takes most of the time: about 3 minutes for 100,000 here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from unittest.mock import patch

import dlt

from local.moto_s3 import LocalS3
from pipelines.landing_area import INDEX_DIR, IndexEntry, LandingArea
from pipelines.merge import merge_landed

BUCKET = "landing-bench"


@dataclass
class Cycle:
    loads: int
    idle_list_requests: int
    idle_seconds: float  # median of the idle cycles
    busy_list_requests: int  # listing the last 50 loads (what a cycle after 50 new loads lists)
    busy_seconds: float
    raw_list_seconds: float  # one bare list_objects_v2 with StartAfter past the last key: the endpoint's own cost


def configured(s3: LocalS3) -> Any:
    """The landing area's bucket, as the follower and `merge` are configured (env vars), restored afterwards."""
    return patch.dict(os.environ, {"DESTINATION__FILESYSTEM__BUCKET_URL": s3.create_bucket(BUCKET), **s3.dlt_env()})


def fill(s3: LocalS3, area: LandingArea, start: int, stop: int, workers: int = 16) -> None:
    """Index entries for loads `start`..`stop - 1`, written straight to S3 (what the follower's loads leave)."""
    client = s3.client()
    prefix = area.base.split("/", 1)[1] + f"/{INDEX_DIR}/"
    t0 = 1_700_000_000.0

    def put(seq: int) -> None:
        entry = IndexEntry(seq, seq - 1, f"{t0 + 2 * seq:.6f}", ("app__t",), "2026-01-01T00:00:00+00:00")
        client.put_object(Bucket=BUCKET, Key=prefix + entry.name, Body=json.dumps(entry.as_json()).encode())

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(put, range(start, stop)))


def raw_list_seconds(s3: LocalS3, area: LandingArea, loads: int) -> float:
    client = s3.client()
    prefix = area.base.split("/", 1)[1] + f"/{INDEX_DIR}/"
    started = time.monotonic()
    client.list_objects_v2(Bucket=BUCKET, Prefix=prefix, StartAfter=f"{prefix}{loads:020d}/", MaxKeys=1000)
    return time.monotonic() - started


def measure(s3: LocalS3, pipeline: dlt.Pipeline, loads: int, cycles: int = 5) -> Cycle:
    """Idle cycles after `loads` merged loads, and the listing a busy cycle does for the last 50."""
    LandingArea(pipeline).mark_merged(loads)
    idle: list[tuple[int, float]] = []
    for _ in range(cycles):
        summary = merge_landed(pipeline)
        assert summary.idle, summary.as_fields()
        idle.append((summary.list_requests, summary.duration))
    area = LandingArea(pipeline)
    started = time.monotonic()
    entries = area.index(after=loads - 50)
    busy_seconds = time.monotonic() - started
    assert len(entries) == 50, len(entries)
    return Cycle(loads, max(r for r, _ in idle), statistics.median(s for _, s in idle), area.list_requests,
                 busy_seconds, raw_list_seconds(s3, area, loads))


def run(sizes: list[int]) -> list[Cycle]:
    results: list[Cycle] = []
    with LocalS3() as s3, tempfile.TemporaryDirectory() as tmp, configured(s3):
        pipeline = dlt.pipeline(pipeline_name="landing_bench", pipelines_dir=tmp, destination="duckdb",
                                dataset_name="bench")
        area = LandingArea(pipeline)
        filled = 1
        for size in sorted(sizes):
            started = time.monotonic()
            fill(s3, area, filled, size + 1)
            filled = size + 1
            print(f"filled the index to {size:,} loads in {time.monotonic() - started:.0f} s", flush=True)
            results.append(measure(s3, pipeline, size))
    return results


def table(results: list[Cycle]) -> str:
    lines = ["| loads in the landing area | idle cycle: LIST requests | idle cycle: seconds (median of 5) | "
             "busy cycle, 50 new loads: LIST requests | seconds | one bare LIST on the endpoint: seconds |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r.loads:,} | {r.idle_list_requests} | {r.idle_seconds:.3f} | {r.busy_list_requests} | "
              f"{r.busy_seconds:.3f} | {r.raw_list_seconds:.3f} |" for r in results]
    return "\n".join(lines)


def main(argv: Any = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    print(table(run(parser.parse_args(argv).sizes)))


if __name__ == "__main__":
    main()
