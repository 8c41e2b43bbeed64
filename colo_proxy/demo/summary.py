"""The end-of-run summary: figures, and an explanation of every checkpoint with the
same divergence report as ``colo-proxy diff``."""

from __future__ import annotations

from functools import partial
from typing import Any

from rich.console import Console
from rich.text import Text

from .content import expected_body
from .events import CheckpointRequested
from .explain import divergence_report, print_divergence
from .latency import LatencyHistogram, describe, fmt_ms
from .state import DemoSnapshot, key_ports
from .view import FLUSH_NOTE, human_bytes, say

BASELINE_NOTE = ("same namespaces and services, the secondary still gets every request; "
                 "the primary host routes the primary's answers straight to the client and "
                 "drops the secondary's: no datapath in the path")
HOLD_NOTE_0 = ("median 0 ms: the hold time runs from the datapath reading a primary frame to "
               "its release; the secondary's twin is usually read first or in the same batch, "
               "so most frames leave at once (the NFQUEUE round trip is not in it; the "
               "request latency above includes it)")
HOLD_NOTE_200 = ("the ~200 ms tail: frames released only with a retransmission: the twin did "
                 "not come (or did not match) in time, the client's ACK did not come either, "
                 "and both replicas' TCP resent the segment after Linux's minimum "
                 "retransmission timeout of 200 ms (--save-captures shows the resent segment "
                 "in both captures)")


def _client_port(key: str | None) -> int | None:
    ports = key_ports(key)
    if ports is None:
        return None
    sport, dport = ports
    # The proxy compares what the VMs send: server port -> client port.
    return dport if sport in (80,) else sport


def _conn_of_port(snap: DemoSnapshot) -> dict[int, int]:
    """Client port -> the driver's connection number (the last one, if reused)."""
    return {int(r["local_port"]): int(r["conn"]) for r in snap.requests if r.get("local_port")}


def _in_span(offset: int, span: Any) -> bool:
    return (isinstance(span, list | tuple) and len(span) == 2
            and int(span[0]) <= offset < int(span[1]))


def _token_matches(cp: CheckpointRequested, request: dict[str, Any]) -> bool:
    """The divergence's primary bytes are the rest of the token the client received."""
    div, span, token = cp.divergence, request.get("token_span"), request.get("token")
    if div is None or not isinstance(span, list) or not _in_span(div.offset, span) \
            or not isinstance(token, str):
        return False
    rest = token.encode()[div.offset - int(span[0]):]
    n = min(len(rest), len(div.primary))
    return n > 0 and div.primary[:n] == rest[:n] and div.secondary[:1] != div.primary[:1]


def _primary_stream(snap: DemoSnapshot, entry: dict[str, Any]) -> tuple[bytes | None, int]:
    """The primary's response stream of a token connection, as the client received it."""
    for r in snap.requests:
        if r.get("conn") == entry["connection"] and isinstance(r.get("response"), str):
            return str(r["response"]).encode("latin-1"), int(r.get("stream_pos", 0))
    return None, 0


def _expected_stream(reqs: list[dict[str, Any]]) -> bytes | None:
    """The server's whole byte stream of a deterministic connection, as the client
    received it (head as received, body as ``content`` defines it)."""
    out = bytearray()
    for r in reqs:
        body = expected_body(str(r.get("path")))
        if not r.get("ok") or body is None or not isinstance(r.get("head"), str):
            return None
        out += str(r["head"]).encode("latin-1") + body
    return bytes(out)


def _positions(cp: CheckpointRequested, reqs: list[dict[str, Any]]) -> dict[str, int] | None:
    """Where the divergence's primary and secondary bytes really sit in the
    connection's (deterministic) stream: two different places mean the replicas sent
    the same bytes and the comparison was misaligned."""
    div, stream = cp.divergence, _expected_stream(reqs)
    if div is None or stream is None or not div.primary or not div.secondary:
        return None
    p, s = stream.find(div.primary), stream.find(div.secondary)
    return None if p < 0 or s < 0 else {"primary": p, "secondary": s}


def _phase_latency(requests: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in requests if r.get("ok")]
    out = LatencyHistogram(float(r["ms"]) for r in ok).summary()
    out["failed"] = len(requests) - len(ok)
    out["by_kind"] = {kind: LatencyHistogram(float(r["ms"]) for r in ok
                                             if r.get("kind") == kind).summary()
                      for kind in sorted({str(r.get("kind")) for r in ok})}
    for stats in out["by_kind"].values():
        del stats["histogram"]
    return out


