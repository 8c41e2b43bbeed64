"""proxy-init of a secondary datapath: what it accepts and refuses, and the translation
limit (max-connections): a connection beyond it is not translated and is counted."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from colo_env import insmod, wait_for
from sec_topo import CLIENT_IP, SecTopo, in_netns, ip, sec_topology

from colo_proxy.nl import ColoClient, ColoNetlinkError, Mode

pytestmark = pytest.mark.kernel

HANG = 120.0


@pytest.fixture
def topo(colo_ko: Path) -> Iterator[SecTopo]:
    insmod(colo_ko)
    with sec_topology() as t:
        yield t


def refused(client: ColoClient, code: int, **kw: object) -> str:
    with pytest.raises(ColoNetlinkError) as exc:
        client.proxy_init(Mode.SECONDARY, **kw)  # type: ignore[arg-type]
    assert exc.value.errno == code, str(exc.value)
    assert exc.value.extack, str(exc.value)
    return exc.value.extack


def test_secondary_attach_refusals(topo: SecTopo) -> None:
    tap, fwd = topo.tap_ifindex(), topo.fwd_ifindex()
    lo = 1
    with ColoClient(netns=topo.sh) as client:
        assert "max-connections" in refused(client, errno.EINVAL, tap_ifindex=tap,
                                            fwd_ifindex=fwd, max_held_packets=4)
        assert "together" in refused(client, errno.EINVAL, tap_ifindex=tap)
        refused(client, errno.EINVAL, tap_ifindex=tap, fwd_ifindex=tap)
        assert "Ethernet" in refused(client, errno.EINVAL, tap_ifindex=lo, fwd_ifindex=fwd)
        refused(client, errno.ENODEV, tap_ifindex=tap, fwd_ifindex=9999)
        node = client.proxy_init(Mode.SECONDARY, tap_ifindex=tap, fwd_ifindex=fwd)
        assert "another node" in refused(client, errno.EBUSY, tap_ifindex=tap, fwd_ifindex=fwd)
        assert [n.index for n in client.dump()] == [node.index]  # refusals left nothing


def test_connections_beyond_the_limit_are_not_translated(topo: SecTopo) -> None:
    with ColoClient(netns=topo.sh) as client:
        node = client.proxy_init(Mode.SECONDARY, tap_ifindex=topo.tap_ifindex(),
                                 fwd_ifindex=topo.fwd_ifindex(), max_connections=2)
        for port in (9001, 9002, 9003):  # three SVM SYNs: three new connections
            with in_netns(topo.v):
                t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            t.setblocking(False)
            t.connect_ex((CLIENT_IP, port))
            t.close()
        wait_for(lambda: client.get(node.index).sec_stats["dropped"] >= 1, HANG,
                 "the third connection counted")
        got = client.get(node.index).sec_stats
        assert got["flows"] == 2, got
        ip(topo.sh, "link", "set", "tap0", "down")  # device loss: the node goes
        wait_for(lambda: not client.dump(), HANG, "the node gone with its tap")
