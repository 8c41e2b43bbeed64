"""QEMU chardev framing codec: round trips over arbitrary chunking and each error case."""

from __future__ import annotations

import itertools
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from colo_proxy.qemu.framing import (
    NET_BUFSIZE,
    ErrorKind,
    FrameDecoder,
    FramingError,
    QemuFrame,
    encode,
)

payloads = st.lists(st.binary(min_size=1, max_size=300), min_size=0, max_size=20)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def test_encode_layout_without_vnet() -> None:
    assert encode(b"abc", None) == b"\x00\x00\x00\x03abc"


def test_encode_layout_with_vnet() -> None:
    hdr = bytes(12)
    assert encode(hdr + b"xy", 12) == b"\x00\x00\x00\x0e\x00\x00\x00\x0c" + hdr + b"xy"


@settings(max_examples=200, deadline=None)
@given(frames=payloads, cuts=st.lists(st.integers(min_value=0), max_size=40),
       vnet=st.booleans())
def test_arbitrary_chunking_decodes_identically(frames: list[bytes], cuts: list[int],
                                                vnet: bool) -> None:
    vlens = [min(len(p), 12) if vnet else 0 for p in frames]
    stream = b"".join(encode(p, v if vnet else None) for p, v in zip(frames, vlens, strict=True))
    dec = FrameDecoder(vnet_hdr=vnet)
    got: list[QemuFrame] = []
    for chunk in _chunks(stream, cuts):
        got.extend(dec.feed(chunk))
    assert got == [QemuFrame(p, v) for p, v in zip(frames, vlens, strict=True)]
    assert dec.errors == []
    assert dec.pending == 0
    assert dec.at_eof() is None
    assert dec.frames == len(frames)


def test_byte_by_byte() -> None:
    stream = encode(b"hello", None) + encode(b"world!", None)
    dec = FrameDecoder(vnet_hdr=False)
    got = [f for b in stream for f in dec.feed(bytes([b]))]
    assert got == [QemuFrame(b"hello", 0), QemuFrame(b"world!", 0)]


def test_empty_frame_is_skipped_and_counted() -> None:
    seen: list[FramingError] = []
    dec = FrameDecoder(vnet_hdr=False, on_error=seen.append)
    got = dec.feed(encode(b"a", None) + struct.pack(">I", 0) + encode(b"b", None))
    assert got == [QemuFrame(b"a", 0), QemuFrame(b"b", 0)]
    assert dec.counts == {ErrorKind.EMPTY: 1}
    assert len(seen) == 1
    assert seen[0].kind is ErrorKind.EMPTY
    assert seen[0].offset == 5
    assert not seen[0].fatal
    assert dec.fatal is None


def test_empty_frame_with_vnet_word_is_skipped() -> None:
    dec = FrameDecoder(vnet_hdr=True)
    got = dec.feed(struct.pack(">II", 0, 0) + encode(b"\0\0x", 2))
    assert got == [QemuFrame(b"\0\0x", 2)]
    assert dec.counts == {ErrorKind.EMPTY: 1}


def test_vnet_hdr_longer_than_frame_skips_only_that_frame() -> None:
    dec = FrameDecoder(vnet_hdr=True)
    got = dec.feed(struct.pack(">II", 3, 12) + b"abc" + encode(bytes(12) + b"ok", 12))
    assert got == [QemuFrame(bytes(12) + b"ok", 12)]
    assert dec.counts == {ErrorKind.VNET_HDR_TOO_LONG: 1}
    assert "vnet_hdr_len 12 exceeds frame length 3" in str(dec.errors[0])


def test_oversize_is_fatal_and_stream_is_ignored_afterwards() -> None:
    dec = FrameDecoder(vnet_hdr=False)
    good = encode(b"first", None)
    got = dec.feed(good + struct.pack(">I", NET_BUFSIZE + 1) + b"junk")
    assert got == [QemuFrame(b"first", 0)]
    assert dec.fatal is not None
    assert dec.fatal.kind is ErrorKind.OVERSIZE
    assert dec.fatal.fatal
    assert dec.fatal.offset == len(good)
    assert "oversized frame" in str(dec.fatal)
    assert dec.feed(encode(b"later", None)) == []
    assert dec.at_eof() is None


def test_max_len_is_inclusive() -> None:
    dec = FrameDecoder(vnet_hdr=False, max_len=8)
    assert dec.feed(encode(b"12345678", None)) == [QemuFrame(b"12345678", 0)]
    assert dec.feed(encode(b"123456789", None)) == []
    assert dec.counts == {ErrorKind.OVERSIZE: 1}


def test_oversize_detected_from_header_alone() -> None:
    dec = FrameDecoder(vnet_hdr=False)
    assert dec.feed(struct.pack(">I", 70000)) == []
    assert dec.fatal is not None


def test_truncated_trailing_frame_reported_at_eof() -> None:
    dec = FrameDecoder(vnet_hdr=False)
    assert dec.feed(encode(b"whole", None) + encode(b"partial", None)[:-3]) == [
        QemuFrame(b"whole", 0)]
    err = dec.at_eof()
    assert err is not None
    assert err.kind is ErrorKind.TRUNCATED
    assert "4 of 7 payload bytes" in str(err)
    assert dec.counts == {ErrorKind.TRUNCATED: 1}
    assert dec.at_eof() is None


def test_truncated_inside_header() -> None:
    dec = FrameDecoder(vnet_hdr=True)
    dec.feed(b"\x00\x00\x00\x05\x00")
    err = dec.close()
    assert err is not None
    assert "inside a frame header (5 of 8 bytes)" in str(err)


@settings(max_examples=100, deadline=None)
@given(frames=payloads, bad_at=st.integers(min_value=0, max_value=20),
       cuts=st.lists(st.integers(min_value=0), max_size=20))
def test_empty_frames_anywhere_never_desync(frames: list[bytes], bad_at: int,
                                            cuts: list[int]) -> None:
    pos = min(bad_at, len(frames))
    parts = [encode(p, None) for p in frames]
    parts.insert(pos, struct.pack(">I", 0))
    dec = FrameDecoder(vnet_hdr=False)
    got = [f for chunk in _chunks(b"".join(parts), cuts) for f in dec.feed(chunk)]
    assert [f.payload for f in got] == frames
    assert dec.counts == {ErrorKind.EMPTY: 1}
