"""FrameDecoder.split (the datapath's decoder): same frames and errors as feed, any chunking."""

from __future__ import annotations

import itertools
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from colo_proxy.datapath.heap import tune_heap
from colo_proxy.qemu.framing import ErrorKind, FrameDecoder, encode, header_packer

# A stream item: a good payload, or a bad frame (empty, or vnet_hdr_len > L when vnet).
items = st.lists(st.one_of(st.binary(min_size=1, max_size=300), st.just(None)), max_size=25)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def _stream(frames: list[bytes | None], vnet: bool) -> tuple[bytes, list[int], list[int]]:
    """The framed stream, the vnet_hdr_len words of its good frames, the bad frames' offsets."""
    parts: list[bytes] = []
    vlens: list[int] = []
    bad: list[int] = []
    offset = 0
    for payload in frames:
        if payload is None:
            bad.append(offset)
            part = struct.pack(">II", 3, 9) + b"abc" if vnet else struct.pack(">I", 0)
        else:
            vlen = min(len(payload), 10) if vnet else 0
            vlens.append(vlen)
            part = encode(payload, vlen if vnet else None)
        parts.append(part)
        offset += len(part)
    return b"".join(parts), vlens, bad


@settings(max_examples=300, deadline=None)
@given(frames=items, cuts=st.lists(st.integers(min_value=0), max_size=40), vnet=st.booleans())
def test_split_decodes_every_chunking_with_stream_offsets(frames: list[bytes | None],
                                                          cuts: list[int], vnet: bool) -> None:
    stream, vlens, bad = _stream(frames, vnet)
    dec = FrameDecoder(vnet_hdr=vnet)
    got: list[bytes] = []
    got_vlens: list[int] = []
    for chunk in _chunks(stream, cuts):
        payloads, words = dec.split(chunk)
        assert all(type(p) is bytes for p in payloads)
        got += payloads
        if vnet:
            assert words is not None and len(words) == len(payloads)
            got_vlens += words
        else:
            assert words is None
    assert got == [p for p in frames if p is not None]
    if vnet:
        assert got_vlens == vlens
    assert [e.offset for e in dec.errors] == bad
    kind = ErrorKind.VNET_HDR_TOO_LONG if vnet else ErrorKind.EMPTY
    assert dec.counts == ({kind: len(bad)} if bad else {})
    assert dec.frames == len(got)
    assert dec.pending == 0


def test_large_frame_in_small_chunks_waits_for_its_last_byte() -> None:
    big = bytes(range(256)) * 256  # 65536 bytes
    stream = encode(big, None) + encode(b"next", None)
    dec = FrameDecoder(vnet_hdr=False)
    end = 4 + len(big)
    for start in range(0, end - 1, 1000):
        stop = min(start + 1000, end - 1)
        assert dec.split(stream[start:stop]) == ([], None)
        assert dec.pending == stop
    assert dec.split(stream[end - 1:]) == ([big, b"next"], None)
    assert dec.pending == 0


def test_split_across_the_vnet_hdr_len_word() -> None:
    frame = bytes(12) + b"payload"
    stream = encode(frame, 12) * 2
    dec = FrameDecoder(vnet_hdr=True)
    assert dec.split(stream[:6]) == ([], [])  # inside the second length word
    assert dec.split(stream[6:len(stream) - 3]) == ([frame], [12])
    assert dec.split(stream[len(stream) - 3:]) == ([frame], [12])


def test_bytearray_and_memoryview_chunks_give_bytes_payloads() -> None:
    stream = encode(b"one", None) + encode(b"two", None)
    dec = FrameDecoder(vnet_hdr=False)
    first, _ = dec.split(bytearray(stream[:9]))
    second, _ = dec.split(memoryview(stream)[9:])
    assert first + second == [b"one", b"two"]
    assert all(type(p) is bytes for p in first + second)


def test_header_packer_matches_encode() -> None:
    assert header_packer(False)(5) + b"hello" == encode(b"hello", None)
    assert header_packer(True)(5) + b"hello" == encode(b"hello", 0)


def test_tune_heap_applies_on_glibc() -> None:
    assert tune_heap() is True  # Debian: glibc's mallopt accepts both thresholds
