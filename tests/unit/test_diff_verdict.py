"""``colo-proxy diff`` verdicts: one parser with the engine, everything counts, exit status."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw
from test_diff_cli import PAGE, VM, conversation, diff_json, run, write_pair

from colo_proxy.compare import parse as engine_parse
from colo_proxy.compare.conn import Conn
from colo_proxy.compare.core import Core
from colo_proxy.compare.model import ConnKey, Reason
from colo_proxy.diff import headers

A4, B4 = bytes([10, 9, 0, 1]), bytes([10, 9, 0, 2])
A6 = bytes.fromhex("fd000000000000000000000000000001")
B6 = bytes.fromhex("fd000000000000000000000000000002")
ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def _tcp4() -> Packet:
    return IP(src="10.9.0.1", dst="10.9.0.2") / TCP(sport=80, dport=4000, seq=7) / Raw(b"x")


# One table for both parsers: frame, the key the engine must give, and the class.
FRAMES: list[tuple[str, bytes, ConnKey, int]] = [
    ("untagged tcp", bytes(ETH / _tcp4()),
     ConnKey(-1, 4, A4, B4, 6, 80, 4000), engine_parse.TCP),
    ("802.1Q 7", bytes(ETH / Dot1Q(vlan=7) / _tcp4()),
     ConnKey(7, 4, A4, B4, 6, 80, 4000), engine_parse.TCP),
    ("QinQ 802.1ad 5 + 802.1Q 7", bytes(ETH / Dot1AD(vlan=5) / Dot1Q(vlan=7) / _tcp4()),
     ConnKey(5 << 12 | 7, 4, A4, B4, 6, 80, 4000), engine_parse.TCP),
    ("TPID 0x9100 3 + 802.1Q 7", bytes(ETH / Dot1Q(type=0x9100, vlan=3)
                                      / Dot1Q(vlan=7) / _tcp4()),
     ConnKey(3 << 12 | 7, 4, A4, B4, 6, 80, 4000), engine_parse.TCP),
    ("outer TPID 0x9100", bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02",
                                      type=0x9100) / Dot1Q(vlan=9) / _tcp4()),
     ConnKey(9, 4, A4, B4, 6, 80, 4000), engine_parse.TCP),
    ("three tags", bytes(ETH / Dot1AD(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3) / _tcp4()),
     ConnKey(1 << 24 | 2 << 12 | 3, 4, A4, B4, 6, 80, 4000), engine_parse.TCP),
    ("udp", bytes(ETH / IP(src="10.9.0.1", dst="10.9.0.2") / UDP(sport=53, dport=9) / b"q"),
     ConnKey(-1, 4, A4, B4, 17, 53, 9), engine_parse.FIFO),
    ("ipv4 fragment", bytes(ETH / IP(src="10.9.0.1", dst="10.9.0.2", flags="MF", proto=6)
                            / Raw(b"y" * 24)),
     ConnKey(-1, 4, A4, B4, 6, 0, 0, True), engine_parse.FIFO),
    ("ipv6 dest-opts tcp", bytes(ETH / IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrDestOpt()
                                 / TCP(sport=80, dport=4000) / b"z"),
     ConnKey(-1, 6, A6, B6, 6, 80, 4000), engine_parse.TCP),
    ("ipv6 fragment", bytes(ETH / IPv6(src="fd00::1", dst="fd00::2")
                            / IPv6ExtHdrFragment(offset=8, nh=6) / Raw(b"w" * 16)),
     ConnKey(-1, 6, A6, B6, 6, 0, 0, True), engine_parse.FIFO),
    ("arp", bytes(ETH / ARP(psrc="10.9.0.1", pdst="10.9.0.2")),
     ConnKey(-1, 0x0806, b"", b"", 0, 0, 0), engine_parse.CONTROL),
    ("tcp cut by snaplen", bytes(ETH / _tcp4())[:40],
     ConnKey(-1, 0x0800, b"", b"", 0, 0, 0), engine_parse.FIFO),
]


@pytest.mark.parametrize(("frame", "key", "kind"), [f[1:] for f in FRAMES],
                         ids=[f[0] for f in FRAMES])
def test_one_table_of_frames_for_the_engine_and_diff(frame: bytes, key: ConnKey,
                                                     kind: int) -> None:
    got = engine_parse.parse(frame, 0)
    assert (got[0], got[1]) == (kind, key)
    h = headers.parse(frame)
    assert h is not None
    assert (h.kind, h.key) == (kind, key)
    if kind == engine_parse.TCP:
        assert h.payload == got[5]
        assert frame[h.l4:h.l4 + 4] == key.sport.to_bytes(2, "big") + key.dport.to_bytes(2, "big")
    if key.l3 == 0x0806:
        assert h.arp_spa == A4


def _tagged(pkts: list[Packet], *tags: Packet) -> list[Packet]:
    out = []
    for p in pkts:
        frame = Ether(src=p[Ether].src, dst=p[Ether].dst)
        for tag in tags:
            frame = frame / tag.copy()
        frame = frame / p[IP]
        frame.time = p.time
        out.append(frame)
    return out


def test_qinq_divergence_is_reported_on_its_connection(tmp_path: Path) -> None:
    tags = (Dot1AD(vlan=5), Dot1Q(vlan=7))
    p, s = write_pair(tmp_path, _tagged(conversation(PAGE % b"AAAA"), *tags),
                      _tagged(conversation(PAGE % b"ZZZZ"), *tags))
    data = diff_json(p, s)
    summary = data["summary"]
    assert summary["connections_diverged"] == 1  # type: ignore[index]
    assert summary["checkpoints_without_connection"] == 0  # type: ignore[index]
    [conn] = data["connections"]  # type: ignore[misc]
    assert conn["connection"].endswith("vlan 5.7")
    assert conn["key"]["vlan"] == 5 << 12 | 7
    assert [c["reason"] for c in conn["checkpoints"]] == ["payload-mismatch"]
    text = run(p, s).stdout
    assert "vlan 5.7  DIVERGED" in text
    assert "1 connections, 1 diverged" in text


def test_overflow_drops_are_a_divergence(tmp_path: Path) -> None:
    p, s = write_pair(tmp_path, conversation(PAGE % b"same"), conversation(PAGE % b"same"))
    assert diff_json(p, s)["summary"]["diverged"] is False  # type: ignore[index]
    data = diff_json("--max-held-bytes", "1", p, s)
    [conn] = data["connections"]  # type: ignore[misc]
    assert conn["dropped"]["overflow"] == 10  # all 5 frames of each side
    assert conn["diverged"] is True
    assert "10 frames dropped (overflow)" in conn["verdict"]
    assert data["summary"]["connections_diverged"] == 1  # type: ignore[index]
    result = run("--max-held-bytes", "1", p, s)
    assert result.exit_code == 1
    assert "DIVERGED (10 frames dropped (overflow))" in result.stdout


def test_a_timeout_is_a_divergence(tmp_path: Path) -> None:
    # The secondary never answers the last ACK: that primary frame times out.
    primary = conversation(PAGE % b"same")
    secondary = conversation(PAGE % b"same")[:-1]
    p, s = write_pair(tmp_path, primary, secondary)
    data = diff_json("--compare-timeout", "100", p, s)
    [conn] = data["connections"]  # type: ignore[misc]
    assert "1 timeout" in conn["verdict"]
    assert conn["diverged"] is True
    assert data["summary"]["checkpoints_by_reason"] == {"timeout": 1}  # type: ignore[index]
    assert data["summary"]["connections_diverged"] == 1  # type: ignore[index]
    result = run("--compare-timeout", "100", p, s)
    assert result.exit_code == 1
    assert "DIVERGED (1 checkpoint, 1 timeout)" in result.stdout
    assert "1 connections, 1 diverged" in result.stdout


def test_the_engine_ties_every_checkpoint_to_a_connection(tmp_path: Path) -> None:
    """Even the engine-wide limit: the memory-limit request names the connection whose
    frame crossed it, so no capture gives a checkpoint without one."""
    p, s = write_pair(tmp_path, conversation(PAGE % b"same"), conversation(PAGE % b"same"))
    data = diff_json("--max-held-bytes", "100", p, s)
    summary = data["summary"]
    assert summary["checkpoints_by_reason"] == {"memory-limit": 1}  # type: ignore[index]
    assert summary["checkpoints_without_connection"] == 0  # type: ignore[index]
    [conn] = data["connections"]  # type: ignore[misc]
    assert [c["reason"] for c in conn["checkpoints"]] == ["memory-limit"]
    assert "checkpoints not tied to a connection" not in run("--max-held-bytes", "100",
                                                             p, s).stdout


def test_a_checkpoint_without_a_connection_is_listed(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A request may name no connection (``CheckpointRequest.key`` is optional, as in the
    kernel's events); the engine never raises one today, so an engine whose memory-limit
    request is engine-wide stands in: the report lists it, counts it, exits 1."""
    original = Core.request

    def engine_wide(self: Core, reason: Reason, conn: Conn | None, *args: Any) -> None:
        original(self, reason, None if reason == Reason.MEMORY_LIMIT else conn, *args)

    monkeypatch.setattr(Core, "request", engine_wide)
    p, s = write_pair(tmp_path, conversation(PAGE % b"same"), conversation(PAGE % b"same"))
    data = diff_json("--max-held-bytes", "100", p, s)
    summary = data["summary"]
    assert summary["checkpoints_without_connection"] == 1  # type: ignore[index]
    assert summary["diverged"] is True  # type: ignore[index]
    [cp] = data["checkpoints"]  # type: ignore[misc]
    assert cp["reason"] == "memory-limit" and cp["connection"] is None
    result = run("--max-held-bytes", "100", p, s)
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    at = lines.index("  checkpoints not tied to a connection:")
    assert "memory-limit" in lines[at + 1] and "(no connection)" in lines[at + 1]
    assert "bytes held (limit 100)" in lines[at + 1]


