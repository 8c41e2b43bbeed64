"""``colo-proxy diff`` on captures recorded from real HTTP traffic in namespaces.

Two "VMs" (namespaces ``*-pvm`` and ``*-svm``) with identical addresses and MACs, each
with its own client namespace behind a veth, run the same small http.server service
in two variants: port 8080 serves deterministic pages, port 8081 embeds a random
token in /token.html.  curl fetches the same pages from the same client ports in both
pairs, the secondary's right after the primary's (the secondary lags, as in COLO);
tcpdump records the VM-facing veth of each VM.  Both captures share the host's clock,
so the strict counts use ``--align absolute``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from nfqueue_support import stop_process
from pyroute2 import NetNS, netns

from colo_proxy.cli import main

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

VM_IP, CLIENT_IP = "10.77.0.1", "10.77.0.2"
VM_MAC, CLIENT_MAC = "02:c0:10:00:00:01", "02:c0:10:00:00:02"
DETERMINISTIC_PORT, TOKEN_PORT = 8080, 8081
PAGES = ("/index.html", "/token.html", "/about.html")

SERVER = r"""
import http.server, secrets, sys
port, random_token = int(sys.argv[1]), sys.argv[2] == "token"
PAGES = {
    "/index.html": b"<html>\n<h1>colo diff test</h1>\n<p>a static page</p>\n</html>\n",
    "/about.html": b"<html>\n<p>about: nothing random here</p>\n</html>\n" * 40,
}
class Handler(http.server.BaseHTTPRequestHandler):
    def date_time_string(self, timestamp=None):
        return "Thu, 01 Jan 2015 00:00:00 GMT"  # the clock is not what this test is about
    def do_GET(self):
        if self.path == "/token.html":
            token = secrets.token_hex(16) if random_token else "0" * 32
            body = ("<html>\n<h1>session</h1>\n<p>token: %s</p>\n<p>bye</p>\n</html>\n"
                    % token).encode()
        elif self.path in PAGES:
            body = PAGES[self.path]
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("0.0.0.0", port), Handler)
print("ready", flush=True)
server.serve_forever()
"""


@dataclass
class Pair:
    """One VM namespace and its client namespace."""

    name: str
    vm: str
    client: str


@dataclass
class Recording:
    primary: Path
    secondary: Path
    bodies: dict[str, tuple[bytes, bytes]]
    """page -> (what the primary's client received, what the secondary's did), headers included"""
    ports: dict[str, int]
    """page -> client port"""


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def _make_pair(prefix: str, name: str, created: list[str]) -> Pair:
    vm, client = f"{prefix}-{name}", f"{prefix}-{name}c"
    for ns in (vm, client):
        netns.create(ns)
        created.append(ns)
        # no IPv6 autoconfiguration chatter in the captures
        _sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1")
    with NetNS(vm) as n:
        n.link("add", ifname="vm0", kind="veth", peer={"ifname": "cl0", "net_ns_fd": client})
    for ns, ifname, mac, ip in ((vm, "vm0", VM_MAC, VM_IP), (client, "cl0", CLIENT_MAC, CLIENT_IP)):
        with NetNS(ns) as n:
            idx = n.link_lookup(ifname=ifname)[0]
            n.link("set", index=idx, address=mac)
            n.addr("add", index=idx, address=ip, prefixlen=24)
            n.link("set", index=idx, state="up")
            n.link("set", index=n.link_lookup(ifname="lo")[0], state="up")
    return Pair(name, vm, client)


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Pair, Pair]]:
    for tool in ("tcpdump", "curl"):
        assert shutil.which(tool), f"{tool} is missing (make deps installs it)"
    prefix = f"colot-{secrets.token_hex(3)}"
    created: list[str] = []
    procs: list[subprocess.Popen[str]] = []
    try:
        pairs = (_make_pair(prefix, "pvm", created), _make_pair(prefix, "svm", created))
        for pair in pairs:
            for port, variant in ((DETERMINISTIC_PORT, "static"), (TOKEN_PORT, "token")):
                proc = subprocess.Popen(
                    ["ip", "netns", "exec", pair.vm, sys.executable, "-c", SERVER, str(port),
                     variant], stdout=subprocess.PIPE, text=True)
                procs.append(proc)
                assert proc.stdout is not None
                assert proc.stdout.readline().strip() == "ready", "http server did not start"
        yield pairs
    finally:
        for proc in procs:
            stop_process(proc)
        for ns in created:
            netns.remove(ns)


def _tcpdump(pair: Pair, path: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", pair.vm, "tcpdump", "-i", "vm0", "-n", "-U", "--immediate-mode",
         "-Z", "root", "-w", str(path)],
        stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    while True:  # tcpdump says "listening on vm0, ..." once the capture is open
        line = proc.stderr.readline()
        if not line:
            raise AssertionError(f"tcpdump failed to start (rc {proc.wait()})")
        if "listening on" in line:
            return proc


def _record(pairs: tuple[Pair, Pair], tmp: Path, service_port: int,
            first_client_port: int) -> Recording:
    paths = (tmp / "primary.pcap", tmp / "secondary.pcap")
    dumps = [_tcpdump(pair, path) for pair, path in zip(pairs, paths, strict=True)]
    bodies: dict[str, tuple[bytes, bytes]] = {}
    ports: dict[str, int] = {}
    try:
        for n, page in enumerate(PAGES):
            port = first_client_port + n
            outs = [tmp / f"{pair.name}-{n}.http" for pair in pairs]
            # As in COLO, the secondary serves each request after the primary did.
            for pair, out in zip(pairs, outs, strict=True):
                _sh("ip", "netns", "exec", pair.client, "curl", "-sS", "--max-time", "20",
                    "--local-port", str(port), "-i", "-o", str(out),
                    f"http://{VM_IP}:{service_port}{page}")
            bodies[page] = (outs[0].read_bytes(), outs[1].read_bytes())
            ports[page] = port
        # The VMs' last ACKs follow curl's exit: let tcpdump see them (not an assert).
        time.sleep(0.5)
    finally:
        for dump in dumps:
            stop_process(dump, signal.SIGINT)
    return Recording(paths[0], paths[1], bodies, ports)


@pytest.fixture(scope="module")
def deterministic(lab: tuple[Pair, Pair],
                  tmp_path_factory: pytest.TempPathFactory) -> Recording:
    return _record(lab, tmp_path_factory.mktemp("static"), DETERMINISTIC_PORT, 41000)


@pytest.fixture(scope="module")
def token(lab: tuple[Pair, Pair], tmp_path_factory: pytest.TempPathFactory) -> Recording:
    return _record(lab, tmp_path_factory.mktemp("token"), TOKEN_PORT, 42000)


def _diff(rec: Recording, *args: str, status: int = 0) -> str:
    """The report; exit status 0 when the captures match, 1 when they diverge."""
    result = CliRunner().invoke(main, ["diff", *args, str(rec.primary), str(rec.secondary)])
    assert result.exit_code == status, result.output + result.stderr
    return result.stdout


def _diff_json(rec: Recording, *args: str, status: int = 0) -> dict[str, object]:
    data = json.loads(_diff(rec, "--json", *args, status=status))
    assert isinstance(data, dict)
    return data


def _key(service_port: int, client_port: int) -> str:
    return f"tcp {VM_IP}:{service_port} -> {CLIENT_IP}:{client_port}"


def _first_difference(a: bytes, b: bytes) -> int:
    return next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)


def test_deterministic_pages_match_without_checkpoints(deterministic: Recording) -> None:
    for primary, secondary in deterministic.bodies.values():
        assert primary == secondary  # the service really is deterministic
    data = _diff_json(deterministic, "--align", "absolute")
    summary = data["summary"]
    assert isinstance(summary, dict)
    assert summary["checkpoints"] == 0, data["checkpoints"]
    assert summary["connections_diverged"] == 0
    conns = {c["connection"]: c for c in data["connections"]}  # type: ignore[attr-defined]
    for page, (body, _) in deterministic.bodies.items():
        conn = conns[_key(DETERMINISTIC_PORT, deterministic.ports[page])]
        assert conn["paired_from"] is None  # same client ports: the keys line up by themselves
        assert conn["primary"]["bytes"] == len(body) == conn["secondary"]["bytes"]
        assert conn["matched"]["bytes"] == len(body)
        assert conn["matched"]["frames"] >= 1
        assert conn["checkpoints"] == []
        assert conn["first_divergence"] is None
    text = _diff(deterministic, "--align", "absolute")
    assert "0 checkpoints requested" in text
    assert "DIVERGED" not in text


def test_token_page_diagnosis_json(token: Recording) -> None:
    p_body, s_body = token.bodies["/token.html"]
    assert p_body != s_body and len(p_body) == len(s_body)
    offset = _first_difference(p_body, s_body)
    token_start = p_body.index(b"token: ") + len(b"token: ")
    token_end = p_body.index(b"</p>", token_start)
    assert token_start <= offset < token_end

    # A short checkpoint keeps the next page's connection clear of the token's checkpoint.
    data = _diff_json(token, "--align", "absolute", "--checkpoint-latency", "1", status=1)
    assert data["primary"]["format"] == "pcap"  # type: ignore[index]
    assert data["replay"]["align"] == "absolute"  # type: ignore[index]
    assert data["vm"] == {"ips": [VM_IP], "macs": [], "selected_by": "auto: TCP server role"}
    summary = data["summary"]
    assert isinstance(summary, dict)
    assert summary["checkpoints"] == 1
    assert summary["checkpoints_by_reason"] == {"payload-mismatch": 1}
    assert isinstance(summary["requests_suppressed"], int)

    conns = {c["connection"]: c for c in data["connections"]}  # type: ignore[attr-defined]
    tcp = {name for name in conns if name.startswith("tcp ")}
    assert tcp == {_key(TOKEN_PORT, p) for p in token.ports.values()}
    for page in ("/index.html", "/about.html"):
        conn = conns[_key(TOKEN_PORT, token.ports[page])]
        assert conn["checkpoints"] == [] and conn["first_divergence"] is None
        assert conn["matched"]["bytes"] == len(token.bodies[page][0])

    conn = conns[_key(TOKEN_PORT, token.ports["/token.html"])]
    [checkpoint] = conn["checkpoints"]
    assert checkpoint["reason"] == "payload-mismatch"
    assert checkpoint["connection"] == conn["connection"]
    assert checkpoint["time_ms"] > 0
    div = conn["first_divergence"]
    assert div["source"] == "engine"
    assert div["reason"] == "payload-mismatch"
    assert div["offset"] == offset
    assert div["secondary_offset"] == offset
    marked = div["window"]["differing_offsets"]
    assert marked and marked[0] == offset
    assert all(token_start <= m < token_end for m in marked)
    primary_token = p_body[token_start:token_end].decode()
    secondary_token = s_body[token_start:token_end].decode()
    assert div["context"]["primary"]["kind"] == "http-body"
    assert div["context"]["primary"]["text"] == f"<p>token: {primary_token}</p>"
    assert div["context"]["secondary"]["text"] == f"<p>token: {secondary_token}</p>"
    assert data["checkpoints"] == [checkpoint]

    # Aligned on the captures' starts (the default), the diagnosis is the same.
    data = _diff_json(token, status=1)
    conn = next(c for c in data["connections"]  # type: ignore[attr-defined]
                if c["connection"] == _key(TOKEN_PORT, token.ports["/token.html"]))
    assert conn["first_divergence"]["reason"] == "payload-mismatch"
    assert conn["first_divergence"]["offset"] == offset
    assert conn["first_divergence"]["context"]["primary"]["text"] == (
        f"<p>token: {primary_token}</p>")


def test_token_page_diagnosis_text(token: Recording) -> None:
    p_body, s_body = token.bodies["/token.html"]
    token_start = p_body.index(b"token: ") + len(b"token: ")
    primary_token = p_body[token_start:p_body.index(b"</p>", token_start)].decode()
    offset = _first_difference(p_body, s_body)
    lines = _diff(token, "--align", "absolute", status=1).splitlines()

    header = _key(TOKEN_PORT, token.ports["/token.html"])
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    assert "DIVERGED" in lines[start]
    block = lines[start:lines.index("", start)]
    assert any(f"payload-mismatch at stream offset {offset}" in line for line in block)
    # the hexdump row holding the divergence has a marker line under it
    row = next(i for i, line in enumerate(block) if line.split()[:1] == [str(offset & ~7)])
    assert "^^" in block[row + 1]
    # the decoded context names the HTTP body line and marks characters of the token
    ctx = next(i for i, line in enumerate(block) if "primary" in line and "HTTP body line" in line)
    assert block[ctx].endswith(f"<p>token: {primary_token}</p>")
    carets = [i for i, ch in enumerate(block[ctx + 1]) if ch == "^"]
    assert carets
    token_col = block[ctx].index(primary_token)
    assert all(token_col <= c < token_col + len(primary_token) for c in carets)
    assert any("checkpoints (1):" in line for line in block)
    assert any("1 checkpoints requested (payload-mismatch: 1)" in line for line in lines)
