"""Real HTTP through QEMU's real filter-rewriter (issue 8 §2).

The guestless COLO topology (tests/qemu_harness/colo_ft.py): a client, a PVM and an
SVM namespace with real Linux TCP stacks, two ``-M none`` QEMUs carrying the COLO-FT
filter set (filter-mirror and filter-redirectors on the primary; filter-redirectors
and filter-rewriter on the secondary), and the comparison in ``colo-proxy run ...
qemu-socket`` or, for reference, in QEMU's own colo-compare.

filter-rewriter sends the SVM's SYN-ACK with the SVM's ISN and every later SVM segment
in the PVM's numbering. The engine must compare that with no checkpoint
(docs/compare.md, "The secondary's numbering"). Before that rule, every connection here
cost one checkpoint (a FIN at a negative offset, or "payload differs at stream offset 0").
"""

from __future__ import annotations

import http.client
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator

import pytest
from qemu_harness.colo_ft import ColoFtSpec, GuestlessColo

from colo_proxy.demo.content import SESSION_PATH, TOKEN_RE, expected_body, session_body

pytestmark = [pytest.mark.root, pytest.mark.qemu]

PATHS = ["/", "/static/small.txt", "/static/page.html", "/static/image.bin",
         "/static/bundle.js"]
"""Deterministic objects, from one segment to ~85 segments."""
FRESH = 30
"""Deterministic requests, each on a new connection."""
TOKENS = 5
"""Random-token pages: one real divergence each."""
TIMEOUT_MS = 3000
"""colo-compare's default.  The timeout is liveness, not comparison: on this shared
2-CPU machine a namespace's reply was once late by more than 1 s under load."""
Recorder = Callable[[str, object], None]


def _requirements() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, taps)"
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 not installed"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    return None


@pytest.fixture(scope="module", autouse=True)
def _skip_without_requirements() -> None:
    reason = _requirements()
    if reason:
        pytest.skip(reason)


def _topology(compare: str) -> GuestlessColo:
    prefix = "rw" + secrets.token_hex(3)
    return GuestlessColo(prefix, ColoFtSpec(compare=compare, compare_timeout_ms=TIMEOUT_MS))


@pytest.fixture
def proxy() -> Iterator[GuestlessColo]:
    with _topology("colo-proxy") as topo:
        yield topo


@pytest.fixture
def qemu_compare() -> Iterator[GuestlessColo]:
    with _topology("colo-compare") as topo:
        yield topo


def fetch(topo: GuestlessColo, path: str) -> tuple[int, bytes]:
    """One GET on a new connection, from the client namespace."""

    def get() -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(topo.spec.server_ip, 80, timeout=15)
        try:
            conn.request("GET", path, headers={"Connection": "close"})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    return topo.client(get)


def deterministic_run(topo: GuestlessColo, count: int) -> None:
    for i in range(count):
        path = PATHS[i % len(PATHS)]
        status, body = fetch(topo, path)
        assert status == 200, path
        assert body == expected_body(path), f"{path}: body differs ({len(body)} bytes)"


def token_run(topo: GuestlessColo, count: int) -> None:
    for _ in range(count):
        status, body = fetch(topo, SESSION_PATH)
        assert status == 200
        match = TOKEN_RE.search(body)
        assert match is not None, body
        assert body == session_body(match.group(1).decode())


def settle(topo: GuestlessColo) -> None:
    """Give anything still held the time to time out (it must not)."""
    time.sleep(TIMEOUT_MS / 1000 + 0.5)


def test_rewritten_numbering_costs_no_checkpoint(proxy: GuestlessColo,
                                                 record_property: Recorder) -> None:
    deterministic_run(proxy, FRESH)
    settle(proxy)
    deterministic = proxy.checkpoints
    token_run(proxy, TOKENS)
    settle(proxy)
    divergent = proxy.checkpoints - deterministic
    deterministic_run(proxy, len(PATHS))  # and compare normally afterwards
    settle(proxy)
    after = proxy.checkpoints - deterministic - divergent
    print(f"\ncolo-proxy through filter-rewriter: {FRESH} deterministic requests -> "
          f"{deterministic} checkpoints; {TOKENS} random-token pages -> {divergent}; "
          f"{len(PATHS)} deterministic after them -> {after}")
    record_property("checkpoints", {"deterministic": deterministic, "tokens": divergent,
                                    "after": after})
    why = "\n".join(line for line in proxy.proxy_output().splitlines()
                    if "checkpoint requested" in line)
    assert deterministic == 0, why
    assert divergent == TOKENS, why
    assert after == 0, why
    assert "payload-mismatch" in proxy.proxy_output()


def test_qemu_colo_compare_on_the_same_topology(qemu_compare: GuestlessColo,
                                                record_property: Recorder) -> None:
    """Reference: QEMU's colo-compare with the same filters and traffic.  It repeats
    DO_CHECKPOINT while a mismatch stays queued, so a divergence counts one or more."""
    deterministic_run(qemu_compare, FRESH)
    settle(qemu_compare)
    deterministic = qemu_compare.checkpoints
    token_run(qemu_compare, TOKENS)
    settle(qemu_compare)
    divergent = qemu_compare.checkpoints - deterministic
    print(f"\ncolo-compare through filter-rewriter: {FRESH} deterministic requests -> "
          f"{deterministic} DO_CHECKPOINT; {TOKENS} random-token pages -> {divergent}")
    record_property("checkpoints", {"deterministic": deterministic, "tokens": divergent})
    assert divergent >= TOKENS