def test_exit_status_like_diff(tmp_path: Path) -> None:
    same = write_pair(tmp_path, conversation(PAGE % b"same"), conversation(PAGE % b"same"))
    assert run(*same).exit_code == 0
    assert run("--json", *same).exit_code == 0
    other = tmp_path / "other"
    other.mkdir()
    differ = write_pair(other, conversation(PAGE % b"AAAA"), conversation(PAGE % b"ZZZZ"))
    assert run(*differ).exit_code == 1
    assert run("--json", *differ).exit_code == 1
    assert run(str(tmp_path / "none.pcap"), differ[1]).exit_code == 2
    assert "Exit status" in run("--help").stdout


def test_broken_pipe_exits_quietly_with_zero(tmp_path: Path) -> None:
    # Many diverging connections: far more output than a pipe buffer holds.
    primary: list[Packet] = []
    secondary: list[Packet] = []
    for i in range(60):
        primary += conversation(PAGE % b"AAAA", client_port=41000 + i, start=1000 + i * 0.05)
        secondary += conversation(PAGE % b"ZZZZ", client_port=41000 + i, start=1000 + i * 0.05)
    p, s = write_pair(tmp_path, primary, secondary)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write, as with `| head -c0`
    try:
        proc = subprocess.run([sys.executable, "-c", "from colo_proxy.cli import main; main()",
                               "diff", p, s], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, check=False, timeout=120)
    finally:
        os.close(write_end)
    assert proc.stderr == ""
    assert proc.returncode == 0
    # and `| head -1` through a real pipe
    shell = subprocess.run(
        f"set -o pipefail; {sys.executable} -c 'from colo_proxy.cli import main; main()' "
        f"diff {p} {s} | head -1", shell=True, executable="/bin/bash",
        capture_output=True, text=True, check=False, timeout=120)
    assert shell.stderr == ""
    assert shell.returncode == 0
    assert shell.stdout.startswith("primary ")


