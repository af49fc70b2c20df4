"""Seeded race-and-crash tests of the CDC paths (Jepsen / FoundationDB-simulation style).

- `workload`: a seeded random application workload against PostgreSQL, from threads.
- `comparator`: an independent source-versus-DuckDB comparison (no product code).
- `scenario`: one seeded scenario end to end through the `aurora-sync` CLI, with kill -9 and restarts;
  `python -m tests.race.scenario --mode follow --seed 7` replays one outside pytest.
- `test_race`: the pytest entry point (marker `race`; `RACE_SEEDS=N` for soak runs, `make soak`).
"""