def request_latency(snap: DemoSnapshot) -> dict[str, Any]:
    """Client-measured request latency (request sent to last response byte; the TCP
    handshake not included) of the protected run and of the unprotected baseline."""
    return {"protected": _phase_latency(snap.requests),
            "baseline": _phase_latency(snap.baseline) if snap.baseline else None,
            "baseline_method": BASELINE_NOTE if snap.baseline else None}


def cause_label(entry: dict[str, Any]) -> str:
    """What caused a checkpoint, short enough to group by: "token at offset 161"."""
    div = entry["divergence"]
    at = f" at offset {div['offset']}" if div is not None else ""
    if entry["in_token"]:
        # Where the token starts: the divergence itself is a byte or two later when
        # the two tokens happen to begin with the same digits.
        return f"token at offset {entry['token_offset']}"
    pos = entry["stream_positions"]
    if pos is not None and pos["primary"] != pos["secondary"]:
        return f"misaligned comparison{at}"
    if entry["reason"] == "payload-mismatch" and div is not None:
        return f"payload mismatch{at}"
    return str(entry["reason"])


def build_summary(snap: DemoSnapshot, duration: float, datapath: str) -> dict[str, Any]:
    """The machine-readable summary (``--json``)."""
    by_conn: dict[int, list[dict[str, Any]]] = {}
    for r in snap.requests:
        by_conn.setdefault(int(r["conn"]), []).append(r)
    port_conn = _conn_of_port(snap)
    kinds: dict[str, int] = {}
    for r in snap.requests:
        kinds[str(r["kind"])] = kinds.get(str(r["kind"]), 0) + 1

    checkpoints: list[dict[str, Any]] = []
    conns_with_cp: set[int] = set()
    cp_of_conn: dict[int, int] = {}
    for i, cp in enumerate(snap.checkpoints):
        port = _client_port(cp.key)
        conn = port_conn.get(port) if port is not None else None
        entry: dict[str, Any] = {
            "t": cp.t, "reason": cp.reason, "key": cp.key, "detail": cp.detail,
            "divergence": None if cp.divergence is None else {
                "offset": cp.divergence.offset, "primary": cp.divergence.primary.hex(),
                "secondary": cp.divergence.secondary.hex()},
            "connection": conn, "requests": [], "in_token": None, "token_offset": None,
            "stream_positions": None,
        }
        if conn is not None:
            conns_with_cp.add(conn)
            cp_of_conn.setdefault(conn, i)
            reqs = by_conn.get(conn, [])
            entry["requests"] = [{"n": r["n"], "kind": r["kind"], "path": r["path"]}
                                 for r in reqs]
            tokens = [r for r in reqs if r.get("token")]
            if tokens:
                entry["in_token"] = _token_matches(cp, tokens[0])
                entry["token_offset"] = int(tokens[0]["token_span"][0])
            else:
                entry["stream_positions"] = _positions(cp, reqs)
        entry["cause"] = cause_label(entry)
        checkpoints.append(entry)

    token_requests = []
    for r in snap.requests:
        if r["kind"] != "token":
            continue
        idx = cp_of_conn.get(int(r["conn"]))
        token_requests.append({
            "n": r["n"], "connection": r["conn"], "local_port": r.get("local_port"),
            "ok": r.get("ok"), "token": r.get("token"), "token_span": r.get("token_span"),
            "checkpoint": idx,
            "checkpoint_reason": None if idx is None else snap.checkpoints[idx].reason,
            "in_token": None if idx is None else checkpoints[idx]["in_token"]})
    deterministic = sorted(c for c, reqs in by_conn.items()
                           if all(r["kind"] != "token" for r in reqs))
    counters = snap.stats.counters if snap.stats else {}
    # Flows that are not the client's connections: the VMs' own traffic (IGMP
    # reports when their interfaces come up, ...), compared like everything else.
    other_flows = sorted(k for k in snap.conns if _client_port(k) not in port_conn)
    return {
        "datapath": datapath,
        "duration_s": round(snap.elapsed, 2),
        "requested_duration_s": duration,
        "note": FLUSH_NOTE,
        "requests": {
            "total": len(snap.requests), "complete": snap.requests_ok,
            "failed": snap.requests_failed, "by_kind": kinds,
            "failures": [r for r in snap.requests if not r.get("ok")][:10],
        },
        "connections": {
            "total": len(by_conn), "deterministic": len(deterministic),
            "token": len(by_conn) - len(deterministic),
            "deterministic_with_checkpoint": [c for c in deterministic if c in conns_with_cp],
            "seen_by_proxy": len(snap.conns),
            "client_seen_by_proxy": len(snap.conns) - len(other_flows),
            "other_flows": other_flows,
            "matched_by_proxy": sum(1 for c in snap.conns.values() if c.frames_matched),
        },
        "token_requests": token_requests,
        "checkpoints": {
            "requested": len(snap.checkpoints), "by_reason": snap.reasons(),
            "flushes": len(snap.flushes),
            "released_by_flushes": sum(f.released for f in snap.flushes),
            "dropped_by_flushes": sum(f.dropped for f in snap.flushes),
        },
        "checkpoint_list": checkpoints,
        "bytes_compared": counters.get("bytes_compared", 0),
        "frames_released": counters.get("released", 0),
        "request_latency_ms": request_latency(snap),
        "hold_time_ms": snap.hold_time(),
        "counters": counters,
        "datapath_exit": snap.exit_reason,
    }


