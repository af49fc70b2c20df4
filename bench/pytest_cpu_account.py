"""Where `make test`'s CPU goes, per test: a pytest plugin, then a summary by module.

    PYTHONPATH=. PYTEST_ADDOPTS="-p bench.pytest_cpu_account" CPU_ACCOUNT_OUT=/tmp/cpu.jsonl make test
    python -m bench.pytest_cpu_account /tmp/cpu.jsonl

The parallel part of the suite keeps both cores busy, so its time is its CPU (docs/testing.md). For each test this
writes one line: wall seconds, and CPU seconds of the test's process (`self`), of the children it reaped
(`children`), of its other descendants and what they reaped (`descendants`: the fork server's `aurora-sync`
processes), and of every PostgreSQL cluster the process started (`postgres`: the postmaster, its live backends and,
through its children's time, the exited ones). Approximate where a process outlives its test: a background
`terraform test` is counted in the test during which it is reaped. The summary also prints a CPU probe, so runs on
this shared host (whose speed varies 20-35 %) can be compared.
"""

from __future__ import annotations

import collections
import json
import os
import resource
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

_TICK = os.sysconf("SC_CLK_TCK")
_clusters: list[Any] = []


def _watch_clusters() -> None:
    from local.postgres import LocalPostgres

    start = LocalPostgres.start
    if getattr(start, "_cpu_account", False):
        return

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = start(self, *args, **kwargs)
        _clusters.append(self)
        return result

    counted._cpu_account = True  # type: ignore[attr-defined]
    LocalPostgres.start = counted  # type: ignore[method-assign]


def _processes() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds of it and its reaped children)."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    stat = fh.read()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            found[int(entry)] = (int(fields[1]), sum(int(f) for f in fields[11:15]) / _TICK)
    return found


def _tree(processes: dict[int, tuple[int, float]], roots: list[int]) -> float:
    children: dict[int, list[int]] = collections.defaultdict(list)
    for pid, (parent, _) in processes.items():
        children[parent].append(pid)
    total, todo, seen = 0.0, list(roots), set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in processes:
            continue
        seen.add(pid)
        total += processes[pid][1]
        todo += children[pid]
    return total


def _sample() -> tuple[float, float, float, float]:
    processes = _processes()
    me = os.getpid()
    descendants = _tree(processes, [pid for pid, (parent, _) in processes.items() if parent == me])
    postmasters = []
    for cluster in _clusters:
        try:
            postmasters.append(int((cluster.data_dir / "postmaster.pid").read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            continue
    own, reaped = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return (own.ru_utime + own.ru_stime, reaped.ru_utime + reaped.ru_stime, descendants, _tree(processes, postmasters))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    _watch_clusters()
    before, started = _sample(), time.monotonic()
    yield
    after = _sample()
    record = {"test": item.nodeid, "wall": round(time.monotonic() - started, 2),
              **{name: round(b - a, 2) for name, a, b in zip(("self", "children", "descendants", "postgres"),
                                                              before, after, strict=True)},
              "worker": os.environ.get("PYTEST_XDIST_WORKER", "-")}
    with open(os.environ.get("CPU_ACCOUNT_OUT", "cpu-account.jsonl"), "a") as fh:
        fh.write(json.dumps(record) + "\n")


def summarize(path: str, top: int = 30) -> None:
    with open(path) as fh:
        records = [json.loads(line) for line in fh]
    modules: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0])
    for record in records:
        cpu = max(0.0, record["self"] + record["children"] + record["descendants"] + record["postgres"])
        module = modules[record["test"].split("::")[0]]
        module[0], module[1], module[2] = module[0] + cpu, module[1] + record["wall"], module[2] + 1
    started = time.process_time()
    sum(i * i for i in range(20_000_000))
    print(f"{len(records)} tests, {sum(m[0] for m in modules.values()):,.0f} CPU-s accounted; CPU probe now "
          f"{time.process_time() - started:.2f} s")
    print(f"{'CPU-s':>8} {'wall s':>8} {'tests':>6}  module")
    for name, (cpu, wall, count) in sorted(modules.items(), key=lambda m: -m[1][0])[:top]:
        print(f"{cpu:>8.0f} {wall:>8.0f} {count:>6}  {name}")


if __name__ == "__main__":
    summarize(sys.argv[1])
