"""dlt sources of the PostgreSQL (Aurora) source: tables (`postgres`) and logical replication (`replication`).

Importing any of them first memoizes two of dlt's pure functions (`dlt_speedups`): every command, pipeline and
test imports a source before it resolves dlt configuration.
"""

from . import dlt_speedups

dlt_speedups.install()
