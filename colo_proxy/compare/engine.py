"""The comparison engine: frames in, decisions out.  docs/compare.md is the specification."""

from __future__ import annotations

import math
import struct
from collections import OrderedDict
from collections.abc import Iterable

from .conn import Conn
from .core import Core
from .datagram import FifoConn
from .limits import evict_idle
from .model import (
    Config,
    ConnKey,
    ConnStats,
    Decision,
    DropReason,
    Reason,
    Release,
    Side,
)
from .parse import CONTROL, FIFO, TCP, parse
from .tcp import TcpConn

FAST_MIN = 48
"""Bytes after the virtio-net header that push()'s fast-path unpack reads."""
_PORTS = struct.Struct("!HH").pack
_HDR = struct.Struct("!B11xIH2xI2x12sIIH").unpack_from
"""dst MAC's first byte; EtherType, IPv4 version/IHL and TOS; total length; fragment
field, TTL and protocol; addresses and ports (12 bytes); then TCP seq, ack, and data
offset with flags."""

RETIRED_MAX = 4096
"""Retired TCP connections remembered (least recently retired forgotten first)."""
RETIRED_VISIBLE_MS = 1000.0
"""``connections()`` still lists a connection this long after it retired."""


class Engine(Core):
    """Pure COLO output comparison.

    * ``push(side, frame, now_ms, tag, vnet_hdr_len)``: feed one Ethernet frame
      (optionally preceded by ``vnet_hdr_len`` bytes of virtio-net header).
      ``tag`` is an opaque caller handle returned in Release/Drop decisions.
    * ``tick(now_ms)``: advance time; emits timeout checkpoint requests.
    * ``checkpoint_done(now_ms)``: the VMM finished a checkpoint; every held
      primary frame is released in arrival order, held secondaries dropped, and
      per-connection state re-based.
    Never raises on frame content.
    """

    def __init__(self, config: Config | None = None) -> None:
        super().__init__(config)
        self._conns: OrderedDict[tuple[object, ...], Conn] = OrderedDict()
        self._retired: OrderedDict[tuple[object, ...], Conn] = OrderedDict()
        """Closed TCP connections, kept with their numbering so that late frames (the
        final ACK, FIN and data retransmissions) are judged against it."""
        self._clock = -math.inf
        """The latest time seen by tick(), checkpoint_done() or a retirement."""
        self._fast_tcp: dict[bytes, TcpConn] = {}
        self._fast_udp: dict[bytes, FifoConn] = {}
        """Connections of untagged IPv4 TCP/UDP by their address and port bytes (the
        12 bytes from the IP source address to the destination port), for push()'s fast
        path: a subset of ``_conns`` without passthrough connections."""

    def push(
        self,
        side: Side,
        frame: bytes,
        now_ms: float,
        tag: object = None,
        vnet_hdr_len: int = 0,
    ) -> list[Decision]:
        s = 0 if side == 0 else 1 if side == 1 else Side(side)
        if type(frame) is not bytes:
            frame = bytes(frame)
        st = self.stats
        size = len(frame)
        st.frames[s] += 1
        st.bytes[s] += size
        off = vnet_hdr_len
        if size - off >= FAST_MIN and off >= 0:
            # Fast path: a known connection of untagged IPv4 TCP/UDP (docs/compare.md,
            # "Performance"); anything else, or any doubt, takes the general path.
            mac0, ethv, total, fp, addrs, seq, ack, df = _HDR(frame, off)
            end = off + 14 + total
            # IPv4 without options, not a fragment; not to a 01:xx link-local/multicast MAC.
            if ethv & 0xFFFFFF00 == 0x08004500 and mac0 != 1 and end <= size:
                fp &= 0x3FFF00FF  # fragment offset + MF, and the protocol
                if fp == 6:
                    tcp = self._fast_tcp.get(addrs)
                    hl = (df >> 10) & 0x3C
                    if tcp is not None and tcp.epoch == self._epoch and 20 <= hl <= total - 20 \
                            and not tcp.queue_flag and not self._memory_flag \
                            and size <= self.config.max_held_bytes:
                        # Below the soft limits, so below the hard ones (push's general
                        # path checks them exactly).
                        self._conns.move_to_end(tcp.key)
                        out: list[Decision] = []
                        if s:
                            tcp.secondary(self, seq, ack, df & 0xFF, frame[off + 34 + hl:end],
                                          size, tag, now_ms, out)
                        else:
                            tcp.primary(self, seq, ack, df & 0xFF, frame[off + 34 + hl:end],
                                        size, tag, now_ms, out)
                        if tcp.closed and not tcp.held_p and not tcp.held_s:
                            self._retire(tcp, now_ms)
                        arrivals = self._arrivals
                        if arrivals and (arrivals[0].done or now_ms - arrivals[0].arrival
                                         >= self.config.compare_timeout_ms):
                            self._expire(now_ms, out)
                        return out
                elif fp == 17 and total >= 28:
                    fifo = self._fast_udp.get(addrs)
                    if fifo is not None and fifo.epoch == self._epoch \
                            and not fifo.queue_flag and not self._memory_flag \
                            and size <= self.config.max_held_bytes:
                        self._conns.move_to_end(fifo.key)
                        out = []
                        # Ports and length, then everything up to the IP end (parse.py).
                        data = frame[off + 34:off + 40] + frame[off + 42:end]
                        if s:
                            fifo.secondary(self, data, size, tag, now_ms, out)
                        else:
                            fifo.primary(self, data, size, tag, now_ms, out)
                        arrivals = self._arrivals
                        if arrivals and (arrivals[0].done or now_ms - arrivals[0].arrival
                                         >= self.config.compare_timeout_ms):
                            self._expire(now_ms, out)
                        return out
        out = []
        kind, key, a, b, c, d = parse(frame, off)
        if kind <= FIFO:  # TCP or FIFO
            conns = self._conns
            conn = conns.get(key)
            if conn is None:
                conn = self._new_conn(key, kind, now_ms, out)
            else:
                conns.move_to_end(key)
            if kind == FIFO and b:
                st.malformed += 1
            if conn is None:
                st.overflow += 1
                self.drop(s, tag, None, DropReason.OVERFLOW, out)
            else:
                if conn.epoch != self._epoch:
                    conn.rebase(self._epoch)
                cfg = self.config
                if conn.passthrough:
                    self._passthrough(s, conn, tag, out)
                else:
                    if conn.fast is None and key[0] == -1 and key[1] == 4 and not key[7] \
                            and (key[4] == 6 or key[4] == 17):
                        self._register_fast(conn)
                    if ((conn.held_s if s else conn.held_p) >= 2 * cfg.max_queue_per_conn
                            or st.held_bytes_now + size > 2 * cfg.max_held_bytes):
                        st.overflow += 1
                        self.drop(s, tag, conn, DropReason.OVERFLOW, out)
                    elif kind == TCP:
                        tc: TcpConn = conn  # type: ignore[assignment]
                        if s:
                            tc.secondary(self, a, b, c, d, size, tag, now_ms, out)
                        else:
                            tc.primary(self, a, b, c, d, size, tag, now_ms, out)
                    else:
                        fc: FifoConn = conn  # type: ignore[assignment]
                        if s:
                            fc.secondary(self, a, size, tag, now_ms, out)
                        else:
                            fc.primary(self, a, size, tag, now_ms, out)
                if conn.closed and not conn.held_p and not conn.held_s:
                    self._retire(conn, now_ms)
        elif kind == CONTROL:
            if s:
                self.drop(1, tag, None, DropReason.SECONDARY_CONTROL, out)
            else:
                st.control_passed += 1
                st.released += 1
                out.append(Release(tag, ConnKey(*key), 0.0))
        else:
            st.malformed += 1
            self.drop(s, tag, None, DropReason.MALFORMED, out)
        self._expire(now_ms, out)
        return out

    def _expire(self, now: float, out: list[Decision]) -> None:
        """Drop finished frames from the head of the arrival queue; check the timeout."""
        arrivals = self._arrivals
        if arrivals:
            head = arrivals[0]
            if head.done:
                pop = arrivals.popleft
                pop()
                while arrivals and arrivals[0].done:
                    pop()
                if not arrivals:
                    return
                head = arrivals[0]
            if now - head.arrival >= self.config.compare_timeout_ms:
                self.check_timeout(now, out)

    def tick(self, now_ms: float) -> list[Decision]:
        self._clock = max(self._clock, now_ms)
        out: list[Decision] = []
        self.check_timeout(now_ms, out)
        return out

    def checkpoint_done(self, now_ms: float) -> list[Decision]:
        self._clock = max(self._clock, now_ms)
        out: list[Decision] = []
        st = self.stats
        touched: dict[int, Conn] = {}
        for h in self._arrivals:
            if h.done:
                continue
            h.done = True
            conn = h.conn
            touched[id(conn)] = conn
            if h.side:
                self.drop(1, h.tag, conn, DropReason.CHECKPOINT, out)
            else:
                st.released += 1
                held_ms = now_ms - h.arrival
                out.append(Release(h.tag, conn.key, held_ms if held_ms > 0.0 else 0.0))
            h.tag = None
            h.data = b""
        self._arrivals.clear()
        st.held_frames_now = 0
        st.held_bytes_now = 0
        st.checkpoints_done += 1
        self._epoch += 1
        self._pending = False
        self._memory_flag = False
        self._connection_flag = False
        for conn in touched.values():
            conn.rebase(self._epoch)
            if conn.closed:
                self._retire(conn, now_ms)
        return out

    @property
    def retired_now(self) -> int:
        """Retired connections remembered for their late frames (at most RETIRED_MAX)."""
        return len(self._retired)

    def connections(self) -> Iterable[ConnStats]:
        """The tracked connections, then those that retired in the last
        ``RETIRED_VISIBLE_MS`` (``retired`` set), newest first: a periodic reporter sees
        every connection at least once, with its final counts."""
        out = [conn.stats() for conn in self._conns.values()]
        horizon = self._clock - RETIRED_VISIBLE_MS
        for conn in reversed(self._retired.values()):
            if conn.retired_at < horizon:
                break
            out.append(conn.stats())
        return out

    def conn_stats(self, key: ConnKey) -> ConnStats | None:
        """A tracked connection, or one still in the retired table (``retired`` set)."""
        conn = self._conns.get(key) or self._retired.get(key)
        return conn.stats() if conn is not None else None

    # -- internals ---------------------------------------------------------------------

    def _new_conn(self, key: tuple[object, ...], kind: int, now: float,
                  out: list[Decision]) -> Conn | None:
        cfg = self.config
        st = self.stats
        over = st.connections_now >= cfg.max_connections and not evict_idle(
            self._conns, st, self._unregister_fast)
        if over and st.connections_now >= 2 * cfg.max_connections:
            return None
        conn = self._retired.pop(key, None)
        if conn is not None:
            # A late frame of a retired connection: it comes back with its numbering.
            conn.retired_at = -math.inf
            self._conns[conn.key] = conn
            st.connections_now += 1
            self._limit_request(conn, over, now, out)
            return conn
        ckey = ConnKey(*key)  # type: ignore[arg-type]
        passthrough = bool(cfg.passthrough) and ckey.l3 in (4, 6) and any(
            rule.matches(ckey) for rule in cfg.passthrough)
        if kind == TCP:
            conn = TcpConn(ckey, self._epoch, passthrough)
        else:
            conn = FifoConn(ckey, self._epoch, passthrough)
        self._conns[ckey] = conn
        st.connections_now += 1
        self._limit_request(conn, over, now, out)
        return conn

    def _limit_request(self, conn: Conn, over: bool, now: float, out: list[Decision]) -> None:
        st = self.stats
        cfg = self.config
        if over and not self._connection_flag:
            self._connection_flag = True
            self.request(Reason.CONNECTION_LIMIT, conn,
                         f"{st.connections_now} busy connections "
                         f"(limit {cfg.max_connections})", now, None, out)

    def _passthrough(self, s: int, conn: Conn, tag: object, out: list[Decision]) -> None:
        if s:
            self.drop(1, tag, conn, DropReason.PASSTHROUGH, out)
        else:
            self.stats.passthrough += 1
            self.stats.released += 1
            out.append(Release(tag, conn.key, 0.0))

    def _retire(self, conn: Conn, now: float) -> None:
        """Move a closed connection to the retired table; with a tracked reverse
        direction, wait for it."""
        key = conn.key
        reverse = (key.vlan, key.l3, key.dst, key.src, key.proto, key.dport, key.sport, False)
        other = self._conns.get(reverse)
        if other is not None and other is not conn:
            if not other.closed or other.busy:
                return
            self._bury(other, now)
        self._bury(conn, now)

    def _register_fast(self, conn: Conn) -> None:
        key = conn.key
        fast = key.src + key.dst + _PORTS(key.sport, key.dport)
        conn.fast = fast
        if key.proto == 6:
            self._fast_tcp[fast] = conn  # type: ignore[assignment]
        else:
            self._fast_udp[fast] = conn  # type: ignore[assignment]

    def _unregister_fast(self, conn: Conn) -> None:
        if conn.fast is not None:
            (self._fast_tcp if conn.key.proto == 6 else self._fast_udp).pop(conn.fast, None)
            conn.fast = None

    def _bury(self, conn: Conn, now: float) -> None:
        if self._conns.pop(conn.key, None) is None:
            return
        self._unregister_fast(conn)
        self.stats.connections_now -= 1
        conn.retired_at = now
        self._clock = max(self._clock, now)
        retired = self._retired
        retired[conn.key] = conn
        retired.move_to_end(conn.key)
        if len(retired) > RETIRED_MAX:
            retired.popitem(last=False)


__all__ = ["Engine"]
