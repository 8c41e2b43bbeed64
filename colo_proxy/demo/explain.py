"""The divergence report of one checkpoint request, built and rendered with
``colo-proxy diff``'s own types and functions (``DivergenceReport``, its hexdump
with the differing bytes marked, the decoded line the divergence falls in, and
its ``Renderer``).

The event carries the engine's Divergence (stream offset and up to 64 bytes of
each side).  For a token request the driver also knows the primary's whole
response, which gives the hexdump a row of context before the divergence and lets
the decoder name the HTTP line; the secondary's stream is the same up to the
divergence (that is what "first difference" means) followed by its 64 bytes.
"""

from __future__ import annotations

from dataclasses import replace

from rich.console import Console

from ..compare.model import Divergence
from ..diff.context import Context, decode_context
from ..diff.hexdump import hexdump_rows, window
from ..diff.render import Renderer
from ..diff.report import HEX_WIDTH, WINDOW_BYTES, DivergenceReport
from .events import CheckpointRequested


def _streams(div: Divergence, primary: bytes | None,
             primary_pos: int) -> tuple[bytes, bytes, int]:
    """(primary stream, secondary stream, stream offset of their first byte)."""
    at = div.offset - primary_pos
    if primary is not None and 0 <= at <= len(primary) \
            and primary.startswith(div.primary[:len(primary) - at], at):
        return primary, primary[:at] + div.secondary, primary_pos
    return div.primary, div.secondary, div.offset


def divergence_report(cp: CheckpointRequested, primary: bytes | None = None,
                      primary_pos: int = 0) -> DivergenceReport | None:
    """``cp``'s divergence as the diff's report.  ``primary``: the primary's stream
    from stream offset ``primary_pos`` on, if known."""
    div = cp.divergence
    if div is None:
        return None
    pstream, sstream, base = _streams(div, primary, primary_pos)
    at = div.offset - base
    start = max(0, (at // HEX_WIDTH - 1) * HEX_WIDTH)
    rows = hexdump_rows(window(pstream, None, start, start + WINDOW_BYTES),
                        window(sstream, None, start, start + WINDOW_BYTES),
                        base + start, base + start, HEX_WIDTH)
    return DivergenceReport(
        source="engine", reason=cp.reason, time_ms=cp.t * 1000.0, engine_offset=div.offset,
        offset=div.offset, secondary_offset=div.offset, primary_bytes=div.primary,
        secondary_bytes=div.secondary, rows=rows,
        # Compared only as far as the secondary's bytes are known.
        primary_context=decode_context(pstream[:len(sstream)], at, sstream, at),
        secondary_context=decode_context(sstream, at, pstream, at))


def _clip(ctx: Context | None, side: str, width: int) -> Context | None:
    """``ctx`` with its text cut around the divergence so that the renderer's line
    (``    <side> <label>: <text>``) fits ``width`` columns."""
    if ctx is None:
        return None
    room = width - len(f"    {side:<9} {ctx.label}: ")
    if len(ctx.text) <= room or room < 20:
        return ctx
    start = max(0, min(ctx.column - room // 3, len(ctx.text) - room))
    end = start + room
    marks = tuple((max(a, start) - start, min(b, end) - start) for a, b in ctx.marks
                  if b > start and a < end)
    return replace(ctx, text=ctx.text[start:end], column=ctx.column - start, marks=marks)


def print_divergence(console: Console, report: DivergenceReport) -> None:
    """The report as ``colo-proxy diff`` renders it, its decoded lines cut to the
    console's width."""
    width = console.width
    report = replace(report, primary_context=_clip(report.primary_context, "primary", width),
                     secondary_context=_clip(report.secondary_context, "secondary", width))
    Renderer(console).divergence(report)
