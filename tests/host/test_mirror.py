"""Inbound mirroring (colo_proxy/rules/mirror.py, ``colo-proxy mirror``) on real devices.

Three namespaces per test: ``h``, the primary host, with ``tap0`` (a veth; its peer
``eth0`` in ``p`` stands for the PVM), ``fwd0`` (peer ``eth0`` in ``s``, the secondary
host) and ``oth0`` (peer in ``s`` too, a device that is not the forward link).  Frames
are transmitted on ``tap0`` from a packet socket in ``h``, so they pass its egress as a
frame to the PVM does; they are captured with packet sockets in the peers.

No timed asserts: after the frames under test, a sentinel frame is sent on the same
device (pinned to one CPU, so each veth peer gets the frames in order), and a capture
reads until its sentinel arrives.  What came before it is all there will be.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from colo_proxy.cli import main
from colo_proxy.errors import ColoError, InputError
from colo_proxy.rules import mirror
from colo_proxy.rules.mirror import State
from colo_proxy.topology import netns

pytestmark = pytest.mark.root

ETHERTYPE = 0x88B5  # IEEE local experimental: nothing else on these links uses it
SAFETY = 10.0  # seconds a capture waits for its sentinel before the test fails


@dataclass
class Topo:
    h: str
    p: str
    s: str
    tap: str = "tap0"
    fwd: str = "fwd0"
    other: str = "oth0"

    def names(self) -> list[str]:
        return [self.h, self.p, self.s]


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def topo() -> Iterator[Topo]:
    base = f"cpmir-{secrets.token_hex(4)}"
    t = Topo(f"{base}-h", f"{base}-p", f"{base}-s")
    try:
        for ns in t.names():
            netns.create(ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        for dev, peer_ns, peer in ((t.tap, t.p, "eth0"), (t.fwd, t.s, "eth0"),
                                   (t.other, t.s, "eth1")):
            _run("ip", "-n", t.h, "link", "add", dev, "type", "veth",
                 "peer", "name", peer, "netns", peer_ns)
            _run("ip", "-n", t.h, "link", "set", dev, "up")
            _run("ip", "-n", peer_ns, "link", "set", peer, "up")
        yield t
    finally:
        for ns in t.names():
            netns.remove(ns)
        assert not any(netns.exists(ns) for ns in t.names())


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The clsact claims of this test (also for the CLI, which runs in-process)."""
    monkeypatch.setattr(mirror, "STATE_DIR", tmp_path / "mirror")
    return tmp_path / "mirror"


def _frame(src: int, token: bytes) -> bytes:
    return b"\xff" * 6 + bytes([2, 0, 0, 0, 0, src]) + ETHERTYPE.to_bytes(2, "big") + token


def _rx(ns: str, dev: str) -> socket.socket:
    def make() -> socket.socket:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE))
        sock.bind((dev, ETHERTYPE))
        sock.settimeout(SAFETY)
        return sock
    return netns.run_in(ns, make)


def _until(sock: socket.socket, sentinel: bytes) -> list[bytes]:
    """Payloads received before ``sentinel`` (fails if it never comes)."""
    got = []
    while True:
        try:
            data, addr = sock.recvfrom(2048)
        except TimeoutError:
            pytest.fail(f"sentinel {sentinel!r} never arrived: {got}")
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        payload = data[14:].rstrip(b"\0")
        if payload == sentinel:
            return got
        got.append(payload)


def _send(t: Topo, frames: list[tuple[str, bytes]]) -> None:
    """Transmit each (device, payload) in ``h`` in order, from one CPU."""
    def send() -> None:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        for dev, payload in frames:
            with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
                sock.bind((dev, 0))
                sock.send(_frame(1, payload))
    netns.run_in(t.h, send)


def exchange(t: Topo, token: bytes) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """Send ``token`` out the tap: what the PVM, the forward link's peer and the other
    device's peer received."""
    pvm, sec, oth = _rx(t.p, "eth0"), _rx(t.s, "eth0"), _rx(t.s, "eth1")
    try:
        _send(t, [(t.tap, token), (t.tap, b"end-tap"), (t.fwd, b"end-fwd"),
                  (t.other, b"end-oth")])
        return (_until(pvm, b"end-tap"), [p for p in _until(sec, b"end-fwd") if p != b"end-tap"],
                [p for p in _until(oth, b"end-oth") if p != b"end-tap"])
    finally:
        for sock in (pvm, sec, oth):
            sock.close()


