"""Replay artefacts: what a modelled checkpoint does to the secondary's recorded output."""

from __future__ import annotations

from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw
from test_diff_cli import (
    CLIENT,
    CLIENT_MAC,
    HEAD,
    PAGE,
    REQUEST,
    VM,
    VM_MAC,
    conversation,
    diff_json,
    run,
    write_pair,
)

BODY = (b"<html>\n" + b"".join(b"<p>line %03d of a static page</p>\n" % i for i in range(40))
        + b"<p>token: %s</p>\n</html>\n")
DIFFERENT = (17, 60, 111, 150, 222, 280)


def segmented(body: bytes, port: int, segment: int, start: float, *, client_isn: int = 1000,
              vm_isn: int = 500000) -> list[Packet]:
    """An HTTP exchange whose response the VM sends in ``segment``-byte segments."""
    to_vm = Ether(src=CLIENT_MAC, dst=VM_MAC) / IP(src=CLIENT, dst=VM)
    from_vm = Ether(src=VM_MAC, dst=CLIENT_MAC) / IP(src=VM, dst=CLIENT)
    c, s = client_isn, vm_isn
    response = HEAD + body
    pkts = [to_vm / TCP(sport=port, dport=80, flags="S", seq=c),
            from_vm / TCP(sport=80, dport=port, flags="SA", seq=s, ack=c + 1),
            to_vm / TCP(sport=port, dport=80, flags="A", seq=c + 1, ack=s + 1),
            to_vm / TCP(sport=port, dport=80, flags="PA", seq=c + 1, ack=s + 1) / Raw(REQUEST)]
    ack = c + 1 + len(REQUEST)
    for off in range(0, len(response), segment):
        pkts.append(from_vm / TCP(sport=80, dport=port, flags="PA", seq=s + 1 + off, ack=ack)
                    / Raw(response[off:off + segment]))
    end = s + 1 + len(response)
    pkts += [from_vm / TCP(sport=80, dport=port, flags="FA", seq=end, ack=ack),
             to_vm / TCP(sport=port, dport=80, flags="FA", seq=ack, ack=end + 1),
             from_vm / TCP(sport=80, dport=port, flags="A", seq=end + 1, ack=ack + 1)]
    for i, p in enumerate(pkts):
        p.time = start + i * 0.001
    return pkts


def many(directory: Path, count: int, different: tuple[int, ...],
         lag: float) -> tuple[str, str]:
    """``count`` connections 50 ms apart, segmented differently on the two sides (400 and
    536 bytes), those in ``different`` with a different token; the secondary ``lag`` s late."""
    primary: list[Packet] = []
    secondary: list[Packet] = []
    for i in range(count):
        start = 1000 + i * 0.050
        token = b"%08x" % (i * 7919)
        other = b"%08x" % (i * 104729) if i in different else token
        primary += segmented(BODY % token, 40000 + i, 400, start)
        secondary += segmented(BODY % other, 40000 + i, 536, start + lag,
                               client_isn=5000 + i, vm_isn=900000 + i)
    return write_pair(directory, primary, secondary)


@pytest.fixture(scope="module")
def three_hundred(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """300 connections, 6 real differences.  At the default latency each checkpoint
    completes while the next connection is under way, with the secondary ahead of the
    primary (536-byte segments): before the fix, 11 connections "diverged"."""
    return many(tmp_path_factory.mktemp("three-hundred"), 300, DIFFERENT, 0.0003)


@pytest.mark.parametrize("latency", ["50", "10"])
def test_300_connections_report_the_6_real_differences(three_hundred: tuple[str, str],
                                                       latency: str) -> None:
    data = diff_json("--checkpoint-latency", latency, *three_hundred)
    summary = data["summary"]
    assert summary["connections"] == 300  # type: ignore[index]
    assert summary["connections_diverged"] == 6  # type: ignore[index]
    assert summary["checkpoints_by_reason"] == {"payload-mismatch": 6}  # type: ignore[index]
    diverged = [c for c in data["connections"] if c["diverged"]]  # type: ignore[attr-defined]
    assert sorted(c["key"]["dport"] for c in diverged) == [40000 + i for i in DIFFERENT]
    for conn in diverged:
        assert conn["first_divergence"]["context"]["primary"]["text"].startswith("<p>token:")
    assert summary["connections_latency_dependent"] == 0  # type: ignore[index]


def test_output_the_secondary_sent_ahead_is_resent(three_hundred: tuple[str, str]) -> None:
    data = diff_json(*three_hundred)
    # The secondary was ahead on the connection after each different one: the engine
    # forgot those bytes at the checkpoint; the replay sends them again.
    resent = {c["key"]["dport"] for c in data["connections"]  # type: ignore[attr-defined]
              if c["secondary"]["resent_after_checkpoint"]}
    assert resent and resent <= {40001 + i for i in DIFFERENT}
    result = run(*three_hundred)
    assert result.exit_code == 1
    assert "300 connections, 6 diverged" in result.stdout
    assert "beyond the secondary's FIN" not in result.stdout
    assert "does not depend on --checkpoint-latency" in result.stdout


def test_a_verdict_that_depends_on_the_latency_is_flagged(tmp_path: Path) -> None:
    # A diverges; B's secondary output (different from the primary's!) comes after A's
    # checkpoint would have synchronised it at 50 ms, but not at 0 ms: the verdict on B
    # is the model's, and the report says so.
    primary = (conversation(PAGE % b"AAAA", client_port=40000)
               + conversation(PAGE % b"same", client_port=40001, start=1000.020))
    secondary = (conversation(PAGE % b"ZZZZ", client_port=40000, start=1000.005)
                 + conversation(PAGE % b"diff", client_port=40001, start=1000.100))
    p, s = write_pair(tmp_path, primary, secondary)
    data = diff_json("--align", "absolute", p, s)
    summary = data["summary"]
    assert summary["connections_diverged_by_checkpoint_latency"] == {  # type: ignore[index]
        "50": 1, "0": 2, "100": 1}
    b = next(c for c in data["connections"]  # type: ignore[attr-defined]
             if c["connection"].endswith(":40001"))
    assert b["diverged"] is False and b["latency_dependent"] is True
    text = run("--align", "absolute", p, s).stdout
    assert "WARNING: the verdict depends on the modelled checkpoint latency" in text
    assert "40001  match  [depends on --checkpoint-latency" in text


def test_a_straddling_secondary_segment_is_trimmed(tmp_path: Path) -> None:
    # Secondary 1.5 ms late, checkpoint latency 49 ms: one checkpoint completes when the
    # primary has sent 1200 bytes of the next connection and the secondary 1072; its next
    # segment (1072-1402) straddles 1200.  Untrimmed, its bytes were compared at 1200 on:
    # a 7th "divergence" of identical pages.
    different = (3, 10, 17, 25, 33, 41)
    p, s = many(tmp_path, 50, different, 0.0015)
    data = diff_json("--checkpoint-latency", "49", p, s)
    summary = data["summary"]
    assert summary["connections_diverged"] == 6  # type: ignore[index]
    assert summary["secondary_frames_trimmed"] == 1  # type: ignore[index]
    [conn] = [c for c in data["connections"]  # type: ignore[attr-defined]
              if c["secondary"]["trimmed_at_checkpoint"]]
    assert conn["key"]["dport"] - 40001 in different
    assert conn["diverged"] is False
