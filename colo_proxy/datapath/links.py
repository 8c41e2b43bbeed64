"""One framed chardev link (asyncio): listen or connect, decode frames, write frames.

A ``Link`` owns at most one live connection (docs/security.md, "Endpoints").

* **Server mode** serves one client at a time, like QEMU's socket chardev. While
  a connection is live every further connection is refused: accepted, logged
  ("refused connection from ...: already connected"), counted and closed at once,
  before a byte of it is read.  (QEMU instead stops accepting and leaves later
  clients waiting in the listen backlog; a held connection would be invisible
  and its queued bytes fed once the first one is gone, so colo-proxy refuses.)
  With TLS a connection takes the slot only once its handshake and the
  ``tls-authz`` check have passed, so an unauthenticated client cannot block the
  real peer; at most ``MAX_PENDING_HANDSHAKES`` handshakes run at once.
* **Client mode** connects to a QEMU chardev server and reconnects with back-off
  whenever the connection fails or drops (or the TLS handshake fails).

A connection is *gone* (and the slot free) when the peer closes it (EOF), on a
socket error (reset, or TCP_USER_TIMEOUT: data unacknowledged for
``USER_TIMEOUT_MS``), when TCP keepalive finds a silent peer dead
(``KEEPALIVE_IDLE`` s without traffic, then ``KEEPALIVE_COUNT`` probes
``KEEPALIVE_INTERVAL`` s apart: about 20 s), or on a fatal framing error, which
closes it (as QEMU does).  Each connection gets a fresh ``FrameDecoder``.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import socket
import ssl
import stat
from collections.abc import Callable

from ..errors import ColoError, InputError
from ..qemu.framing import FrameDecoder, FramingError
from .endpoints import Endpoint, exposure_warning
from .tls import HANDSHAKE_TIMEOUT, Authz, client_context, peer_dn, server_context

log = logging.getLogger("colo_proxy.qemu_socket")

FrameSink = Callable[[list[bytes], list[int] | None], None]
"""Receives the frames of one read: payloads and vnet_hdr_len words (FrameDecoder.split)."""


def _ignore(payloads: list[bytes], vlens: list[int] | None) -> None:
    return None


READ_SIZE = 256 * 1024
"""Bytes one read may return (recv_into a buffer reused for every read)."""

KEEPALIVE_IDLE = 10
KEEPALIVE_INTERVAL = 2
KEEPALIVE_COUNT = 5
USER_TIMEOUT_MS = 20_000
MAX_PENDING_HANDSHAKES = 8
EARLY_LIMIT = 4 * 1024 * 1024
"""Bytes kept from a TLS peer between its handshake and its admission; beyond, it is cut."""


class _Conn(asyncio.BufferedProtocol):
    """One admitted connection: every read lands in the same preallocated buffer.

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

    def feed(self, data: bytes) -> None:
        """Bytes read before the connection was admitted (TLS), in order."""
        payloads, vlens = self.split(data)
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


class _Gate(asyncio.Protocol):
    """First protocol of an accepted connection: hands it to ``Link._accepted``."""

    def __init__(self, link: Link) -> None:
        self.link = link

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.link._accepted(transport)


class _Early(asyncio.Protocol):
    """Keeps what a connection sends before it is admitted (TLS peers send at once)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.data: list[bytes] = []
        self.size = 0
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data.append(data)
        self.size += len(data)
        if self.size > EARLY_LIMIT and self.transport is not None:
            self.transport.abort()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


def _peer_text(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = f"[{peer[0]}]" if ":" in str(peer[0]) else str(peer[0])
        return f"{host}:{peer[1]}"
    return "local"


def _keepalive(transport: asyncio.BaseTransport) -> None:
    """Make a silent dead TCP peer count as gone (module doc)."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)