def _egress(t: Topo, side: str = "egress") -> list[dict[str, Any]]:
    out = _run("tc", "-n", t.h, "-j", "filter", "show", "dev", t.tap, side)
    return json.loads(out) if out.strip() else []


def _ours(t: Topo) -> list[dict[str, Any]]:
    return [f for f in _egress(t) if any(a.get("cookie") == mirror.COOKIE_HEX
                                         for a in f.get("options", {}).get("actions", []))]


def _qdiscs(t: Topo) -> list[str]:
    return [q["kind"] for q in json.loads(_run("tc", "-n", t.h, "-j", "qdisc", "show",
                                               "dev", t.tap))]


def _tc(t: Topo, *args: str) -> None:
    _run("tc", "-n", t.h, *args)


def _stable(filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Filters without their counters (stats, references, action indexes)."""
    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()
                    if k not in ("stats", "ref", "bind", "index", "installed", "last_used",
                                 "first_used", "expires")}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value
    return [clean(f) for f in filters]


def test_frames_to_the_tap_reach_the_forward_link_until_removed(topo: Topo,
                                                                state_dir: Path) -> None:
    pvm, sec, oth = exchange(topo, b"before")
    assert (pvm, sec, oth) == ([b"before"], [], [])  # no mirror yet

    done = mirror.apply(topo.tap, topo.fwd, topo.h)
    assert done.changed and done.created_clsact and done.status.state is State.OK
    assert done.status.classifier in mirror.CLASSIFIERS
    pvm, sec, oth = exchange(topo, b"mirrored")
    assert pvm == [b"mirrored"]
    assert sec == [b"mirrored"]
    assert oth == []

    removed = mirror.remove(topo.tap, topo.fwd, topo.h)
    assert removed.filters == 1 and removed.clsact_removed
    assert "clsact" not in _qdiscs(topo)
    assert not any(state_dir.glob("*"))
    pvm, sec, oth = exchange(topo, b"after")
    assert (pvm, sec, oth) == ([b"after"], [], [])
    # remove again: nothing to do, no error
    assert mirror.remove(topo.tap, None, topo.h) == mirror.Removed(0, clsact_removed=False)


def test_apply_twice_leaves_one_filter(topo: Topo, state_dir: Path) -> None:
    first = mirror.apply(topo.tap, topo.fwd, topo.h)
    before = _stable(_egress(topo))
    second = mirror.apply(topo.tap, topo.fwd, topo.h)
    assert first.changed and not second.changed and second.status.ok
    assert len(_ours(topo)) == 1
    assert _stable(_egress(topo)) == before
    pvm, sec, _ = exchange(topo, b"once")
    assert (pvm, sec) == ([b"once"], [b"once"])  # mirrored once, not twice
    mirror.remove(topo.tap, topo.fwd, topo.h)
    assert _ours(topo) == []


def test_foreign_clsact_and_filters_survive(topo: Topo, state_dir: Path) -> None:
    _tc(topo, "qdisc", "add", "dev", topo.tap, "clsact")
    # foreign: after ours on egress (it must still see the frames) and one on ingress
    _tc(topo, "filter", "add", "dev", topo.tap, "egress", "protocol", "all", "pref", "1000",
        "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "mirror",
        "dev", topo.other)
    _tc(topo, "filter", "add", "dev", topo.tap, "ingress", "protocol", "all", "pref", "7",
        "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "mirror",
        "dev", topo.other)
    foreign = (_stable(_egress(topo)), _stable(_egress(topo, "ingress")))

    done = mirror.apply(topo.tap, topo.fwd, topo.h)
    assert done.status.ok and not done.created_clsact
    pvm, sec, oth = exchange(topo, b"both")
    assert (pvm, sec, oth) == ([b"both"], [b"both"], [b"both"])

    removed = mirror.remove(topo.tap, topo.fwd, topo.h)
    assert removed.filters == 1 and not removed.clsact_removed
    assert "clsact" in _qdiscs(topo)
    assert (_stable(_egress(topo)), _stable(_egress(topo, "ingress"))) == foreign
    pvm, sec, oth = exchange(topo, b"foreign only")
    assert (pvm, sec, oth) == ([b"foreign only"], [], [b"foreign only"])


def test_empty_foreign_clsact_is_left(topo: Topo, state_dir: Path) -> None:
    _tc(topo, "qdisc", "add", "dev", topo.tap, "clsact")
    mirror.apply(topo.tap, topo.fwd, topo.h)
    assert not mirror.remove(topo.tap, topo.fwd, topo.h).clsact_removed
    assert "clsact" in _qdiscs(topo) and _egress(topo) == []


def test_clsact_we_made_stays_while_others_use_it(topo: Topo, state_dir: Path) -> None:
    assert mirror.apply(topo.tap, topo.fwd, topo.h).created_clsact
    _tc(topo, "filter", "add", "dev", topo.tap, "ingress", "protocol", "all", "pref", "7",
        "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "mirror",
        "dev", topo.other)
    assert not mirror.remove(topo.tap, topo.fwd, topo.h).clsact_removed
    assert "clsact" in _qdiscs(topo) and len(_egress(topo, "ingress")) > 0


def test_status_detects_a_deleted_filter(topo: Topo, state_dir: Path) -> None:
    mirror.apply(topo.tap, topo.fwd, topo.h)
    assert mirror.status(topo.tap, topo.fwd, topo.h).state is State.OK
    _tc(topo, "filter", "del", "dev", topo.tap, "egress", "pref", str(mirror.PREF))
    found = mirror.status(topo.tap, topo.fwd, topo.h)
    assert found.state is State.MISSING and found.ours == 0
    result = CliRunner().invoke(main, ["mirror", "status", "--tap", topo.tap,
                                       "--fwd", topo.fwd, "--netns", topo.h])
    assert result.exit_code == 1
    assert result.output.splitlines() == [f"missing: {found.detail}"]
    # apply repairs it
    assert mirror.apply(topo.tap, topo.fwd, topo.h).changed
    assert exchange(topo, b"again")[1] == [b"again"]
    mirror.remove(topo.tap, topo.fwd, topo.h)


def _retarget(topo: Topo, dev: str, cookie: bool, kind: str) -> None:
    """Replace our filter in place (same pref and handle) with one mirroring to ``dev``."""
    match = ["match", "u32", "0", "0"] if kind == "u32" else []
    handle = (next(f["options"]["fh"] for f in _ours(topo)) if kind == "u32"
              else str(mirror.HANDLE))
    verb = "replace"
    if kind == "matchall":  # matchall cannot be replaced in place (EEXIST)
        _tc(topo, "filter", "del", "dev", topo.tap, "egress", "chain", "0", "pref",
            str(mirror.PREF))
        verb = "add"
    _tc(topo, "filter", verb, "dev", topo.tap, "egress", "chain", "0", "protocol", "all",
        "pref", str(mirror.PREF), "handle", handle, kind, *match, "action", "mirred",
        "egress", "mirror", "dev", dev, *(["cookie", mirror.COOKIE_HEX] if cookie else []))


def test_status_detects_a_filter_pointing_elsewhere(topo: Topo, state_dir: Path) -> None:
    kind = mirror.apply(topo.tap, topo.fwd, topo.h).status.classifier
    assert kind is not None
    _retarget(topo, topo.other, cookie=True, kind=kind)
    found = mirror.status(topo.tap, topo.fwd, topo.h)
    assert found.state is State.CHANGED
    assert f"mirrors to {topo.other}, not {topo.fwd}" in found.detail
    result = CliRunner().invoke(main, ["mirror", "status", "--tap", topo.tap, "--fwd",
                                       topo.fwd, "--netns", topo.h, "--json"])
    assert result.exit_code == 1
    assert json.loads(result.output)["state"] == "changed"
    assert exchange(topo, b"elsewhere")[1:] == ([], [b"elsewhere"])
    # apply puts it back, in place
    assert mirror.apply(topo.tap, topo.fwd, topo.h).status.ok
    assert len(_ours(topo)) == 1
    assert exchange(topo, b"back")[1:] == ([b"back"], [])
    mirror.remove(topo.tap, topo.fwd, topo.h)


def test_a_foreign_filter_in_our_place_is_not_touched(topo: Topo, state_dir: Path) -> None:
    kind = mirror.apply(topo.tap, topo.fwd, topo.h).status.classifier
    assert kind is not None
    _retarget(topo, topo.other, cookie=False, kind=kind)  # someone else's now
    foreign = _stable(_egress(topo))
    found = mirror.status(topo.tap, topo.fwd, topo.h)
    assert found.state is State.BLOCKED and found.ours == 0
    with pytest.raises(ColoError, match="will not touch"):
        mirror.apply(topo.tap, topo.fwd, topo.h)
    assert mirror.remove(topo.tap, topo.fwd, topo.h).filters == 0
    assert _stable(_egress(topo)) == foreign
    assert "clsact" in _qdiscs(topo)  # it holds a foreign filter


def test_failed_apply_rolls_back(topo: Topo, state_dir: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_: object) -> None:
        raise ColoError("disk full")
    monkeypatch.setattr(mirror, "_claim", fail)  # the last step, after the filter is in
    with pytest.raises(ColoError, match="disk full"):
        mirror.apply(topo.tap, topo.fwd, topo.h)
    assert "clsact" not in _qdiscs(topo)
    assert exchange(topo, b"none")[1] == []


def test_matchall_when_the_kernel_has_it(topo: Topo, state_dir: Path) -> None:
    probe = subprocess.run(["tc", "-n", topo.h, "qdisc", "add", "dev", topo.other, "clsact"],
                           check=False, capture_output=True)
    assert probe.returncode == 0
    probe = subprocess.run(["tc", "-n", topo.h, "filter", "add", "dev", topo.other, "egress",
                            "matchall", "action", "mirred", "egress", "mirror",
                            "dev", topo.fwd], check=False, capture_output=True)
    if probe.returncode != 0:
        pytest.skip("this kernel has no matchall classifier (the u32 fallback is tested)")
    assert mirror.apply(topo.tap, topo.fwd, topo.h).status.classifier == "matchall"
    assert mirror.status(topo.tap, topo.fwd, topo.h).ok
    mirror.remove(topo.tap, topo.fwd, topo.h)
    assert _ours(topo) == []


@pytest.mark.parametrize(("args", "text"), [
    (["apply", "--tap", "nope0", "--fwd", "fwd0"], "no such tap device 'nope0' in netns"),
    (["apply", "--tap", "tap0", "--fwd", "nope0"], "no such forward device 'nope0' in netns"),
    (["status", "--tap", "tap0", "--fwd", "nope0"], "no such forward device 'nope0' in netns"),
    (["remove", "--tap", "nope0"], "no such tap device 'nope0' in netns"),
    (["apply", "--tap", "tap0", "--fwd", "tap0"], "tap and forward device are the same"),
])
def test_bad_input_is_one_line(topo: Topo, state_dir: Path, args: list[str], text: str
                               ) -> None:
    result = CliRunner().invoke(main, ["mirror", *args, "--netns", topo.h])
    assert result.exit_code == InputError.exit_code
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("colo-proxy: error: ")
    assert text in lines[0]
    assert "Traceback" not in result.output
    assert "clsact" not in _qdiscs(topo)


def test_missing_netns_is_one_line() -> None:
    ns = f"cpmir-{secrets.token_hex(4)}-missing"
    proc = subprocess.run([sys.executable, "-c",
                           "from colo_proxy.cli import main; main()", "mirror", "apply",
                           "--tap", "tap0", "--fwd", "fwd0", "--netns", ns],
                          check=False, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"colo-proxy: error: network namespace {ns!r} "
                                        "does not exist"]
    assert not netns.exists(ns)  # not created by looking


def test_ours_out_of_place_is_moved_back(topo: Topo, state_dir: Path) -> None:
    _tc(topo, "qdisc", "add", "dev", topo.tap, "clsact")
    _tc(topo, "filter", "add", "dev", topo.tap, "egress", "protocol", "all", "pref", "300",
        "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "mirror",
        "dev", topo.fwd, "continue", "cookie", mirror.COOKIE_HEX)
    found = mirror.status(topo.tap, topo.fwd, topo.h)
    assert found.state is State.CHANGED and "pref 300" in found.detail
    assert mirror.apply(topo.tap, topo.fwd, topo.h).status.ok
    assert [f["pref"] for f in _ours(topo)] == [mirror.PREF]
    assert exchange(topo, b"moved")[1] == [b"moved"]
    mirror.remove(topo.tap, topo.fwd, topo.h)
    assert _egress(topo) == [] and "clsact" in _qdiscs(topo)  # not created by apply
