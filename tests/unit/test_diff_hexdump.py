"""The side-by-side hexdump marks exactly the differing bytes."""

from colo_proxy.diff.hexdump import hexdump_rows, render_plain, render_rich, window


def test_rows_mark_only_differing_bytes() -> None:
    rows = hexdump_rows(list(b"token=abcd;"), list(b"token=wxcd;"), 100, 200, width=8)
    assert [r.primary_offset for r in rows] == [100, 108]
    assert [r.secondary_offset for r in rows] == [200, 208]
    flagged = [r.primary_offset + i for r in rows for i, d in enumerate(r.diff) if d]
    assert flagged == [106, 107]


def test_missing_bytes_differ_and_trailing_columns_are_dropped() -> None:
    rows = hexdump_rows(list(b"abc"), list(b"ab"), 0, 0, width=8)
    assert len(rows) == 1
    assert rows[0].diff == (False, False, True)
    assert rows[0].secondary == (0x61, 0x62, None)


def test_window_marks_holes_and_out_of_range_as_none() -> None:
    assert window(b"abcd", b"\x01\x00\x01\x01", -1, 5) == [None, 0x61, None, 0x63, 0x64, None]


def test_plain_rendering_puts_carets_under_differences() -> None:
    lines = render_plain(hexdump_rows(list(b"GET /aXc"), list(b"GET /aYc"), 0, 0, width=8))
    row, marks = lines[1], lines[2]
    assert "47 45 54 20 2f 61 58 63" in row and "GET /aXc" in row
    assert "47 45 54 20 2f 61 59 63" in row and "GET /aYc" in row
    # one "^^" per side under the hex cell, one "^" per side under the character
    assert marks.count("^^") == 2
    hex_col = row.index("58")
    assert marks[hex_col:hex_col + 2] == "^^"
    assert marks[row.index("GET /aXc") + 6] == "^"
    assert marks[row.index("GET /aYc") + 6] == "^"


def test_plain_rendering_has_no_marker_line_for_equal_rows() -> None:
    lines = render_plain(hexdump_rows(list(b"same"), list(b"same"), 0, 0))
    assert len(lines) == 2
    assert "^" not in "".join(lines)


def test_rich_rendering_styles_only_differing_cells() -> None:
    lines = render_rich(hexdump_rows(list(b"ab"), list(b"aX"), 0, 0, width=8))
    text = lines[1]
    styled = {text.plain[span.start:span.end] for span in text.spans if span.style}
    assert styled == {"62", "b", "58", "X"}
