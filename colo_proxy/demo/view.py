"""The live view: a rich ``Live`` table on a terminal, a plain progress line every
second or so otherwise (CI logs)."""

from __future__ import annotations

import textwrap
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from .latency import LatencyHistogram, fmt_ms
from .state import DemoSnapshot, key_ports

DATAPATH_NOTE = ("it holds every frame the primary sends until the secondary sent the same "
                 "bytes, then releases it to the client; different bytes mean a checkpoint "
                 "request.")
FLUSH_NOTE = ("A checkpoint here is a flush: there is no VM state to copy, so the proxy "
              "releases what it holds and drops the secondary's copies.")
PROGRESS_LEGEND = ("each second: HTTP requests answered (ok/failed) | payload bytes compared | "
                   "checkpoint requests | median client request latency of that second; a "
                   "line per checkpoint says what caused it and on which connection")
NO_TTY_NOTE = ("no terminal: plain progress lines (the live view needs a terminal; --live "
               "forces it)")
PLAIN_WIDTH = 100
"""Columns of the output without a terminal."""


def say(console: Console, text: str | Text) -> None:
    """One paragraph, wrapped at the console's width (``PLAIN_WIDTH`` without a
    terminal); continuation lines are indented one step deeper than the first."""
    style = text.style if isinstance(text, Text) else ""
    plain = text.plain if isinstance(text, Text) else text
    indent = " " * (len(plain) - len(plain.lstrip(" ")))
    lines = textwrap.wrap(plain, width=max(console.width, 40), subsequent_indent=indent + "  ",
                          break_long_words=True, break_on_hyphens=False) or [""]
    for line in lines:
        console.print(Text(line, style=style), highlight=False, overflow="fold")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _num(value: Any) -> int:
    return int(value) if isinstance(value, int | float) else 0


def _compared(snap: DemoSnapshot) -> str:
    """Bytes compared; the kernel datapath counts frames instead (pairs matched, frames
    passed uncompared)."""
    if snap.stats is not None and "bytes_compared" not in snap.stats.counters \
            and "pairs_matched" in snap.stats.counters:
        return (f"{_num(snap.counter('pairs_matched'))} frame pairs matched in the kernel, "
                f"{_num(snap.counter('uncompared'))} frames passed uncompared")
    return human_bytes(_num(snap.counter("bytes_compared")))


def _compared_short(snap: DemoSnapshot) -> str:
    if snap.stats is not None and "bytes_compared" not in snap.stats.counters \
            and "pairs_matched" in snap.stats.counters:
        return (f"kernel matched {_num(snap.counter('pairs_matched'))}, uncompared "
                f"{_num(snap.counter('uncompared'))}")
    return f"compared {human_bytes(_num(snap.counter('bytes_compared')))}"


def _hold(snap: DemoSnapshot) -> str:
    lat = snap.latency_last()
    if not lat.get("count"):
        return "-"
    return (f"p50 {lat.get('p50', 0):.2f} ms  p99 {lat.get('p99', 0):.2f} ms  "
            f"max {lat.get('max', 0):.2f} ms  ({int(lat['count'])} releases, last stats "
            "interval)")


def _recent_requests(snap: DemoSnapshot, seconds: float) -> list[float]:
    since = snap.elapsed - seconds
    return [float(r["ms"]) for r in snap.requests
            if r.get("ok") and float(r.get("demo_t", 0.0)) + float(r["ms"]) / 1000 >= since]


def _request_latency(snap: DemoSnapshot, seconds: float = 1.0) -> str:
    recent = _recent_requests(snap, seconds)
    if not recent:
        return "-"
    hist = LatencyHistogram(recent)
    return f"p50 {fmt_ms(hist.pct('p50'))}, max {fmt_ms(hist.samples[-1])} ({len(hist)} req)"


def checkpoint_line(snap: DemoSnapshot, i: int) -> str:
    """What caused checkpoint ``i`` and on which connection, as far as known now."""
    cp = snap.checkpoints[i]
    div = cp.divergence
    what = f"{cp.reason} at offset {div.offset}" if div is not None else cp.reason
    ports = key_ports(cp.key)
    conn = cp.key or "-"
    req = None
    if ports is not None:
        client_port = ports[1] if ports[0] == 80 else ports[0]
        req = next((r for r in reversed(snap.requests)
                    if r.get("local_port") == client_port), None)
        conn = f"port {client_port}"
    if req is not None:
        conn += f" (conn #{req['conn']}, #{req['n']} GET {req['path']})"
        if req.get("kind") == "token":
            what += ": the replicas' random tokens differ"
    return f"checkpoint {i + 1}: {what}, {conn}"


