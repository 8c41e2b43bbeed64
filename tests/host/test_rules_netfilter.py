"""The rule set on real netfilter in the topology's phost, both iptables backends,
guard in iptables or in the nft table, with real packets and no queue consumer."""

from __future__ import annotations

import pytest
from nfqueue_support import servers, topology, udp_exchange

from colo_proxy.errors import ColoError
from colo_proxy.rules import RuleManager, RuleSpec, iptables, nft
from colo_proxy.rules.spec import restore_text

pytestmark = pytest.mark.root

BACKENDS = ["nft", "legacy"]


def _ours(backend: str, netns: str) -> list[str]:
    return [line for family in iptables.FAMILIES
            for line in iptables.save(backend, family, netns).splitlines() if "COLO_" in line]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("guard_in_nft", [False, True], ids=["guard-iptables", "guard-nft"])
@pytest.mark.parametrize("fail_open", [True, False], ids=["fail-open", "fail-closed"])
def test_rules_without_consumer(backend: str, guard_in_nft: bool, fail_open: bool) -> None:
    with topology() as topo, servers(topo):
        spec = RuleSpec(pvm_if=topo.phost_pvm_if, fwd_if=topo.phost_fwd_if,
                        fail_open=fail_open, guard_in_nft=guard_in_nft)
        manager = RuleManager(spec, topo.phost, backend)
        try:
            manager.apply()
            installed = _ours(backend, topo.phost)
            assert any("NFQUEUE" in line for line in installed)
            assert nft.exists(topo.phost) == guard_in_nft
            # No consumer bound: the SVM's reply never leaves phost; the PVM's flows
            # only in fail-open mode (--queue-bypass).
            replies = udp_exchange(topo, [b"one", b"two"], wait=0.5,
                                   expect=2 if fail_open else None)
            assert sorted(replies) == ([b"echo:one", b"echo:two"] if fail_open else [])
            if guard_in_nft:
                counted = nft.counters(topo.phost)
                assert counted["svm_seen"] >= 2
                assert counted["pvm_forwarded"] >= (2 if fail_open else 0)
            # Applying again replaces, never duplicates.
            RuleManager(spec, topo.phost, backend).apply()
            assert _ours(backend, topo.phost) == installed
        finally:
            manager.remove()
        assert _ours(backend, topo.phost) == []
        assert not nft.exists(topo.phost)
        # With the rules gone both replicas answer again (the test can fail).
        assert len(udp_exchange(topo, [b"three"], wait=0.5, expect=2)) == 2


def test_restore_text_is_one_transaction_per_table() -> None:
    text = restore_text(RuleSpec(pvm_if="p", fwd_if="f", queue_primary=3, queue_secondary=4))
    assert text.count("COMMIT") == 3
    assert "-j NFQUEUE --queue-num 3 --queue-bypass" in text
    assert "-j NFQUEUE --queue-num 4\n-A COLO_SVM -j DROP" in text
    closed = restore_text(RuleSpec(pvm_if="p", fwd_if="f", fail_open=False))
    assert "--queue-bypass" not in closed


def test_removal_leaves_foreign_rules() -> None:
    with topology() as topo:
        foreign = "*filter\n-A FORWARD -i to-client -j ACCEPT\nCOMMIT\n"
        iptables._run(["ip", "netns", "exec", topo.phost, "iptables-nft-restore", "--noflush"],
                      foreign)
        with RuleManager(RuleSpec(pvm_if="to-pvm", fwd_if="to-shost"), topo.phost, "nft"):
            pass
        saved = iptables.save("nft", "ipv4", topo.phost)
        assert "-A FORWARD -i to-client -j ACCEPT" in saved
        assert "COLO_" not in saved


def test_bad_interface_is_reported_and_nothing_stays() -> None:
    with topology() as topo:
        spec = RuleSpec(pvm_if="x" * 20, fwd_if="to-shost")  # too long for iptables
        with pytest.raises(ColoError):
            RuleManager(spec, topo.phost, "nft").apply()
        assert _ours("nft", topo.phost) == []
