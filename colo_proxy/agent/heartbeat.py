"""The heartbeat between the two hosts' agents: UDP, HMAC-SHA256, replay-protected.

One datagram every ``interval_ms`` from each agent to its peer, per VM::

    magic "CLHB" | version u8 (1) | flags u8 | name length u8 | name (UTF-8)
    | session 8 bytes | counter u64 BE | wall time ms u64 BE | HMAC-SHA256 (32 bytes)

* ``flags``: bit 0 "my QEMU is healthy" (QMP connected), bit 1 "I am the primary",
  bit 2 "health known" (clear while a starting agent has not yet tried its QMP
  socket: such a beat says "alive" and nothing about QEMU).
* ``session``: random per agent start; ``counter`` starts at 1 and increases by
  one per datagram; the MAC covers every byte before it, with the pre-shared
  key of ``key_file`` (at least 32 bytes).

A datagram is accepted only if, in this order: it parses (else ``malformed``);
its MAC is right (else ``forged``); it names this VM and the *peer's* role, so a
datagram reflected back to its sender is refused (else ``wrong_peer``); its wall
time is within ``window_ms`` of ours (else ``stale``: an old capture, or clocks
too far apart -- keep the hosts on NTP); the first one accepted since this agent
started was sent after that start, by its wall time (else ``stale``: the window
alone would let a receiver that just restarted, and so knows no peer session,
take a capture up to ``window_ms`` old for a live peer); and it is newer than the
last accepted one: a higher counter in the same session, or a later wall time for
a new session (else ``replayed``), so every later one was sent after that start
too.  Refused datagrams are counted and change nothing:
a forged or replayed heartbeat cannot keep a dead peer alive, and no datagram
can trigger a failover (only their *absence*, or an authenticated "unhealthy",
does; failover.py has the split-brain rule).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from .config import HostPort

log = logging.getLogger("colo_proxy.agent.heartbeat")

MAGIC = b"CLHB"
VERSION = 1
HEALTHY = 1
PRIMARY = 2
KNOWN = 4
_TAIL = struct.Struct(">8sQQ")
MAC_LEN = 32


def encode(key: bytes, name: str, *, primary: bool, healthy: bool | None, session: bytes,
           counter: int, wall_ms: int) -> bytes:
    raw = name.encode()
    flags = (HEALTHY if healthy else 0) | (PRIMARY if primary else 0) | (
        KNOWN if healthy is not None else 0)
    body = MAGIC + bytes((VERSION, flags, len(raw))) + raw + _TAIL.pack(session, counter,
                                                                          wall_ms)
    return body + hmac.new(key, body, hashlib.sha256).digest()


@dataclass(frozen=True)
class Beat:
    name: str
    primary: bool
    healthy: bool | None
    session: bytes
    counter: int
    wall_ms: int


def decode(key: bytes, data: bytes) -> Beat | str:
    """A Beat, or the counter name of why not ("malformed" or "forged")."""
    if len(data) < 7 + _TAIL.size + MAC_LEN or data[:4] != MAGIC or data[4] != VERSION:
        return "malformed"
    n = data[6]
    if len(data) != 7 + n + _TAIL.size + MAC_LEN:
        return "malformed"
    body, mac = data[:-MAC_LEN], data[-MAC_LEN:]
    if not hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()):
        return "forged"
    try:
        name = body[7:7 + n].decode()
    except UnicodeDecodeError:
        return "malformed"
    session, counter, wall_ms = _TAIL.unpack_from(body, 7 + n)
    flags = data[5]
    healthy = bool(flags & HEALTHY) if flags & KNOWN else None
    return Beat(name, bool(flags & PRIMARY), healthy, session, counter, wall_ms)


@dataclass
class HeartbeatCounters:
    sent: int = 0
    send_errors: int = 0
    accepted: int = 0
    malformed: int = 0
    forged: int = 0
    wrong_peer: int = 0
    stale: int = 0
    replayed: int = 0


class Heartbeat(asyncio.DatagramProtocol):
    """Sends our heartbeats and judges the peer's.  ``await start()``, ``close()``."""

    def __init__(self, name: str, *, primary: bool, key: bytes, listen: HostPort,
                 peer: HostPort, interval_ms: int, misses: int,
                 healthy: Callable[[], bool | None] = lambda: True, window_ms: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.primary = primary
        self._key = key
        self.listen = listen
        self.peer = peer
        self.interval_s = interval_ms / 1000.0
        self.dead_after_s = interval_ms * misses / 1000.0
        self.healthy = healthy
        self.window_ms = window_ms if window_ms is not None else max(
            5000, 2 * interval_ms * misses)
        self.clock = clock
        self.counters = HeartbeatCounters()
        self.session = os.urandom(8)
        self._counter = 0
        self._last: tuple[bytes, int, int] | None = None
        """(session, counter, wall_ms) of the last accepted beat."""
        self.last_seen: float | None = None
        self.peer_healthy: bool | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._sender: asyncio.Task[None] | None = None
        self._started = 0.0
        self._started_wall_ms = 0
        """Wall time of start(), before the socket is bound: the first beat accepted must
        be stamped no earlier."""
        self._refusal_logged: set[str] = set()

    # -- receiving ---------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self.judge(data, addr)

    def judge(self, data: bytes, addr: object = None) -> bool:
        beat = decode(self._key, data)
        if isinstance(beat, str):
            self._refuse(beat, addr)
            return False
        if beat.name != self.name or beat.primary == self.primary:
            self._refuse("wrong_peer", addr)
            return False
        if abs(beat.wall_ms - int(time.time() * 1000)) > self.window_ms:
            self._refuse("stale", addr)
            return False
        last = self._last
        if last is None and beat.wall_ms < self._started_wall_ms:
            self._refuse("stale", addr, "sent before this agent started: a capture, or the "
                         "peer's clock is behind ours")
            return False
        if last is not None and (beat.counter <= last[1] if beat.session == last[0]
                                 else beat.wall_ms <= last[2]):
            self._refuse("replayed", addr)
            return False
        if last is None or beat.session != last[0]:
            log.info("%s: heartbeat from a new peer session (%s)", self.name,
                     beat.session.hex())
        self._last = (beat.session, beat.counter, beat.wall_ms)
        self.counters.accepted += 1
        self.last_seen = self.clock()
        if self.peer_healthy is not False and beat.healthy is False:
            log.warning("%s: peer reports its QEMU is not healthy", self.name)
        self.peer_healthy = beat.healthy
        return True

    def _refuse(self, why: str, addr: object, detail: str = "") -> None:
        setattr(self.counters, why, getattr(self.counters, why) + 1)
        kind = f"{why}: {detail}" if detail else why
        if kind not in self._refusal_logged:  # one line per kind, the counters say the rest
            self._refusal_logged.add(kind)
            log.warning("%s: heartbeat refused (%s) from %s; further ones are only counted",
                        self.name, kind, addr)

    # -- liveness ----------------------------------------------------------------

    @property
    def silent(self) -> bool:
        """No accepted heartbeat for ``interval * misses`` (since start, for the first)."""
        since = self.last_seen if self.last_seen is not None else self._started
        return self.clock() - since > self.dead_after_s

    # -- sending -----------------------------------------------------------------

    def next_datagram(self) -> bytes:
        self._counter += 1
        return encode(self._key, self.name, primary=self.primary, healthy=self.healthy(),
                      session=self.session, counter=self._counter,
                      wall_ms=int(time.time() * 1000))

    async def _send_loop(self) -> None:
        while True:
            transport = self._transport
            if transport is not None:
                try:
                    transport.sendto(self.next_datagram(), (self.peer.host, self.peer.port))
                    self.counters.sent += 1
                except OSError as exc:
                    self.counters.send_errors += 1
                    log.debug("%s: heartbeat send: %s", self.name, exc)
            await asyncio.sleep(self.interval_s)

    def error_received(self, exc: Exception) -> None:
        self.counters.send_errors += 1

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._started_wall_ms = int(time.time() * 1000)  # before bind: nothing sent earlier
        transport, _ = await loop.create_datagram_endpoint(  # can arrive but late
            lambda: self, local_addr=(self.listen.host, self.listen.port))
        self._transport = transport
        self._started = self.clock()
        self._sender = loop.create_task(self._send_loop())

    async def close(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
            self._sender = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None
            await asyncio.sleep(0)  # the socket is closed on the next loop iteration
