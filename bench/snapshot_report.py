"""From `bench.snapshot_load`'s results.json to targets, the 1 TB extrapolation, a chart and docs/performance.md.

Everything shown in docs/performance.md is computed here from the JSON, so no figure is ever typed by hand,
and changing a price or a target re-renders the page without re-running the benchmark
(`python -m bench.snapshot_load --report <results.json>`).
"""

from __future__ import annotations

import itertools
import math
import os
import re
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DOC = PROJECT_ROOT / "docs" / "performance.md"
FULL_ROWS = 5_000_000  # issue 11: "a generated table of at least 5M rows"

# issue 11's targets
ONE_WORKER_RATIO = 0.5  # one worker >= 0.5x one COPY stream
N_WORKERS_RATIO = 0.8  # N workers >= 0.8x N COPY streams (where the machine has the cores)
MAX_TPS_DROP = 0.05  # pgbench TPS drop during a snapshot with the default throttle
MAX_AGE_S = 60.0  # oldest transaction / backend_xmin age on the source during a snapshot

# AWS Fargate on-demand prices, US East (N. Virginia), Linux, per hour: https://aws.amazon.com/fargate/pricing/
# (the rates in force since AWS's January 2019 Fargate price cut; third-party guides dated March 2026 quote the
# same figures). Copied 2026-12-01 without access to AWS from the benchmark machine: check before quoting.
FARGATE_PRICES = {
    "X86_64": {"vcpu_hour": 0.04048, "gb_hour": 0.004445},
    "ARM64": {"vcpu_hour": 0.03238, "gb_hour": 0.00356},
}
FARGATE_PRICES_SOURCE = "aws.amazon.com/fargate/pricing, us-east-1 Linux on-demand, as copied on 2026-12-01"
TERABYTE = 10**12  # the extrapolation's 1 TB: decimal, of pg_total_relation_size
WINDOW_HOURS = 24  # "tasks needed": ECS tasks to finish 1 TB within this many hours
# the snapshot task definition when terraform/variables.tf cannot be read
DEFAULT_TASK = {"cpu": 2048, "memory": 8192, "architecture": "X86_64"}
NOT_MEASURED = "not measured yet"
TIMES, DASH = "\u00d7", "\u2013"  # x and - as printed in the tables


def terraform_task() -> dict[str, Any]:
    """The Fargate size of the snapshot task as Terraform deploys it (terraform/variables.tf defaults)."""
    task = dict(DEFAULT_TASK)
    with_source = {"source": "bench.snapshot_report.DEFAULT_TASK"}
    try:
        text = (PROJECT_ROOT / "terraform" / "variables.tf").read_text()
    except OSError:
        return {**task, **with_source}
    size = re.search(r"snapshot\s*=\s*\{\s*cpu\s*=\s*(\d+),\s*memory\s*=\s*(\d+)\s*\}", text)
    arch = re.search(r'variable "cpu_architecture"[^}]*?default\s*=\s*"(\w+)"', text, re.S)
    if size:
        task.update(cpu=int(size.group(1)), memory=int(size.group(2)))
        with_source = {"source": "terraform/variables.tf (task_sizes.snapshot, cpu_architecture)"}
    if arch:
        task["architecture"] = arch.group(1)
    return {**task, **with_source}


# --------------------------------------------------------------------------------------------------------------
# Summary: targets met or not, where the time goes, the extrapolation
# --------------------------------------------------------------------------------------------------------------

