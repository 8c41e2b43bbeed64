"""Build and destroy the five-namespace COLO topology (see docs/datapaths.md).

::

    client --- phost ==(tc mirror)==> pvm
                 |  \\
                 |   `-- forward link --- shost (bridge) --- svm
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import TracebackType

from pyroute2 import IPRoute

from ..errors import ColoError, InputError
from . import netns

NET_CLIENT = "198.18.1.0/24"
NET_VM = "198.18.2.0/24"
VM_MAC = "02:c0:10:00:02:02"
"""PVM and SVM share one MAC (and one IP): they are replicas."""
GATEWAY_MAC = "02:c0:10:00:02:01"
"""phost's pvm-facing veth and its forward-link veth: the VMs' gateway MAC."""

_PREFIX_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
_ROLES = ("client", "phost", "pvm", "shost", "svm")


@dataclass
class Topology:
    """Names and addresses of one topology instance.  Interface names are local to
    their namespace; ``destroy`` removes everything (idempotent)."""

    prefix: str
    client_ip: str = "198.18.1.2"
    phost_client_ip: str = "198.18.1.1"
    vm_ip: str = "198.18.2.2"
    gateway_ip: str = "198.18.2.1"
    vm_mac: str = VM_MAC
    gateway_mac: str = GATEWAY_MAC
    client_if: str = "eth0"
    vm_if: str = "eth0"
    phost_client_if: str = "to-client"
    phost_pvm_if: str = "to-pvm"
    phost_fwd_if: str = "to-shost"
    shost_fwd_if: str = "to-phost"
    shost_svm_if: str = "to-svm"
    shost_bridge: str = "br0"
    built: list[str] = field(default_factory=list)

    def ns(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    @property
    def client(self) -> str:
        return self.ns("client")

    @property
    def phost(self) -> str:
        return self.ns("phost")

    @property
    def pvm(self) -> str:
        return self.ns("pvm")

    @property
    def shost(self) -> str:
        return self.ns("shost")

    @property
    def svm(self) -> str:
        return self.ns("svm")

    def namespaces(self) -> list[str]:
        return [self.ns(role) for role in _ROLES]

    def destroy(self) -> None:
        """Remove the namespaces (and with them every veth, route and rule inside)."""
        for name in self.namespaces():
            netns.remove(name)
        self.built.clear()

    def __enter__(self) -> Topology:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.destroy()


def build(prefix: str) -> Topology:
    """Create the topology; leftovers of an earlier run with ``prefix`` are removed first.
    On any failure everything created so far is removed again."""
    if not _PREFIX_RE.match(prefix):
        raise InputError(f"topology prefix {prefix!r}: use 1-40 of a-z, 0-9, '-'")
    topo = Topology(prefix)
    topo.destroy()
    try:
        _create(topo)
    except BaseException:
        topo.destroy()
        raise
    return topo


def _create(t: Topology) -> None:
    for name in t.namespaces():
        netns.create(name)
        t.built.append(name)
        netns.write_sysctls(name, {
            "net.ipv6.conf.all.disable_ipv6": "1",
            "net.ipv6.conf.default.disable_ipv6": "1",
        })
    netns.write_sysctls(t.phost, {
        "net.ipv4.ip_forward": "1",
        "net.ipv4.conf.all.rp_filter": "0",
        "net.ipv4.conf.default.rp_filter": "0",
    })
    for vm in (t.pvm, t.svm):
        # Replicas in namespaces share one kernel but not its TCP clocks: SYN
        # cookies make the ISN a function of the client's SYN alone, and without
        # timestamps no per-instant value enters the headers (a real COLO pair
        # gets this determinism from the checkpoint).
        netns.write_sysctls(vm, {"net.ipv4.tcp_syncookies": "2",
                                 "net.ipv4.tcp_timestamps": "0"})
    try:
        with IPRoute(netns=t.phost) as ph:
            _veth(ph, t.phost_client_if, t.client, t.client_if)
            _veth(ph, t.phost_pvm_if, t.pvm, t.vm_if, mac=t.gateway_mac, peer_mac=t.vm_mac)
            _veth(ph, t.phost_fwd_if, t.shost, t.shost_fwd_if, mac=t.gateway_mac)
            _up(ph, "lo", t.phost_client_if, t.phost_pvm_if, t.phost_fwd_if)
            _addr(ph, t.phost_client_if, t.phost_client_ip)
            _addr(ph, t.phost_pvm_if, t.gateway_ip)
            _mirror(ph, t.phost_pvm_if, t.phost_fwd_if)
        with IPRoute(netns=t.shost) as sh:
            _veth(sh, t.shost_svm_if, t.svm, t.vm_if, peer_mac=t.vm_mac)
            sh.link("add", ifname=t.shost_bridge, kind="bridge", br_stp_state=0,
                    br_forward_delay=0)
            bridge = _index(sh, t.shost_bridge)
            for port in (t.shost_fwd_if, t.shost_svm_if):
                sh.link("set", index=_index(sh, port), master=bridge)
            _up(sh, "lo", t.shost_bridge, t.shost_fwd_if, t.shost_svm_if)
        with IPRoute(netns=t.client) as cl:
            _up(cl, "lo", t.client_if)
            _addr(cl, t.client_if, t.client_ip)
            cl.route("add", dst="0.0.0.0/0", gateway=t.phost_client_ip)
        for vm in (t.pvm, t.svm):
            with IPRoute(netns=vm) as ip:
                _up(ip, "lo", t.vm_if)
                _addr(ip, t.vm_if, t.vm_ip)
                ip.route("add", dst="0.0.0.0/0", gateway=t.gateway_ip)
                # Static gateway entry: the SVM's ARP must not depend on phost
                # answering on the forward link.
                ip.neigh("add", dst=t.gateway_ip, lladdr=t.gateway_mac,
                         ifindex=_index(ip, t.vm_if), state=0x80)
    except ColoError:
        raise
    except Exception as exc:
        raise ColoError(f"building topology {t.prefix}: {exc}") from exc


def _index(ip: IPRoute, ifname: str) -> int:
    links = ip.link_lookup(ifname=ifname)
    if not links:
        raise ColoError(f"interface {ifname} not found")
    return int(links[0])


def _veth(ip: IPRoute, ifname: str, peer_ns: str, peer_name: str, *,
          mac: str | None = None, peer_mac: str | None = None) -> None:
    peer: dict[str, object] = {"ifname": peer_name, "net_ns_fd": peer_ns}
    if peer_mac:
        peer["address"] = peer_mac
    kwargs: dict[str, object] = {"ifname": ifname, "kind": "veth", "peer": peer}
    if mac:
        kwargs["address"] = mac
    ip.link("add", **kwargs)
    with IPRoute(netns=peer_ns) as other:
        other.link("set", index=_index(other, peer_name), state="up")


def _up(ip: IPRoute, *names: str) -> None:
    for name in names:
        ip.link("set", index=_index(ip, name), state="up")


def _addr(ip: IPRoute, ifname: str, address: str) -> None:
    ip.addr("add", index=_index(ip, ifname), address=address, prefixlen=24)


def _mirror(ip: IPRoute, ifname: str, to: str) -> None:
    """Copy every frame sent out ``ifname`` to the egress of ``to`` (tc mirred)."""
    index = _index(ip, ifname)
    ip.tc("add", "clsact", index)
    # u32 "match anything": needs no matchall classifier (CONFIG_NET_CLS_MATCHALL),
    # which some kernels are built without.
    ip.tc("add-filter", "u32", index, parent=0xFFFFFFF3, prio=1, protocol=0x0003,
          keys=["0x0/0x0+0"], target=0x10001,
          action={"kind": "mirred", "direction": "egress", "action": "mirror",
                  "ifindex": _index(ip, to)})
