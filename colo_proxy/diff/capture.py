"""Read a pcap or pcapng capture of Ethernet frames into memory.

Uses scapy's raw readers (no dissection).  Every problem with the file becomes an
InputError naming the file: missing, unreadable, not a capture, not Ethernet, empty.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from ..errors import InputError

LINKTYPE_ETHERNET = 1
_LINKTYPE_NAMES = {
    0: "BSD loopback", 101: "raw IP", 12: "raw IP", 14: "raw IP", 113: "Linux cooked (SLL)",
    276: "Linux cooked v2 (SLL2)", 127: "802.11 radiotap", 105: "802.11", 228: "raw IPv4",
    229: "raw IPv6", 9: "PPP", 50: "PPP-HDLC",
}
_MAX_FRAME = 1 << 18  # larger than any GSO/GRO super-frame tcpdump can record


@dataclass(frozen=True)
class Frame:
    """One captured frame; ``time_ms`` is relative to the capture's earliest frame."""

    index: int
    """1-based frame number, as Wireshark and tcpdump -r count."""
    time_ms: float
    data: bytes
    truncated: bool


@dataclass
class Capture:
    path: str
    format: str
    """"pcap" or "pcapng"."""
    start: float
    """Absolute timestamp (seconds since the epoch) of the earliest frame."""
    frames: list[Frame]

    @property
    def duration_ms(self) -> float:
        return self.frames[-1].time_ms if self.frames else 0.0

    @property
    def truncated(self) -> int:
        return sum(1 for f in self.frames if f.truncated)


def linktype_name(linktype: int) -> str:
    return _LINKTYPE_NAMES.get(linktype, f"link type {linktype}")


def read_capture(path: str) -> Capture:
    """Load every frame of ``path``; raise InputError if it is not a usable capture."""
    from scapy.error import Scapy_Exception
    from scapy.utils import RawPcapNgReader, RawPcapReader

    logging.getLogger("scapy").setLevel(logging.CRITICAL)  # one line per error, ours
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    if os.path.isdir(path):
        raise InputError(f"{path}: is a directory, not a capture")
    try:
        reader: Any = RawPcapReader(path)
    except Scapy_Exception:
        raise InputError(f"{path}: not a pcap or pcapng capture") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (EOFError, ValueError):
        raise InputError(f"{path}: not a pcap or pcapng capture (truncated header)") from None
    pcapng = isinstance(reader, RawPcapNgReader)
    try:
        if not pcapng and reader.linktype != LINKTYPE_ETHERNET:
            raise InputError(f"{path}: {linktype_name(reader.linktype)} capture; "
                             "colo-proxy diff needs Ethernet frames (link type 1)")
        frames = _read_frames(path, reader, pcapng)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    finally:
        reader.close()
    if not frames:
        raise InputError(f"{path}: capture is empty (no frames)")
    start = min(ts for ts, _, _ in frames)
    return Capture(
        path=path,
        format="pcapng" if pcapng else "pcap",
        start=start,
        frames=[Frame(i + 1, (ts - start) * 1000.0, data, trunc)
                for i, (ts, data, trunc) in enumerate(frames)],
    )


def _read_frames(path: str, reader: Any, pcapng: bool) -> list[tuple[float, bytes, bool]]:
    out: list[tuple[float, bytes, bool]] = []
    nano = bool(getattr(reader, "nano", False))
    while True:
        try:
            record = reader._read_packet(size=_MAX_FRAME)
        except EOFError:
            break
        except Exception as exc:  # scapy raises a variety of things on corrupt records
            raise InputError(f"{path}: corrupt capture after frame {len(out)}: {exc}") from None
        if record is None:
            break
        data, meta = record
        if pcapng:
            if meta.linktype != LINKTYPE_ETHERNET:
                raise InputError(f"{path}: {linktype_name(meta.linktype)} interface; "
                                 "colo-proxy diff needs Ethernet frames (link type 1)")
            ts = ((meta.tshigh << 32) | meta.tslow) / float(meta.tsresol)
        else:
            ts = meta.sec + meta.usec / (1e9 if nano else 1e6)
        out.append((ts, bytes(data), meta.wirelen > len(data)))
    return out
