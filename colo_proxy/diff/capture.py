"""Read a pcap or pcapng capture of Ethernet frames into memory.

Uses our own reader (:mod:`.pcapfile`).  Every problem with the file becomes an
InputError naming the file: missing, unreadable, not a capture, not Ethernet, empty,
cut short before its first frame.  A file cut short later is read up to its last
complete frame and says so (``Capture.cut_short``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import InputError
from . import pcapfile

LINKTYPE_ETHERNET = 1
_LINKTYPE_NAMES = {
    0: "BSD loopback", 101: "raw IP", 12: "raw IP", 14: "raw IP", 113: "Linux cooked (SLL)",
    276: "Linux cooked v2 (SLL2)", 127: "802.11 radiotap", 105: "802.11", 228: "raw IPv4",
    229: "raw IPv6", 9: "PPP", 50: "PPP-HDLC",
}


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
    cut_short: int | None = None
    """Byte offset where the file ends inside a record (None: complete); the frames are
    those before it."""

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
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    if os.path.isdir(path):
        raise InputError(f"{path}: is a directory, not a capture")
    try:
        parsed = pcapfile.read(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except pcapfile.FormatError as exc:
        raise InputError(f"{path}: {exc}") from None
    for record in parsed.records:
        if record.linktype != LINKTYPE_ETHERNET:
            what = "interface" if parsed.format == "pcapng" else "capture"
            raise InputError(f"{path}: {linktype_name(record.linktype)} {what}; "
                             "colo-proxy diff needs Ethernet frames (link type 1)")
    if not parsed.records:
        if parsed.cut_short is not None:
            raise InputError(f"{path}: capture is cut short: the file ends "
                             f"(at byte {parsed.cut_short}) before its first complete frame")
        raise InputError(f"{path}: capture is empty (no frames)")
    start = min(r.time for r in parsed.records)
    return Capture(
        path=path,
        format=parsed.format,
        start=start,
        frames=[Frame(i + 1, (r.time - start) * 1000.0, r.data, r.wire_length > len(r.data))
                for i, r in enumerate(parsed.records)],
        cut_short=parsed.cut_short,
    )
