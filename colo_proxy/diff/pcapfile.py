"""A small reader for pcap and pcapng files (no dissection, no third-party code).

``read(path)`` returns every record as ``(timestamp, data, wire_length, linktype)`` and
tells a file that is cut short (it ends inside a record) from one that is corrupt.
Formats: pcap (microsecond and nanosecond, either byte order) and pcapng (section
header, interface description with ``if_tsresol``, enhanced, simple and obsolete
packet blocks; other blocks are skipped), after the IETF pcapng draft.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D
_IDB, _PB, _SPB, _EPB = 1, 2, 3, 6
_OPT_TSRESOL = 9
MAX_RECORD = 1 << 26
"""A record longer than this is taken as corruption, not data (64 MiB)."""


class FormatError(Exception):
    """Not a pcap/pcapng file, or a corrupt one; the message names what is wrong."""


@dataclass(frozen=True)
class Record:
    time: float
    """Seconds since the epoch."""
    data: bytes
    wire_length: int
    linktype: int


@dataclass
class PcapFile:
    format: str
    """"pcap" or "pcapng"."""
    records: list[Record] = field(default_factory=list)
    cut_short: int | None = None
    """Byte offset at which the file ends inside a record (None: the file is complete)."""


def read(path: str) -> PcapFile:
    """Read ``path``; raises OSError (cannot read) or FormatError."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 4:
        raise FormatError("not a pcap or pcapng capture (file too short for a header)")
    magic_le = struct.unpack_from("<I", blob)[0]
    magic_be = struct.unpack_from(">I", blob)[0]
    if magic_le == PCAPNG_SHB:
        return _pcapng(blob)
    for order, magic in (("<", magic_le), (">", magic_be)):
        if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            return _pcap(blob, order, 1e9 if magic == PCAP_MAGIC_NS else 1e6)
    raise FormatError("not a pcap or pcapng capture")


def _pcap(blob: bytes, order: str, resolution: float) -> PcapFile:
    out = PcapFile("pcap")
    if len(blob) < 24:
        out.cut_short = len(blob)
        return out
    linktype = struct.unpack_from(order + "I", blob, 20)[0] & 0xFFFF
    record = struct.Struct(order + "IIII")
    pos = 24
    while pos < len(blob):
        if pos + 16 > len(blob):
            out.cut_short = len(blob)
            break
        sec, frac, caplen, wirelen = record.unpack_from(blob, pos)
        if caplen > MAX_RECORD:
            raise FormatError(f"corrupt record at byte {pos} (length {caplen}) "
                              f"after frame {len(out.records)}")
        start = pos + 16
        if start + caplen > len(blob):
            out.cut_short = len(blob)
            break
        out.records.append(Record(sec + frac / resolution, blob[start:start + caplen],
                                  wirelen, linktype))
        pos = start + caplen
    return out


@dataclass
class _Interface:
    linktype: int
    snaplen: int
    resolution: float = 1e6


def _tsresol(options: bytes, order: str) -> float:
    pos = 0
    while pos + 4 <= len(options):
        code, length = struct.unpack_from(order + "HH", options, pos)
        if code == 0:
            break
        value = options[pos + 4:pos + 4 + length]
        if code == _OPT_TSRESOL and length >= 1:
            v = value[0]
            return float(2 ** (v & 0x7F)) if v & 0x80 else float(10 ** v)
        pos += 4 + ((length + 3) & ~3)
    return 1e6


def _pcapng(blob: bytes) -> PcapFile:
    out = PcapFile("pcapng")
    order = "<"
    interfaces: list[_Interface] = []
    pos = 0
    while pos < len(blob):
        if pos + 12 > len(blob):
            out.cut_short = len(blob)
            break
        btype = struct.unpack_from(order + "I", blob, pos)[0]
        if btype == PCAPNG_SHB or pos == 0:
            bom = blob[pos + 8:pos + 12]
            if bom == struct.pack("<I", PCAPNG_BOM):
                order = "<"
            elif bom == struct.pack(">I", PCAPNG_BOM):
                order = ">"
            else:
                raise FormatError("not a pcap or pcapng capture (bad byte-order magic)")
            interfaces = []
        length = struct.unpack_from(order + "I", blob, pos + 4)[0]
        if length < 12 or length % 4 or length > MAX_RECORD:
            raise FormatError(f"corrupt block at byte {pos} (length {length}) "
                              f"after frame {len(out.records)}")
        if pos + length > len(blob):
            out.cut_short = len(blob)
            break
        body = blob[pos + 8:pos + length - 4]
        if struct.unpack_from(order + "I", blob, pos + length - 4)[0] != length:
            raise FormatError(f"corrupt block at byte {pos} (trailing length differs) "
                              f"after frame {len(out.records)}")
        pos += length
        if btype == _IDB and len(body) >= 8:
            linktype, _, snaplen = struct.unpack_from(order + "HHI", body)
            interfaces.append(_Interface(linktype, snaplen, _tsresol(body[8:], order)))
            continue
        record = _packet(btype, body, order, interfaces)
        if record is _CORRUPT:
            raise FormatError(f"corrupt packet block at byte {pos - length} "
                              f"after frame {len(out.records)}")
        if record is not None:
            out.records.append(record)
    return out


_CORRUPT = Record(0.0, b"", 0, -1)


def _packet(btype: int, body: bytes, order: str,
            interfaces: list[_Interface]) -> Record | None:
    """The record of a packet block; None for other blocks, ``_CORRUPT`` if corrupt."""
    if btype == _EPB:
        if len(body) < 20:
            return _CORRUPT
        iface, high, low, caplen, wirelen = struct.unpack_from(order + "IIIII", body)
        data_at = 20
    elif btype == _PB:
        if len(body) < 20:
            return _CORRUPT
        iface, _drops, high, low, caplen, wirelen = struct.unpack_from(order + "HHIIII", body)
        data_at = 20
    elif btype == _SPB:
        if len(body) < 4 or not interfaces:
            return _CORRUPT
        iface, high, low = 0, 0, 0
        wirelen = struct.unpack_from(order + "I", body)[0]
        snap = interfaces[0].snaplen
        caplen = min(wirelen, snap) if snap else wirelen
        data_at = 4
    else:
        return None
    if iface >= len(interfaces) or data_at + caplen > len(body):
        return _CORRUPT
    info = interfaces[iface]
    time = ((high << 32) | low) / info.resolution
    return Record(time, body[data_at:data_at + caplen], wirelen, info.linktype)
