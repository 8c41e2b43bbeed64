"""Socket endpoint specs for the QEMU socket datapath.

Syntax (one endpoint per option; flags after commas, QEMU's option names)::

    tcp:HOST:PORT[,server][,tls-creds=DIR][,tls-authz=DN|FILE]
    tcp:PORT[,server]...           HOST omitted = 127.0.0.1 (loopback)
    unix:PATH[,server][,group=GROUP]

    e.g. tcp:127.0.0.1:9001   tcp:[::1]:9001,server   unix:/run/colo/pin.sock,server
         tcp:192.0.2.10:9004,server,tls-creds=/etc/colo/tls,tls-authz=O=colo,,CN=secondary

``,server`` (or ``,server=on``) makes colo-proxy listen and serve one client at
a time; without it colo-proxy connects to a QEMU chardev in server mode and
reconnects whenever the connection drops.

``tls-creds=DIR`` is a directory laid out like QEMU's ``tls-creds-x509``
(``ca-cert.pem``, ``server-cert.pem``/``server-key.pem`` for a server endpoint,
``client-cert.pem``/``client-key.pem`` for a client endpoint, optional
``ca-crl.pem``); the peer's certificate is always verified (``verify-peer=on``).
``tls-authz`` allows only the listed peer identities: one distinguished name as
QEMU's ``authz-simple`` identity (GnuTLS's form, in certificate order, e.g.
``O=colo,CN=secondary``), or a
JSON file in QEMU's ``authz-list-file`` format.  As in QEMU's command line a comma
inside a value is written twice (``,,``).  ``group=GROUP`` makes a unix server
socket mode 0660 owned by that group (default 0600).  docs/security.md.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..errors import InputError

LOOPBACK = "127.0.0.1"
"""The host of a tcp endpoint given as ``tcp:PORT``."""


@dataclass(frozen=True)
class Endpoint:
    kind: str
    """``tcp`` or ``unix``."""
    address: str
    """Host for tcp, path for unix."""
    port: int
    """TCP port; 0 for unix."""
    server: bool
    tls_creds: str | None = None
    """Directory with QEMU tls-creds-x509 files; None = no TLS."""
    tls_authz: str | None = None
    """Allowed peer identities: a DN, or an authz-list-file JSON file."""
    group: str | None = None
    """unix server socket: group allowed to connect (mode 0660)."""

    def __str__(self) -> str:
        """Where the endpoint is (the same string for the same socket address)."""
        where = (f"unix:{self.address}" if self.kind == "unix"
                 else f"tcp:{_bracket(self.address)}:{self.port}")
        return where + (",server" if self.server else "")

    @property
    def tls(self) -> bool:
        return self.tls_creds is not None

    @property
    def loopback(self) -> bool:
        """True if only this host can reach the address (unix, or a loopback tcp host)."""
        return self.kind == "unix" or is_loopback_host(self.address)


def exposure_warning(endpoint: Endpoint) -> str | None:
    """Why a tcp endpoint on a non-loopback address without TLS is exposed, else None.

    The one source of that warning's text: ``run`` (and the agent's datapath) logs it
    at start as ``NAME: WARNING: TEXT``, ``colo-proxy config check`` prints it too.
    """
    if endpoint.kind != "tcp" or endpoint.tls or endpoint.loopback:
        return None
    what = "take" if endpoint.server else "impersonate the peer of"
    return (f"{endpoint} is not a loopback address and has no TLS: anyone who reaches it "
            f"can {what} this link (add tls-creds=DIR, see docs/security.md)")


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback IP literal; any other name is taken as reachable."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def split_flags(text: str) -> list[str]:
    """Split on single commas; ``,,`` stands for a literal comma (QEMU's rule)."""
    parts = [""]
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "," and text[i + 1:i + 2] == ",":
            parts[-1] += ","
            i += 2
            continue
        if ch == ",":
            parts.append("")
        else:
            parts[-1] += ch
        i += 1
    return parts


def parse_endpoint(text: str, what: str = "endpoint") -> Endpoint:
    """Parse an endpoint spec; raises InputError naming ``what`` on bad input."""
    spec, *flags = split_flags(text.strip())
    server = False
    values: dict[str, str] = {}
    for flag in flags:
        name, eq, value = flag.partition("=")
        if flag in ("server", "server=on"):
            server = True
        elif flag in ("server=off", "client"):
            server = False
        elif name in ("tls-creds", "tls-authz", "group") and eq:
            if not value:
                raise InputError(f"{what} {text!r}: {name}= needs a value")
            values[name] = value
        else:
            raise InputError(f"{what} {text!r}: unknown flag {flag!r} (known: server, "
                             "tls-creds=DIR, tls-authz=DN|FILE, group=GROUP)")
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise InputError(f"{what} {text!r}: expected tcp:HOST:PORT or unix:PATH")
    if kind == "unix":
        for name in ("tls-creds", "tls-authz"):
            if name in values:
                raise InputError(f"{what} {text!r}: {name} is for tcp endpoints "
                                 "(a unix socket is protected by its file mode)")
        if "group" in values and not server:
            raise InputError(f"{what} {text!r}: group= is for unix server endpoints")
        return Endpoint("unix", rest, 0, server, group=values.get("group"))
    if kind != "tcp":
        raise InputError(f"{what} {text!r}: unknown transport {kind!r} (use tcp or unix)")
    if "group" in values:
        raise InputError(f"{what} {text!r}: group= is for unix endpoints")
    if "tls-authz" in values and "tls-creds" not in values:
        raise InputError(f"{what} {text!r}: tls-authz needs tls-creds=DIR")
    if rest.isdigit():
        host, port_text = LOOPBACK, rest
    elif rest.startswith("["):
        host, bracket, port_text = rest[1:].partition("]")
        if not bracket or not port_text.startswith(":"):
            raise InputError(f"{what} {text!r}: expected tcp:[IPV6]:PORT")
        port_text = port_text[1:]
    else:
        host, sep, port_text = rest.rpartition(":")
        if not sep:
            raise InputError(f"{what} {text!r}: missing port (tcp:HOST:PORT)")
    if not host:
        raise InputError(f"{what} {text!r}: missing host (tcp:HOST:PORT, or tcp:PORT "
                         "for loopback)")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InputError(f"{what} {text!r}: bad port {port_text!r} (1-65535)")
    return Endpoint("tcp", host, int(port_text), server,
                    tls_creds=values.get("tls-creds"), tls_authz=values.get("tls-authz"))
