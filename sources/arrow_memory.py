"""Arrow's freed memory goes back to the system at once, so a process's peak RSS is what it holds, not what it held.

pyarrow's default allocator on Linux (mimalloc) keeps freed pages for reuse. A step that builds large Arrow tables
and then hands over to a destination whose memory is its own (DuckDB's allocator, the Snowflake connector's buffers)
carries those pages through the load: the merge of one landed 1M-row transaction peaked at 699 MB with them, after
every table it had built was gone. jemalloc, which pyarrow ships too, returns freed pages at once with its decay
set to 0: the same merge peaks at ~435 MB. The snapshot's speed moved within this machine's noise (docs/performance.md).

`release()` marks the points where a step's Arrow tables are gone and a load comes next: with another pool (the
operator's, or a pyarrow without jemalloc) it is what gives the memory back; with jemalloc at decay 0 it finds little.

An operator's `ARROW_DEFAULT_MEMORY_POOL` (pyarrow's own switch) wins; a pyarrow built without jemalloc keeps its
default.
"""

from __future__ import annotations

import os

_installed = False


def install() -> None:
    """Idempotent; `sources` runs it on import, before any large table is built."""
    global _installed
    if _installed or os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return
    import pyarrow as pa

    try:
        pool = pa.jemalloc_memory_pool()
    except NotImplementedError:
        return
    pa.jemalloc_set_decay_ms(0)
    pa.set_memory_pool(pool)
    _installed = True


def release() -> None:
    """Give what Arrow freed back to the system now: the tables of a step are gone and a load comes next."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
