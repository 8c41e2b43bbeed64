"""Decoded context around a divergence: the HTTP line it falls in, or the text line.

Works on a reassembled stream.  For HTTP/1.x the line is named (request/status line,
header ``Name``, body line N of the message); otherwise the printable text line
around the offset is shown.  Long lines are clipped around the offset.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_BEFORE = 60
MAX_AFTER = 100
_HTTP_START = re.compile(
    rb"(?:^|\n)(HTTP/\d(?:\.\d)? \d{3}|(?:GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH|CONNECT|TRACE)"
    rb" \S+ HTTP/\d(?:\.\d)?\r?\n)"
)


@dataclass(frozen=True)
class Context:
    kind: str
    """http-request-line, http-status-line, http-header, http-body, text or binary."""
    label: str
    """Human description, e.g. ``HTTP body line 3 (response 1)``."""
    text: str
    """The line, non-printable bytes escaped, clipped with ``...`` around the offset."""
    line_offset: int
    """Stream offset of the first byte of the line."""
    column: int
    """Index in ``text`` of the divergence byte."""
    marks: tuple[tuple[int, int], ...]
    """[start, end) spans of ``text`` whose bytes differ from the other side."""

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "label": self.label, "text": self.text,
                "line_offset": self.line_offset, "column": self.column,
                "marks": [list(m) for m in self.marks]}


def _escape(b: int) -> str:
    if 0x20 <= b < 0x7F:
        return chr(b)
    return {0x09: "\\t", 0x0D: "\\r", 0x0A: "\\n"}.get(b, f"\\x{b:02x}")


def _http_locate(stream: bytes, offset: int) -> tuple[str, str] | None:
    """(kind, label) if ``offset`` falls in an HTTP/1.x message of ``stream``."""
    start = -1
    number = 0
    for m in _HTTP_START.finditer(stream):
        if m.start(1) > offset:
            break
        start = m.start(1)
        number += 1
    if start < 0:
        return None
    head_end = stream.find(b"\r\n\r\n", start)
    if head_end < 0:
        head_end = stream.find(b"\n\n", start)
        sep = 2
    else:
        sep = 4
    if head_end < 0 and stream.find(b"\n", start) < 0:
        return None
    response = stream.startswith(b"HTTP/", start)
    what = "response" if response else "request"
    line_start = stream.rfind(b"\n", 0, offset) + 1
    if head_end < 0 or offset < head_end + sep:
        if line_start <= start:
            kind = "http-status-line" if response else "http-request-line"
            return kind, f"HTTP {kind[5:].replace('-', ' ')} ({what} {number})"
        name = stream[line_start:stream.find(b":", line_start, offset + 1)]
        if not name or b"\n" in name or len(name) > 64:
            return "http-header", f"HTTP header ({what} {number})"
        header = name.decode("ascii", "replace")
        return "http-header", f"HTTP header {header} ({what} {number})"
    body_start = head_end + sep
    line_no = stream.count(b"\n", body_start, line_start) + 1
    return "http-body", f"HTTP body line {line_no} ({what} {number})"


def decode_context(stream: bytes, offset: int, other: bytes | None = None,
                   other_offset: int | None = None,
                   realign: tuple[int, int] | None = None) -> Context | None:
    """The line of ``stream`` that holds ``offset``; None if the offset is past the data.

    ``other``/``other_offset``: the other side's stream and the offset aligned with
    ``offset``, to mark the differing bytes.  ``realign``: ``(at, other_at)``, where the
    streams line up again after an insertion or deletion: bytes from ``at`` on are
    compared with ``other`` from ``other_at`` on."""
    if not 0 <= offset < len(stream):
        return None
    line_start = stream.rfind(b"\n", 0, offset) + 1
    line_end = stream.find(b"\n", offset)
    line_end = len(stream) if line_end < 0 else line_end + 1
    lo = max(line_start, offset - MAX_BEFORE)
    hi = min(line_end, offset + MAX_AFTER)
    raw = stream[line_start:line_end]
    printable = sum(1 for b in raw if 0x20 <= b < 0x7F or b in (9, 10, 13))
    located = _http_locate(stream, offset)
    if located is None:
        located = ("text", "text line") if printable >= 0.7 * len(raw) else ("binary", "bytes")
    kind, label = located
    shift = None if other is None or other_offset is None else other_offset - offset
    text = "..." if lo > line_start else ""
    column = 0
    marks: list[tuple[int, int]] = []
    for i in range(lo, hi):
        b = stream[i]
        if i == offset:
            column = len(text)
        piece = _escape(b)
        if b == 0x0A and i == line_end - 1:
            piece = ""  # the line terminator is implied
        if shift is not None and other is not None and piece:
            j = i + shift
            if realign is not None and i >= realign[0]:
                j = i + realign[1] - realign[0]
            if not 0 <= j < len(other) or other[j] != b:
                if marks and marks[-1][1] == len(text):
                    marks[-1] = (marks[-1][0], len(text) + len(piece))
                else:
                    marks.append((len(text), len(text) + len(piece)))
        text += piece
    if hi < line_end and not (hi == line_end - 1 and stream[hi] == 0x0A):
        text += "..."
    return Context(kind, label, text, line_start, column, tuple(marks))


def marker_line(ctx: Context) -> str:
    """``^`` under the differing characters of ``ctx.text`` (``^`` at the column if none)."""
    chars = [" "] * (len(ctx.text) + 1)
    spans = ctx.marks or ((ctx.column, ctx.column + 1),)
    for start, end in spans:
        for i in range(start, end):
            chars[i] = "^"
    return "".join(chars).rstrip()
