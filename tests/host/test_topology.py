"""The namespace topology: real veths, routing and the tc mirror to the SVM."""

from __future__ import annotations

import pytest
from nfqueue_support import servers, topology, udp_exchange, unique_prefix

from colo_proxy.errors import InputError
from colo_proxy.topology import build
from colo_proxy.topology import netns as ns_util

pytestmark = pytest.mark.root


def test_build_routes_client_to_pvm_and_mirrors_to_svm() -> None:
    with topology() as topo, servers(topo):
        for name in topo.namespaces():
            assert ns_util.exists(name)
        # Without the datapath's rules both replicas answer: the PVM through
        # phost's routing, the SVM because the mirror gave it the same request.
        replies = udp_exchange(topo, [b"ping"], wait=0.5, expect=2)
        assert sorted(replies) == [b"echo:ping", b"echo:ping"]
        replies = udp_exchange(topo, [b"diverge"], wait=0.5, expect=2)
        assert sorted(replies) == [b"answer from pvm", b"answer from svm"]
    for name in topo.namespaces():
        assert not ns_util.exists(name)


def test_build_replaces_leftovers_and_destroy_is_idempotent() -> None:
    prefix = unique_prefix()
    first = build(prefix)
    try:
        ns_util.create(prefix + "-extra")  # not ours: must survive
        second = build(prefix)  # a crashed run left `first` behind
        try:
            assert all(ns_util.exists(n) for n in second.namespaces())
        finally:
            second.destroy()
            second.destroy()
        assert not any(ns_util.exists(n) for n in first.namespaces())
        assert ns_util.exists(prefix + "-extra")
    finally:
        first.destroy()
        ns_util.remove(prefix + "-extra")


@pytest.mark.parametrize("prefix", ["", "Bad_Name", "x" * 41, "-lead"])
def test_bad_prefix_is_input_error(prefix: str) -> None:
    with pytest.raises(InputError):
        build(prefix)
