"""Hard limits and idle-connection eviction (docs/compare.md, "Limits").

Soft limits (crossing one requests a checkpoint) are checked where frames are held,
in :meth:`.core.Core.hold`.  Here: the hard limits (twice the soft ones) that drop a
frame with ``DropReason.OVERFLOW``, and the LRU eviction of idle connections.
"""

from __future__ import annotations

from collections import OrderedDict

from .conn import Conn
from .model import Config, Counters

EVICT_SCAN = 16
"""Connections looked at (from the least recently used end) per eviction attempt."""


def over_hard_limit(config: Config, stats: Counters, conn: Conn, side: int, size: int) -> bool:
    """True if holding one more frame of ``size`` bytes would pass twice a soft limit."""
    held = conn.held_s if side else conn.held_p
    return (held >= 2 * config.max_queue_per_conn
            or stats.held_bytes_now + size > 2 * config.max_held_bytes)


def evict_idle(conns: OrderedDict[tuple[object, ...], Conn], stats: Counters) -> bool:
    """Evict the least recently used idle connection; False if none was found.

    Busy connections met on the way are moved to the recent end, so repeated attempts
    make progress and cost O(1) amortised.
    """
    for _ in range(min(EVICT_SCAN, len(conns))):
        key, conn = next(iter(conns.items()))
        if conn.busy:
            conns.move_to_end(key)
            continue
        del conns[key]
        stats.connections_evicted += 1
        stats.connections_now -= 1
        return True
    return False
