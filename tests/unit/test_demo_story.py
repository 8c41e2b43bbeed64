"""The demo's story without namespaces: the summary grouped by cause and ending on
the headline, honest percentiles, the live view's latest checkpoint, 100 columns
without a terminal, finite float options."""

from __future__ import annotations

import io
import secrets

import pytest
from click.testing import CliRunner
from rich.console import Console

from colo_proxy.cli import main
from colo_proxy.compare.model import Divergence
from colo_proxy.demo.content import SESSION_PATH, session_body
from colo_proxy.demo.events import CheckpointRequested
from colo_proxy.demo.latency import LatencyHistogram, percentile
from colo_proxy.demo.state import DemoSnapshot
from colo_proxy.demo.summary import build_summary, print_checkpoints, print_headline, print_next
from colo_proxy.demo.view import PLAIN_WIDTH, checkpoint_line, progress_line, render_live

HEAD = "HTTP/1.1 200 OK\r\nServer: colo-demo/1\r\nContent-Type: application/json\r\n"


def _token_request(n: int, conn: int, port: int, t: float) -> tuple[dict[str, object], bytes]:
    token = "a0" + secrets.token_hex(15)  # the secondary's is "af...": same first digit
    body = session_body(token)
    head = HEAD + f"Content-Length: {len(body)}\r\n\r\n"
    response = head.encode() + body
    start = response.index(token.encode())
    return ({"event": "request", "n": n, "t": t, "demo_t": t, "kind": "token", "conn": conn,
             "local_port": port, "path": SESSION_PATH, "ok": True, "status": 200,
             "bytes": len(response), "ms": 9.0, "token": token,
             "token_span": [start, start + 32], "response": response.decode("latin-1"),
             "stream_pos": 0, "head": head}, response)


def _snapshot(tokens: int = 20, deterministic: int = 150) -> DemoSnapshot:
    requests: list[dict[str, object]] = []
    checkpoints = []
    n = 0
    for i in range(deterministic):
        n += 1
        requests.append({"event": "request", "n": n, "t": i * 0.05, "demo_t": i * 0.05,
                         "kind": "new", "conn": n, "local_port": 30000 + n, "path": "/",
                         "ok": True, "ms": 1.0 + (i % 10), "head": "x"})
    for i in range(tokens):
        n += 1
        req, response = _token_request(n, n, 20000 + i, 1.0 + i)
        requests.append(req)
        span = req["token_span"]
        assert isinstance(span, list)
        at = span[0] + 1  # the first token digit is the same on both sides
        checkpoints.append(CheckpointRequested(
            t=1.0 + i, reason="payload-mismatch",
            key=f"tcp 198.18.2.2:80 -> 198.18.1.2:{20000 + i}", detail="",
            divergence=Divergence(offset=at, primary=response[at:at + 64],
                                  secondary=b"f" + response[at + 1:at + 64])))
    baseline = [{"event": "request", "n": i, "t": i * 0.05, "kind": "new", "conn": i,
                 "path": "/", "ok": True, "ms": 0.5 + (i % 4)} for i in range(1, 120)]
    return DemoSnapshot(
        elapsed=22.0, ready=True, requests=requests, stats=None, conns={},
        checkpoints=checkpoints, flushes=[], exit_reason="stopped",
        latency_windows=[{"count": 100, "p50": 0.0, "p99": 3.0, "max": 205.0},
                         {"count": 80, "p50": 0.0, "p99": 1.0, "max": 2.0}],
        checkpoint_times=[1.05 + i for i in range(tokens)], baseline=baseline)


def _render(func: object, *args: object) -> list[str]:
    out = io.StringIO()
    console = Console(file=out, width=PLAIN_WIDTH, force_terminal=False, color_system=None)
    assert callable(func)
    func(console, *args)
    return out.getvalue().splitlines()


def test_percentiles_are_exact_and_only_when_meaningful() -> None:
    data = sorted(float(i) for i in range(1, 201))
    assert percentile(data, 50) == 100.0
    assert percentile(data, 99) == 198.0
    hist = LatencyHistogram(data).summary()
    assert (hist["p50"], hist["p90"], hist["p99"], hist["max"]) == (100.0, 180.0, 198.0, 200.0)
    assert sum(n for _, n in hist["histogram"]) == 200
    small = LatencyHistogram([1.0] * 40).summary()
    assert small["p99"] is None and small["p90"] == 1.0  # 40 samples have no p99


def test_json_names_the_figures_for_what_they_are() -> None:
    snap = _snapshot()
    summary = build_summary(snap, 20.0, "nfqueue")
    assert "latency_ms" not in summary
    prot = summary["request_latency_ms"]["protected"]
    ms = sorted(float(str(r["ms"])) for r in snap.requests)
    assert prot["count"] == len(ms) and prot["p99"] == percentile(ms, 99)
    assert prot["max"] == ms[-1]
    assert summary["request_latency_ms"]["baseline"]["count"] == len(snap.baseline)
    hold = summary["hold_time_ms"]
    assert hold["worst_interval_p99"] == 3.0 and "p99" not in hold and "p50" not in hold
    assert hold["intervals_with_median_0"] == 2


def test_checkpoints_with_one_cause_collapse_and_the_headline_comes_last() -> None:
    snap = _snapshot(tokens=20)
    summary = build_summary(snap, 20.0, "nfqueue")
    offsets = {c["divergence"]["offset"] for c in summary["checkpoint_list"]}
    assert len(offsets) == 1
    token_at = snap.requests[-1]["token_span"][0]  # type: ignore[index]
    lines = _render(print_checkpoints, summary, snap)
    assert f"19 more, same cause: token at offset {token_at} (checkpoints 2, 3, " in "\n".join(
        lines)
    # One hexdump only.
    assert sum(1 for line in lines if "first divergence" in line) == 1
    tail = _render(print_headline, summary) + _render(print_next, ("p.pcap", "s.pcap"))
    text = "\n".join(tail)
    assert f"20 x token at offset {token_at}" in text
    assert "unprotected:" in text and "cost of the protection" in text
    assert "median 0 ms" in text and "200 ms" in text  # max 205 ms: the tail is explained
    assert "colo-proxy diff p.pcap s.pcap" in text and "docs/qemu.md" in text
    for line in lines + tail:
        assert len(line) <= PLAIN_WIDTH, line


def test_progress_and_checkpoint_lines_fit_and_name_the_cause() -> None:
    snap = _snapshot(tokens=3)
    line = checkpoint_line(snap, 2)
    assert "payload-mismatch" in line and "random tokens differ" in line
    assert "port 20002" in line and "GET /session" in line
    assert len(progress_line(snap)) <= PLAIN_WIDTH


def test_live_view_shows_the_latest_checkpoint() -> None:
    snap = _snapshot(tokens=3)
    out = io.StringIO()
    Console(file=out, width=160, color_system=None).print(render_live(snap, 20.0, "nfqueue"))
    text = out.getvalue()
    assert "latest checkpoint" in text
    assert "checkpoint 3: payload-mismatch" in text and "port 20002" in text


@pytest.mark.parametrize("option", ["--duration", "--token-interval", "--baseline"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
def test_float_options_reject_nan_and_infinity(option: str, value: str) -> None:
    # A bad prefix too: a demo that accepted the number still stops before anything.
    result = CliRunner().invoke(main, ["demo", option, value, "--prefix", "BAD"])
    assert result.exit_code == 2
    assert f"Invalid value for '{option}': '{value}' is not a finite number" in result.output
