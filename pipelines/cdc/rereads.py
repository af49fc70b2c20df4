"""Keys read again on request, by the follower, where the source is (`LandingArea.request_reread`).

Two processes ask. The merge (landing mode) applies landed changes far from the source: a version whose unchanged
TOAST value it finds nowhere (the key moved from a row that is not in the warehouse yet) is written as a tombstone,
and the merge asks for the key. `verify --repair` asks for the keys of a drifting range (direct or landing mode).
The follower, at its start and every `reread_check_seconds` while it follows, reads the keys as a repair chunk
(`Copies.repair`): the chunk lands at its high watermark, after the tombstone or the drift, and wins; a key the
source no longer has ends deleted. A request is deleted only once its chunk landed: a follower killed before that
leaves it to the next one, and a key read twice is harmless. (The direct follower reads the keys it tombstones
itself without a request: `driver`, REPAIRS_KEY.)
"""

from __future__ import annotations

import logging

from pipelines.landing_area import Reread
from sources.replication.stream import ChangeStream

from .context import Cdc
from .copies import Copies
from .summary import event


class Rereads:
    """The requests this follower turned into repair chunks, until their chunks land."""

    def __init__(self, cdc: Cdc, stream: ChangeStream, running: Copies) -> None:
        self.cdc, self.stream, self.running = cdc, stream, running
        self.asked: dict[str, tuple[Reread, str, int]] = {}  # request name -> (request, table, repair chunk index)

    def take(self) -> None:
        """New requests become repair chunks (one LIST of the landing area when there are none)."""
        self.finish()
        tables = {t.spec.resource_name: q for q, t in self.stream.tracked.items()}
        for reread in self.cdc.sink.rereads():
            if reread.name in self.asked:
                continue
            qualified = tables.get(reread.table)
            if qualified is None:  # set aside (it is copied again whole) or no longer replicated
                event("keys to read again for a table this follower does not stream; the request is dropped",
                      logging.WARNING, table=reread.table, keys=len(reread.keys))
                self.cdc.sink.reread_done(reread)
                continue
            scheduled = self.running.repair(self.stream.tracked[qualified].spec, reread.keys)
            if scheduled is None:
                self.cdc.sink.reread_done(reread)
            else:
                self.asked[reread.name] = (reread, qualified, scheduled[0])

    def finish(self) -> None:
        """Requests whose chunk landed are deleted; one whose chunk failed (its table set aside) is asked again."""
        for name, (reread, qualified, index) in list(self.asked.items()):
            job = self.running.repairs.get(qualified)
            if job is not None and index in job.done:
                self.cdc.sink.reread_done(reread)
                del self.asked[name]
            elif job is None or all(c.index != index for c in job.chunks):
                del self.asked[name]


__all__ = ["Rereads"]