def _runs(results: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [r for r in results.get("throughput") or [] if r["kind"] == kind]


def is_chunked(results: dict[str, Any]) -> bool:
    kill = results.get("kill") or {}
    return any(r.get("chunks") for r in _runs(results, "sync")) or bool(
        kill.get("chunks_loaded_before_kill") or kill.get("chunks_resume"))


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    cores = results["machine"]["cores"]
    copies = {(r["table"], r["workers"]): r for r in _runs(results, "copy")}
    rows = []
    for sync in _runs(results, "sync"):
        copy = copies.get((sync["table"], sync["workers"]))
        n = sync["workers"]
        target = ONE_WORKER_RATIO if n == 1 else N_WORKERS_RATIO
        ratio = sync["rows_per_s"] / copy["rows_per_s"] if copy else None
        applicable = cores >= n
        reading = (sync["copy_end_s"] - sync["startup_s"]) if sync.get("copy_end_s") is not None and sync.get(
            "startup_s") is not None else None
        phase_rate = round(sync["rows"] / reading) if reading else None
        rows.append({
            "reading_s": round(reading, 3) if reading is not None else None, "copy_phase_rows_per_s": phase_rate,
            "copy_phase_ratio": round(phase_rate / copy["rows_per_s"], 3) if phase_rate and copy else None,
            "server_cpu_cores": round(sync["server_cpu_s"] / sync["seconds"], 2)
            if sync.get("server_cpu_s") is not None else None,
            "table": sync["table"], "workers": n, "copy_rows_per_s": copy["rows_per_s"] if copy else None,
            "sync_rows_per_s": sync["rows_per_s"], "ratio": round(ratio, 3) if ratio is not None else None,
            "target_ratio": target, "applicable": applicable,
            "met": (ratio >= target) if (ratio is not None and applicable) else None,
            **{k: sync.get(k) for k in (
                "seconds", "startup_s", "copy_end_s", "after_copy_s", "cpu_cores", "server_cpu_s", "peak_rss_mb",
                "tree_peak_rss_mb", "processes", "threads", "chunks", "max_xact_age_s", "max_xmin_age_s",
                "max_xmin_age_xids", "bytes_per_s", "steady_bytes_per_s")},
        })
    summary: dict[str, Any] = {"chunked": is_chunked(results), "cores": cores,
                               "small": max(t["rows"] for t in results["tables"].values()) < FULL_ROWS
                               if results.get("tables") else True,
                               "throughput": rows, "ages": _ages(results), "pgbench": _pgbench(results.get("pgbench")),
                               "kill": _kill(results.get("kill")), "extrapolation": extrapolate(results),
                               "idle_default": _idle_default(results, rows)}
    summary["targets"] = _targets(summary)
    summary["where_the_time_goes"] = _where_time_goes(results, summary)
    return summary


def _idle_default(results: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The default pacing on an idle source, next to the unthrottled sync with as many workers."""
    run = results.get("idle_default")
    if not run:
        return None
    same = next((r for r in rows if r["table"] == run["table"] and r["workers"] == run["workers"]), None)
    return {"table": run["table"], "workers": run["workers"], "rows_per_s": run["rows_per_s"],
            "seconds": run["seconds"], "paused_s": run.get("paused_s"),
            "unthrottled_rows_per_s": same["sync_rows_per_s"] if same else None,
            "ratio": round(run["rows_per_s"] / same["sync_rows_per_s"], 2) if same else None}


def _ages(results: dict[str, Any]) -> dict[str, Any]:
    runs = [r for r in _runs(results, "sync")]
    runs += [results["kill"]] if results.get("kill") else []
    pgbench = results.get("pgbench") or {}
    runs += [pgbench[k] for k in ("unthrottled", "default") if pgbench.get(k)]

    def top(key: str) -> float | None:
        values = [r[key] for r in runs if r.get(key) is not None]
        return max(values) if values else None

    xact, xmin_s, xmin_x = top("max_xact_age_s"), top("max_xmin_age_s"), top("max_xmin_age_xids")
    return {"max_xact_age_s": xact, "max_xmin_age_s": xmin_s, "max_xmin_age_xids": xmin_x,
            "others_max_xact_age_s": top("others_max_xact_age_s"),
            "met": None if xact is None else (xact <= MAX_AGE_S and (xmin_s or 0) <= MAX_AGE_S)}


def _pgbench(phase: dict[str, Any] | None) -> dict[str, Any] | None:
    if not phase:
        return None
    baselines = [phase[k]["tps"] for k in ("baseline_before", "baseline_after") if phase.get(k)]
    baseline = sum(baselines) / len(baselines)
    out: dict[str, Any] = {"baseline_tps": round(baseline, 1),
                           "baseline_spread_pct": round(100 * (max(baselines) - min(baselines)) / baseline, 1),
                           "pinned": phase.get("pinned"), "postgres_cpus": phase.get("postgres_cpus"),
                           "client_cpus": phase.get("client_cpus")}
    for key in ("unthrottled", "default"):
        run = phase.get(key)
        if run:
            drop = 1 - run["tps"] / baseline
            out[key] = {"tps": run["tps"], "latency_ms": run["latency_ms"], "drop_pct": round(100 * drop, 1),
                        "coverage": run["snapshot_coverage"], "snapshot_rows_per_s": run["snapshot_rows_per_s"],
                        "tps_while_copy_active": run.get("tps_while_copy_active"),
                        "syncs_completed": run.get("syncs_completed"),
                        "first_chunk_after_load_s": run.get("first_chunk_after_load_s")}
    if out.get("default"):
        out["met"] = out["default"]["drop_pct"] <= 100 * MAX_TPS_DROP
    return out


def _kill(kill: dict[str, Any] | None) -> dict[str, Any] | None:
    if not kill:
        return None
    chunk = kill.get("max_chunk_rows")
    allowed = kill["workers"] * chunk if chunk else None
    met = None
    if kill.get("killed"):
        met = kill["rows_reread"] <= allowed and not kill["chunks_loaded_twice"] if allowed else False
    return {"rows": kill["rows"], "workers": kill["workers"], "progress_at_kill": kill["progress_at_kill"],
            "rows_read_run1": kill["rows_read_run1"], "rows_read_resume": kill["rows_read_resume"],
            "rows_reread": kill["rows_reread"], "allowed_rows": allowed, "chunks_loaded_twice":
            kill["chunks_loaded_twice"], "rows_in_chunks_loaded_twice": kill["rows_in_chunks_loaded_twice"],
            "destination_rows": kill.get("destination_rows_after_resume"), "killed": kill.get("killed"), "met": met}


def extrapolate(results: dict[str, Any]) -> dict[str, Any]:
    """Hours, ECS tasks and cost of 1 TB at each measured rate. A straight-line extrapolation: it assumes the
    rate per task stays what it was here, that the source serves every task at that rate, and that tasks split
    the tables (or key ranges) between them evenly."""
    task = terraform_task()
    prices = FARGATE_PRICES.get(task["architecture"], FARGATE_PRICES["X86_64"])
    vcpu, gb = task["cpu"] / 1024, task["memory"] / 1024
    hourly = vcpu * prices["vcpu_hour"] + gb * prices["gb_hour"]
    copies = {(r["table"], r["workers"]): r for r in _runs(results, "copy")}
    rows = []
    for sync in _runs(results, "sync"):
        rate = sync.get("steady_bytes_per_s") or sync["bytes_per_s"]
        hours = TERABYTE / rate / 3600
        copy = copies.get((sync["table"], sync["workers"]))
        copy_rate = (results["tables"][sync["table"]]["total_bytes"] / copy["seconds"]) if copy else None
        tasks = max(1, math.ceil(hours / WINDOW_HOURS))
        rows.append({
            "table": sync["table"], "workers": sync["workers"], "bytes_per_s": round(rate),
            "hours_one_task": round(hours, 1), "raw_copy_hours": round(TERABYTE / copy_rate / 3600, 1)
            if copy_rate else None, "tasks_for_window": tasks, "hours_with_tasks": round(hours / tasks, 1),
            "cost_usd": round(hours * hourly, 2), "sync_cpu_cores": sync.get("cpu_cores"),
            "peak_rss_mb": sync.get("peak_rss_mb"),
            "fits_task": (sync.get("cpu_cores") or 0) <= vcpu and (sync.get("peak_rss_mb") or 0) <= task["memory"],
        })
    return {"terabyte_bytes": TERABYTE, "window_hours": WINDOW_HOURS, "task": task, "task_vcpu": vcpu,
            "task_gb": gb, "task_hourly_usd": round(hourly, 5), "prices": prices, "prices_source":
            FARGATE_PRICES_SOURCE, "rows": rows}


def _status(met: bool | None, why_none: str = NOT_MEASURED) -> str:
    return why_none if met is None else ("met" if met else "**not met**")


def _targets(s: dict[str, Any]) -> list[dict[str, str]]:
    targets = []
    for row in s["throughput"]:
        n, table = row["workers"], row["table"]
        name = (f"1 worker vs 1 COPY stream ({table})" if n == 1 else
                f"{n} workers vs {n} COPY streams ({table})")
        measured = (f"{row['ratio']:.2f}{TIMES} ({row['sync_rows_per_s']:,} vs {row['copy_rows_per_s']:,} rows/s)"
                    if row["ratio"] is not None else NOT_MEASURED)
        status = _status(row["met"]) if row["applicable"] else \
            f"n/a: {s['cores']} cores < {n} (measured anyway)"
        targets.append({"measure": name, "measured": measured, "target": f"≥ {row['target_ratio']}{TIMES}",
                        "status": status})
    rss = [r for r in s["throughput"] if r.get("peak_rss_mb")]
    if rss:
        per_table = []
        for table in dict.fromkeys(r["table"] for r in rss):
            mine = [r for r in rss if r["table"] == table]
            per_table.append(f"`{table}` " + " / ".join(f"{r['peak_rss_mb']:.0f}" for r in mine) + " MB at workers "
                             + "/".join(str(r["workers"]) for r in mine))
        processes = max((r.get("processes") or 0) for r in rss)
        threads = max((r.get("threads") or 0) for r in rss)
        shape = (f"one process of up to {threads} threads: workers are threads, the figure is the process's"
                 if processes == 1 else f"up to {processes} processes: per-process peaks in the JSON")
        targets.append({"measure": "peak RSS per sync process", "measured": f"{'; '.join(per_table)} ({shape})",
                        "target": "reported", "status": "reported"})
    pg = s.get("pgbench")
    if pg and pg.get("unthrottled"):
        u = pg["unthrottled"]
        targets.append({"measure": "pgbench TPS drop, unthrottled snapshot", "measured":
                        f"{u['drop_pct']} % ({pg['baseline_tps']:,.0f} → {u['tps']:,.0f} TPS)",
                        "target": "reported", "status": "reported"})
    if pg and pg.get("default"):
        d = pg["default"]
        targets.append({"measure": "pgbench TPS drop, default throttle", "measured":
                        f"{d['drop_pct']} % ({pg['baseline_tps']:,.0f} → {d['tps']:,.0f} TPS)",
                        "target": f"≤ {MAX_TPS_DROP * 100:.0f} %", "status": _status(pg.get("met"))})
    elif not pg:
        targets.append({"measure": "pgbench TPS drop, default throttle", "measured": NOT_MEASURED,
                        "target": f"≤ {MAX_TPS_DROP * 100:.0f} %", "status": NOT_MEASURED})
    if pg and pg.get("default") and pg["default"].get("first_chunk_after_load_s") is not None:
        targets.append({"measure": "default pacing: next chunk read after pgbench stopped", "measured":
                        f"{pg['default']['first_chunk_after_load_s']} s (the guard lets go)", "target": "reported",
                        "status": "reported"})
    idle = s.get("idle_default")
    if idle and idle.get("ratio") is not None:
        targets.append({"measure": f"default pacing on an idle source ({idle['table']}, workers={idle['workers']})",
                        "measured": f"{idle['rows_per_s']:,} rows/s = {idle['ratio']:.2f}{TIMES} unthrottled; "
                        f"{idle['paused_s']} s paused", "target": "reported", "status": "reported"})
    a = s["ages"]
    targets.append({"measure": "oldest transaction of the sync (now() - xact_start)",
                    "measured": f"{a['max_xact_age_s']:.1f} s" if a["max_xact_age_s"] is not None else NOT_MEASURED,
                    "target": f"≤ {MAX_AGE_S:.0f} s", "status": _status(
                        None if a["max_xact_age_s"] is None else a["max_xact_age_s"] <= MAX_AGE_S)})
    targets.append({"measure": "backend_xmin age of the sync", "measured":
                    f"{a['max_xmin_age_s']:.1f} s, {a['max_xmin_age_xids']:,} xids"
                    if a["max_xmin_age_s"] is not None else NOT_MEASURED, "target": f"≤ {MAX_AGE_S:.0f} s",
                    "status": _status(None if a["max_xmin_age_s"] is None else a["max_xmin_age_s"] <= MAX_AGE_S)})
    k = s.get("kill")
    if k:
        if not k["killed"]:
            measured, status = "the sync finished before the kill point", NOT_MEASURED
        else:
            measured = (f"{k['rows_reread']:,} rows ({k['rows_reread'] / k['rows']:.0%} of the table); chunks loaded "
                        f"twice: {k['chunks_loaded_twice']}")
            status = _status(k["met"]) if k["allowed_rows"] else "**not met**: no chunks, the resume re-read the table"
        targets.append({"measure": f"rows re-read after kill -9 at ~50 % (workers={k['workers']})",
                        "measured": measured, "target": "≤ one chunk per worker"
                        + (f" ({k['allowed_rows']:,} rows)" if k["allowed_rows"] else ""), "status": status})
    else:
        targets.append({"measure": "rows re-read after kill -9 at ~50 %", "measured": NOT_MEASURED,
                        "target": "≤ one chunk per worker", "status": NOT_MEASURED})
    return targets


def _where_time_goes(results: dict[str, Any], s: dict[str, Any]) -> list[str]:
    """Sentences derived from the measurements, for the targets not met."""
    lines = []
    cores = s["cores"]

    def span(rows: list[dict[str, Any]], key: str, digits: int = 1) -> str:
        """`low-high` of a figure over several runs, or the one value when they agree at that precision."""
        values = [r[key] for r in rows if r.get(key) is not None]
        if not values:
            return DASH
        low, high = f"{min(values):,.{digits}f}", f"{max(values):,.{digits}f}"
        return low if low == high else f"{low} to {high}"

    for table in dict.fromkeys(r["table"] for r in s["throughput"]):
        rows = [r for r in s["throughput"] if r["table"] == table and (r["met"] is False or not r["applicable"])]
        if not rows:
            continue
        workers = "/".join(str(r["workers"]) for r in rows)
        text = f"`{table}`, workers {workers}: each sync took {span(rows, 'seconds')} s"
        if any(r.get("reading_s") is not None for r in rows):
            text += (f", of which {span(rows, 'startup_s')} s passed before its first COPY started (interpreter "
                     f"start, imports, discovery, the run lock), {span(rows, 'reading_s')} s reading at "
                     f"{span(rows, 'copy_phase_rows_per_s', 0)} rows/s ({span(rows, 'copy_phase_ratio', 2)}{TIMES} "
                     f"the COPY streams) and {span(rows, 'after_copy_s')} s after the last COPY (normalize, load, "
                     "the run record)")
        text += (f"; the sync process used {span(rows, 'cpu_cores', 2)} cores and the server "
                 f"{span(rows, 'server_cpu_cores', 2)}, of {cores}.")
        one = next((r for r in s["throughput"] if r["table"] == table and r["workers"] == 1), None)
        flat = [r for r in rows if one and r["workers"] > 1 and not r.get("chunks")
                and r["sync_rows_per_s"] < 1.15 * one["sync_rows_per_s"]]
        if one and flat:
            rates = ", ".join(f"{r['sync_rows_per_s']:,}" for r in flat)
            text += (f" More workers were no faster ({rates} vs {one['sync_rows_per_s']:,} rows/s with one): "
                     "without `chunk read` lines a table is one COPY whatever `workers` is.")
        lines.append(text)
    pg = s.get("pgbench")
    if pg and pg.get("default") and pg.get("met") is False:
        d = pg["default"]
        lines.append(f"pgbench during default-throttle snapshots: {d['drop_pct']} % fewer TPS, with a sync COPY "
                     f"active {d['coverage']:.0%} of the time reading {d['snapshot_rows_per_s']:,} rows/s "
                     f"(unthrottled: {pg['unthrottled']['snapshot_rows_per_s']:,} rows/s); the baselines before and "
                     f"after differ by {pg['baseline_spread_pct']} %, the noise floor of this figure."
                     + ("" if s["chunked"] else " Today's code has no throttle: both runs are the same snapshot."))
        raw = results["pgbench"]
        server = [raw[k].get("server_cpu_cores") for k in ("unthrottled", "default") if raw.get(k)]
        if server and all(c is not None and c < 0.9 for c in server):
            lines.append(f"The server's core was not saturated during the loaded runs ({', '.join(map(str, server))} "
                         "cores of 1): part of the drop is not the source's CPU. The pgbench client shares its core "
                         "with the sync (pgbench CPU in the table), and other work on the machine shows in the spread "
                         "of the baselines.")
    k = s.get("kill")
    if k and k.get("met") is False:
        lines.append(f"kill -9: run 1 read {k['rows_read_run1']:,} rows before the kill; the resume read "
                     f"{k['rows_read_resume']:,} rows" + (" (the whole table again: nothing of run 1 was kept)"
                                                          if k["rows_read_resume"] >= k["rows"] else "") + ".")
    if not s["chunked"] and results.get("tables"):
        ex = [r for r in s["extrapolation"]["rows"] if r["workers"] == 1]
        if ex:
            lines.append(f"Today a table is one COPY in one transaction: its snapshot (and `backend_xmin`) is held "
                         f"for the whole read, ≈ {ex[0]['hours_one_task']} h for a 1 TB table at this run's rate. "
                         "The ≤ 60 s age target is met here only because the tables are small.")
    return lines


# --------------------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------------------

SECTIONS = {
    "chunked": "Chunked snapshot (issue 11)",
    "baseline": "Baseline: today's single-COPY snapshot",
}


def _mb(value: float | None) -> str:
    return DASH if value is None else f"{value:,.0f}"


def _n(value: float | None, digits: int = 1) -> str:
    return DASH if value is None else f"{value:,.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(r) + " |" for r in rows]]


def placeholder(kind: str) -> list[str]:
    """The section before anything was measured: the shape of the table, every figure `not measured yet`."""
    names = ["1 worker vs 1 COPY stream (orders, wide)", "2 workers vs 2 COPY streams (orders, wide)",
             "4 workers vs 4 COPY streams (orders, wide)", "peak RSS per sync process / per worker",
             "pgbench TPS drop, unthrottled snapshot", "pgbench TPS drop, default throttle",
             "oldest transaction of the sync", "backend_xmin age of the sync",
             "rows re-read after kill -9 at ~50 %", "1 TB: hours, ECS tasks, cost"]
    goals = [f"≥ {ONE_WORKER_RATIO}{TIMES}", f"≥ {N_WORKERS_RATIO}{TIMES}", f"≥ {N_WORKERS_RATIO}{TIMES}",
             "reported", "reported", f"≤ {MAX_TPS_DROP * 100:.0f} %", f"≤ {MAX_AGE_S:.0f} s", f"≤ {MAX_AGE_S:.0f} s",
             "≤ one chunk per worker", "extrapolated"]
    what = "the chunked snapshot has not landed" if kind == "chunked" else "the baseline has not been run"
    lines = [f"{NOT_MEASURED.capitalize()}: {what}."
             " Run `make bench-snapshot` (or `python -m bench.snapshot_load --write-docs`) on a quiet machine; "
             "`python -m bench.snapshot_load --report <results.json>` fills this section.", ""]
    lines += _table(["measure", "measured", "target", "result"],
                    [[n, NOT_MEASURED, g, NOT_MEASURED] for n, g in zip(names, goals, strict=True)])
    return lines


def render(results: dict[str, Any], results_path: Path, kind: str) -> list[str]:
    s = results["summary"]
    m, o = results["machine"], results["options"]
    rel = _rel(results_path)
    size = ", ".join(f"`{t}` {v['rows']:,} rows ({v['total_bytes'] / 1e6:,.0f} MB total, "
                     f"{v['avg_row_bytes']} B/row)" for t, v in results["tables"].items())
    lines = [f"_Generated by `python -m bench.snapshot_load --report {rel}` from that file: do not edit by hand._",
             ""]
    if s["small"]:
        lines += [f"**Small development run** (fewer than {FULL_ROWS:,} rows): indicative only, **not** the issue-11 "
                  "figures, which need the full run on a quiet machine.", ""]
    lines += [
        f"- Run {results['started_at']}, {results['duration_s']:.0f} s, commit `{m['commit']}`"
        + (" (sync code modified)" if m.get("sync_code_modified") else "") + f"; {m['cores']} cores ({m['cpu']}), "
        f"load average {m['load_average_at_start']} at start; PostgreSQL {_pg_version(m.get('postgres'))}.",
        f"- Tables: {size}. Destination: {o['destination']}. Snapshot path: "
        + ("chunked (`chunk read` lines seen)." if s["chunked"] else
           "one COPY per table (no `chunk read` lines: `workers` and the throttle settings had no effect)."),
        "",
        "#### Targets",
        "",
        *_table(["measure", "measured", "target", "result"],
                [[t["measure"], t["measured"], t["target"], t["status"]] for t in s["targets"]]),
        "",
        "#### Throughput",
        "",
        "Rows/s of whole `aurora-sync run --mode snapshot` processes (start to exit) next to as many raw "
        "`COPY … TO STDOUT (FORMAT binary)` streams. Start-up = process start to the first COPY on the server; "
        "after = last COPY seen to exit. CPU in cores: average over the run.",
        "",
        *_table(["table", "workers", "COPY rows/s", "sync rows/s", "ratio", "sync s", "start-up s", "after s",
                 "sync CPU", "server CPU", "peak RSS MB", "processes / threads", "oldest xact s", "xmin age s (xids)"],
                [[f"`{r['table']}`", str(r["workers"]), _mb(r["copy_rows_per_s"]), _mb(r["sync_rows_per_s"]),
                  _n(r["ratio"], 2), _n(r["seconds"]), _n(r["startup_s"]), _n(r["after_copy_s"]), _n(r["cpu_cores"], 2),
                  _n(r["server_cpu_cores"], 2),
                  _mb(r["peak_rss_mb"]), f"{r.get('processes') or DASH} / {r.get('threads') or DASH}",
                  _n(r["max_xact_age_s"]), f"{_n(r['max_xmin_age_s'])} ({_mb(r['max_xmin_age_xids'])})"]
                 for r in s["throughput"]]),
        "",
    ]
    if s["where_the_time_goes"]:
        lines += ["#### Where the time goes", "", *[f"- {line}" for line in s["where_the_time_goes"]], ""]
    pg = s.get("pgbench")
    lines += ["#### pgbench on the source", ""]
    if pg:
        raw = results["pgbench"]
        seen = raw.get("affinity_observed") or {}
        pin_text = (f"PostgreSQL pinned to CPU {pg['postgres_cpus']}, syncs and pgbench to CPU {pg['client_cpus']} "
                    f"(observed: postmaster {seen.get('postmaster')}, a new backend {seen.get('new_backend')}, "
                    f"the harness {seen.get('harness')})" if pg["pinned"] else "**not pinned** (fewer than 2 cores)")
        lines += [f"`pgbench -c {raw['clients']} -j {raw['threads']} -T {raw['seconds']}` (scale {raw['scale']}, "
                  f"its own database) while snapshots of `bench.orders` with workers={raw['workers']} run back to "
                  f"back; {pin_text}.", ""]
        table_rows = []
        for key, label in (("baseline_before", "no sync"), ("unthrottled", "unthrottled snapshots"),
                           ("default", "default-throttle snapshots"), ("baseline_after", "no sync, again")):
            run = raw.get(key)
            if not run:
                continue
            summary = pg.get(key) or {}
            table_rows.append([label, _n(run["tps"]), _n(run["latency_ms"], 2),
                               f"{summary['drop_pct']} %" if summary else DASH,
                               f"{summary['coverage']:.0%}" if summary else DASH,
                               _n(summary.get("tps_while_copy_active")) if summary else DASH,
                               _mb(summary.get("snapshot_rows_per_s")) if summary else DASH,
                               str(summary.get("syncs_completed", DASH)) if summary else DASH,
                               _n(run.get("server_cpu_cores"), 2), _n(run.get("client_cpu_cores"), 2)])
        lines += _table(["run", "TPS", "latency ms", "TPS drop", "sync COPY running", "TPS while it ran",
                         "snapshot rows/s", "syncs completed", "server CPU", "pgbench CPU"], table_rows)
        lines += ["", f"Baseline TPS {pg['baseline_tps']:,.1f} (mean of the two runs without a sync; they differ by "
                  f"{pg['baseline_spread_pct']} %).", ""]
    else:
        lines += [f"{NOT_MEASURED} (run with `--no-pgbench`).", ""]
    k = results.get("kill")
    lines += ["#### kill -9 and resume", ""]
    if k:
        lines += [f"`bench.orders` ({k['rows']:,} rows), workers={k['workers']}: killed (SIGKILL to the process group) "
                  f"after {_n(k['killed_after_s'])} s with {k['progress_at_kill']:,} rows read; rows read per run from "
                  "the table's `seq_tup_read + idx_tup_fetch` on the server.", "",
                  *_table(["run 1 read", "resume read", "read twice", "chunks loaded before the kill",
                           "chunks loaded twice (rows)", "largest chunk", "destination rows after resume",
                           "resume rows/s"],
                          [[f"{k['rows_read_run1']:,}", f"{k['rows_read_resume']:,}", f"{k['rows_reread']:,}",
                            str(k["chunks_loaded_before_kill"]),
                            f"{k['chunks_loaded_twice']} ({k['rows_in_chunks_loaded_twice']:,})",
                            _mb(k.get("max_chunk_rows")), _mb(k.get("destination_rows_after_resume")),
                            _mb(k.get("resume_rows_per_s"))]]), ""]
    else:
        lines += [f"{NOT_MEASURED} (run with `--no-kill`).", ""]
    ex = s["extrapolation"]
    task = ex["task"]
    lines += [
        "#### Extrapolation to 1 TB (an extrapolation, not a measurement)",
        "",
        f"1 TB = 10^12 bytes of `pg_total_relation_size`, divided by each sync's measured bytes/s (the table's "
        f"total size over the seconds from its first COPY to its exit: process start-up is a fixed cost that 1 TB "
        f"does not multiply). It assumes that rate holds at any size, that the source serves every task at it, and "
        f"that tasks split the tables or key ranges evenly. Task: {task['cpu'] / 1024:g} vCPU, "
        f"{task['memory'] / 1024:g} GB, {task['architecture']} ({task['source']}), "
        f"${ex['task_hourly_usd']}/h at ${ex['prices']['vcpu_hour']}/vCPU-h and ${ex['prices']['gb_hour']}/GB-h "
        f"({ex['prices_source']}). Tasks: enough to finish within {ex['window_hours']} h; cost = task-hours "
        f"{TIMES} the hourly price (the same however many tasks share the work).",
        "",
        *_table(["rows like", "workers", "measured MB/s", "hours, 1 task", "raw COPY floor h",
                 f"tasks for {ex['window_hours']} h", "hours with them", "cost USD", "sync CPU cores / peak RSS MB",
                 "fits the task"],
                [[f"`{r['table']}`", str(r["workers"]), _n(r["bytes_per_s"] / 1e6), _n(r["hours_one_task"]),
                  _n(r["raw_copy_hours"]), str(r["tasks_for_window"]), _n(r["hours_with_tasks"]),
                  f"{r['cost_usd']:,.2f}", f"{_n(r['sync_cpu_cores'], 2)} / {_mb(r['peak_rss_mb'])}",
                  "yes" if r["fits_task"] else "no"] for r in ex["rows"]]),
        "",
    ]
    chart = results_path.parent / "throughput.png"
    if chart.exists():
        lines += [f"![throughput over time]({os.path.relpath(chart, DOC.parent)})", ""]
    return lines


def _pg_version(number: int | None) -> str:
    """psycopg2's server_version (150018) as PostgreSQL prints it (15.18)."""
    return DASH if not number else f"{number // 10000}.{number % 10000}"


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def markers(kind: str) -> tuple[str, str]:
    return f"<!-- BEGIN GENERATED bench.snapshot_load {kind} -->", f"<!-- END GENERATED bench.snapshot_load {kind} -->"


def write_docs(results: dict[str, Any] | None, results_path: Path | None, section: str = "auto") -> str:
    """Replace one generated section of docs/performance.md (chunked when the sync logged chunks); with no
    results, the section's `not measured yet` placeholder."""
    if results is None:
        kind = section
        body = "\n".join(placeholder(kind))
    else:
        kind = section if section != "auto" else ("chunked" if results["summary"]["chunked"] else "baseline")
        body = "\n".join(render(results, results_path or Path("results.json"), kind))
    text = DOC.read_text()
    begin, end = markers(kind)
    if begin not in text or end not in text:
        raise SystemExit(f"{DOC} has no {begin} ... {end} section to rewrite")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    DOC.write_text(f"{head}{begin}\n{body}\n{end}{tail}")
    return kind


def console_summary(results: dict[str, Any]) -> str:
    s = results["summary"]
    width = max(len(t["measure"]) for t in s["targets"])
    lines = ["", "targets" + (" (SMALL RUN: indicative only)" if s["small"] else "")]
    lines += [f"  {t['measure']:<{width}}  {t['measured']}  [{t['target']}: {t['status'].replace('**', '')}]"
              for t in s["targets"]]
    lines.append("1 TB extrapolation (from the measured bytes/s):")
    lines += [f"  {r['table']} workers={r['workers']}: {r['hours_one_task']} h in one task, "
              f"{r['tasks_for_window']} task(s) for {s['extrapolation']['window_hours']} h, ${r['cost_usd']:,.2f}"
              for r in s["extrapolation"]["rows"]]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# Chart
# --------------------------------------------------------------------------------------------------------------

def rates(points: list[list[float]] | list[tuple[float, int]], step: float | None = None) -> tuple[list[float],
                                                                                                    list[float]]:
    """Rows/s over time from cumulative (t, rows) points, on a regular grid (linear between points)."""
    pts = sorted((float(t), float(v)) for t, v in points)
    if len(pts) < 2 or pts[-1][0] <= 0:
        return [], []
    end = pts[-1][0]
    step = step or max(0.02, end / 50)

    def at(t: float) -> float:
        for (t0, v0), (t1, v1) in itertools.pairwise(pts):
            if t0 <= t <= t1:
                return v0 + (v1 - v0) * ((t - t0) / (t1 - t0) if t1 > t0 else 1.0)
        return pts[-1][1] if t > end else 0.0

    grid = [i * step for i in range(int(end / step) + 2)]
    values = [at(t) for t in grid]
    return [t + step / 2 for t in grid[:-1]], [(b - a) / step for a, b in itertools.pairwise(values)]


def chart(results: dict[str, Any], path: Path) -> Path | None:
    """throughput.png: rows/s over time of every COPY and sync run, the kill/resume, and pgbench TPS."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    tables = list(results.get("tables") or {})
    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    colors = {1: "tab:blue", 2: "tab:orange", 4: "tab:green", 8: "tab:red"}
    for ax, table in zip(axes[0], tables + [None] * (2 - len(tables)), strict=False):
        if table is None:
            ax.set_visible(False)
            continue
        for run in results.get("throughput") or []:
            if run["table"] != table:
                continue
            x, y = rates(run["timeline"])
            style = "--" if run["kind"] == "copy" else "-"
            label = (f"{run['workers']} COPY stream(s)" if run["kind"] == "copy" else f"sync, workers={run['workers']}")
            ax.plot(x, y, style, color=colors.get(run["workers"]), label=label)
        ax.set_title(f"{table}: rows/s over time")
        ax.set_xlabel("seconds since the process (or the first COPY stream) started")
        ax.set_ylabel("rows/s")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    ax = axes[1][0]
    kill = results.get("kill")
    if kill:
        for key, label, color in (("timeline_run1", "run 1 (killed)", "tab:red"),
                                  ("timeline_resume", "resume", "tab:blue")):
            points = kill.get(key) or []
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], color=color, label=label)
        if kill.get("killed_after_s") is not None:
            ax.axvline(kill["killed_after_s"], color="black", linestyle=":", label="kill -9")
        ax.axhline(kill["rows"], color="grey", linestyle="--", linewidth=0.8, label="table rows")
        ax.set_title(f"kill -9 at ~{kill['kill_at_fraction']:.0%} and resume: rows read (workers={kill['workers']})")
        ax.set_xlabel("seconds since run 1 started")
        ax.set_ylabel("rows read (cumulative, per run)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    else:
        ax.set_visible(False)
    ax = axes[1][1]
    pg = results.get("pgbench")
    if pg:
        for key, label in (("baseline_before", "no sync"), ("unthrottled", "unthrottled snapshots"),
                           ("default", "default-throttle snapshots"), ("baseline_after", "no sync, again")):
            run = pg.get(key)
            if run and run.get("per_second"):
                ax.plot([p[0] for p in run["per_second"]], [p[1] for p in run["per_second"]], label=label)
        ax.set_title("pgbench TPS on the source (PostgreSQL pinned to its own core)" if pg.get("pinned")
                     else "pgbench TPS on the source (not pinned)")
        ax.set_xlabel("seconds")
        ax.set_ylabel("TPS")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    else:
        ax.set_visible(False)
    small = " (small run)" if results.get("summary", {}).get("small") else ""
    fig.suptitle(f"bench.snapshot_load {results.get('started_at', '')}{small}, commit "
                 f"{results['machine'].get('commit')}, {results['machine']['cores']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
