"""Socket endpoint specs for the QEMU socket datapath.

Syntax (one endpoint per option)::

    tcp:HOST:PORT[,server]     e.g. tcp:127.0.0.1:9001   tcp:[::1]:9001,server
    unix:PATH[,server]         e.g. unix:/run/colo/pin.sock,server

``,server`` (or ``,server=on``) makes colo-proxy listen and accept QEMU's
connection; without it colo-proxy connects to a QEMU chardev in server mode and
reconnects whenever the connection drops.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError


@dataclass(frozen=True)
class Endpoint:
    kind: str
    """``tcp`` or ``unix``."""
    address: str
    """Host for tcp, path for unix."""
    port: int
    """TCP port; 0 for unix."""
    server: bool

    def __str__(self) -> str:
        where = (f"unix:{self.address}" if self.kind == "unix"
                 else f"tcp:{_bracket(self.address)}:{self.port}")
        return where + (",server" if self.server else "")


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def parse_endpoint(text: str, what: str = "endpoint") -> Endpoint:
    """Parse an endpoint spec; raises InputError naming ``what`` on bad input."""
    spec, *flags = text.strip().split(",")
    server = False
    for flag in flags:
        if flag in ("server", "server=on"):
            server = True
        elif flag in ("server=off", "client"):
            server = False
        else:
            raise InputError(f"{what} {text!r}: unknown flag {flag!r} (only ',server')")
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise InputError(f"{what} {text!r}: expected tcp:HOST:PORT or unix:PATH")
    if kind == "unix":
        return Endpoint("unix", rest, 0, server)
    if kind != "tcp":
        raise InputError(f"{what} {text!r}: unknown transport {kind!r} (use tcp or unix)")
    if rest.startswith("["):
        host, bracket, port_text = rest[1:].partition("]")
        if not bracket or not port_text.startswith(":"):
            raise InputError(f"{what} {text!r}: expected tcp:[IPV6]:PORT")
        port_text = port_text[1:]
    else:
        host, sep, port_text = rest.rpartition(":")
        if not sep:
            raise InputError(f"{what} {text!r}: missing port (tcp:HOST:PORT)")
    if not host:
        raise InputError(f"{what} {text!r}: missing host (tcp:HOST:PORT)")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InputError(f"{what} {text!r}: bad port {port_text!r} (1-65535)")
    return Endpoint("tcp", host, int(port_text), server)
