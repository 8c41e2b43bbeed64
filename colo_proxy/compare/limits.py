"""Hard limits and idle-connection eviction (docs/compare.md, "Limits").

Soft limits (crossing one requests a checkpoint) are checked where frames are held,
in :meth:`.core.Core.hold`; the hard limits (twice the soft ones, the frame is dropped
with ``DropReason.OVERFLOW``) inline in :meth:`.engine.Engine.push` (hot path).  Here:
the LRU eviction of idle connections.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from .conn import Conn
from .model import Counters

EVICT_SCAN = 16
"""Connections looked at (from the least recently used end) per eviction attempt."""


def evict_idle(conns: OrderedDict[tuple[object, ...], Conn], stats: Counters,
               forget: Callable[[Conn], None]) -> bool:
    """Evict the least recently used idle connection; False if none was found.
    ``forget`` is called with the evicted connection.

    Busy connections met on the way are moved to the recent end, so repeated attempts
    make progress and cost O(1) amortised.
    """
    for _ in range(min(EVICT_SCAN, len(conns))):
        key, conn = next(iter(conns.items()))
        if conn.busy:
            conns.move_to_end(key)
            continue
        del conns[key]
        forget(conn)
        stats.connections_evicted += 1
        stats.connections_now -= 1
        return True
    return False
