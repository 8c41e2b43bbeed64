"""One framed chardev link (asyncio): listen or connect, decode frames, write frames.

A ``Link`` owns at most one live connection.  In server mode it accepts QEMU's
connection (a newer connection replaces an older one, so a restarted QEMU can
reconnect); in client mode it connects to a QEMU chardev server and reconnects
with back-off whenever the connection fails or drops.  Each connection gets a
fresh ``FrameDecoder``; a fatal framing error closes that connection (as QEMU
does), so a client link reconnects and a server link waits for QEMU again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from collections.abc import Callable

from ..errors import ColoError
from ..qemu.framing import FrameDecoder, FramingError
from .endpoints import Endpoint

log = logging.getLogger("colo_proxy.qemu_socket")

FrameSink = Callable[[list[bytes], list[int] | None], None]
"""Receives the frames of one read: payloads and vnet_hdr_len words (FrameDecoder.split)."""


def _ignore(payloads: list[bytes], vlens: list[int] | None) -> None:
    return None


READ_SIZE = 256 * 1024
"""Bytes one read may return (recv_into a buffer reused for every read)."""


class _Conn(asyncio.BufferedProtocol):
    """One connection: every read lands in the same preallocated buffer.

    (A plain Protocol gets a fresh bytes object per read from a 256 KiB recv(), which
    glibc serves with mmap/mremap/munmap and fresh page faults on every read.)
    """

    def __init__(self, link: Link) -> None:
        self.link = link
        self.transport: asyncio.Transport | None = None
        self.decoder = FrameDecoder(link.vnet_hdr, on_error=self._framing_error)
        self.split = self.decoder.split
        self.sink = link.sink
        self.buffer = memoryview(bytearray(READ_SIZE))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.link._attach(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        # One copy of the read into bytes, so that every payload is a bytes slice.
        payloads, vlens = self.split(self.buffer[:nbytes].tobytes())
        if payloads:
            self.sink(payloads, vlens)

    def eof_received(self) -> bool | None:
        err = self.decoder.at_eof()
        if err is not None:
            self.link.framing_errors += 1
            log.warning("%s: %s", self.link.name, err)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.link._detach(self, exc)

    def pause_writing(self) -> None:
        self.link._writing_paused(True)

    def resume_writing(self) -> None:
        self.link._writing_paused(False)

    def _framing_error(self, err: FramingError) -> None:
        self.link.framing_errors += 1
        log.warning("%s: %s", self.link.name, err)
        if err.fatal and self.transport is not None:
            self.transport.close()


class Link:
    """A named endpoint delivering the decoded frames of each read to ``sink``."""

    def __init__(self, name: str, endpoint: Endpoint, vnet_hdr: bool,
                 sink: FrameSink | None = None) -> None:
        self.name = name
        self.endpoint = endpoint
        self.vnet_hdr = vnet_hdr
        self.sink: FrameSink = sink or _ignore
        self.conn: _Conn | None = None
        self.framing_errors = 0
        self.connections = 0
        self.on_connect: Callable[[], None] | None = None
        self.on_write_pause: Callable[[bool], None] | None = None
        self._server: asyncio.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._closing = False

    @property
    def connected(self) -> bool:
        return self.conn is not None

    def write(self, data: bytes) -> bool:
        """Write raw (already framed) bytes; False if there is no connection."""
        conn = self.conn
        if conn is None or conn.transport is None:
            return False
        conn.transport.write(data)
        return True

    def write_buffer_size(self) -> int:
        conn = self.conn
        if conn is None or conn.transport is None:
            return 0
        return conn.transport.get_write_buffer_size()

    def pause_reading(self, pause: bool) -> None:
        conn = self.conn
        if conn is None or conn.transport is None or conn.transport.is_closing():
            return
        if pause:
            conn.transport.pause_reading()
        else:
            conn.transport.resume_reading()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        ep = self.endpoint
        if ep.server:
            if ep.kind == "unix":
                _remove_stale_socket(ep.address)
                self._server = await loop.create_unix_server(lambda: _Conn(self), ep.address)
            else:
                self._server = await loop.create_server(lambda: _Conn(self), ep.address,
                                                        ep.port, reuse_address=True)
            log.info("%s: listening on %s", self.name, ep)
        else:
            self._task = asyncio.create_task(self._connect_loop(), name=f"connect-{self.name}")

    async def _connect_loop(self) -> None:
        loop = asyncio.get_running_loop()
        ep = self.endpoint
        delay = 0.05
        warned = False
        while not self._closing:
            self._lost.clear()
            try:
                if ep.kind == "unix":
                    await loop.create_unix_connection(lambda: _Conn(self), ep.address)
                else:
                    await loop.create_connection(lambda: _Conn(self), ep.address, ep.port)
            except OSError as exc:
                if not warned:
                    log.info("%s: cannot connect to %s yet (%s); retrying", self.name, ep,
                             exc.strerror or exc)
                    warned = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            delay, warned = 0.05, False
            await self._lost.wait()
            if not self._closing:
                await asyncio.sleep(0.05)

    def _attach(self, conn: _Conn) -> None:
        old = self.conn
        self.conn = conn
        self.connections += 1
        peer = conn.transport.get_extra_info("peername") if conn.transport else None
        if old is not None and old.transport is not None:
            log.info("%s: new connection from %s replaces the previous one", self.name, peer)
            old.transport.close()
        else:
            log.info("%s: connected (%s, peer %s)", self.name, self.endpoint, peer or "local")
        if self.on_connect is not None:
            self.on_connect()

    def _detach(self, conn: _Conn, exc: Exception | None) -> None:
        if self.conn is conn:
            self.conn = None
            if not self._closing:
                log.info("%s: connection closed%s", self.name, f" ({exc})" if exc else "")
            if self.on_write_pause is not None:
                self.on_write_pause(False)
        self._lost.set()

    def _writing_paused(self, paused: bool) -> None:
        if self.on_write_pause is not None:
            self.on_write_pause(paused)

    async def drain(self, timeout: float) -> bool:
        """Wait until the write buffer is empty (or ``timeout`` s); True if drained."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.write_buffer_size() > 0:
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.conn is not None and self.conn.transport is not None:
            self.conn.transport.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            if self.endpoint.kind == "unix":
                with contextlib.suppress(OSError):
                    os.unlink(self.endpoint.address)


def _remove_stale_socket(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ColoError(f"{path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listens: a leftover of an earlier run
            return
    raise ColoError(f"{path}: another process is listening on this socket")
