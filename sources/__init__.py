"""dlt sources of the PostgreSQL (Aurora) source: tables (`postgres`) and logical replication (`replication`).

Importing any of them first mends what dlt 1.31 lacks (`dlt_speedups`) and has Arrow give freed memory back
(`arrow_memory`): every command, pipeline and test imports a source before it resolves dlt configuration or builds
a table.
"""

from . import arrow_memory, dlt_speedups

dlt_speedups.install()
arrow_memory.install()
