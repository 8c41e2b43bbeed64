"""Nodes belong to a network namespace; namespace deletion leaks nothing.

A netlink socket pins its namespace, so a namespace whose nodes' owner is still
alive does not exit when it is deleted: the nodes live on until the owner goes
(owner-released), and only then does the namespace exit.  The pernet exit path
(netns-exit) therefore finds an empty store from userspace's point of view; these
tests check that every ordering of "delete netns / close owner / close listener /
rmmod" leaves no node, no kernel warning and an unloadable module.
"""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from colo_env import (
    delete_netns,
    insmod,
    module_back,
    netns_name,
    read_json,
    report,
    rmmod,
    spawn,
    stop,
    temp_netns,
)

from colo_proxy.nl import (
    CheckpointNeededEvent,
    ColoClient,
    ColoEvents,
    ColoNetlinkError,
    GoneReason,
    Mode,
    NodeGoneEvent,
    Reason,
)

pytestmark = pytest.mark.kernel


@pytest.fixture
def loaded(colo_ko: Path) -> Iterator[None]:
    insmod(colo_ko)
    yield


def gone(events: list[object]) -> dict[int, GoneReason]:
    return {e.index: e.reason for e in events if isinstance(e, NodeGoneEvent)}


def test_nodes_are_invisible_from_other_namespaces(loaded: None) -> None:
    with temp_netns() as a, temp_netns() as b, \
            ColoClient(netns=a) as ca, ColoClient(netns=b) as cb, ColoClient() as root, \
            ColoEvents(netns=a, timeout=5.0) as ea, ColoEvents(netns=b, timeout=5.0) as eb:
        node_a = ca.proxy_init(Mode.PRIMARY, index=5)
        assert cb.dump() == []
        with pytest.raises(ColoNetlinkError) as exc:
            cb.get(5)
        assert exc.value.errno == errno.ENOENT
        assert node_a not in root.dump()
        with pytest.raises(ColoNetlinkError) as exc:
            cb.proxy_destroy(5)
        assert exc.value.errno == errno.ENOENT

        # the same index is free in another namespace
        node_b = cb.proxy_init(Mode.SECONDARY, index=5)
        assert (node_b.index, node_b.mode) == (5, Mode.SECONDARY)

        # events stay in their namespace
        ca.request_checkpoint(5, Reason.MANUAL)
        assert ea.next() == CheckpointNeededEvent(node_a.id, 5, Mode.PRIMARY, Reason.MANUAL)
        assert eb.next(timeout=1.0) is None
        cb.proxy_destroy(5)
        assert gone([eb.next()]) == {5: GoneReason.DESTROYED}
        assert ea.next(timeout=1.0) is None
        assert ca.get(5).mode == Mode.PRIMARY


def test_deleted_namespace_lives_while_the_owner_does(loaded: None,
                                                      request: pytest.FixtureRequest) -> None:
    name = netns_name()
    subprocess.run(["ip", "netns", "add", name], check=True)
    holder = None
    try:
        listener = ColoEvents(netns=name, timeout=30.0)
        observer = ColoClient(netns=name)
        try:
            holder = spawn(["hold", "3"], netns=name)
            indexes = sorted(read_json(holder, 180)["indexes"])  # type: ignore[arg-type]
            delete_netns(name)
            assert not Path("/run/netns", name).exists()
            # the owner's sockets pin the namespace: its nodes are all still there
            assert sorted(n.index for n in observer.dump()) == indexes
            stop(holder)
            events = listener.collect(lambda evs: len(gone(evs)) >= len(indexes), timeout=30.0)
            assert gone(events) == dict.fromkeys(indexes, GoneReason.OWNER_RELEASED)
            assert observer.dump() == []
            report(request, f"deleted netns kept {len(indexes)} nodes until their owner "
                            f"died; node-gone(owner-released) x{len(gone(events))}")
        finally:
            observer.close()
            listener.close()  # the last references: the namespace exits now
    finally:
        if holder is not None:
            stop(holder)
        delete_netns(name)


def test_many_namespaces_exit_then_rmmod(colo_ko: Path, request: pytest.FixtureRequest) -> None:
    """Namespaces deleted while their owners hold nodes; owners close; rmmod at once."""
    insmod(colo_ko)
    names = [netns_name() for _ in range(6)]
    clients: list[ColoClient] = []
    with module_back(colo_ko):
        try:
            for name in names:
                subprocess.run(["ip", "netns", "add", name], check=True)
                client = ColoClient(netns=name)
                clients.append(client)
                for i in range(20):
                    client.proxy_init(Mode.PRIMARY if i % 2 else Mode.SECONDARY)
                delete_netns(name)
            nodes = sum(len(c.dump()) for c in clients)
            assert nodes == 20 * len(names)
            for client in clients:
                client.close()
            clients.clear()
            # namespace cleanup runs in a kernel worker; rmmod races it on purpose
            res = rmmod()
            assert res.returncode == 0, f"rmmod failed: {res.stderr.strip()}"
            report(request, f"{len(names)} namespaces with {nodes} nodes deleted, owners "
                            "closed, rmmod immediately: ok")
        finally:
            for client in clients:
                client.close()
            for name in names:
                delete_netns(name)
