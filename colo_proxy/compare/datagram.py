"""FIFO pairing for everything that is not a TCP stream (docs/compare.md, "Datagrams").

The head of the primary queue is compared with the head of the secondary queue: the
n-th primary frame of a connection must equal its n-th secondary frame.  Equal: the
primary is released and the secondary dropped (MATCHED).  Unequal: a checkpoint is
requested with the slot number as the divergence offset.
"""

# Hot path: positional arguments and plain comparisons are deliberate (speed).
# ruff: noqa: PLR0917

from __future__ import annotations

from collections import deque

from .conn import NO_DATA, Conn, Held, divergence, first_difference
from .core import Core
from .model import ConnKey, Decision, Drop, DropReason, Reason, Release, Side

MATCHED = DropReason.MATCHED
SECONDARY = Side.SECONDARY
_new = tuple.__new__


class FifoConn(Conn):
    """One datagram flow, or one pseudo-connection (fragments, a non-IP EtherType)."""

    __slots__ = ("p_q", "s_q", "slot")

    def __init__(self, key: ConnKey, epoch: int, passthrough: bool) -> None:
        super().__init__(key, epoch, passthrough)
        self.p_q: deque[Held] = deque()
        self.s_q: deque[Held] = deque()
        self.slot = 0

    def rebase(self, epoch: int) -> None:
        super().rebase(epoch)
        self.p_q.clear()
        self.s_q.clear()
        self.slot = 0

    def primary(self, core: Core, data: bytes, size: int, tag: object, now: float,
                out: list[Decision]) -> None:
        s_q = self.s_q
        if s_q and not self.diverged:
            s = s_q[0]
            if s.data == data:
                s_q.popleft()
                core.drop_held(s, MATCHED, out)
                self._matched(core, len(data))
                core.release_now(self, tag, out)
                return
            h = Held(0, tag, self, now, size, NO_DATA, -1, 0, data)
            self.p_q.append(h)
            core.hold(h, out, now)
            self._diverge(core, data, s.data, now, out)
            return
        h = Held(0, tag, self, now, size, NO_DATA, -1, 0, data)
        self.p_q.append(h)
        # core.hold(), inlined for the pipelined case
        core._arrivals.append(h)
        st = core.stats
        st.held_frames_now += 1
        st.held_bytes_now += size
        self.held_p += 1
        if self.held_p > core.config.max_queue_per_conn \
                or st.held_bytes_now > core.config.max_held_bytes:
            core.check_limits(self, 0, out, now)

    def secondary(self, core: Core, data: bytes, size: int, tag: object, now: float,
                  out: list[Decision]) -> None:
        if self.diverged:
            core.drop(1, tag, self, DropReason.DIVERGED, out)
            return
        p_q = self.p_q
        if not p_q:
            h = Held(1, tag, self, now, size, NO_DATA, -1, 0, data)
            self.s_q.append(h)
            core.hold(h, out, now)
            return
        p = p_q[0]
        if p.data == data:
            p_q.popleft()
            n = len(data)
            self.slot += 1
            self.bytes_matched += n
            self.frames_matched += 1
            self.held_p -= 1
            # core.release_held() and core.drop(MATCHED), inlined
            st = core.stats
            st.bytes_compared += n
            st.held_frames_now -= 1
            st.held_bytes_now -= p.size
            st.released += 1
            st.pairs_matched += 1
            p.done = True
            p.data = b""
            held_ms = now - p.arrival
            key = self.key
            out.append(_new(Release, (p.tag, key, held_ms if held_ms > 0.0 else 0.0)))
            p.tag = None
            dropped = st.dropped
            dropped[MATCHED] = dropped.get(MATCHED, 0) + 1
            out.append(_new(Drop, (SECONDARY, tag, key, MATCHED)))
            return
        self._diverge(core, p.data, data, now, out)
        core.drop(1, tag, self, DropReason.DIVERGED, out)

    def _matched(self, core: Core, n: int) -> None:
        self.slot += 1
        self.bytes_matched += n
        core.stats.bytes_compared += n

    def _diverge(self, core: Core, pd: bytes, sd: bytes, now: float,
                 out: list[Decision]) -> None:
        i = first_difference(pd, sd)
        div = divergence(self.slot, pd[i:], sd[i:])
        if self.first_div is None:
            self.first_div = div
        detail = (f"{self.key}: slot {self.slot} differs at compared byte {i} "
                  f"({len(pd)} vs {len(sd)} bytes)")
        core.request(Reason.PAYLOAD_MISMATCH, self, detail, now, div, out)
        self.diverged = True
        for h in self.s_q:
            core.drop_held(h, DropReason.DIVERGED, out)
        self.s_q.clear()
