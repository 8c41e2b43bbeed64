"""TCP stream comparison (docs/compare.md, "TCP").

Each side's sequence numbers are mapped to *stream offsets* through an anchor
``(seq, offset)``: offset 0 is the first payload byte after the SYN, the SYN is the
virtual byte at -1 and the FIN the virtual byte after the last payload byte.  Bytes
either side sent beyond the verified offset ``v`` wait in ``p_pend``/``s_pend``; as
soon as both have bytes there the common prefix is compared.  A primary frame is
released, in the primary's order, once all its bytes and control flags are verified
and its ack does not run ahead of the highest ack the secondary sent.
"""

# Hot path: positional arguments and plain comparisons are deliberate (speed).
# ruff: noqa: PLR0917, PLR1730

from __future__ import annotations

from collections import deque

from .conn import NO_DATA, Conn, Held, divergence, first_difference
from .core import Core
from .model import ConnKey, Decision, Drop, DropReason, Reason, Release, Side

FIN = 0x01
SYN = 0x02
RST = 0x04
ACK = 0x10
CTL = SYN | FIN | RST
MASK = 0xFFFFFFFF
HALF = 0x80000000
MATCHED = DropReason.MATCHED
SECONDARY = Side.SECONDARY
_new = tuple.__new__
REANCHOR_WINDOW = 16 << 20
"""How far behind the verified offset a side's first numbered segment may land, read in
the other side's numbering, and still be taken as in that numbering (a retransmission).
See ``TcpConn._choose`` and docs/compare.md, "The secondary's numbering"."""
AHEAD_WINDOW = 1 << 20
"""How far beyond the other side's highest byte a side's first numbered segment may land
and still be taken as in the other side's numbering (the secondary leads)."""
EVIDENCE = 16
"""Equal bytes that decide a side's numbering by content alone (``TcpConn._choose``);
fewer (a 4-byte segment) only count as not contradicting it."""
GUESS = -2
"""``s_aseq`` while the secondary's numbering after its SYN is not decided yet: no 32-bit
sequence number equals it, so the in-order fast path never runs before the decision."""


def sdiff(a: int, b: int) -> int:
    """``a - b`` in 32-bit serial-number arithmetic (RFC 1982), as a signed int."""
    return ((a - b + HALF) & MASK) - HALF


def _flag_names(flags: int) -> str:
    return "|".join(n for bit, n in ((SYN, "SYN"), (ACK, "ACK")) if flags & bit) or "-"


