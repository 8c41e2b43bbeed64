"""The diff report: per connection, what matched, where it first diverged, and every
checkpoint the proxy would have requested.  ``Report.as_dict`` is the ``--json``
schema documented in docs/diff.md."""

from __future__ import annotations

import difflib
import ipaddress
from dataclasses import dataclass, field

from ..compare.model import ConnKey, Divergence, DropReason, Reason, Side, format_key
from .context import Context, decode_context
from .hexdump import HexRow, hexdump_rows, window
from .replay import Checkpoint, ConnTally, ReplayResult
from .streams import Streams

SCHEMA_VERSION = 1
HEX_WIDTH = 8
ROWS_BEFORE = 1
WINDOW_BYTES = 72


@dataclass
class DivergenceReport:
    source: str
    """"engine" (from the checkpoint request) or "reassembly" (the streams differ but
    no request said where)."""
    reason: str | None
    time_ms: float | None
    engine_offset: int | None
    offset: int | None
    """Offset in the primary's reassembled stream (None if it could not be located)."""
    secondary_offset: int | None
    primary_bytes: bytes
    secondary_bytes: bytes
    rows: list[HexRow]
    primary_context: Context | None
    secondary_context: Context | None
    realigned: tuple[int, int] | None = None
    """(primary, secondary) stream offsets where the streams line up again after an
    insertion or deletion (the hexdump's later rows follow that alignment)."""

    def differing_offsets(self) -> list[int]:
        return [row.primary_offset + i for row in self.rows for i, d in enumerate(row.diff) if d]

    def as_dict(self) -> dict[str, object]:
        def hexwin(side: Side) -> str:
            cells: list[str] = []
            for row in self.rows:
                data = row.primary if side == Side.PRIMARY else row.secondary
                cells.extend("--" if b is None else f"{b:02x}" for b in data)
            return "".join(cells)

        return {
            "source": self.source,
            "reason": self.reason,
            "time_ms": _ms(self.time_ms),
            "engine_offset": self.engine_offset,
            "offset": self.offset,
            "secondary_offset": self.secondary_offset,
            "primary_bytes": self.primary_bytes.hex(),
            "secondary_bytes": self.secondary_bytes.hex(),
            "window": {
                "primary_offset": self.rows[0].primary_offset if self.rows else None,
                "secondary_offset": self.rows[0].secondary_offset if self.rows else None,
                "primary": hexwin(Side.PRIMARY),
                "secondary": hexwin(Side.SECONDARY),
                "differing_offsets": self.differing_offsets(),
            },
            "realigned": None if self.realigned is None else {
                "offset": self.realigned[0], "secondary_offset": self.realigned[1]},
            "context": {
                "primary": self.primary_context.as_dict() if self.primary_context else None,
                "secondary": self.secondary_context.as_dict() if self.secondary_context else None,
            },
        }


@dataclass
class ConnReport:
    key: ConnKey
    paired_from: ConnKey | None
    frames: list[int]
    bytes: list[int]
    matched_frames: int
    matched_bytes: int
    tally: ConnTally
    checkpoints: list[Checkpoint] = field(default_factory=list)
    first_divergence: DivergenceReport | None = None
    stream_first_difference: int | None = None
    latency_dependent: bool = False
    """The verdict differs at another modelled checkpoint latency: possibly an artefact
    of the replay rather than a difference of the VMs."""

    def verdict(self) -> list[str]:
        """Why the connection counts as diverged (empty: it matched).  Anything the
        proxy would not have passed through unharmed counts: a checkpoint (every
        divergence the engine finds on the connection is one, and ``first_divergence``
        exists only beside one: build_report), a timeout, a frame lost to the hard
        limits, a frame never decided."""
        why: list[str] = []
        if self.checkpoints:
            n = len(self.checkpoints)
            why.append(f"{n} checkpoint{'s' if n != 1 else ''}")
        timeouts = sum(1 for c in self.checkpoints if c.request.reason == Reason.TIMEOUT)
        if timeouts:
            why.append(f"{timeouts} timeout{'s' if timeouts != 1 else ''}")
        lost = self.tally.dropped.get(str(DropReason.OVERFLOW), 0)
        if lost:
            why.append(f"{lost} frame{'s' if lost != 1 else ''} dropped (overflow)")
        if self.tally.undecided:
            why.append(f"{self.tally.undecided} frames never decided")
        return why

    @property
    def diverged(self) -> bool:
        return bool(self.verdict())

    def as_dict(self) -> dict[str, object]:
        return {
            "connection": format_key(self.key),
            "key": key_dict(self.key),
            "paired_from": format_key(self.paired_from) if self.paired_from else None,
            "primary": {"frames": self.frames[0], "bytes": self.bytes[0]},
            "secondary": {"frames": self.frames[1], "bytes": self.bytes[1],
                          "covered_by_checkpoint": self.tally.covered,
                          "trimmed_at_checkpoint": self.tally.trimmed,
                          "resent_after_checkpoint": self.tally.resent},
            "matched": {"frames": self.matched_frames, "bytes": self.matched_bytes},
            "released": {"uncompared": self.tally.uncompared,
                         "checkpoint": self.tally.released_by_checkpoint},
            "dropped": dict(sorted(self.tally.dropped.items())),
            "never_decided": self.tally.undecided,
            "diverged": self.diverged,
            "verdict": self.verdict(),
            "latency_dependent": self.latency_dependent,
            "first_divergence": self.first_divergence.as_dict() if self.first_divergence else None,
            "stream_first_difference": self.stream_first_difference,
            "checkpoints": [checkpoint_dict(c) for c in self.checkpoints],
        }


