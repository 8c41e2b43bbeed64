"""The live view: a rich ``Live`` table on a terminal, a plain progress line every
second or so otherwise (CI logs)."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from .state import DemoSnapshot

DATAPATH_NOTE = ("it holds every frame the primary sends until the secondary sent the same "
                 "bytes, then releases it to the client; different bytes mean a checkpoint "
                 "request.")
FLUSH_NOTE = ("A checkpoint here is a flush: there is no VM state to copy, so the proxy "
              "releases what it holds and drops the secondary's copies.")
PROGRESS_LEGEND = ("each second: HTTP requests answered | frames seen from the primary (P) "
                   "and the secondary (S) | payload bytes compared | primary frames released "
                   "| checkpoint requests | flushes | latency: how long the released primary "
                   "frames were held (p50 is usually 0: the secondary's copy came first)")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _num(value: Any) -> int:
    return int(value) if isinstance(value, int | float) else 0


def _latency(snap: DemoSnapshot) -> str:
    lat = snap.latency_last()
    if not lat.get("count"):
        return "-"
    return (f"p50 {lat.get('p50', 0):.2f} ms  p99 {lat.get('p99', 0):.2f} ms  "
            f"max {lat.get('max', 0):.2f} ms  ({int(lat['count'])} releases, last interval)")


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
    totals.add_row("bytes compared", human_bytes(_num(snap.counter("bytes_compared"))))
    totals.add_row("frames released", str(_num(snap.counter("released"))))
    totals.add_row("held now", f"{_num(snap.counter('held_frames_now'))} frames, "
                   f"{human_bytes(_num(snap.counter('held_bytes_now')))}")
    style = "red" if snap.checkpoints else "green"
    totals.add_row("checkpoint requests", Text(_reasons(snap), style=style))
    totals.add_row("flushes", str(len(snap.flushes)))
    totals.add_row("release latency", _latency(snap))

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
    """One plain line for logs."""
    frames = snap.counter("frames") or {}
    return (f"[{snap.elapsed:5.1f}s] requests {snap.requests_ok} ok/{snap.requests_failed} "
            f"failed | frames P {_num(frames.get('primary'))} S "
            f"{_num(frames.get('secondary'))} | compared "
            f"{human_bytes(_num(snap.counter('bytes_compared')))} | released "
            f"{_num(snap.counter('released'))} | checkpoints {_reasons(snap)} | "
            f"flushes {len(snap.flushes)} | latency {_latency(snap)}")
