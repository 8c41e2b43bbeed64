"""The end-of-run summary: figures, and an explanation of every checkpoint with the
same divergence report as ``colo-proxy diff``."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.text import Text

from .content import expected_body
from .events import CheckpointRequested
from .explain import divergence_report, print_divergence
from .state import DemoSnapshot, key_ports
from .view import FLUSH_NOTE, human_bytes


def _client_port(key: str | None) -> int | None:
    ports = key_ports(key)
    if ports is None:
        return None
    sport, dport = ports
    # The proxy compares what the VMs send: server port -> client port.
    return dport if sport in (80,) else sport


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


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
            "connection": conn, "requests": [], "in_token": None, "stream_positions": None,
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
            else:
                entry["stream_positions"] = _positions(cp, reqs)
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
        "latency_ms": snap.latency_run(),
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


def print_summary(console: Console, summary: dict[str, Any], snap: DemoSnapshot) -> None:
    """The human-readable summary."""
    req, cps, conns = summary["requests"], summary["checkpoints"], summary["connections"]

    def say(text: str | Text) -> None:
        console.print(text, highlight=False, soft_wrap=True)

    console.rule("colo-proxy demo: summary")
    say(f"datapath {summary['datapath']}, traffic for {summary['duration_s']:.1f} s")
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(req["by_kind"].items()))
    say(f"HTTP requests: {req['total']} sent, {req['complete']} complete responses, "
                  f"{req['failed']} failed  ({kinds})")
    others = conns["other_flows"]
    also = (f"; the datapath also saw {_plural(len(others), 'flow')} of the VMs' own "
            f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''})" if others else "")
    say(f"connections: {conns['total']} opened by the client "
        f"({conns['deterministic']} deterministic, {conns['token']} with a token), "
        f"{conns['client_seen_by_proxy']} of them listed in the datapath's stats{also}")
    say(f"compared {human_bytes(int(summary['bytes_compared']))} of the replicas' output, "
        f"released {summary['frames_released']} primary frames to the client")
    lat = summary["latency_ms"]
    if lat.get("count"):
        first = " (0: the secondary's copy usually came first)" if lat["p50"] < 0.005 else ""
        say(f"release latency (PVM frame hold time): median {lat['p50']:.2f} ms{first}, "
            f"worst interval p99 {lat['p99']:.2f} ms, max {lat['max']:.2f} ms over "
            f"{int(lat['count'])} releases")
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(cps["by_reason"].items())) or "none"
    say(f"checkpoint requests: {cps['requested']} ({reasons}); flushes: "
        f"{cps['flushes']} (released "
        f"{_plural(cps['released_by_flushes'], 'held primary frame')}, dropped "
        f"{_plural(cps['dropped_by_flushes'], 'secondary frame')})")
    bad = conns["deterministic_with_checkpoint"]
    if bad:
        say(Text(f"deterministic connections that needed a checkpoint: {bad}",
                           style="red"))
    else:
        say(Text("every deterministic connection matched without a checkpoint",
                           style="green"))
    say(Text(FLUSH_NOTE, style="italic"))
    for i, (entry, cp) in enumerate(zip(summary["checkpoint_list"], snap.checkpoints,
                                        strict=True), start=1):
        console.rule(f"checkpoint {i}: {entry['reason']} at {entry['t']:.2f} s", style="dim")
        say(f"connection: {entry['key'] or '-'}")
        say(_explain(entry))
        report = divergence_report(cp, *_primary_stream(snap, entry))
        if report is not None:
            print_divergence(console, report)
    if req["failed"]:
        say(Text(f"{req['failed']} requests failed, first: "
                           f"{req['failures'][0].get('error')}", style="red"))