@dataclass
class CaptureInfo:
    path: str
    format: str
    frames: int
    vm_frames: int
    start: float
    duration_ms: float
    truncated: int
    cut_short: int | None = None

    def as_dict(self) -> dict[str, object]:
        return {"path": self.path, "format": self.format, "frames": self.frames,
                "vm_output_frames": self.vm_frames, "first_frame_time": self.start,
                "duration_ms": _ms(self.duration_ms), "truncated_frames": self.truncated,
                "cut_short_at_byte": self.cut_short}


@dataclass
class Report:
    primary: CaptureInfo
    secondary: CaptureInfo
    vm: dict[str, object]
    config: dict[str, object]
    checkpoint_latency_ms: float
    align: str
    rewritten: int
    connections: list[ConnReport]
    checkpoints: list[Checkpoint]
    suppressed: int
    checkpoints_done: int
    counters: dict[str, object]
    still_held: int
    sensitivity: dict[float, int] = field(default_factory=dict)
    """Connections diverged at each modelled checkpoint latency (the chosen one first)."""

    def vm_addresses(self) -> list[str]:
        out: list[str] = []
        for name in ("ips", "macs"):
            value = self.vm.get(name)
            if isinstance(value, list):
                out.extend(str(v) for v in value)
        return out

    @property
    def diverged(self) -> bool:
        """The verdict (exit status 1): any connection diverged or any checkpoint."""
        return bool(self.checkpoints) or any(c.diverged for c in self.connections)

    def keyless(self) -> list[Checkpoint]:
        """Checkpoints not tied to a connection (limits that concern the whole engine)."""
        return [c for c in self.checkpoints if c.request.key is None]

    def reasons(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.checkpoints:
            out[str(c.request.reason)] = out.get(str(c.request.reason), 0) + 1
        return out

    def as_dict(self) -> dict[str, object]:
        return {
            "schema": SCHEMA_VERSION,
            "primary": self.primary.as_dict(),
            "secondary": self.secondary.as_dict(),
            "vm": self.vm,
            "replay": {"checkpoint_latency_ms": self.checkpoint_latency_ms,
                       "align": self.align,
                       "config": self.config, "secondary_frames_rewritten": self.rewritten},
            "summary": {
                "connections": len(self.connections),
                "connections_diverged": sum(1 for c in self.connections if c.diverged),
                "frames_matched": sum(c.matched_frames for c in self.connections),
                "bytes_matched": sum(c.matched_bytes for c in self.connections),
                "diverged": self.diverged,
                "checkpoints": len(self.checkpoints),
                "checkpoints_without_connection": len(self.keyless()),
                "checkpoints_by_reason": self.reasons(),
                "requests_suppressed": self.suppressed,
                "checkpoints_done": self.checkpoints_done,
                "secondary_frames_covered": sum(c.tally.covered for c in self.connections),
                "frames_never_decided": self.still_held,
                "secondary_frames_trimmed": sum(c.tally.trimmed for c in self.connections),
                "secondary_frames_resent": sum(c.tally.resent for c in self.connections),
                "connections_diverged_by_checkpoint_latency": {
                    f"{k:g}": v for k, v in self.sensitivity.items()},
                "connections_latency_dependent": sum(
                    1 for c in self.connections if c.latency_dependent),
            },
            "connections": [c.as_dict() for c in self.connections],
            "checkpoints": [checkpoint_dict(c) for c in self.checkpoints],
            "engine_counters": self.counters,
        }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def key_dict(key: ConnKey) -> dict[str, object]:
    ip = key.l3 in (4, 6)
    return {
        "vlan": key.vlan if key.vlan >= 0 else None,
        "l3": key.l3,
        "src": str(ipaddress.ip_address(key.src)) if ip and key.src else None,
        "dst": str(ipaddress.ip_address(key.dst)) if ip and key.dst else None,
        "proto": key.proto,
        "sport": key.sport,
        "dport": key.dport,
        "fragments": key.frag,
    }


def checkpoint_dict(c: Checkpoint) -> dict[str, object]:
    r = c.request
    trig = c.trigger
    return {
        "time_ms": _ms(c.time_ms),
        "engine_time_ms": _ms(r.time_ms),
        "done_ms": _ms(c.done_ms),
        "reason": str(r.reason),
        "connection": format_key(r.key) if r.key is not None else None,
        "detail": r.detail,
        "engine_offset": r.divergence.offset if r.divergence else None,
        "trigger": None if trig is None else {"side": str(trig.side), "frame": trig.index},
    }


def locate(data: bytes, needle: bytes, offset: int) -> int | None:
    """Where the engine's divergence bytes sit in a reassembled stream.

    The engine's offset is relative to the connection's last re-base point, so the
    bytes are at ``offset`` or later."""
    if not needle:
        return offset if 0 <= offset <= len(data) else None
    if data.startswith(needle, offset):
        return offset
    pos = data.find(needle, max(0, offset))
    return pos if pos >= 0 else None


def first_difference(a: bytes, b: bytes) -> int | None:
    n = min(len(a), len(b))
    for start in range(0, n, 4096):
        if a[start:start + 4096] != b[start:start + 4096]:
            for i in range(start, min(n, start + 4096)):
                if a[i] != b[i]:
                    return i
    return None if len(a) == len(b) else n


def build_divergence(key: ConnKey, streams: Streams, checkpoint: Checkpoint | None,
                     fallback_offset: int | None) -> DivergenceReport | None:
    """Hexdump and decoded context for the engine's divergence (or the streams' first
    difference when no request carried one)."""
    d: Divergence | None = checkpoint.request.divergence if checkpoint else None
    inc = checkpoint.incarnations if checkpoint else (0, 0)
    pstream = streams.get(key, Side.PRIMARY, inc[0] if inc[0] >= 0 else -1)
    sstream = streams.get(key, Side.SECONDARY, inc[1] if inc[1] >= 0 else -1)
    pdata, phave = pstream.assemble() if pstream else (b"", b"")
    sdata, shave = sstream.assemble() if sstream else (b"", b"")
    if d is not None:
        p_at = locate(pdata, d.primary, d.offset) if pstream else None
        s_at = locate(sdata, d.secondary, d.offset) if sstream else None
        if p_at is None and s_at is not None:
            p_at = s_at
        if s_at is None and p_at is not None and sstream:
            s_at = p_at
        source = "engine"
        assert checkpoint is not None
        reason: str | None = str(checkpoint.request.reason)
        time: float | None = checkpoint.time_ms
        pbytes, sbytes = d.primary, d.secondary
    elif fallback_offset is not None:
        p_at = s_at = fallback_offset
        source, reason, time = "reassembly", None, None
        pbytes, sbytes = pdata[p_at:p_at + 64], sdata[s_at:s_at + 64]
    else:
        return None
    realigned = None
    if p_at is not None and s_at is not None:
        p_start = max(0, (p_at // HEX_WIDTH - ROWS_BEFORE) * HEX_WIDTH)
        s_start = s_at - (p_at - p_start)
        if s_start < 0:
            p_start, s_start = p_start - s_start, 0
        realigned = realignment(pdata, sdata, p_at, s_at)
        rows = _rows((pdata, phave), (sdata, shave), p_start, s_start - p_start,
                     realigned=realigned, p_at=p_at)
        pctx = decode_context(pdata, p_at, sdata, s_at, realigned)
        sctx = decode_context(sdata, s_at, pdata, p_at,
                              None if realigned is None else (realigned[1], realigned[0]))
    else:  # not TCP, or not reassembled: what the engine reported
        assert d is not None
        rows = hexdump_rows(list(d.primary), list(d.secondary), d.offset, d.offset, HEX_WIDTH)
        pctx = decode_context(d.primary, 0, d.secondary, 0)
        sctx = decode_context(d.secondary, 0, d.primary, 0)
    return DivergenceReport(source, reason, time, d.offset if d else None, p_at, s_at,
                            pbytes, sbytes, rows, pctx, sctx, realigned)


REALIGN_SEARCH = 256
"""Bytes after a divergence searched for the point where the streams line up again."""
REALIGN_RUN = 8
"""Equal bytes needed to call the streams lined up again."""


def realignment(pdata: bytes, sdata: bytes, p_at: int, s_at: int) -> tuple[int, int] | None:
    """Where the streams line up again after the divergence at (p_at, s_at), if one side
    holds bytes the other does not (an insertion): the first run of REALIGN_RUN equal
    bytes at another shift.  None for a same-length difference (or no run found)."""
    a = pdata[p_at:p_at + REALIGN_SEARCH]
    b = sdata[s_at:s_at + REALIGN_SEARCH]
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    for i, j, size in matcher.get_matching_blocks():
        if size >= REALIGN_RUN or (size and i + size == len(a) and j + size == len(b)):
            return None if i == j else (p_at + i, s_at + j)
    return None


def _rows(primary: tuple[bytes, bytes], secondary: tuple[bytes, bytes], p_start: int,
          shift: int, *, realigned: tuple[int, int] | None, p_at: int) -> list[HexRow]:
    """The hexdump rows from ``p_start``, the secondary ``shift`` bytes off; the rows after
    the divergence's row and from the realignment point on follow the new alignment (the
    divergence's row shows the inserted bytes)."""
    pdata, phave = primary
    sdata, shave = secondary
    rows: list[HexRow] = []
    first_after = (p_at // HEX_WIDTH + 1) * HEX_WIDTH
    for p in range(p_start, p_start + WINDOW_BYTES, HEX_WIDTH):
        if realigned is not None and p >= max(realigned[0], first_after):
            shift = realigned[1] - realigned[0]
        s = p + shift
        if s < 0:
            continue
        rows += hexdump_rows(window(pdata, phave, p, p + HEX_WIDTH),
                             window(sdata, shave, s, s + HEX_WIDTH), p, s, HEX_WIDTH)
    return rows


def diverged_keys(result: ReplayResult) -> set[ConnKey]:
    """The connections a replay finds diverged (the rules of ``ConnReport.verdict``)."""
    keys = {c.request.key for c in result.checkpoints if c.request.key is not None}
    for key, tally in result.tallies.items():
        if tally.undecided or tally.dropped.get(str(DropReason.OVERFLOW)):
            keys.add(key)
    return keys


def build_report(result: ReplayResult, *, primary: CaptureInfo, secondary: CaptureInfo,
                 vm: dict[str, object], config: dict[str, object], latency: float, align: str,
                 rewritten: int, paired_from: dict[ConnKey, ConnKey], suppressed: int,
                 checkpoints_done: int, counters: dict[str, object],
                 sensitivity: dict[float, set[ConnKey]] | None = None) -> Report:
    conns: list[ConnReport] = []
    by_key: dict[ConnKey, ConnReport] = {}
    for key, tally in sorted(result.tallies.items(), key=lambda kv: kv[1].first_time_ms):
        conn = ConnReport(key, paired_from.get(key), tally.frames, tally.bytes,
                          tally.matched_frames, tally.matched_bytes, tally)
        conns.append(conn)
        by_key[key] = conn
    for c in result.checkpoints:
        ckey = c.request.key
        if ckey is None:
            continue
        if ckey not in by_key:  # never orphaned: a connection the replay did not tally
            extra = ConnTally(ckey, first_time_ms=c.time_ms)
            by_key[ckey] = ConnReport(ckey, paired_from.get(ckey), extra.frames, extra.bytes,
                                      0, 0, extra)
            conns.append(by_key[ckey])
        by_key[ckey].checkpoints.append(c)
    for conn in conns:
        pstream = result.streams.get(conn.key, Side.PRIMARY, 0)
        sstream = result.streams.get(conn.key, Side.SECONDARY, 0)
        if pstream and sstream:
            conn.stream_first_difference = first_difference(pstream.assemble()[0],
                                                             sstream.assemble()[0])
        first = next((c for c in conn.checkpoints if c.request.divergence is not None), None)
        fallback = conn.stream_first_difference if conn.checkpoints else None
        conn.first_divergence = build_divergence(conn.key, result.streams, first, fallback)
    sensitivity = sensitivity or {}
    for conn in conns:
        conn.latency_dependent = any((conn.key in keys) != conn.diverged
                                     for keys in sensitivity.values())
    return Report(primary, secondary, vm, config, latency, align, rewritten, conns,
                  result.checkpoints, suppressed, checkpoints_done, counters, result.still_held,
                  {k: len(v) for k, v in sensitivity.items()})
