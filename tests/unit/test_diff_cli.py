"""``colo-proxy diff`` on synthetic captures written with scapy (in tmp dirs, never committed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import CookedLinux, Ether
from scapy.packet import Packet, Raw
from scapy.utils import PcapNgWriter, PcapWriter, wrpcap

from colo_proxy.cli import main

VM, CLIENT = "10.9.0.1", "10.9.0.2"
VM_MAC, CLIENT_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
REQUEST = b"GET /page HTTP/1.0\r\nHost: vm\r\n\r\n"
HEAD = b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n"
PAGE = b"<html>\n<p>static</p>\n<p>token: %s</p>\n</html>\n"


def conversation(body: bytes, *, client_port: int = 40000, client_isn: int = 1000,
                 vm_isn: int = 500000, vm: str = VM, start: float = 1000.0) -> list[Packet]:
    """A complete HTTP/1.0 exchange as a capture on the VM's interface sees it."""
    to_vm = Ether(src=CLIENT_MAC, dst=VM_MAC) / IP(src=CLIENT, dst=vm)
    from_vm = Ether(src=VM_MAC, dst=CLIENT_MAC) / IP(src=vm, dst=CLIENT)
    c, s = client_isn, vm_isn
    response = HEAD + body
    pkts = [
        to_vm / TCP(sport=client_port, dport=80, flags="S", seq=c),
        from_vm / TCP(sport=80, dport=client_port, flags="SA", seq=s, ack=c + 1),
        to_vm / TCP(sport=client_port, dport=80, flags="A", seq=c + 1, ack=s + 1),
        to_vm / TCP(sport=client_port, dport=80, flags="PA", seq=c + 1, ack=s + 1) / Raw(REQUEST),
        from_vm / TCP(sport=80, dport=client_port, flags="A", seq=s + 1,
                      ack=c + 1 + len(REQUEST)),
        from_vm / TCP(sport=80, dport=client_port, flags="PA", seq=s + 1,
                      ack=c + 1 + len(REQUEST)) / Raw(response),
        from_vm / TCP(sport=80, dport=client_port, flags="FA", seq=s + 1 + len(response),
                      ack=c + 1 + len(REQUEST)),
        to_vm / TCP(sport=client_port, dport=80, flags="FA", seq=c + 1 + len(REQUEST),
                    ack=s + 2 + len(response)),
        from_vm / TCP(sport=80, dport=client_port, flags="A", seq=s + 2 + len(response),
                      ack=c + 2 + len(REQUEST)),
    ]
    for i, p in enumerate(pkts):
        p.time = start + i * 0.002
    return pkts


def run(*args: str) -> Result:
    return CliRunner().invoke(main, ["diff", *args])


