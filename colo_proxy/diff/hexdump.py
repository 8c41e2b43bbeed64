"""Side-by-side hexdump of two byte windows with the differing bytes marked.

``hexdump_rows`` does the comparison; ``render_plain`` marks differences with a
``^^`` line under each row (for files and pipes), ``render_rich`` styles them.  The
offset column is decimal, like every other offset the report prints.
A byte that was not captured (a hole in the reassembled stream) is ``None``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text

Window = Sequence[int | None]
DIFF_STYLE = "bold white on red"
SEPARATOR = "  |  "


@dataclass(frozen=True)
class HexRow:
    primary_offset: int
    secondary_offset: int
    primary: tuple[int | None, ...]
    secondary: tuple[int | None, ...]
    diff: tuple[bool, ...]
    """Per column: True where the sides differ (a byte missing on one side differs)."""


def differs(a: int | None, b: int | None) -> bool:
    return a is None or b is None or a != b


def window(data: bytes, have: bytes | None, start: int, end: int) -> list[int | None]:
    """data[start:end] as a list, None for bytes beyond the data or not captured."""
    out: list[int | None] = []
    for i in range(start, end):
        if 0 <= i < len(data) and (have is None or have[i]):
            out.append(data[i])
        else:
            out.append(None)
    return out


def hexdump_rows(primary: Window, secondary: Window, primary_offset: int,
                 secondary_offset: int, width: int = 8) -> list[HexRow]:
    """Split two aligned windows into rows of ``width`` bytes and mark differences.

    Trailing columns where both sides have no byte are dropped."""
    length = max(len(primary), len(secondary))
    rows = []
    for start in range(0, length, width):
        p = tuple(primary[start:start + width])
        s = tuple(secondary[start:start + width])
        p += (None,) * (width - len(p))
        s += (None,) * (width - len(s))
        cols = [i for i in range(width) if p[i] is not None or s[i] is not None]
        if not cols:
            continue
        n = cols[-1] + 1
        p, s = p[:n], s[:n]
        rows.append(HexRow(primary_offset + start, secondary_offset + start, p, s,
                           tuple(differs(a, b) for a, b in zip(p, s, strict=True))))
    return rows


def _hex(b: int | None) -> str:
    return "--" if b is None else f"{b:02x}"


def _char(b: int | None) -> str:
    if b is None:
        return " "
    return chr(b) if 0x20 <= b < 0x7F else "."


def _side(offset: int, data: tuple[int | None, ...], diff: tuple[bool, ...], width: int,
          styled: bool) -> Text:
    text = Text(f"{offset:>8}  ")
    for i in range(width):
        if i < len(data):
            text.append(_hex(data[i]), style=DIFF_STYLE if styled and diff[i] else "")
        else:
            text.append("  ")
        text.append(" ")
    text.append(" ")
    for i in range(width):
        if i < len(data):
            text.append(_char(data[i]), style=DIFF_STYLE if styled and diff[i] else "")
        else:
            text.append(" ")
    return text


def _markers(diff: tuple[bool, ...], width: int) -> str:
    hexpart = "".join(("^^" if i < len(diff) and diff[i] else "  ") + " " for i in range(width))
    chars = "".join("^" if i < len(diff) and diff[i] else " " for i in range(width))
    return " " * 10 + hexpart + " " + chars


def header(width: int = 8) -> str:
    side_width = 10 + 3 * width + 1 + width
    return "offset    primary".ljust(side_width) + SEPARATOR + "offset    secondary"


def render_plain(rows: list[HexRow], width: int = 8) -> list[str]:
    """Rows as text; a line of ``^^`` under the differing bytes follows each row with any."""
    lines = [header(width)]
    for row in rows:
        p = _side(row.primary_offset, row.primary, row.diff, width, False).plain
        s = _side(row.secondary_offset, row.secondary, row.diff, width, False).plain
        lines.append(p + SEPARATOR + s)
        if any(row.diff):
            mark = _markers(row.diff, width)
            lines.append((mark + SEPARATOR + mark).rstrip())
    return lines


def render_rich(rows: list[HexRow], width: int = 8) -> list[Text]:
    """Rows as rich Text with the differing bytes styled."""
    lines = [Text(header(width), style="bold")]
    for row in rows:
        line = _side(row.primary_offset, row.primary, row.diff, width, True)
        line.append(SEPARATOR)
        line.append_text(_side(row.secondary_offset, row.secondary, row.diff, width, True))
        lines.append(line)
    return lines
