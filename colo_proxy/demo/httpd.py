"""The demo's HTTP service, run identically in the PVM and the SVM namespaces.

``python -m colo_proxy.demo.httpd --port 80`` serves until SIGTERM and prints one
line ``listening <addr>:<port>`` on stdout once the socket accepts connections.

Everything a response carries is deterministic except the token of ``/session``:
no ``Date`` header, a fixed ``Server`` header, HTTP/1.1 with Content-Length so
that keep-alive works.
"""

from __future__ import annotations

import argparse
import secrets
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType

from .content import SERVER_NAME, SESSION_PATH, TOKEN_BYTES, expected_body, session_body


class Handler(BaseHTTPRequestHandler):
    """GET and HEAD for ``/``, ``/static/*`` and ``/session``."""

    protocol_version = "HTTP/1.1"
    server_version = SERVER_NAME
    sys_version = ""
    # One send per response (headers and body together, flushed by the base class
    # after each request) and no Nagle delay on its tail.
    wbufsize = 1 << 18
    disable_nagle_algorithm = True

    def send_response(self, code: int, message: str | None = None) -> None:
        # The stock version adds a Date header: it would differ between the
        # replicas whenever their responses straddle a second.
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Server", SERVER_NAME)

    def _body(self) -> tuple[int, bytes, str]:
        path = self.path.split("?", 1)[0]
        if path == SESSION_PATH:
            return 200, session_body(secrets.token_hex(TOKEN_BYTES)), "application/json"
        body = expected_body(path)
        if body is None:
            return 404, b"not found\n", "text/plain"
        ctype = "text/html" if path == "/" else "application/octet-stream"
        return 200, body, ctype

    def _reply(self, with_body: bool) -> None:
        code, body, ctype = self._body()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._reply(True)

    def do_HEAD(self) -> None:
        self._reply(False)

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"{self.client_address[0]}:{self.client_address[1]} "
                         f"{format % args}\n")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=80)
    args = parser.parse_args(argv)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server = Server((args.bind, args.port), Handler)
    except OSError as exc:
        print(f"httpd: cannot listen on {args.bind}:{args.port}: {exc}", file=sys.stderr)
        return 1
    print(f"listening {args.bind}:{args.port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