def assert_one_line_error(result: Result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # no traceback, just the exit code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("colo-proxy: error: ")
    for needle in needles:
        assert needle in lines[0]


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.pcap"
    wrpcap(str(path), conversation(PAGE % b"aaaa"))
    return path


# --- bad input: one line, exit code 2 -------------------------------------------------

def test_missing_file(tmp_path: Path, good: Path) -> None:
    assert_one_line_error(run(str(tmp_path / "nope.pcap"), str(good)), "nope.pcap", "no such file")
    assert_one_line_error(run(str(good), str(tmp_path / "nope.pcap")), "nope.pcap")


def test_directory(tmp_path: Path, good: Path) -> None:
    assert_one_line_error(run(str(tmp_path), str(good)), "directory")


def test_garbage_file(tmp_path: Path, good: Path) -> None:
    garbage = tmp_path / "garbage.pcap"
    garbage.write_bytes(b"this is not a capture at all\n" * 20)
    assert_one_line_error(run(str(good), str(garbage)), "garbage.pcap", "not a pcap or pcapng")


def test_truncated_record(tmp_path: Path, good: Path) -> None:
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(good.read_bytes()[:24 + 16 + 10])  # header, record header, part of a frame
    assert_one_line_error(run(str(good), str(cut)), "cut.pcap", "cut short",
                          "before its first complete frame")


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_cut_short_after_some_frames_says_so(tmp_path: Path, fmt: str) -> None:
    # The file ends inside the 4th record (the first frame sent by the client with data):
    # the 3 complete frames are read and the report says the file is cut short.
    p, s = write_pair(tmp_path, conversation(PAGE % b"aaaa"), conversation(PAGE % b"aaaa"),
                      fmt)
    whole = Path(s).read_bytes()
    Path(s).write_bytes(whole[:len(whole) // 2])
    result = run(p, s)
    assert result.exit_code in (0, 1), result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("secondary"))
    assert "cut short" in line and "are lost" in line
    data = diff_json(p, s)
    assert data["secondary"]["cut_short_at_byte"] == len(whole) // 2  # type: ignore[index]
    assert data["primary"]["cut_short_at_byte"] is None  # type: ignore[index]


def test_cut_short_capture_is_named_in_later_input_errors(tmp_path: Path, good: Path) -> None:
    # Cut inside the SYN-ACK: only the client's SYN is left; the error says why.
    cut = tmp_path / "cut.pcap"
    whole = good.read_bytes()
    first_len = int.from_bytes(whole[24 + 8:24 + 12], "little")  # incl_len of record 1
    cut.write_bytes(whole[:24 + 16 + first_len + 20])
    assert_one_line_error(run(str(cut), str(good)), "no frames sent by the VM",
                          "cut.pcap is cut short after frame #1")


def test_raw_ip_linktype(tmp_path: Path, good: Path) -> None:
    raw = tmp_path / "raw.pcap"
    wrpcap(str(raw), [p[IP] for p in conversation(PAGE % b"aaaa")])
    assert_one_line_error(run(str(good), str(raw)), "raw.pcap", "raw IP", "Ethernet")


def test_linux_sll_linktype(tmp_path: Path, good: Path) -> None:
    sll = tmp_path / "sll.pcap"
    wrpcap(str(sll), [CookedLinux(proto=0x0800) / p[IP] for p in conversation(PAGE % b"a")])
    assert_one_line_error(run(str(sll), str(good)), "sll.pcap", "Linux cooked", "Ethernet")


def test_sll_pcapng(tmp_path: Path, good: Path) -> None:
    sll = tmp_path / "sll.pcapng"
    writer = PcapNgWriter(str(sll))
    for p in conversation(PAGE % b"a"):
        writer.write(CookedLinux(proto=0x0800) / p[IP])
    writer.close()
    assert_one_line_error(run(str(good), str(sll)), "sll.pcapng", "Ethernet")


def test_empty_pcap_and_pcapng(tmp_path: Path, good: Path) -> None:
    empty = tmp_path / "empty.pcap"
    PcapWriter(str(empty), linktype=1).close()
    assert empty.stat().st_size == 24  # a header, no records
    assert_one_line_error(run(str(empty), str(good)), "empty.pcap", "empty")
    empty_ng = tmp_path / "empty.pcapng"
    PcapNgWriter(str(empty_ng)).close()
    assert_one_line_error(run(str(good), str(empty_ng)), "empty.pcapng", "empty")


def test_mismatched_vm_address(tmp_path: Path, good: Path) -> None:
    other = tmp_path / "other.pcap"
    wrpcap(str(other), conversation(PAGE % b"aaaa", vm="10.9.0.77"))
    assert_one_line_error(run(str(good), str(other)), "disagree", "10.9.0.1", "10.9.0.77")


def test_no_vm_output_in_one_capture(tmp_path: Path, good: Path) -> None:
    half = tmp_path / "client-only.pcap"
    wrpcap(str(half), [p for p in conversation(PAGE % b"aaaa") if p[IP].src == CLIENT])
    assert_one_line_error(run(str(good), str(half), "--vm-ip", VM), "client-only.pcap",
                          "no frames sent by the VM")


def test_no_common_connection(tmp_path: Path, good: Path) -> None:
    other = tmp_path / "other-service.pcap"
    pkts = conversation(PAGE % b"aaaa")
    for p in pkts:  # same VM, a different service port: nothing to pair with
        tcp = p[TCP]
        if tcp.sport == 80:
            tcp.sport = 8080
        else:
            tcp.dport = 8080
    wrpcap(str(other), pkts)
    assert_one_line_error(run(str(good), str(other)), "share no connection")


def test_bad_options(good: Path) -> None:
    assert_one_line_error(run(str(good), str(good), "--vm-ip", "nonsense"), "--vm-ip")
    assert_one_line_error(run(str(good), str(good), "--vm-mac", "zz:1"), "--vm-mac")
    assert_one_line_error(run(str(good), str(good), "--passthrough", "bogus"), "--passthrough")


def test_no_handshake_needs_vm_option(tmp_path: Path) -> None:
    mid = tmp_path / "mid.pcap"
    wrpcap(str(mid), conversation(PAGE % b"aaaa")[3:6])
    assert_one_line_error(run(str(mid), str(mid)), "--vm-ip")


def test_real_process_prints_one_line(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pcapng"
    garbage.write_bytes(b"\x0a\x0d\x0d\x0a" + b"\xff" * 64)
    proc = subprocess.run([sys.executable, "-c", "from colo_proxy.cli import main; main()",
                           "diff", str(garbage), str(garbage)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("colo-proxy: error: ")


# --- through the engine -----------------------------------------------------------------

def write_pair(tmp_path: Path, primary: list[Packet], secondary: list[Packet],
               fmt: str = "pcap") -> tuple[str, str]:
    paths = []
    for name, pkts in (("primary", primary), ("secondary", secondary)):
        path = tmp_path / f"{name}.{fmt}"
        if fmt == "pcapng":
            writer = PcapNgWriter(str(path))
            for p in pkts:
                writer.write(p)
            writer.close()
        else:
            wrpcap(str(path), pkts)
        paths.append(str(path))
    return paths[0], paths[1]


def diff_json(*args: str) -> dict[str, object]:
    """The JSON report; the exit status must agree with its verdict (0 match, 1 diverged)."""
    result = run("--json", *args)
    assert result.exit_code in (0, 1), result.output + result.stderr
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    assert result.exit_code == (1 if data["summary"]["diverged"] else 0)  # type: ignore[index]
    return data


def test_identical_pages_independent_runs_match(tmp_path: Path) -> None:
    # Different client ports and ISNs, different VM ISNs and start times: a second run.
    p, s = write_pair(tmp_path, conversation(PAGE % b"same"),
                      conversation(PAGE % b"same", client_port=40123, client_isn=77777,
                                   vm_isn=9000000, start=5555.5))
    data = diff_json(p, s)
    summary = data["summary"]
    assert isinstance(summary, dict)
    assert summary["checkpoints"] == 0
    assert summary["connections_diverged"] == 0
    conns = data["connections"]
    assert isinstance(conns, list) and len(conns) == 1
    conn = conns[0]
    assert conn["connection"] == f"tcp {VM}:80 -> {CLIENT}:40000"
    assert conn["paired_from"] == f"tcp {VM}:80 -> {CLIENT}:40123"
    assert conn["matched"]["bytes"] == len(HEAD + PAGE % b"same")
    assert conn["first_divergence"] is None


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_token_page_diverges_at_the_token(tmp_path: Path, fmt: str) -> None:
    p, s = write_pair(tmp_path, conversation(PAGE % b"1f2e3d4c"),
                      conversation(PAGE % b"1f2e9999", client_isn=4242, vm_isn=123),
                      fmt)
    data = diff_json(p, s)
    assert data["primary"]["format"] == fmt  # type: ignore[index]
    assert data["summary"]["checkpoints_by_reason"] == {"payload-mismatch": 1}  # type: ignore[index]
    conn = data["connections"][0]  # type: ignore[index]
    div = conn["first_divergence"]
    token_at = len(HEAD) + PAGE.index(b"%s") + 4
    assert div["reason"] == "payload-mismatch"
    assert div["offset"] == token_at
    assert div["window"]["differing_offsets"][0] == token_at
    ctx = div["context"]["primary"]
    assert ctx["kind"] == "http-body"
    assert ctx["text"] == "<p>token: 1f2e3d4c</p>"
    assert div["context"]["secondary"]["text"] == "<p>token: 1f2e9999</p>"
    [checkpoint] = conn["checkpoints"]
    assert checkpoint["reason"] == "payload-mismatch"
    # the response frame is the 6th frame, 10 ms after the first
    assert checkpoint["time_ms"] == pytest.approx(10.0, abs=0.01)


def test_text_output_marks_the_token(tmp_path: Path) -> None:
    p, s = write_pair(tmp_path, conversation(PAGE % b"AAAA"), conversation(PAGE % b"AZZA"))
    result = run(p, s)
    assert result.exit_code == 1, result.stderr
    out = result.stdout
    assert "DIVERGED" in out and "payload-mismatch" in out
    lines = out.splitlines()
    ctx = next(i for i, line in enumerate(lines) if "<p>token: AAAA</p>" in line)
    assert "HTTP body line 3" in lines[ctx]
    caret = lines[ctx + 1]
    assert caret.strip() == "^^"
    assert lines[ctx][caret.index("^"):caret.index("^") + 2] == "AA"
    hexrow = next(line for line in lines if "41 41" in line and "5a 5a" in line)
    marks = lines[lines.index(hexrow) + 1]
    # per side: "^^" under the two hex cells and "^" under the two characters
    assert [side.count("^") for side in marks.split("|")] == [6, 6]
    assert "1 checkpoints requested (payload-mismatch: 1)" in out


def test_exact_keys_disables_pairing(tmp_path: Path) -> None:
    p, s = write_pair(tmp_path, conversation(PAGE % b"same"),
                      conversation(PAGE % b"same", client_port=40123))
    assert_one_line_error(run("--exact-keys", p, s), "share no connection")


def test_absolute_alignment_keeps_the_lag_and_reports_timeouts(tmp_path: Path) -> None:
    lagging = conversation(PAGE % b"same", start=1000.001)
    p, s = write_pair(tmp_path, conversation(PAGE % b"same"), lagging)
    data = diff_json("--align", "absolute", p, s)
    assert data["summary"]["checkpoints"] == 0  # type: ignore[index]
    # A secondary 10 s late: every primary frame waits past the compare timeout.
    late = conversation(PAGE % b"same", start=1010.0)
    p, s = write_pair(tmp_path, conversation(PAGE % b"same"), late)
    data = diff_json("--align", "absolute", "--compare-timeout", "500", p, s)
    [first, *_] = data["checkpoints"]  # type: ignore[misc]
    assert first["reason"] == "timeout"
    assert first["time_ms"] == pytest.approx(502.0, abs=0.01)  # SYN-ACK at 2 ms + 500 ms
    assert first["trigger"] is None
    # the same captures aligned on their starts match
    assert diff_json(p, s)["summary"]["checkpoints"] == 0  # type: ignore[index]


def test_secondary_output_already_covered_by_a_checkpoint_is_not_replayed(
        tmp_path: Path) -> None:
    # Connection A diverges; the primary serves connection B while that checkpoint is
    # pending, so the checkpoint releases B's frames and synchronises the secondary:
    # the secondary's (later) B output is covered, not a timeout.
    primary = (conversation(PAGE % b"AAAA", client_port=40000)
               + conversation(PAGE % b"same", client_port=40001, start=1000.020))
    secondary = (conversation(PAGE % b"ZZZZ", client_port=40000, start=1000.005)
                 + conversation(PAGE % b"same", client_port=40001, start=1000.100))
    p, s = write_pair(tmp_path, primary, secondary)
    data = diff_json("--align", "absolute", p, s)
    assert [c["reason"] for c in data["checkpoints"]] == ["payload-mismatch"]  # type: ignore[attr-defined]
    b = next(c for c in data["connections"]  # type: ignore[attr-defined]
             if c["connection"].endswith(":40001"))
    assert b["checkpoints"] == [] and b["diverged"] is False
    # SYN-ACK, data and FIN are covered; the two pure ACKs are replayed (acknowledgements)
    assert b["secondary"]["frames"] == 5
    assert b["secondary"]["covered_by_checkpoint"] == 3
    assert b["released"]["checkpoint"] == 5
    # With no checkpoint latency the checkpoint completes before B starts: B compares.
    data = diff_json("--align", "absolute", "--checkpoint-latency", "0", p, s)
    b = next(c for c in data["connections"]  # type: ignore[attr-defined]
             if c["connection"].endswith(":40001"))
    assert b["secondary"]["covered_by_checkpoint"] == 0
    assert b["matched"]["frames"] == 5
