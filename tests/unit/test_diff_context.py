"""Decoded context: the HTTP line (or text line) around a divergence offset."""

from colo_proxy.diff.context import decode_context, marker_line

RESPONSE_A = (b"HTTP/1.0 200 OK\r\nServer: t\r\nContent-Type: text/html\r\n\r\n"
              b"<html>\n<p>hello</p>\n<p>token: 1234abcd</p>\n</html>\n")
RESPONSE_B = RESPONSE_A.replace(b"1234abcd", b"1299ffcd")


def test_body_line_with_token_is_named_and_marked() -> None:
    offset = RESPONSE_A.index(b"34abcd")
    ctx = decode_context(RESPONSE_A, offset, RESPONSE_B, offset)
    assert ctx is not None
    assert ctx.kind == "http-body"
    assert ctx.label == "HTTP body line 3 (response 1)"
    assert ctx.text == "<p>token: 1234abcd</p>"
    assert ctx.line_offset == RESPONSE_A.index(b"<p>token")
    assert ctx.text[ctx.column:] .startswith("34abcd")
    marked = "".join(ctx.text[a:b] for a, b in ctx.marks)
    assert marked == "34ab"
    assert marker_line(ctx) == " " * ctx.text.index("34ab") + "^^^^"


def test_header_and_status_lines() -> None:
    ctx = decode_context(RESPONSE_A, RESPONSE_A.index(b"text/html"))
    assert ctx is not None and ctx.kind == "http-header"
    assert ctx.label == "HTTP header Content-Type (response 1)"
    assert ctx.text == "Content-Type: text/html\\r"
    ctx = decode_context(RESPONSE_A, 9)
    assert ctx is not None and ctx.kind == "http-status-line"


def test_second_response_on_a_keep_alive_stream() -> None:
    stream = RESPONSE_A + RESPONSE_A.replace(b"hello", b"again")
    ctx = decode_context(stream, stream.rindex(b"again"))
    assert ctx is not None
    assert ctx.label == "HTTP body line 2 (response 2)"
    assert ctx.text == "<p>again</p>"


def test_generic_text_and_binary() -> None:
    data = b"220 mail ready\r\nRANDOM 8812\r\n"
    ctx = decode_context(data, data.index(b"8812"))
    assert ctx is not None and (ctx.kind, ctx.text) == ("text", "RANDOM 8812\\r")
    blob = bytes(range(256))
    ctx = decode_context(blob, 200)
    assert ctx is not None and ctx.kind == "binary"
    assert ctx.text[ctx.column:].startswith("\\xc8")


def test_long_lines_are_clipped_around_the_offset() -> None:
    data = b"x" * 1000 + b"DIFF" + b"y" * 1000
    ctx = decode_context(data, 1000)
    assert ctx is not None
    assert ctx.text.startswith("...") and ctx.text.endswith("...")
    assert ctx.text[ctx.column:ctx.column + 4] == "DIFF"
    assert len(ctx.text) < 200


def test_offset_past_the_data() -> None:
    assert decode_context(b"abc", 3) is None
