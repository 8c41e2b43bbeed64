"""QEMU chardev framing, as spoken by filter-mirror, filter-redirector and colo-compare.

Every frame on a QEMU socket chardev is::

    u32 BE  L              payload length (not counting these words)
    u32 BE  vnet_hdr_len   only when vnet_hdr_support=on on this endpoint
    L bytes payload        = [virtio-net header (vnet_hdr_len bytes)] + Ethernet frame

There is no magic number, checksum or sequence number: the length word is the
only synchronisation.  Consequently a corrupt or oversized length cannot be
recovered from -- any byte position could be the start of the next frame, and
an Ethernet payload can contain anything that looks like a plausible length.
The decoder therefore treats ``L > max_len`` as a fatal stream error (QEMU
does the same: it drops the input handler with "oversized packet received,
connection terminated") and ignores all further input on that stream.

Errors that leave the stream in sync are per-frame: an ``L = 0`` frame is
skipped (QEMU 7.2 aborts on one) and a frame whose ``vnet_hdr_len`` exceeds
``L`` is skipped; both are counted and the decoder carries on with the next
length word.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from typing import NamedTuple

from ..errors import ColoError

NET_BUFSIZE = 4096 + 65536
"""QEMU's largest accepted frame payload (net/net.h NET_BUFSIZE)."""

_U32 = struct.Struct(">I")
_U32X2 = struct.Struct(">II")
_pack_u32 = _U32.pack
_pack_u32x2 = _U32X2.pack
_unpack_u32 = _U32.unpack_from
_unpack_u32x2 = _U32X2.unpack_from

MAX_ERRORS_KEPT = 64
"""How many FramingError objects ``FrameDecoder.errors`` keeps (counts are unbounded)."""


class QemuFrame(NamedTuple):
    """One decoded frame: ``payload`` still includes the vnet header bytes."""

    payload: bytes
    vnet_hdr_len: int


class ErrorKind(enum.StrEnum):
    EMPTY = "empty-frame"
    """L = 0: skipped (QEMU would abort on it)."""
    VNET_HDR_TOO_LONG = "vnet-hdr-too-long"
    """vnet_hdr_len > L: the frame is skipped, the stream stays in sync."""
    OVERSIZE = "oversize"
    """L > max_len: fatal, the stream cannot be resynchronised."""
    TRUNCATED = "truncated"
    """The stream ended in the middle of a frame."""


class FramingError(ColoError):
    """A bad frame on a QEMU chardev stream."""

    def __init__(self, kind: ErrorKind, offset: int, message: str, fatal: bool) -> None:
        super().__init__(message)
        self.kind = kind
        self.offset = offset
        """Stream offset of the frame's length word."""
        self.fatal = fatal


def encode(payload: bytes, vnet_hdr_len: int | None) -> bytes:
    """Frame ``payload`` for a QEMU chardev.

    ``vnet_hdr_len`` is None for an endpoint without vnet_hdr_support, else the
    value of the vnet_hdr_len word (the header bytes must already be at the
    start of ``payload``).
    """
    if vnet_hdr_len is None:
        return _pack_u32(len(payload)) + payload
    return _pack_u32x2(len(payload), vnet_hdr_len) + payload


def header_size(vnet_hdr: bool) -> int:
    """Bytes of length words before each payload."""
    return 8 if vnet_hdr else 4


Payloads = tuple[list[bytes], list[int] | None]
"""``FrameDecoder.split``'s result: the payloads of the complete frames, and their
vnet_hdr_len words (None when the stream has no vnet_hdr_len words)."""


def header_packer(vnet_hdr: bool) -> Callable[[int], bytes]:
    """``pack(L)``: the length word(s) in front of an L-byte payload (vnet_hdr_len 0)."""
    if not vnet_hdr:
        return _pack_u32
    return lambda length: _pack_u32x2(length, 0)


