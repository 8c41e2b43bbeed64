"""Parsing of passthrough rules (``--passthrough proto=tcp,port=22,net=10.0.0.0/8``)."""

from __future__ import annotations

import ipaddress

from .model import PassthroughRule

_PROTOS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132, "gre": 47}


def parse_rule(text: str) -> PassthroughRule:
    """Parse ``key=value[,key=value...]`` with keys proto, net, port.  Raises ValueError."""
    proto: int | None = None
    net: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    port: int | None = None
    if not text.strip():
        raise ValueError("empty passthrough rule")
    for item in text.split(","):
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not value:
            raise ValueError(f"passthrough rule item {item!r} is not key=value")
        if name == "proto":
            if value.isdigit() and int(value) < 256:
                proto = int(value)
            elif value.lower() in _PROTOS:
                proto = _PROTOS[value.lower()]
            else:
                raise ValueError(f"unknown protocol {value!r} (use {', '.join(_PROTOS)} or 0-255)")
        elif name == "net":
            try:
                net = ipaddress.ip_network(value, strict=False)
            except ValueError as exc:
                raise ValueError(f"bad network {value!r}: {exc}") from None
        elif name == "port":
            if not value.isdigit() or not 0 < int(value) < 65536:
                raise ValueError(f"bad port {value!r} (1-65535)")
            port = int(value)
        else:
            raise ValueError(f"unknown passthrough key {name!r} (use proto, net, port)")
    if port is not None and proto not in (None, 6, 17, 132):
        raise ValueError("port= needs proto tcp, udp or sctp")
    return PassthroughRule(proto=proto, net=net, port=port)
