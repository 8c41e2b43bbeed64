"""What the demo's HTTP service serves.  Shared by the service (``httpd``) and the
traffic driver (``traffic``), which checks every deterministic body byte for byte.

* ``/`` and ``/static/<name>``: deterministic, identical in the PVM and the SVM.
* ``/session``: embeds a fresh random token per response, so the PVM's and the
  SVM's answers differ inside the token, and only there.
"""

from __future__ import annotations

import hashlib
import re

SERVER_NAME = "colo-demo/1"
"""Value of the ``Server`` header (the default names the Python version: fine, but
this is shorter and the same everywhere)."""

STATIC = {
    "small.txt": 600,
    "page.html": 6 * 1024,
    "image.bin": 40 * 1024,
    "bundle.js": 120 * 1024,
}
"""Static objects and their sizes: from one segment to many windows."""

TOKEN_BYTES = 16
TOKEN_RE = re.compile(rb"token=([0-9a-f]{32})")
SESSION_PATH = "/session"


def static_body(name: str) -> bytes | None:
    """The body of ``/static/<name>``: pseudo-random but fully determined by the name."""
    size = STATIC.get(name)
    if size is None:
        return None
    out = bytearray()
    block = 0
    while len(out) < size:
        out += hashlib.sha256(f"{name}:{block}".encode()).digest()
        block += 1
    if name.endswith((".txt", ".html", ".js")):
        # Keep text objects printable: hex of the pseudo-random bytes.
        return bytes(out).hex().encode()[:size]
    return bytes(out[:size])


def index_body() -> bytes:
    """The body of ``/``."""
    links = "".join(f'<li><a href="/static/{name}">{name}</a> ({size} bytes)</li>\n'
                    for name, size in STATIC.items())
    return ("<!doctype html>\n<html><head><title>colo-proxy demo</title></head><body>\n"
            "<h1>colo-proxy demo service</h1>\n<ul>\n" + links +
            f'<li><a href="{SESSION_PATH}">{SESSION_PATH}</a> (random token)</li>\n'
            "</ul>\n</body></html>\n").encode()


def session_body(token: str) -> bytes:
    """The body of ``/session`` for one token (32 hex digits)."""
    return (f'{{"service": "colo-proxy demo", "session": "token={token}", '
            f'"note": "a fresh random token per response"}}\n').encode()


def expected_body(path: str) -> bytes | None:
    """The body a deterministic path must have, or None for ``/session`` and 404s."""
    if path == "/":
        return index_body()
    if path.startswith("/static/"):
        return static_body(path[len("/static/"):])
    return None