class TcpConn(Conn):
    """One direction of a TCP connection, compared by stream offset."""

    __slots__ = (
        "fin_ok",
        "p_aoff",
        "p_aseq",
        "p_fin",
        "p_max_ack",
        "p_next",
        "p_ooo",
        "p_pend",
        "p_q",
        "p_rst",
        "p_rst_end",
        "p_syn",
        "s_aoff",
        "s_aseq",
        "s_fin",
        "s_guess",
        "s_isn",
        "s_max_ack",
        "s_next",
        "s_old",
        "s_ooo",
        "s_pend",
        "s_q",
        "s_reanchor",
        "s_rst",
        "s_rst_end",
        "s_syn",
        "s_unordered",
        "syn_ok",
        "v",
    )

    def __init__(self, key: ConnKey, epoch: int, passthrough: bool) -> None:
        super().__init__(key, epoch, passthrough)
        self.p_q: deque[Held] = deque()
        self.s_q: deque[Held] = deque()
        self._fresh()

    def _fresh(self) -> None:
        """Forget the streams (new connection, or a reopen on the same ports)."""
        self.v = 0
        self.p_pend = bytearray()
        self.s_pend = bytearray()
        self.p_aseq = -1  # -1: numbering not known yet
        self.p_aoff = 0
        self.s_aseq = -1
        self.s_aoff = 0
        self.p_next = NO_DATA  # highest data end offset each side sent
        self.s_next = NO_DATA
        self.p_ooo: dict[int, bytes] = {}
        self.s_ooo: dict[int, bytes] = {}
        self.p_max_ack = -1  # -1: no ACK seen
        self.s_max_ack = -1
        self.p_syn = 0  # SYN / SYN|ACK flags of the side's SYN, 0 = none
        self.s_syn = 0
        self.syn_ok = False
        self.p_fin: int | None = None  # stream offset of the FIN
        self.s_fin: int | None = None
        self.fin_ok = False
        self.p_rst = False
        self.s_rst = False
        self.p_rst_end = 0
        self.s_rst_end = 0
        self.s_reanchor = False
        self.s_guess: tuple[int, int] | None = None  # SYN anchor, numbering not decided
        self.s_isn = -1  # the sequence number of the secondary's own SYN
        self.s_old: tuple[int, int] | None = None  # its numbering before a checkpoint
        self.s_unordered = False
        self.closed = False

    # -- checkpoint --------------------------------------------------------------------

    def rebase(self, epoch: int) -> None:
        """Everything the primary sent is out: its next offset is the new common point."""
        super().rebase(epoch)
        self.p_q.clear()
        self.s_q.clear()
        if self.p_aseq < 0:
            self._fresh()
            return
        # The secondary's numbering so far, if it is not the primary's: a secondary that
        # was not restored (no VMM copied the PVM onto it) goes on in it.
        old = self.s_guess if self.s_guess is not None else (
            (self.s_aseq, self.s_aoff) if self.s_aseq >= 0 else None)
        if old is not None and self.p_aoff + sdiff(old[0], self.p_aseq) == old[1]:
            old = None
        self.s_old = old
        p_end = self.v + len(self.p_pend)
        self.v = max(self.p_next, p_end)
        self.p_next = self.s_next = self.v
        self.p_pend.clear()
        self.s_pend.clear()
        self.p_ooo.clear()
        self.s_ooo.clear()
        self.s_reanchor = True
        self.s_guess = None
        self.s_unordered = False
        self.s_max_ack = self.p_max_ack
        self.s_syn = self.p_syn
        self.syn_ok = bool(self.p_syn)
        self.s_fin = self.p_fin
        self.fin_ok = self.p_fin is not None
        self.s_rst = False
        if self.p_rst or self.p_fin is not None:
            self.closed = True

    # -- primary -----------------------------------------------------------------------

    def primary(self, core: Core, seq: int, ack: int, flags: int, payload: bytes, size: int,
                tag: object, now: float, out: list[Decision]) -> None:
        n = len(payload)
        if seq == self.p_aseq and n and not flags & CTL and not self.diverged \
                and self.s_fin is None and not self.s_rst:
            # Fast paths: in-order data (it starts where the previous segment ended),
            # the secondary behind or exactly ahead.
            off = self.p_aoff
            s_pend = self.s_pend
            if off == self.v + len(self.p_pend) and not self.p_ooo and (
                    not s_pend or (len(s_pend) >= n and s_pend.startswith(payload))):
                end = off + n
                if flags & ACK:
                    m = self.p_max_ack
                    if ack != m and (m < 0 or ((ack - m + HALF) & MASK) - HALF > 0):
                        self.p_max_ack = ack
                else:
                    ack = -1
                if end > self.p_next:
                    self.p_next = end
                self.p_aseq = (seq + n) & MASK
                self.p_aoff = end
                q = self.p_q
                if not s_pend:
                    self.p_pend += payload
                    h = Held(0, tag, self, now, size, end, ack, flags)
                    q.append(h)
                    # core.hold(), inlined for the pipelined case
                    core._arrivals.append(h)
                    st = core.stats
                    st.held_frames_now += 1
                    st.held_bytes_now += size
                    self.held_p += 1
                    if self.held_p > core.config.max_queue_per_conn \
                            or st.held_bytes_now > core.config.max_held_bytes:
                        core.check_limits(self, 0, out, now)
                    return
                del s_pend[:n]
                self.v = end
                self.bytes_matched += n
                core.stats.bytes_compared += n
                m = self.s_max_ack
                if not q and (ack < 0 or (m >= 0 and ((ack - m + HALF) & MASK) <= HALF)):
                    core.release_now(self, tag, out)
                else:
                    h = Held(0, tag, self, now, size, end, ack, flags)
                    q.append(h)
                    core.hold(h, out, now)
                self._settle(core, now, out)
                return
        self._primary_slow(core, seq, ack, flags, payload, size, tag, now, out)

    def _primary_slow(self, core: Core, seq: int, ack: int, flags: int, payload: bytes,
                      size: int, tag: object, now: float, out: list[Decision]) -> None:
        if self.p_aseq < 0:
            if flags & SYN:
                self.p_aseq, self.p_aoff = seq, -1
            elif self.s_aseq >= 0 and not self.s_reanchor:
                self.p_aseq, self.p_aoff = self._choose(
                    seq, payload, ((self.s_aseq, self.s_aoff),), (seq, self.v),
                    self.s_pend, self.s_ooo, self.s_next)
            else:
                self.p_aseq, self.p_aoff = seq, self.v
        off = self.p_aoff + (((seq - self.p_aseq + HALF) & MASK) - HALF)
        if flags & SYN:
            if off != -1 and not self.busy:
                self._fresh()  # a new connection on the same ports
                self.p_aseq, self.p_aoff, off = seq, -1, -1
            off += 1
        n = len(payload)
        end = off + n
        if flags & ACK:
            m = self.p_max_ack
            if m < 0 or ((ack - m + HALF) & MASK) - HALF > 0:
                self.p_max_ack = ack
        else:
            ack = -1
        changed = False
        if flags & SYN and not self.p_syn:
            self.p_syn = flags & (SYN | ACK)
            changed = True
            if self.s_syn:
                self._check_syn(core, now, out)
        if n:
            if end > self.p_next:
                self.p_next = end
            if not self.diverged:
                p_end = self.v + len(self.p_pend)
                if end > p_end:
                    s_fin = self.s_fin
                    if s_fin is not None and end > s_fin:
                        self._diverge(core, Reason.CONTROL_MISMATCH, s_fin,
                                      payload[max(0, s_fin - off):], b"",
                                      f"primary data beyond the secondary's FIN at {s_fin}",
                                      now, out)
                    elif self.s_rst and end > self.s_rst_end:
                        self._diverge(core, Reason.CONTROL_MISMATCH, self.s_rst_end,
                                      payload[max(0, self.s_rst_end - off):], b"",
                                      "primary data beyond the secondary's RST", now, out)
                    elif off <= p_end:
                        self.p_pend += payload[p_end - off:] if off < p_end else payload
                        self.p_aseq = (seq + end - off + (1 if flags & SYN else 0)) & MASK
                        self.p_aoff = end
                        if self.p_ooo:
                            self._merge(self.p_ooo, self.p_pend)
                        if self.s_pend:
                            changed = self._compare(core, now, out) or changed
                    else:
                        old = self.p_ooo.get(off)
                        if old is None or len(old) < n:
                            self.p_ooo[off] = payload
        if flags & (FIN | RST):
            changed = self._primary_fin_rst(core, flags, end, now, out) or changed
        if not n:
            end = NO_DATA
        q = self.p_q
        if not q and not self.diverged and self._releasable(end, ack, flags):
            core.release_now(self, tag, out)
            if flags & (FIN | RST):
                self.closed = True
        else:
            h = Held(0, tag, self, now, size, end, ack, flags)
            q.append(h)
            core.hold(h, out, now)
        if changed and not self.diverged:
            self._settle(core, now, out)

    def _primary_fin_rst(self, core: Core, flags: int, end: int, now: float,
                         out: list[Decision]) -> bool:
        changed = False
        if flags & FIN and self.p_fin is None:
            self.p_fin = end
            changed = True
            if not self.diverged:
                self._check_fin(core, now, out)
        if flags & RST and not self.p_rst:
            self.p_rst = True
            self.p_rst_end = max(self.p_next, end)
            changed = True
            if not self.diverged and self.s_next > self.p_rst_end:
                at = self.p_rst_end
                self._diverge(core, Reason.CONTROL_MISMATCH, at, b"", self._s_bytes(at),
                              "secondary data beyond the primary's RST", now, out)
        return changed

    def _releasable(self, end: int, ack: int, flags: int) -> bool:
        if end > self.v:
            return False
        if flags & CTL:
            if flags & SYN and not self.syn_ok:
                return False
            if flags & FIN and not self.fin_ok:
                return False
            if flags & RST and not self.s_rst:
                return False
        if ack >= 0:
            m = self.s_max_ack
            if m < 0 or ((ack - m + HALF) & MASK) > HALF:
                return False
        return True

    # -- secondary ---------------------------------------------------------------------

    def secondary(self, core: Core, seq: int, ack: int, flags: int, payload: bytes, size: int,
                  tag: object, now: float, out: list[Decision]) -> None:
        if self.diverged:
            core.drop(1, tag, self, DropReason.DIVERGED, out)
            return
        n = len(payload)
        if seq == self.s_aseq and n and not flags & CTL and not self.s_reanchor \
                and not self.s_pend and not self.s_ooo and self.p_fin is None and not self.p_rst:
            # Fast path: in-order data (it starts where the previous segment ended) that
            # the primary already sent, all of it.
            off = self.s_aoff
            p_pend = self.p_pend
            if off == self.v and len(p_pend) >= n and p_pend.startswith(payload):
                end = off + n
                del p_pend[:n]
                self.v = end
                if end > self.s_next:
                    self.s_next = end
                self.s_aseq = (seq + n) & MASK
                self.s_aoff = end
                self.bytes_matched += n
                core.stats.bytes_compared += n
                if flags & ACK:
                    m = self.s_max_ack
                    if ack != m and (m < 0 or ((ack - m + HALF) & MASK) - HALF > 0):
                        self.s_max_ack = ack
                # core.drop(MATCHED) and the common case of _settle(), inlined
                dropped = core.stats.dropped
                dropped[MATCHED] = dropped.get(MATCHED, 0) + 1
                out.append(_new(Drop, (SECONDARY, tag, self.key, MATCHED)))
                q = self.p_q
                if q:
                    h = q[0]
                    ack = h.ack
                    m = self.s_max_ack
                    if h.end <= end and not h.flags & CTL and (ack == m or ack < 0 or (
                            m >= 0 and ((ack - m + HALF) & MASK) <= HALF)):
                        q.popleft()
                        # core.release_held(), inlined
                        h.done = True
                        self.held_p -= 1
                        self.frames_matched += 1
                        st = core.stats
                        st.held_frames_now -= 1
                        st.held_bytes_now -= h.size
                        st.released += 1
                        st.pairs_matched += 1
                        held_ms = now - h.arrival
                        out.append(_new(Release, (h.tag, self.key,
                                                  held_ms if held_ms > 0.0 else 0.0)))
                        h.tag = None
                        if not q or q[0].end > end:
                            if self.s_q:
                                self._settle(core, now, out)
                            return
                self._settle(core, now, out)
                return
        self._secondary_slow(core, seq, ack, flags, payload, size, tag, now, out)

    def _secondary_slow(self, core: Core, seq: int, ack: int, flags: int, payload: bytes,
                        size: int, tag: object, now: float, out: list[Decision]) -> None:
        changed = False
        n = len(payload)
        ctl = flags & CTL
        if n or ctl or self.s_aseq < 0:
            self._secondary_numbering(seq, flags, payload)
        if flags & ACK:
            m = self.s_max_ack
            if m < 0 or ((ack - m + HALF) & MASK) - HALF > 0:
                self.s_max_ack = ack
                changed = bool(self.p_q)
        if not n and not ctl:
            core.drop(1, tag, self, DropReason.VERIFIED, out)
            if changed:
                self._settle(core, now, out)
            return
        if flags & SYN and seq == self.s_isn:
            off = 0  # its own SYN (a retransmission), whichever numbering its data use
        else:
            off = self.s_aoff + (((seq - self.s_aseq + HALF) & MASK) - HALF)
            if flags & SYN:
                off += 1
        end = off + n
        new = False
        if flags & SYN and not self.s_syn:
            self.s_syn = flags & (SYN | ACK)
            new = True
            if self.p_syn:
                self._check_syn(core, now, out)
        if n and not self.diverged:
            if end > self.s_next:
                self.s_next = end
            s_end = self.v + len(self.s_pend)
            if end > s_end:
                new = True
                p_fin = self.p_fin
                if p_fin is not None and end > p_fin:
                    self._diverge(core, Reason.CONTROL_MISMATCH, p_fin, b"",
                                  payload[max(0, p_fin - off):],
                                  f"secondary data beyond the primary's FIN at {p_fin}", now, out)
                elif self.p_rst and end > self.p_rst_end:
                    self._diverge(core, Reason.CONTROL_MISMATCH, self.p_rst_end, b"",
                                  payload[max(0, self.p_rst_end - off):],
                                  "secondary data beyond the primary's RST", now, out)
                elif off <= s_end:
                    self.s_pend += payload[s_end - off:] if off < s_end else payload
                    self.s_aseq = (seq + end - off + (1 if flags & SYN else 0)) & MASK
                    self.s_aoff = end
                    if self.s_ooo:
                        self._merge(self.s_ooo, self.s_pend)
                    if self.p_pend:
                        changed = self._compare(core, now, out) or changed
                else:
                    old = self.s_ooo.get(off)
                    if old is None or len(old) < n:
                        self.s_ooo[off] = payload
                    self.s_unordered = True
        if flags & (FIN | RST) and not self.diverged:
            new = self._secondary_fin_rst(core, flags, end, now, out) or new
        if self.diverged:
            core.drop(1, tag, self, DropReason.DIVERGED, out)
            return
        if not n:
            end = NO_DATA
        if not new:
            core.drop(1, tag, self, DropReason.VERIFIED, out)
        elif self._consumed(end, flags):
            core.drop(1, tag, self, DropReason.MATCHED, out)
        else:
            h = Held(1, tag, self, now, size, end, -1, flags)
            self.s_q.append(h)
            core.hold(h, out, now)
        if changed or new:
            self._settle(core, now, out)

    def _secondary_numbering(self, seq: int, flags: int, payload: bytes) -> None:
        if self.s_reanchor:
            # First numbered segment after a checkpoint.
            self.s_reanchor = False
            if flags & SYN:
                self._secondary_syn(seq)
            else:
                # Its own numbering from before counts only where it puts the segment at
                # or beyond the new common point: a secondary that sent fewer bytes than
                # the primary re-synchronises "here".
                cands: tuple[tuple[int, int], ...] = ((self.p_aseq, self.p_aoff),)
                old = self.s_old
                if old is not None and old[1] + sdiff(seq, old[0]) >= self.v:
                    cands = (*cands, old)
                self.s_aseq, self.s_aoff = self._choose(
                    seq, payload, cands, (seq, self.v), self.p_pend, self.p_ooo, self.p_next)
        elif self.s_guess is not None:
            if flags & SYN:
                if seq == self.s_isn:
                    return  # its SYN again: still undecided
                if not self.busy:
                    self._fresh()  # a new SYN on the same ports
                    self._secondary_syn(seq)
                    return
            # First numbered segment after its SYN: its own numbering (native), or the
            # primary's (QEMU's filter-rewriter, our secondary module).
            own, self.s_guess = self.s_guess, None
            if self.p_aseq < 0:
                self.s_aseq, self.s_aoff = own
            else:
                self.s_aseq, self.s_aoff = self._choose(
                    seq, payload, ((self.p_aseq, self.p_aoff), own), None,
                    self.p_pend, self.p_ooo, self.p_next, 0)
        elif self.s_aseq < 0:
            if flags & SYN:
                self._secondary_syn(seq)
            elif self.p_aseq >= 0:
                self.s_aseq, self.s_aoff = self._choose(
                    seq, payload, ((self.p_aseq, self.p_aoff),), (seq, self.v),
                    self.p_pend, self.p_ooo, self.p_next)
            else:
                self.s_aseq, self.s_aoff = seq, self.v
        elif flags & SYN and seq != self.s_isn \
                and self.s_aoff + sdiff(seq, self.s_aseq) != -1 and not self.busy:
            # A new SYN on the same ports (the secondary is first): a new connection.
            self._fresh()
            self._secondary_syn(seq)

    def _secondary_syn(self, seq: int) -> None:
        """The secondary's SYN: its own numbering, to be confirmed by its next segment
        unless it is the primary's too."""
        self.s_isn = seq
        if self.p_syn and self.p_aoff + sdiff(seq, self.p_aseq) == -1:
            self.s_aseq, self.s_aoff = seq, -1  # the same ISN: nothing to decide
        else:
            self.s_aseq, self.s_aoff = GUESS, -1
            self.s_guess = (seq, -1)

    def _choose(self, seq: int, payload: bytes, shared: tuple[tuple[int, int], ...],
                here: tuple[int, int] | None, other: bytearray, other_ooo: dict[int, bytes],
                other_next: int, behind: int = REANCHOR_WINDOW) -> tuple[int, int]:
        """The numbering of a side's first numbered segment (docs/compare.md, "The
        secondary's numbering").

        ``shared`` lists candidate anchors ``(seq, offset)`` in order of preference:
        the other side's numbering, then (after a SYN) the side's own.  ``here`` is the
        last resort of a side without a SYN: the segment starts at the verified offset.
        ``other`` holds the other side's pending bytes from ``v``, ``other_ooo`` its
        out-of-order segments, ``other_next`` its highest data end offset.  A candidate
        is *inside* when the segment, read in it, ends at most ``behind`` bytes
        before ``v`` (``REANCHOR_WINDOW``; 0 right after a SYN, before which nothing
        was sent) and starts at most ``AHEAD_WINDOW`` beyond the other side's
        highest byte.

        0. A candidate of ``shared`` that puts the segment exactly at ``v``: a side's
           first segment is normally its next byte.  If its bytes differ there, that is
           a real divergence, unless another candidate matches by content (1).
        1. Content: a candidate under which at least ``EVIDENCE`` of the segment's
           bytes equal bytes the other side sent and still holds, at the same offsets,
           and none differs.  Of ``shared``, the one at ``v`` first, then the one
           comparing more bytes, then the first in the list.  ``here`` only if no
           candidate of ``shared`` is inside, uncontradicted and touching the other
           side's bytes (periodic data agree under several numberings).
        2. Position: of the candidates of ``shared`` that are inside and under which no
           byte differs, the nearest to the other side's bytes (ties: the one at
           ``v``, then the first).
        3. ``here`` if no byte differs under it.
        4. The first of ``shared`` that is inside, though a byte differs (a real
           divergence, reported at once), else ``here``, else the last candidate.
        """
        v = self.v
        n = len(payload)
        top = v + len(other)
        if other_next > top:
            top = other_next
        strong: tuple[int, int] | None = None
        strong_rank = (False, 0)
        best: tuple[int, int] | None = None
        best_key = (0, False)
        near: tuple[int, int] | None = None
        at_v: tuple[int, int] | None = None
        at_v_agrees = False
        for cand in shared:
            off = cand[1] + sdiff(seq, cand[0])
            end = off + n
            if not (v - behind <= end and off <= top + AHEAD_WINDOW):
                continue
            if near is None:
                near = cand
            same = self._agreement(payload, off, other, other_ooo)
            if off == v and at_v is None:
                at_v, at_v_agrees = cand, same >= 0
            if same < 0:
                continue  # a byte differs
            if same >= EVIDENCE:
                rank = (off == v, same)
                if strong is None or rank > strong_rank:
                    strong, strong_rank = cand, rank
            key = (v - end if end < v else (off - top if off > top else 0), off != v)
            if best is None or key < best_key:
                best, best_key = cand, key
        if at_v is not None and (at_v_agrees or strong is None):
            return at_v
        if strong is not None:
            return strong
        here_same = -1 if here is None else self._agreement(payload, v, other, other_ooo)
        if here is not None and here_same >= EVIDENCE and (best is None or best_key[0] > 0):
            return here
        if best is not None:
            return best
        if here is not None and here_same >= 0:
            return here
        if near is not None:
            return near
        return here if here is not None else shared[-1]

    def _agreement(self, payload: bytes, off: int, other: bytearray,
                   other_ooo: dict[int, bytes]) -> int:
        """How many bytes of ``payload`` placed at ``off`` equal the other side's held
        bytes (``other`` from ``v``, and its out-of-order segments); -1 if one differs."""
        v = self.v
        end = off + len(payload)
        lo = off if off > v else v
        hi = v + len(other)
        if end < hi:
            hi = end
        same = 0
        if lo < hi:
            if payload[lo - off : hi - off] != other[lo - v : hi - v]:
                return -1
            same = hi - lo
        for start, data in other_ooo.items():
            lo = off if off > start else start
            hi = start + len(data)
            if end < hi:
                hi = end
            if lo < hi:
                if payload[lo - off : hi - off] != data[lo - start : hi - start]:
                    return -1
                same += hi - lo
        return same

    def _secondary_fin_rst(self, core: Core, flags: int, end: int, now: float,
                           out: list[Decision]) -> bool:
        new = False
        if flags & FIN and self.s_fin is None:
            self.s_fin = end
            new = True
            if not self.diverged:
                self._check_fin(core, now, out)
        if flags & RST and not self.s_rst:
            self.s_rst = True
            self.s_rst_end = max(self.s_next, end)
            new = True
            if not self.diverged and self.p_next > self.s_rst_end:
                at = self.s_rst_end
                self._diverge(core, Reason.CONTROL_MISMATCH, at, self._p_bytes(at), b"",
                              "primary data beyond the secondary's RST", now, out)
        return new

    def _consumed(self, end: int, flags: int) -> bool:
        if end > self.v:
            return False
        if flags & CTL:
            if flags & SYN and not self.p_syn:
                return False
            if flags & FIN and not self.fin_ok:
                return False
            if flags & RST and not self.p_rst:
                return False
        return True

    # -- comparison --------------------------------------------------------------------

    def _check_syn(self, core: Core, now: float, out: list[Decision]) -> None:
        if self.p_syn == self.s_syn:
            self.syn_ok = True
        elif not self.diverged:
            self._diverge(core, Reason.CONTROL_MISMATCH, -1, b"", b"",
                          f"primary sent {_flag_names(self.p_syn)}, "
                          f"secondary {_flag_names(self.s_syn)}", now, out)

    def _check_fin(self, core: Core, now: float, out: list[Decision]) -> None:
        p_fin, s_fin = self.p_fin, self.s_fin
        if p_fin is not None:
            if s_fin is not None and s_fin != p_fin:
                at = min(p_fin, s_fin)
                self._diverge(core, Reason.CONTROL_MISMATCH, at, self._p_bytes(at),
                              self._s_bytes(at),
                              f"FIN at stream offset {p_fin} (primary) vs {s_fin} (secondary)",
                              now, out)
            elif self.s_next > p_fin:
                self._diverge(core, Reason.CONTROL_MISMATCH, p_fin, b"", self._s_bytes(p_fin),
                              f"secondary data beyond the primary's FIN at {p_fin}", now, out)
        elif s_fin is not None and self.p_next > s_fin:
            self._diverge(core, Reason.CONTROL_MISMATCH, s_fin, self._p_bytes(s_fin), b"",
                          f"primary data beyond the secondary's FIN at {s_fin}", now, out)

    def _p_bytes(self, at: int) -> bytes:
        i = at - self.v
        return bytes(self.p_pend[i : i + 64]) if i >= 0 else b""

    def _s_bytes(self, at: int) -> bytes:
        i = at - self.v
        return bytes(self.s_pend[i : i + 64]) if i >= 0 else b""

    def _merge(self, ooo: dict[int, bytes], pend: bytearray) -> None:
        """Append out-of-order segments that now touch the contiguous data of ``pend``."""
        end = self.v + len(pend)
        for start in sorted(ooo):
            if start > end:
                break
            data = ooo.pop(start)
            stop = start + len(data)
            if stop > end:
                pend += data[end - start :]
                end = stop

    def _compare(self, core: Core, now: float, out: list[Decision]) -> bool:
        """Compare the common prefix of the two pending streams; True if ``v`` moved."""
        p = self.p_pend
        s = self.s_pend
        lp = len(p)
        ls = len(s)
        if lp == ls:
            if p == s:
                p.clear()
                s.clear()
                n = lp
            else:
                n = -1
        else:
            n = lp if lp < ls else ls
            if p[:n] == s[:n]:
                del p[:n]
                del s[:n]
            else:
                n = -1
        if n < 0:
            i = first_difference(p, s)
            at = self.v + i
            self._diverge(core, Reason.PAYLOAD_MISMATCH, at, p[i:], s[i:],
                          f"tcp payload differs at stream offset {at}", now, out)
            return False
        self.v += n
        self.bytes_matched += n
        core.stats.bytes_compared += n
        return True

    def _settle(self, core: Core, now: float, out: list[Decision]) -> None:
        """Release what became releasable and consume what became consumed."""
        if not self.fin_ok and self.p_fin is not None and self.p_fin == self.s_fin \
                and self.v >= self.p_fin:
            self.fin_ok = True
        q = self.p_q
        v = self.v
        while q:
            h = q[0]
            if h.end > v:
                break
            ack = h.ack
            if ack >= 0:
                m = self.s_max_ack
                if m < 0 or ((ack - m + HALF) & MASK) > HALF:
                    break
            if h.flags & CTL:
                if not self._releasable(h.end, ack, h.flags):
                    break
                if h.flags & (FIN | RST):
                    self.closed = True
            q.popleft()
            core.release_held(h, now, out)
        q = self.s_q
        while q and self._consumed(q[0].end, q[0].flags):
            core.drop_held(q.popleft(), DropReason.MATCHED, out)
        if q and self.s_unordered:
            keep: deque[Held] = deque()
            for h in q:
                if self._consumed(h.end, h.flags):
                    core.drop_held(h, DropReason.MATCHED, out)
                else:
                    keep.append(h)
            self.s_q = keep
        if not self.s_q:
            self.s_unordered = False

    def _diverge(self, core: Core, reason: Reason, offset: int, pb: bytes | bytearray,
                 sb: bytes | bytearray, detail: str, now: float, out: list[Decision]) -> None:
        div = divergence(offset, pb, sb)
        if self.first_div is None:
            self.first_div = div
        core.request(reason, self, f"{self.key}: {detail}", now, div, out)
        self.diverged = True
        for h in self.s_q:
            core.drop_held(h, DropReason.DIVERGED, out)
        self.s_q.clear()
        self.s_pend.clear()
        self.s_ooo.clear()
