"""Client-side drivers for anything that speaks colo-compare's sockets.

The same code drives QEMU's colo-compare and ``colo-proxy run
qemu-socket``: frames go in on primary_in / secondary_in, released frames are read
back from outdev, checkpoint requests from notify_dev.

* ``OutdevReader`` / ``NotifyReader``: collect decoded frames or messages with a
  deadline (used by the tests to wait for an expected outcome).
* ``pipelined``: a throughput driver with a bounded number of pairs in flight
  (colo-compare drops frames beyond max_queue_size, so an unbounded sender would
  measure losses, not throughput).
"""

from __future__ import annotations

import selectors
import socket
import time

from colo_proxy.errors import ColoError
from colo_proxy.qemu.framing import FrameDecoder, QemuFrame


class OutdevReader:
    """Reads framed frames from a connected socket (outdev or notify_dev)."""

    def __init__(self, sock: socket.socket, vnet_hdr: bool = False) -> None:
        self.sock = sock
        self.decoder = FrameDecoder(vnet_hdr)
        self.frames: list[QemuFrame] = []
        self.closed = False

    def _read(self, timeout: float) -> bool:
        self.sock.settimeout(max(timeout, 0.0001))
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return False
        if not data:
            self.closed = True
            return False
        self.frames.extend(self.decoder.feed(data))
        return True

    def wait_for(self, count: int, timeout: float) -> list[QemuFrame]:
        """Read until ``count`` frames in total have arrived or ``timeout`` s passed."""
        deadline = time.monotonic() + timeout
        while len(self.frames) < count and not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._read(left)
        return list(self.frames)

    def settle(self, quiet: float, limit: float = 10.0) -> list[QemuFrame]:
        """Read until nothing arrived for ``quiet`` s (at most ``limit`` s)."""
        deadline = time.monotonic() + limit
        while not self.closed and time.monotonic() < deadline:
            if not self._read(quiet):
                break
        return list(self.frames)

    def take(self) -> list[QemuFrame]:
        frames, self.frames = self.frames, []
        return frames


def pipelined(primary: socket.socket, secondary: socket.socket, outdev: socket.socket, *,
              p_batches: list[bytes], s_batches: list[bytes], batch: int, total: int,
              window: int = 256, vnet_out: bool = False, timeout: float = 60.0) -> int:
    """Send pre-framed batches of ``batch`` pairs, at most ``window`` pairs unreleased.

    Returns the number of frames read back from outdev (== ``total`` unless the
    target lost frames or ``timeout`` expired).
    """
    if window < batch:
        raise ColoError(f"window {window} smaller than batch {batch}")
    decoder = FrameDecoder(vnet_out)
    sel = selectors.DefaultSelector()
    outdev.setblocking(False)
    sel.register(outdev, selectors.EVENT_READ)
    primary.setblocking(True)
    secondary.setblocking(True)
    released = sent = 0
    nb = len(p_batches)
    i = 0
    deadline = time.monotonic() + timeout
    try:
        while released < total:
            while i < nb and sent - released <= window - batch:
                primary.sendall(p_batches[i])
                secondary.sendall(s_batches[i])
                sent += batch
                i += 1
            if not sel.select(timeout=0.5):
                if time.monotonic() > deadline:
                    break
                continue
            try:
                data = outdev.recv(1 << 20)
            except BlockingIOError:
                continue
            if not data:
                break
            released += len(decoder.feed(data))
    finally:
        sel.close()
        outdev.setblocking(True)
    return released
