"""Which captured frames are the VM's output.

A capture taken on a VM-facing interface holds both directions.  The proxy only
compares what the VMs send, so only those frames are replayed.  The VM is named with
``--vm-ip`` / ``--vm-mac``; by default it is the address that plays the TCP server
role (sends SYN-ACKs, receives SYNs) most often, and both captures must agree on it.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import InputError
from .headers import ETH_P_ARP, TCP_ACK, TCP_SYN, Headers


@dataclass(frozen=True)
class VmSelector:
    ips: frozenset[bytes]
    macs: frozenset[bytes]
    how: str
    """How the VM was chosen, for the report."""

    def is_output(self, h: Headers) -> bool:
        """True for a frame the VM sent."""
        if h.src_mac in self.macs:
            return True
        if h.ip:
            return h.src in self.ips
        if h.key.l3 == ETH_P_ARP:
            return h.arp_spa in self.ips
        return False

    def describe(self) -> dict[str, object]:
        return {
            "ips": sorted(str(ipaddress.ip_address(ip)) for ip in self.ips),
            "macs": sorted(format_mac(m) for m in self.macs),
            "selected_by": self.how,
        }


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def parse_ip(text: str) -> bytes:
    try:
        return ipaddress.ip_address(text).packed
    except ValueError:
        raise InputError(f"--vm-ip {text!r} is not an IPv4 or IPv6 address") from None


def parse_mac(text: str) -> bytes:
    parts = text.replace("-", ":").split(":")
    try:
        if len(parts) != 6 or any(len(p) not in (1, 2) for p in parts):
            raise ValueError
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise InputError(f"--vm-mac {text!r} is not a MAC address (aa:bb:cc:dd:ee:ff)") from None


def server_counts(headers: Iterable[Headers | None]) -> Counter[bytes]:
    """How often each IP address acted as a TCP server (SYN-ACK sent or SYN received)."""
    counts: Counter[bytes] = Counter()
    for h in headers:
        if h is None or not h.tcp or not h.flags & TCP_SYN:
            continue
        counts[h.src if h.flags & TCP_ACK else h.dst] += 1
    return counts


def choose_vm(
    primary: list[Headers | None],
    secondary: list[Headers | None],
    vm_ips: Iterable[str],
    vm_macs: Iterable[str],
    names: tuple[str, str],
) -> VmSelector:
    """Build the selector from the options, or detect the VM from the server role."""
    ips = frozenset(parse_ip(t) for t in vm_ips)
    macs = frozenset(parse_mac(t) for t in vm_macs)
    if ips or macs:
        return VmSelector(ips, macs, "options")
    chosen: list[bytes] = []
    for name, headers in zip(names, (primary, secondary), strict=True):
        counts = server_counts(headers)
        if not counts:
            raise InputError(f"{name}: no TCP handshake to tell which address is the VM; "
                             "pass --vm-ip or --vm-mac")
        chosen.append(counts.most_common(1)[0][0])
    if chosen[0] != chosen[1]:
        a, b = (str(ipaddress.ip_address(ip)) for ip in chosen)
        raise InputError(f"captures disagree on the VM address (primary {a}, secondary {b}); "
                         "mismatched captures, or pass --vm-ip")
    return VmSelector(frozenset(chosen[:1]), frozenset(), "auto: TCP server role")