def _reasons(snap: DemoSnapshot) -> str:
    reasons = snap.reasons()
    if not reasons:
        return "0"
    inner = ", ".join(f"{name} {count}" for name, count in sorted(reasons.items()))
    return f"{len(snap.checkpoints)} ({inner})"


def _kinds(snap: DemoSnapshot) -> str:
    kinds: dict[str, int] = {}
    for r in snap.requests:
        kinds[str(r.get("kind"))] = kinds.get(str(r.get("kind")), 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))


def render_live(snap: DemoSnapshot, duration: float, datapath: str) -> RenderableType:
    """The rich renderable shown by ``Live``."""
    title = Text.assemble(("colo-proxy demo", "bold"), f"  datapath {datapath}  ",
                          (f"{min(snap.elapsed, duration):5.1f} s / {duration:.0f} s", "cyan"))
    if not snap.ready:
        title.append("  (waiting for the datapath)", style="yellow")
    totals = Table.grid(padding=(0, 2))
    totals.add_column(style="bold")
    totals.add_column()
    frames = snap.counter("frames") or {}
    totals.add_row("HTTP requests", f"{snap.requests_ok} complete, {snap.requests_failed} failed"
                   f"  [dim]({_kinds(snap)})[/dim]")
    totals.add_row("frames in", f"primary {_num(frames.get('primary'))}, "
                   f"secondary {_num(frames.get('secondary'))}")
    totals.add_row("bytes compared", _compared(snap))
    totals.add_row("frames released", str(_num(snap.counter("released"))))
    totals.add_row("held now", f"{_num(snap.counter('held_frames_now'))} frames, "
                   f"{human_bytes(_num(snap.counter('held_bytes_now')))}")
    style = "red" if snap.checkpoints else "green"
    totals.add_row("checkpoint requests", Text(_reasons(snap), style=style))
    totals.add_row("flushes", str(len(snap.flushes)))
    totals.add_row("request latency", _request_latency(snap, 2.0) + "  [dim](last 2 s)[/dim]")
    totals.add_row("hold time", _hold(snap))
    latest = (Text(f"{checkpoint_line(snap, len(snap.checkpoints) - 1)}  "
                   f"[{snap.checkpoint_times[-1]:.1f} s]", style="red")
              if snap.checkpoints and snap.checkpoint_times else Text("-"))
    totals.add_row("latest checkpoint", latest)

    conns = Table(title="connections, most recently active first", title_justify="left",
                  expand=False)
    conns.add_column("connection")
    conns.add_column("frames matched", justify="right")
    conns.add_column("bytes matched", justify="right")
    conns.add_column("held P/S", justify="right")
    conns.add_column("checkpoints", justify="right")
    recent = sorted(snap.conns.values(), key=lambda c: (c.last_active, c.bytes_matched),
                    reverse=True)[:8]
    for c in recent:
        conns.add_row(c.key, str(c.frames_matched), human_bytes(c.bytes_matched),
                      f"{c.held_primary}/{c.held_secondary}",
                      Text(str(c.checkpoint_requests),
                           style="red" if c.checkpoint_requests else ""))
    total_seen = len(snap.conns)
    footer = Text(f"{total_seen} connections seen.  {FLUSH_NOTE}", style="dim")
    return Group(title, totals, conns, footer)


def progress_line(snap: DemoSnapshot) -> str:
    """One plain line for logs (at most ``PLAIN_WIDTH`` columns)."""
    recent = _recent_requests(snap, 1.0)
    median = fmt_ms(LatencyHistogram(recent).pct("p50")) if recent else "-"
    line = (f"[{snap.elapsed:5.1f}s] requests {snap.requests_ok} ok/{snap.requests_failed} "
            f"failed | {_compared_short(snap)} | "
            f"checkpoints {len(snap.checkpoints)} | latency p50 {median}")
    return line[:PLAIN_WIDTH]


def baseline_line(snap: DemoSnapshot, part: int, elapsed: float) -> str:
    """One plain line of the baseline phase."""
    ok = [float(r["ms"]) for r in snap.baseline if r.get("ok")]
    failed = sum(1 for r in snap.baseline if not r.get("ok"))
    hist = LatencyHistogram(ok)
    median = fmt_ms(hist.pct("p50")) if ok else "-"
    return (f"baseline {part}/2 {elapsed:4.1f}s: requests {len(ok)} ok/{failed} failed | "
            f"latency p50 {median} so far")[:PLAIN_WIDTH]