class Link:
    """A named endpoint delivering the decoded frames of each read to ``sink``.

    Counters: ``connections`` (admitted), ``refused_busy`` (a client arrived while
    one was connected), ``refused_tls`` (TLS handshake failed: no, invalid or
    untrusted certificate, timeout), ``refused_authz`` (certificate's DN not
    allowed by tls-authz).
    """

    def __init__(self, name: str, endpoint: Endpoint, vnet_hdr: bool,
                 sink: FrameSink | None = None) -> None:
        self.name = name
        self.endpoint = endpoint
        self.vnet_hdr = vnet_hdr
        self.sink: FrameSink = sink or _ignore
        self.conn: _Conn | None = None
        self.framing_errors = 0
        self.connections = 0
        self.refused_busy = 0
        self.refused_tls = 0
        self.refused_authz = 0
        self.on_connect: Callable[[], None] | None = None
        self.on_write_pause: Callable[[bool], None] | None = None
        self._server: asyncio.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._handshakes: set[asyncio.Task[None]] = set()
        self._lost = asyncio.Event()
        self._closing = False
        what = f"{name} ({endpoint})"
        self._ssl: ssl.SSLContext | None = None
        self._authz: Authz | None = None
        if endpoint.tls_creds is not None:
            self._ssl = (server_context(endpoint.tls_creds, what) if endpoint.server
                         else client_context(endpoint.tls_creds, what))
        if endpoint.tls_authz is not None:
            self._authz = Authz.parse(endpoint.tls_authz, what)
        self._gid: int | None = None
        if endpoint.group is not None:
            try:
                self._gid = grp.getgrnam(endpoint.group).gr_gid
            except KeyError:
                raise InputError(f"{what}: no group {endpoint.group!r}") from None

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
        exposed = exposure_warning(ep)
        if exposed is not None:
            log.warning("%s: WARNING: %s", self.name, exposed)
        if ep.server:
            if ep.kind == "unix":
                sock = _unix_listener(ep.address, self._gid)
                self._server = await loop.create_unix_server(lambda: _Gate(self), sock=sock)
            else:
                self._server = await loop.create_server(lambda: _Gate(self), ep.address,
                                                        ep.port, reuse_address=True)
            log.info("%s: listening on %s%s", self.name, ep, self._describe())
        else:
            self._task = asyncio.create_task(self._connect_loop(), name=f"connect-{self.name}")

    def _describe(self) -> str:
        ep = self.endpoint
        if ep.kind == "unix":
            return f" (mode {'0660, group ' + str(ep.group) if ep.group else '0600'})"
        if not ep.tls:
            return ""
        return f" (TLS, tls-authz {self._authz.source})" if self._authz else " (TLS)"

    # -- server side ---------------------------------------------------------------

    def _refuse_busy(self, transport: asyncio.Transport) -> None:
        self.refused_busy += 1
        if self.conn is not None and self.conn.transport is not None:
            why = f"already connected to {_peer_text(self.conn.transport)} (one client at a time"
        else:
            why = f"{len(self._handshakes)} TLS handshakes in progress (the most at once"
        log.warning("%s: refused connection from %s: %s; refused so far: %d)", self.name,
                    _peer_text(transport), why, self.refused_busy)
        transport.abort()

    def _accepted(self, transport: asyncio.Transport) -> None:
        if self._closing:
            transport.abort()
            return
        if self.conn is not None:
            self._refuse_busy(transport)
            return
        _keepalive(transport)
        if self._ssl is None:
            self._admit(transport, None)
            return
        if len(self._handshakes) >= MAX_PENDING_HANDSHAKES:
            self._refuse_busy(transport)
            return
        transport.pause_reading()
        task = asyncio.get_running_loop().create_task(self._server_handshake(transport))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _server_handshake(self, transport: asyncio.Transport) -> None:
        assert self._ssl is not None
        peer = _peer_text(transport)
        early = _Early()
        try:
            started = await asyncio.get_running_loop().start_tls(
                transport, early, self._ssl, server_side=True,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        except (TimeoutError, OSError) as exc:
            self.refused_tls += 1
            log.warning("%s: refused connection from %s: TLS handshake failed: %s",
                        self.name, peer, _reason(exc))
            transport.abort()
            return
        assert isinstance(started, asyncio.Transport)
        tls = early.transport = started
        if not self._authorised(tls, peer):
            return
        if self.conn is not None:
            self._refuse_busy(tls)
        elif early.lost or tls.is_closing() or self._closing:
            tls.abort()
        else:
            self._admit(tls, early)

    def _authorised(self, tls: asyncio.Transport, peer: str) -> bool:
        """tls-authz check of the peer's certificate; aborts the connection if denied."""
        if self._authz is None:
            return True
        dn = peer_dn(tls.get_extra_info("peercert"))
        if self._authz.allowed(dn):
            return True
        self.refused_authz += 1
        log.warning("%s: refused connection from %s: certificate %r not allowed by "
                    "tls-authz (%s)", self.name, peer, dn, self._authz.source)
        tls.abort()
        return False

    def _admit(self, transport: asyncio.Transport, early: _Early | None) -> None:
        conn = _Conn(self)
        transport.set_protocol(conn)
        conn.connection_made(transport)
        if early is not None and early.data:
            data, early.data = b"".join(early.data), []
            conn.feed(data)

    # -- client side ---------------------------------------------------------------

    async def _connect_loop(self) -> None:
        loop = asyncio.get_running_loop()
        ep = self.endpoint
        delay = 0.05
        last_error = ""
        while not self._closing:
            self._lost.clear()
            early = _Early()

            def factory(early: _Early = early) -> _Early:
                return early

            try:
                if ep.kind == "unix":
                    transport, _ = await loop.create_unix_connection(factory, ep.address)
                elif self._ssl is None:
                    transport, _ = await loop.create_connection(factory, ep.address,
                                                                ep.port)
                else:
                    transport, _ = await loop.create_connection(
                        factory, ep.address, ep.port, ssl=self._ssl,
                        server_hostname=ep.address, ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
            except (TimeoutError, OSError) as exc:
                error = _reason(exc)
                if isinstance(exc, ssl.SSLError):
                    self.refused_tls += 1
                    if error != last_error:
                        log.warning("%s: TLS with %s failed: %s; retrying", self.name, ep,
                                    error)
                elif error != last_error:
                    log.info("%s: cannot connect to %s yet (%s); retrying", self.name, ep,
                             error)
                last_error = error
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            assert isinstance(transport, asyncio.Transport)
            _keepalive(transport)
            if not self._authorised(transport, _peer_text(transport)) or early.lost:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            last_error = ""
            since = loop.time()
            self._admit(transport, early)
            await self._lost.wait()
            # Closed at once (e.g. a TLS server refusing our certificate after the
            # handshake): keep backing off instead of reconnecting in a loop.
            delay = min(delay * 2, 1.0) if loop.time() - since < 1.0 else 0.05
            if not self._closing:
                await asyncio.sleep(delay)

    # -- both ----------------------------------------------------------------------

    def _attach(self, conn: _Conn) -> None:
        self.conn = conn
        self.connections += 1
        peer = _peer_text(conn.transport) if conn.transport else "local"
        dn = ""
        if self._ssl is not None and conn.transport is not None:
            dn = f", TLS peer {peer_dn(conn.transport.get_extra_info('peercert'))!r}"
        log.info("%s: connected (%s, peer %s%s)", self.name, self.endpoint, peer, dn)
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
        tasks = [t for t in (self._task, *self._handshakes) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.conn is not None and self.conn.transport is not None:
            self.conn.transport.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            if self.endpoint.kind == "unix":
                with contextlib.suppress(OSError):
                    os.unlink(self.endpoint.address)
        refused = self.refused_busy + self.refused_tls + self.refused_authz
        if refused:
            log.info("%s: refused %d connections (%d while connected, %d TLS handshake, "
                     "%d tls-authz)", self.name, refused, self.refused_busy,
                     self.refused_tls, self.refused_authz)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"{exc.reason}: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        return str(exc.strerror or exc)
    return str(exc)


def _unix_listener(path: str, gid: int | None) -> socket.socket:
    """A listening unix socket created mode 0600 (0660 owned by ``gid``)."""
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)  # the socket file never exists with a wider mode
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        if gid is not None:
            os.chown(path, -1, gid)
            os.chmod(path, 0o660)
        sock.listen(16)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


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