def _explain(entry: dict[str, Any]) -> str:
    reqs = entry["requests"]
    what = ", ".join(f"#{r['n']} GET {r['path']}" for r in reqs[:4]) or "no request of ours"
    if len(reqs) > 4:
        what += f" and {len(reqs) - 4} more"
    if entry["in_token"]:
        return (f"Expected: the connection carried {what}; each replica drew its own random "
                f"token, so the responses differ inside the token (stream offset "
                f"{entry['divergence']['offset']}).  The client got the primary's token.")
    pos = entry["stream_positions"]
    if pos is not None and pos["primary"] != pos["secondary"]:
        return (f"Unexpected, on a deterministic connection ({what}): both replicas sent the "
                f"same stream; the bytes compared were the primary's from stream offset "
                f"{pos['primary']} and the secondary's from {pos['secondary']} (engine offset "
                f"{entry['divergence']['offset']}), so the comparison lost its alignment.")
    if entry["reason"] == "payload-mismatch" and entry["divergence"] is not None:
        return f"Unexpected: the replicas' bytes differ on a connection that carried {what}."
    if entry["reason"] == "timeout":
        return (f"A frame waited longer than --compare-timeout for its twin ({what}); "
                "the flush released it.")
    return f"{entry['detail'] or entry['reason']} ({what})."


def _say(console: Console, text: str | Text) -> None:
    say(console, text)


def print_checkpoints(console: Console, summary: dict[str, Any], snap: DemoSnapshot) -> None:
    """Every checkpoint, grouped by cause: the first of each cause in full (with the
    divergence report), the others as one line."""
    entries = summary["checkpoint_list"]
    console.rule(f"colo-proxy demo: {len(entries)} checkpoint requests", style="dim")
    if not entries:
        _say(console, "no checkpoint was requested")
        return
    groups: dict[str, list[int]] = {}
    for i, entry in enumerate(entries):
        groups.setdefault(entry["cause"], []).append(i)
    for cause, members in groups.items():
        first = members[0]
        entry, cp = entries[first], snap.checkpoints[first]
        console.rule(f"checkpoint {first + 1}: {entry['reason']} at {entry['t']:.2f} s",
                     style="dim")
        _say(console, f"connection: {entry['key'] or '-'}")
        _say(console, _explain(entry))
        report = divergence_report(cp, *_primary_stream(snap, entry))
        if report is not None:
            print_divergence(console, report)
        rest = members[1:]
        if rest:
            numbers = ", ".join(str(i + 1) for i in rest[:12])
            more = ", ..." if len(rest) > 12 else ""
            _say(console, Text(f"{len(rest)} more, same cause: {cause} (checkpoints "
                               f"{numbers}{more})", style="bold"))


def _ratio(prot: float | None, base: float | None) -> str:
    if prot is None or base is None:
        return ""
    diff = prot - base
    times = f" (x{prot / base:.1f})" if base > 0 else ""
    return f"{'+' if diff >= 0 else '-'}{fmt_ms(abs(diff))}{times}"


