"""The demo's traffic driver: a real HTTP/1.1 client (``http.client``) run in the
client namespace.

``python -m colo_proxy.demo.traffic --server ADDR --duration S`` cycles through

* one keep-alive connection carrying several deterministic requests,
* a few deterministic requests on connections of their own (``Connection: close``),
* every ``--token-interval`` seconds, one ``/session`` request (fresh connection),

and prints one JSON line per request on stdout (see ``RequestResult``), then a
``done`` line.  Every deterministic body is checked byte for byte against
``content``; a ``/session`` body must carry a well-formed token.  For a token
response the line also gives ``token_span``: where the token lies in the
server's byte stream of that connection, i.e. the stream offsets the proxy uses.
"""

from __future__ import annotations

import argparse
import errno
import http.client
import json
import signal
import sys
import time
from dataclasses import asdict, dataclass
from types import FrameType

from .content import SESSION_PATH, STATIC, TOKEN_RE, expected_body, session_body

FIRST_PORT, LAST_PORT = 20000, 60999
"""Client ports, used in turn."""
KEEPALIVE_PATHS = ["/", "/static/small.txt", "/static/page.html", "/static/image.bin"]
NEW_CONN_PATHS = ["/static/bundle.js", "/", "/static/page.html"]


@dataclass
class RequestResult:
    n: int
    t: float
    kind: str
    """keepalive | new | token"""
    conn: int
    """Connection number (the driver's own count)."""
    local_port: int
    path: str
    ok: bool
    status: int = 0
    bytes: int = 0
    """Bytes of the response the client received (headers and body)."""
    ms: float = 0.0
    error: str | None = None
    token: str | None = None
    token_span: tuple[int, int] | None = None
    """[start, end) of the token in the server's stream of this connection."""
    response: str | None = None
    """Token requests only: the response as received (latin-1), i.e. the primary's
    stream from offset ``stream_pos``: context for the divergence report."""
    stream_pos: int = 0
    """Stream offset of this response on its connection."""
    head: str | None = None
    """Status line and headers as received (the body is ``content``'s, if ok)."""


def _head_text(resp: http.client.HTTPResponse) -> str:
    """Status line and headers as the server sent them (it writes ``Name: value``
    lines, which ``http.client`` keeps verbatim)."""
    version = "HTTP/1.1" if resp.version == 11 else "HTTP/1.0"
    head = f"{version} {resp.status} {resp.reason}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in resp.msg.items())
    return head + "\r\n"


def _head_length(resp: http.client.HTTPResponse) -> int:
    return len(_head_text(resp).encode("latin-1"))


class Driver:
    def __init__(self, server: str, port: int, timeout: float) -> None:
        self.server = server
        self.port = port
        self.timeout = timeout
        self.start = time.monotonic()
        self.n = 0
        self.conns = 0
        self.results: list[RequestResult] = []
        self.next_port = FIRST_PORT

    def _emit(self, result: RequestResult) -> None:
        self.results.append(result)
        print(json.dumps({"event": "request", **asdict(result)}), flush=True)

    def _one(self, conn: http.client.HTTPConnection, conn_no: int, kind: str,
             path: str, *, close: bool, stream_pos: int) -> tuple[bool, int]:
        """One request; returns (connection still usable, bytes of the response)."""
        self.n += 1
        began = time.monotonic()
        result = RequestResult(n=self.n, t=round(began - self.start, 3), kind=kind,
                               conn=conn_no, local_port=0, path=path, ok=False)
        headers = {"Connection": "close"} if close else {}
        try:
            conn.request("GET", path, headers=headers)
            if conn.sock is not None:
                result.local_port = conn.sock.getsockname()[1]
            resp = conn.getresponse()
            body = resp.read()
            result.status = resp.status
            head = _head_length(resp)
            result.head = _head_text(resp)
            result.stream_pos = stream_pos
            result.bytes = head + len(body)
            result.ok, result.error = self._check(path, resp.status, body)
            if path == SESSION_PATH and result.ok:
                match = TOKEN_RE.search(body)
                assert match is not None
                result.token = match.group(1).decode()
                start = stream_pos + head + match.start(1)
                result.token_span = (start, start + len(match.group(1)))
                result.response = (_head_text(resp) + body.decode("latin-1"))
            usable = not resp.will_close
        except (OSError, http.client.HTTPException) as exc:
            result.error = f"{type(exc).__name__}: {exc}".rstrip(": ")
            usable = False
        result.ms = round((time.monotonic() - began) * 1000, 3)
        self._emit(result)
        return usable, result.bytes

    @staticmethod
    def _check(path: str, status: int, body: bytes) -> tuple[bool, str | None]:
        if status != 200:
            return False, f"HTTP status {status}"
        if path == SESSION_PATH:
            match = TOKEN_RE.search(body)
            if match is None or body != session_body(match.group(1).decode()):
                return False, "malformed session body"
            return True, None
        expected = expected_body(path)
        if body != expected:
            return False, (f"body differs from the deterministic content "
                           f"({len(body)} bytes, expected {len(expected or b'')})")
        return True, None

    def _connect(self) -> http.client.HTTPConnection:
        """A connection from a client port not used before in this run, so that the
        proxy's connection keys name one connection each (the kernel would reuse
        the port of a connection the server closed at once)."""
        for _ in range(100):
            port = self.next_port
            self.next_port = FIRST_PORT if port >= LAST_PORT else port + 1
            conn = http.client.HTTPConnection(self.server, self.port, timeout=self.timeout,
                                              source_address=("", port))
            try:
                conn.connect()
            except OSError as exc:
                conn.close()
                if exc.errno == errno.EADDRINUSE:
                    continue
                # Anything else: the request reconnects and reports the error.
            return conn
        return http.client.HTTPConnection(self.server, self.port, timeout=self.timeout)

    def connection(self, kind: str, paths: list[str]) -> None:
        """Requests on one new connection; the last one asks the server to close."""
        self.conns += 1
        conn = self._connect()
        pos = 0
        try:
            for i, path in enumerate(paths):
                usable, got = self._one(conn, self.conns, kind, path,
                                        close=i == len(paths) - 1, stream_pos=pos)
                pos += got
                if not usable:
                    break
        finally:
            conn.close()


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--token-interval", type=float, default=2.0,
                        help="seconds between /session requests (0: never)")
    parser.add_argument("--pause", type=float, default=0.05,
                        help="seconds between connections (keeps the load modest)")
    parser.add_argument("--timeout", type=float, default=15.0,
                        help="socket timeout per request")
    parser.add_argument("--first-port", type=int, default=FIRST_PORT,
                        help="first client port (then upwards)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)

    driver = Driver(args.server, args.port, args.timeout)
    driver.next_port = args.first_port
    deadline = driver.start + args.duration
    next_token = driver.start + args.token_interval / 2
    cycle = 0
    try:
        while time.monotonic() < deadline:
            now = time.monotonic()
            if args.token_interval > 0 and now >= next_token:
                driver.connection("token", [SESSION_PATH])
                next_token = now + args.token_interval
            elif cycle % 3 == 0:
                driver.connection("keepalive", KEEPALIVE_PATHS)
            else:
                path = NEW_CONN_PATHS[cycle % len(NEW_CONN_PATHS)]
                driver.connection("new", [path])
            cycle += 1
            time.sleep(args.pause)
    finally:
        done = {
            "event": "done",
            "requests": driver.n,
            "ok": sum(r.ok for r in driver.results),
            "connections": driver.conns,
            "static_objects": len(STATIC),
        }
        print(json.dumps(done), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