def test_vm_address_in_the_reports_connection_lines(tmp_path: Path) -> None:
    p, s = write_pair(tmp_path, conversation(PAGE % b"AAAA"), conversation(PAGE % b"ZZZZ"))
    assert f"tcp {VM}:80 -> " in run(p, s).stdout


def test_an_insertion_realigns_the_hexdump(tmp_path: Path) -> None:
    # The secondary's token is 3 bytes longer: after those bytes the streams are equal
    # again, and the rows after the divergence say so instead of marking every byte.
    p, s = write_pair(tmp_path, conversation(PAGE % b"abcd"), conversation(PAGE % b"abcdXYZ"))
    data = diff_json(p, s)
    div = data["connections"][0]["first_divergence"]  # type: ignore[index]
    at = len(b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n") + PAGE.index(b"%s") + 4
    assert div["offset"] == at
    assert div["realigned"] == {"offset": at, "secondary_offset": at + 3}
    # only the divergence's row has differing bytes
    assert all(at <= m < (at // 8 + 1) * 8 for m in div["window"]["differing_offsets"])
    assert div["context"]["secondary"]["marks"] == [[div["context"]["secondary"]["column"],
                                                     div["context"]["secondary"]["column"] + 3]]
    lines = run(p, s).stdout.splitlines()
    row = next(i for i, line in enumerate(lines) if line.split()[:1] == [str(at // 8 * 8)])
    assert "^" in lines[row + 1]
    after = lines[row + 2].split("|")
    assert after[0].split()[0] == str(at // 8 * 8 + 8)
    assert after[1].split()[0] == str(at // 8 * 8 + 8 + 3)
    assert "^" not in lines[row + 3]


def test_offsets_are_decimal_like_the_engine_detail(tmp_path: Path) -> None:
    p, s = write_pair(tmp_path, conversation(PAGE % b"AAAA"), conversation(PAGE % b"ZZZZ"))
    out = run(p, s).stdout
    at = len(b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n") + PAGE.index(b"%s")
    assert f"at stream offset {at}," in out
    assert f"differs at stream offset {at}" in out
    rows = [line.split() for line in out.splitlines() if "|" in line and "offset" not in line
            and "^" not in line]
    assert [r[0] for r in rows][:2] == [str(at // 8 * 8 - 8), str(at // 8 * 8)]


def test_non_ip_frames_are_compared_and_control_frames_are_not(tmp_path: Path) -> None:
    # The engine compares an unknown EtherType (FIFO) and releases ARP uncompared; the
    # report's counts follow the engine's classes.
    def extra(payload: bytes) -> list[Packet]:
        local = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x88B5) / payload
        arp = Ether(src="02:00:00:00:00:01", dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=VM)
        local.time, arp.time = 1000.05, 1000.06
        return [local, arp]

    p, s = write_pair(tmp_path, conversation(PAGE % b"same") + extra(b"x" * 50),
                      conversation(PAGE % b"same") + extra(b"x" * 50))
    data = diff_json("--vm-mac", "02:00:00:00:00:01", p, s)
    conns = {c["connection"]: c for c in data["connections"]}  # type: ignore[attr-defined]
    assert conns["ethertype 0x88b5"]["matched"]["frames"] == 1
    assert conns["ethertype 0x88b5"]["released"]["uncompared"] == 0
    assert conns["ethertype 0x0806"]["released"]["uncompared"] == 1
    assert conns["ethertype 0x0806"]["matched"]["frames"] == 0