def print_headline(console: Console, summary: dict[str, Any]) -> None:
    """The figures that matter, printed last."""
    req, cps, conns = summary["requests"], summary["checkpoints"], summary["connections"]
    say = partial(_say, console)
    console.rule("colo-proxy demo: summary")
    say(f"{summary['duration_s']:.1f} s of HTTP through the {summary['datapath']} datapath: "
        f"{req['total']} requests, {req['complete']} complete and correct, "
        f"{req['failed']} failed")
    bad = conns["deterministic_with_checkpoint"]
    if bad:
        say(Text(f"deterministic connections that needed a checkpoint: {bad}", style="red"))
    else:
        say(Text(f"all {conns['deterministic']} deterministic connections matched without a "
                 "checkpoint", style="green"))
    causes: dict[str, int] = {}
    for entry in summary["checkpoint_list"]:
        causes[entry["cause"]] = causes.get(entry["cause"], 0) + 1
    listed = "; ".join(f"{n} x {cause}" for cause, n in causes.items()) or "none"
    say(f"checkpoint requests: {cps['requested']} ({listed}); {cps['flushes']} flushes")
    lat = summary["request_latency_ms"]
    prot, base = lat["protected"], lat["baseline"]
    say(Text("request latency (client-measured, request sent to last byte received):",
             style="bold"))
    say(f"  protected:   {describe(prot)}")
    if base is not None:
        say(f"  unprotected: {describe(base)}"
            + (f"; {base['failed']} requests failed" if base["failed"] else ""))
        cost = ", ".join(f"{name} {_ratio(prot.get(name), base.get(name))}"
                         for name in ("p50", "p90", "p99")
                         if prot.get(name) is not None and base.get(name) is not None)
        if cost:
            say(f"  cost of the protection: {cost}")
        say(Text(f"  unprotected: measured half before, half after the protected run; "
                 f"{BASELINE_NOTE}",
                 style="dim"))
    else:
        say(Text("  no unprotected baseline (--baseline 0)", style="dim"))
    hold = summary["hold_time_ms"]
    if hold.get("releases"):
        say(Text("primary frame hold time (datapath-measured):", style="bold"))
        say(f"  median 0 ms in {hold['intervals_with_median_0']} of {hold['intervals']} stats "
            f"intervals (largest interval median {fmt_ms(hold['largest_interval_median'])}), "
            f"worst interval p99 {fmt_ms(hold['worst_interval_p99'])}, max "
            f"{fmt_ms(hold['max'])} over {hold['releases']} releases")
        say(Text(f"  {HOLD_NOTE_0}", style="dim"))
        if hold["max"] > 150.0:
            say(Text(f"  {HOLD_NOTE_200}", style="dim"))
    counters = summary["counters"]
    if "bytes_compared" not in counters and "pairs_matched" in counters:
        # The kernel datapath counts frames, not bytes.
        say(f"the kernel matched {counters['pairs_matched']} frame pairs and released "
            f"{summary['frames_released']} primary frames to the client")
        if counters.get("uncompared"):
            say(Text(f"  {counters['uncompared']} primary frames passed uncompared: this "
                     "kernel does not compare TCP yet (docs/architecture.md)", style="yellow"))
    else:
        say(f"compared {human_bytes(int(summary['bytes_compared']))} of the replicas' "
            f"output, released {summary['frames_released']} primary frames to the client")
    say(Text(FLUSH_NOTE, style="italic"))
    if req["failed"]:
        say(Text(f"{req['failed']} requests failed, first: "
                 f"{req['failures'][0].get('error')}", style="red"))


def print_next(console: Console, captures: tuple[str, str] | None,
               plot: str | None = None) -> None:
    """What to try next."""
    say = partial(_say, console)
    say(Text("try next:", style="bold"))
    if captures is not None:
        command = f"  colo-proxy diff {captures[0]} {captures[1]}"
        if len(command) <= console.width:
            console.print(command, highlight=False, markup=False, soft_wrap=True)
        else:  # still one shell command to copy, on two lines
            console.print(f"  colo-proxy diff {captures[0]} \\\n      {captures[1]}",
                          highlight=False, markup=False, soft_wrap=True)
        say("      replays the replicas' captured output through the engine offline and "
            "explains each divergence (docs/diff.md)")
    else:
        say("  colo-proxy demo --save-captures DIR, then colo-proxy diff DIR/primary.pcap "
            "DIR/secondary.pcap (docs/diff.md)")
    if plot is not None:
        say(f"  look at {plot}: request latency over time, checkpoints marked")
    else:
        say("  colo-proxy demo --plot latency.png: request latency over time, checkpoints "
            "marked")
    say("  a real VM pair: QEMU COLO with colo-proxy as its comparer, docs/qemu.md")
