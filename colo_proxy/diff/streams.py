"""Reassemble what each VM sent on each TCP connection, for context around a divergence.

Offsets count from the first payload byte after the VM's SYN (or from the first
payload byte seen, when the capture starts mid-connection), like the engine's.  A
new SYN with a different ISN starts a new incarnation of the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..compare.model import ConnKey, Side
from .headers import TCP_FIN, TCP_RST, TCP_SYN, Headers

MAX_STREAM_BYTES = 32 * 1024 * 1024
"""Bytes kept per stream incarnation; later bytes are not available as context."""


@dataclass
class Stream:
    """One incarnation of one side's byte stream on one connection."""

    isn: int | None = None
    base: int | None = None
    segments: dict[int, bytes] = field(default_factory=dict)
    size: int = 0
    clipped: bool = False
    sent_end: int = 0
    """Stream offset just past the last payload byte (or FIN) sent so far."""
    flags: int = 0
    """TCP control flags (SYN, FIN, RST) sent so far."""

    def add(self, seq: int, payload: bytes) -> int:
        """Store a segment; returns the stream offset just past it."""
        if self.base is None:
            self.base = seq
        offset = (seq - self.base) & 0xFFFFFFFF
        if offset >= 0x80000000:  # before the base: a retransmission from before the SYN
            return 0
        end = offset + len(payload)
        self.sent_end = max(self.sent_end, end)
        if not payload:
            return end
        if end > MAX_STREAM_BYTES:
            self.clipped = True
            return end
        old = self.segments.get(offset)
        if old is None or len(old) < len(payload):
            self.segments[offset] = payload
            self.size = max(self.size, end)
        return end

    def assemble(self) -> tuple[bytes, bytes]:
        """The stream bytes and a mask (1 = byte was captured, 0 = hole)."""
        data = bytearray(self.size)
        have = bytearray(self.size)
        for offset, payload in self.segments.items():
            data[offset:offset + len(payload)] = payload
            have[offset:offset + len(payload)] = b"\x01" * len(payload)
        return bytes(data), bytes(have)


class Streams:
    """All TCP streams of the VM output of both sides."""

    def __init__(self) -> None:
        self._streams: dict[tuple[ConnKey, Side], list[Stream]] = {}

    def add(self, side: Side, h: Headers, data: bytes) -> int | None:
        """Record a VM output frame; returns the stream offset just past it, counting a
        FIN as one byte (None: not TCP)."""
        if not h.tcp:
            return None
        incarnations = self._streams.setdefault((h.key, side), [])
        if h.flags & TCP_SYN:
            if not incarnations or incarnations[-1].isn not in (None, h.seq):
                incarnations.append(Stream())
            current = incarnations[-1]
            current.flags |= TCP_SYN
            if current.isn is None:
                current.isn = h.seq
                current.base = (h.seq + 1) & 0xFFFFFFFF
            return 0
        if not incarnations:
            incarnations.append(Stream())
        current = incarnations[-1]
        current.flags |= h.flags & (TCP_FIN | TCP_RST)
        end = current.add(h.seq, h.payload)
        if h.flags & TCP_FIN:  # the FIN takes one sequence number
            end += 1
            current.sent_end = max(current.sent_end, end)
        return end

    def keys(self, side: Side) -> list[ConnKey]:
        return [key for key, s in self._streams if s == side]

    def current(self, key: ConnKey, side: Side) -> int:
        """Index of the incarnation now receiving data (-1 if none yet)."""
        return len(self._streams.get((key, side), ())) - 1

    def get(self, key: ConnKey, side: Side, incarnation: int = -1) -> Stream | None:
        incarnations = self._streams.get((key, side))
        if not incarnations:
            return None
        try:
            return incarnations[incarnation]
        except IndexError:
            return None
