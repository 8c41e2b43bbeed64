"""Our pcap/pcapng reader against files written by scapy's writers (and cut by hand)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet
from scapy.utils import PcapNgWriter, PcapWriter

from colo_proxy.diff import pcapfile


def packets(n: int = 5) -> list[Packet]:
    out = []
    for i in range(n):
        p = Ether() / IP(dst="10.0.0.1") / UDP(dport=1000 + i) / (b"p" * (10 + i))
        p.time = 1700000000 + i * 0.25 + 0.000123
        out.append(p)
    return out


def write(path: Path, pkts: list[Packet], fmt: str, **kw: object) -> None:
    writer = PcapNgWriter(str(path)) if fmt == "pcapng" else PcapWriter(str(path), **kw)
    for p in pkts:
        writer.write(p)
    writer.close()


@pytest.mark.parametrize(("fmt", "kw"), [("pcap", {}), ("pcap", {"nano": True}),
                                         ("pcap", {"endianness": ">"}), ("pcapng", {})])
def test_reads_what_scapy_writes(tmp_path: Path, fmt: str, kw: dict[str, object]) -> None:
    path = tmp_path / f"x.{fmt}"
    pkts = packets()
    write(path, pkts, fmt, **kw)
    got = pcapfile.read(str(path))
    assert got.format == fmt
    assert got.cut_short is None
    assert [r.data for r in got.records] == [bytes(p) for p in pkts]
    assert [r.linktype for r in got.records] == [1] * len(pkts)
    assert [r.wire_length for r in got.records] == [len(bytes(p)) for p in pkts]
    for r, p in zip(got.records, pkts, strict=True):
        assert r.time == pytest.approx(float(p.time), abs=2e-6)


def test_snaplen_keeps_the_wire_length(tmp_path: Path) -> None:
    path = tmp_path / "snap.pcap"  # as tcpdump -s 30 writes it
    blob = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 30, 1)
    for p in packets(2):
        frame = bytes(p)
        blob += struct.pack("<IIII", 1700000000, 5, 30, len(frame)) + frame[:30]
    path.write_bytes(blob)
    got = pcapfile.read(str(path))
    assert [len(r.data) for r in got.records] == [30, 30]
    assert all(r.wire_length > 30 for r in got.records)


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_cut_short_anywhere_keeps_the_complete_records(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"x.{fmt}"
    pkts = packets()
    write(path, pkts, fmt)
    whole = path.read_bytes()
    full = pcapfile.read(str(path))
    seen = set()
    for size in range(len(whole) - 1, 0, -1):
        path.write_bytes(whole[:size])
        try:
            got = pcapfile.read(str(path))
        except pcapfile.FormatError as exc:  # only a cut inside the very first bytes
            assert size < 28 and "not a pcap" in str(exc)
            continue
        assert got.records == full.records[:len(got.records)]
        if got.cut_short is None:  # cut exactly at a record boundary
            continue
        assert got.cut_short == size
        seen.add(len(got.records))
    assert seen == set(range(len(pkts)))


def test_pcapng_timestamp_resolution_and_big_endian(tmp_path: Path) -> None:
    # Hand-made big-endian pcapng: SHB, IDB with if_tsresol = 10^-9, one EPB.
    def block(btype: int, body: bytes) -> bytes:
        length = 12 + len(body)
        return struct.pack(">II", btype, length) + body + struct.pack(">I", length)

    shb = block(0x0A0D0D0A, struct.pack(">IHHq", 0x1A2B3C4D, 1, 0, -1))
    opts = struct.pack(">HHB3x", 9, 1, 9) + struct.pack(">HH", 0, 0)
    idb = block(1, struct.pack(">HHI", 1, 0, 0) + opts)
    frame = bytes(packets(1)[0])
    ts = 1_700_000_000_123_456_789
    pad = b"\0" * (-len(frame) % 4)
    epb = block(6, struct.pack(">IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(frame), len(frame))
                + frame + pad)
    path = tmp_path / "be.pcapng"
    path.write_bytes(shb + idb + epb)
    [record] = pcapfile.read(str(path)).records
    assert record.data == frame
    assert record.time == pytest.approx(1_700_000_000.123456789, abs=1e-6)


def test_corrupt_lengths_are_format_errors(tmp_path: Path) -> None:
    path = tmp_path / "x.pcap"
    write(path, packets(2), "pcap")
    blob = bytearray(path.read_bytes())
    struct.pack_into("<I", blob, 24 + 8, 0x7FFFFFFF)  # incl_len of record 1
    path.write_bytes(bytes(blob))
    with pytest.raises(pcapfile.FormatError, match="corrupt record"):
        pcapfile.read(str(path))
    ng = tmp_path / "x.pcapng"
    write(ng, packets(2), "pcapng")
    blob = bytearray(ng.read_bytes())
    struct.pack_into("<I", blob, 4, 13)  # SHB length not a multiple of 4
    ng.write_bytes(bytes(blob))
    with pytest.raises(pcapfile.FormatError, match="corrupt block"):
        pcapfile.read(str(ng))


def test_not_a_capture(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_bytes(b"hello world, not a capture")
    with pytest.raises(pcapfile.FormatError, match="not a pcap or pcapng"):
        pcapfile.read(str(path))
