"""The divergence report of one checkpoint request, rendered with ``colo-proxy
diff``'s functions (side-by-side hexdump with the differing bytes marked, and the
decoded line the divergence falls in).

The event carries the engine's Divergence (stream offset and up to 64 bytes of
each side).  For a token request the driver also knows the primary's whole
response, which gives the hexdump a row of context before the divergence and lets
the decoder name the HTTP line; the secondary's stream is the same up to the
divergence (that is what "first difference" means) followed by its 64 bytes.
"""

from __future__ import annotations

from rich.text import Text

from ..compare.model import Divergence
from ..diff.context import decode_context, marker_line
from ..diff.hexdump import hexdump_rows, render_plain, render_rich, window

HEX_WIDTH = 8
WINDOW_BYTES = 72


def _streams(div: Divergence, primary: bytes | None,
             primary_pos: int) -> tuple[bytes, bytes, int]:
    """(primary stream, secondary stream, base offset of both)."""
    at = div.offset - primary_pos
    if primary is not None and 0 <= at <= len(primary) \
            and primary.startswith(div.primary[:len(primary) - at], at):
        return primary, primary[:at] + div.secondary, primary_pos
    return div.primary, div.secondary, div.offset


def divergence_lines(div: Divergence, primary: bytes | None = None, primary_pos: int = 0,
                     styled: bool = False) -> list[str | Text]:
    """Hexdump and decoded context of ``div``.  ``primary``: the primary's stream
    from stream offset ``primary_pos`` on, if known."""
    pstream, sstream, base = _streams(div, primary, primary_pos)
    at = div.offset - base
    start = max(0, (at // HEX_WIDTH - 1) * HEX_WIDTH)
    rows = hexdump_rows(window(pstream, None, start, start + WINDOW_BYTES),
                        window(sstream, None, start, start + WINDOW_BYTES),
                        base + start, base + start, HEX_WIDTH)
    lines: list[str | Text] = []
    lines.extend(render_rich(rows, HEX_WIDTH) if styled else render_plain(rows, HEX_WIDTH))
    for side, stream, other in (("primary", pstream, sstream), ("secondary", sstream, pstream)):
        ctx = decode_context(stream, at, other, at)
        if ctx is None:
            continue
        lines.append(f"{side:9}  {ctx.label}:")
        lines.append(f"           {ctx.text}")
        lines.append(f"           {marker_line(ctx)}")
    return lines
