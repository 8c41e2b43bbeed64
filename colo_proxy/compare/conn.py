"""State shared by every connection kind, the held-frame record, and byte-diff helpers."""

# Hot path: positional arguments and plain comparisons are deliberate (speed).
# ruff: noqa: PLR0917

from __future__ import annotations

import math

from .model import ConnKey, ConnStats, Divergence

NO_DATA = -(1 << 62)
"""``Held.end`` of a frame that carries no stream bytes."""


class Held:
    """One frame the engine holds.  ``side`` is 0 (primary) or 1 (secondary).

    TCP uses ``end`` (stream offset after its bytes), ``ack`` (-1 without ACK) and
    ``flags``; FIFO connections keep the compared bytes in ``data``.
    """

    __slots__ = ("ack", "arrival", "conn", "data", "done", "end", "flags", "side", "size", "tag")

    def __init__(
        self,
        side: int,
        tag: object,
        conn: Conn,
        arrival: float,
        size: int,
        end: int = NO_DATA,
        ack: int = -1,
        flags: int = 0,
        data: bytes = b"",
    ) -> None:
        self.side = side
        self.tag = tag
        self.conn = conn
        self.arrival = arrival
        self.size = size
        self.end = end
        self.ack = ack
        self.flags = flags
        self.data = data
        self.done = False


class Conn:
    """Per-connection bookkeeping common to TCP and FIFO connections."""

    __slots__ = (
        "bytes_matched",
        "closed",
        "diverged",
        "epoch",
        "fast",
        "first_div",
        "frames_matched",
        "held_p",
        "held_s",
        "key",
        "passthrough",
        "queue_flag",
        "requests",
        "retired_at",
    )

    def __init__(self, key: ConnKey, epoch: int, passthrough: bool) -> None:
        self.key = key
        self.epoch = epoch
        self.passthrough = passthrough
        self.diverged = False
        self.closed = False
        self.held_p = 0
        self.held_s = 0
        self.frames_matched = 0
        self.bytes_matched = 0
        self.requests = 0
        self.queue_flag = False
        self.first_div: Divergence | None = None
        self.fast: bytes | None = None
        """Key in the engine's fast-path table, when registered there."""
        self.retired_at = -math.inf
        """When the connection retired (``-inf`` while it is tracked)."""

    @property
    def busy(self) -> bool:
        """Holds frames, or waits for a checkpoint: must not be evicted."""
        return bool(self.held_p or self.held_s or self.diverged)

    def rebase(self, epoch: int) -> None:
        """Forget held state after a checkpoint (subclasses re-base their streams)."""
        self.epoch = epoch
        self.diverged = False
        self.queue_flag = False
        self.held_p = 0
        self.held_s = 0

    def stats(self) -> ConnStats:
        return ConnStats(
            key=self.key,
            frames_matched=self.frames_matched,
            bytes_matched=self.bytes_matched,
            held_primary=self.held_p,
            held_secondary=self.held_s,
            checkpoint_requests=self.requests,
            first_divergence=self.first_div,
            retired=self.retired_at != -math.inf,
        )


def first_difference(a: bytes | bytearray, b: bytes | bytearray) -> int:
    """Index of the first differing byte (``min(len)`` when one is a prefix of the other)."""
    lo, hi = 0, min(len(a), len(b))
    while hi - lo > 64:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    while lo < hi and a[lo] == b[lo]:
        lo += 1
    return lo


def divergence(offset: int, primary: bytes | bytearray, secondary: bytes | bytearray) -> Divergence:
    """A Divergence with up to 64 bytes of each side."""
    return Divergence(offset, bytes(primary[:64]), bytes(secondary[:64]))