class FrameDecoder:
    """Incremental decoder for one direction of one chardev stream.

    ``split`` (the fast interface) and ``feed`` accept arbitrary chunks (partial
    reads) and return the complete frames they finish: ``split`` as a list of
    payload bytes (plus the vnet_hdr_len words), ``feed`` as QemuFrame tuples.
    One call decodes every frame of the chunk with a cursor over it: a payload is
    one slice of the received bytes, and only an incomplete trailing frame is kept
    (and joined with the next chunks once they complete it).

    Bad frames are reported through ``errors`` (the last MAX_ERRORS_KEPT),
    ``counts`` (per kind) and the optional ``on_error`` callback; they never
    raise.  After a fatal error ``fatal`` is set and all further input is
    discarded.
    """

    def __init__(
        self,
        vnet_hdr: bool,
        max_len: int = NET_BUFSIZE,
        on_error: Callable[[FramingError], None] | None = None,
    ) -> None:
        self.vnet_hdr = vnet_hdr
        self.max_len = max_len
        self.on_error = on_error
        self.errors: list[FramingError] = []
        self.counts: dict[ErrorKind, int] = {}
        self.fatal: FramingError | None = None
        self.frames = 0
        self._hdr = header_size(vnet_hdr)
        self._tail: list[bytes] = []
        """Chunks holding an incomplete frame (the first one starts with its header)."""
        self._tail_len = 0
        self._need = 0
        """Bytes ``_tail`` must reach before the next frame can be decoded."""
        self._consumed = 0
        """Stream offset of the first byte of ``_tail`` (of the chunk being decoded)."""

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet form a complete frame."""
        return self._tail_len

    def feed(self, data: bytes | bytearray | memoryview) -> list[QemuFrame]:
        """Decode ``data``; the complete frames as QemuFrame tuples."""
        payloads, vlens = self.split(data)
        if vlens is None:
            return [QemuFrame(p, 0) for p in payloads]
        return [QemuFrame(p, v) for p, v in zip(payloads, vlens, strict=True)]

    def split(self, data: bytes | bytearray | memoryview) -> Payloads:
        """Decode ``data``; the payloads of the frames it completes (see ``Payloads``)."""
        vlens: list[int] | None = [] if self.vnet_hdr else None
        if self.fatal is not None:
            return [], vlens
        tail = self._tail
        if tail:
            tail.append(data if type(data) is bytes else bytes(data))
            self._tail_len += len(data)
            if self._tail_len < self._need:
                return [], vlens
            buf = b"".join(tail)
            tail.clear()
            self._tail_len = 0
        else:
            buf = data if type(data) is bytes else bytes(data)
        size = len(buf)
        pos = 0
        out: list[bytes] = []
        append = out.append
        max_len = self.max_len
        if vlens is None:
            unpack = _unpack_u32
            while size - pos >= 4:
                (length,) = unpack(buf, pos)
                end = pos + 4 + length
                if end <= size and 0 < length <= max_len:
                    append(buf[pos + 4:end])
                    pos = end
                    continue
                if length > max_len:
                    return self._oversize(out, vlens, pos, length)
                if end > size:
                    break
                self._error(ErrorKind.EMPTY, pos, "empty frame (length 0) skipped", fatal=False)
                pos = end
        else:
            unpack2 = _unpack_u32x2
            append_vlen = vlens.append
            while size - pos >= 8:
                length, vlen = unpack2(buf, pos)
                end = pos + 8 + length
                if end <= size and 0 < length <= max_len and vlen <= length:
                    append(buf[pos + 8:end])
                    append_vlen(vlen)
                    pos = end
                    continue
                if length > max_len:
                    return self._oversize(out, vlens, pos, length)
                if end > size:
                    break
                if length == 0:
                    self._error(ErrorKind.EMPTY, pos, "empty frame (length 0) skipped",
                                fatal=False)
                else:
                    self._error(ErrorKind.VNET_HDR_TOO_LONG, pos,
                                f"vnet_hdr_len {vlen} exceeds frame length {length}; "
                                "frame skipped", fatal=False)
                pos = end
        self._consumed += pos
        if pos < size:
            rest = buf[pos:]
            tail.append(rest)
            self._tail_len = len(rest)
            hdr = self._hdr
            self._need = hdr + _unpack_u32(rest)[0] if len(rest) >= hdr else hdr
        self.frames += len(out)
        return out, vlens

    def _oversize(self, out: list[bytes], vlens: list[int] | None, pos: int,
                  length: int) -> Payloads:
        self._error(ErrorKind.OVERSIZE, pos,
                    f"oversized frame: length word {length} > {self.max_len} bytes; the "
                    "length word is the only synchronisation, so the rest of the "
                    "stream is ignored", fatal=True)
        self._tail.clear()
        self._tail_len = 0
        self.frames += len(out)
        return out, vlens

    def at_eof(self) -> FramingError | None:
        """The peer closed the stream: report (and record) a truncated trailing frame."""
        if self.fatal is not None or not self._tail_len:
            return None
        buf = b"".join(self._tail)
        have = len(buf)
        if have < self._hdr:
            message = f"stream ended inside a frame header ({have} of {self._hdr} bytes)"
        else:
            (length,) = _unpack_u32(buf, 0)
            message = (f"stream ended inside a frame ({have - self._hdr} of {length} "
                       "payload bytes)")
        err = self._error(ErrorKind.TRUNCATED, 0, message, fatal=False)
        self._consumed += have
        self._tail.clear()
        self._tail_len = 0
        return err

    close = at_eof

    def _error(self, kind: ErrorKind, pos: int, message: str, fatal: bool) -> FramingError:
        offset = self._consumed + pos
        err = FramingError(kind, offset, f"{message} (stream offset {offset})", fatal)
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if len(self.errors) >= MAX_ERRORS_KEPT:
            del self.errors[0]
        self.errors.append(err)
        if fatal:
            self.fatal = err
        if self.on_error is not None:
            self.on_error(err)
        return err
