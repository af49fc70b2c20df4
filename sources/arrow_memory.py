"""Arrow's freed memory goes back to the system, so a process's peak RSS is what it holds, not what it once held.

pyarrow's default allocator on Linux (mimalloc) keeps freed pages for reuse, and keeps those that Arrow's reader
threads allocated and another thread freed. A step that builds large Arrow tables and then hands over to a
destination whose memory is its own (DuckDB's allocator, the Snowflake connector's buffers) carried them through the
load: the merge of one landed 1M-row transaction peaked at 699 MB with them, after every table it built was gone.
jemalloc, which pyarrow ships too, gives them back after its decay (pyarrow's: 1 s, by a background thread): the
same merge peaks at ~495 MB. A decay of 0 would save ~60 MB more but cost the snapshot 8-10 % (it frees and
reallocates its 4 MiB CSV blocks all the time); at pyarrow's decay the snapshot is as fast as with mimalloc, with
less memory (docs/performance.md). (`MemoryPool.release_unused` does not help here: jemalloc's purge only marks
the pages free to the kernel, and they stay in the RSS until its decay has passed.)

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
    pa.set_memory_pool(pool)
    _installed = True

