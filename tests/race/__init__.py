"""Seeded race-and-crash tests of the CDC paths (Jepsen / FoundationDB-simulation style).

- `workload`: a seeded random application workload against PostgreSQL, from threads.
- `comparator`: an independent source-versus-destination comparison (DuckDB, or fakesnow through the Snowflake
  connector; no product code).
- `stand_ins`: moto S3 behind a pausable proxy, fakesnow's HTTP server, a DuckDB lock holder (the outages).
- `scenario`: one seeded scenario end to end through the `aurora-sync` CLI, with kill -9, restarts and outages;
  `python -m tests.race.scenario --mode follow --seed 7` replays one outside pytest.
- `test_race`: the pytest entry point (marker `race`; `RACE_SEEDS=N` for soak runs, `make soak`).
"""
