"""Child processes of the kernel tests (run as scripts, often under ``ip netns exec``).

    colo_workers.py stress CYCLES [P]   open socket -> PROXY_INIT -> close, CYCLES times
                                        (prints {"progress": P} after P cycles)
    colo_workers.py listen EXPECTED IDLE   count events until EXPECTED node-gone or IDLE s quiet
                                        (prints {"alive": N} every 1000 events; read_json
                                        skips those heartbeats)
    colo_workers.py hold N [SECONDS]    create N+1 nodes on two sockets, print them, wait
    colo_workers.py probe INDEX         try every operation on node INDEX (0: on a node it
                                        creates itself) and report errnos (permission tests)

Each prints one JSON line with its results on stdout (``hold`` prints it before waiting,
``listen`` prints ``ready`` first, once subscribed).
"""

from __future__ import annotations

import errno
import json
import socket
import struct
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from colo_raw import HDR, NETLINK_GENERIC, NLM_F_REQUEST, NLMSG_ERROR, encode

from colo_proxy.nl import (
    ColoClient,
    ColoEvents,
    ColoNetlinkError,
    Mode,
    NodeGoneEvent,
    Reason,
)
from colo_proxy.nl.constants import Cmd
from colo_proxy.nl.errors import FamilyMissingError


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _attrs(payload: bytes) -> dict[int, bytes]:
    out, off = {}, 4  # after genlmsghdr
    while off + 4 <= len(payload):
        alen, atype = struct.unpack_from("=HH", payload, off)
        if alen < 4:
            break
        out[atype & 0x3FFF] = payload[off + 4: off + alen]
        off += (alen + 3) & ~3
    return out


def stress(cycles: int, progress: int) -> None:
    with ColoClient() as c:
        fid = c.family_id
    msgs = [encode(fid, Cmd.PROXY_INIT, 1, flags=NLM_F_REQUEST, mode=m)
            for m in (Mode.PRIMARY, Mode.SECONDARY)]
    outcomes: Counter[str] = Counter()
    bad_owner = 0
    t0 = time.monotonic()
    for i in range(cycles):
        if i == progress:
            emit({"progress": i})
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        try:
            s.settimeout(30)
            s.bind((0, 0))
            portid = s.getsockname()[0]
            s.send(msgs[i & 1])
            data = s.recv(65536)
            _len, typ, _flags, _seq, _pid = HDR.unpack_from(data)
            payload = data[HDR.size:_len]
            if typ == NLMSG_ERROR:
                code = -struct.unpack_from("=i", payload)[0]
                outcomes[errno.errorcode.get(code, str(code))] += 1
            elif typ == fid and payload[0] == Cmd.PROXY_INIT:
                attrs = _attrs(payload)
                outcomes["created"] += 1
                if struct.unpack("=I", attrs[4])[0] != portid:
                    bad_owner += 1
            else:
                outcomes[f"type-{typ}"] += 1
        finally:
            s.close()
    emit({"outcomes": dict(outcomes), "bad_owner": bad_owner,
          "seconds": round(time.monotonic() - t0, 2)})


def listen(expected: int, idle: float) -> None:
    reasons: Counter[str] = Counter()
    requests = 0
    overrun = None
    with ColoEvents(rcvbuf=64 << 20, timeout=idle) as ev:
        emit({"ready": True})
        try:
            while sum(reasons.values()) < expected:
                event = ev.next()
                if event is None:
                    break
                if isinstance(event, NodeGoneEvent):
                    reasons[str(event.reason)] += 1
                else:
                    requests += 1
                seen = sum(reasons.values()) + requests
                if seen % 1000 == 0:
                    emit({"alive": seen})
        except Exception as exc:  # report it; the test fails on it
            overrun = str(exc)
    emit({"node_gone": dict(reasons), "checkpoint_requests": requests, "error": overrun})


def hold(count: int, seconds: float) -> None:
    a, b = ColoClient(), ColoClient()
    nodes = [a.proxy_init(Mode.PRIMARY if i % 2 else Mode.SECONDARY).index
             for i in range(count)]
    nodes.append(b.proxy_init(Mode.SECONDARY).index)
    a.request_checkpoint(nodes[0], Reason.MANUAL)
    emit({"indexes": nodes, "owners": [a.portid, b.portid]})
    time.sleep(seconds)  # then exit without closing anything: the kernel cleans up


def _try(func: Any, *args: Any) -> str:
    try:
        func(*args)
    except ColoNetlinkError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    except FamilyMissingError:
        return "family-missing"
    return "ok"


def probe(index: int) -> None:
    status = Path("/proc/self/status").read_text()
    cap_eff = int(next(line for line in status.splitlines()
                       if line.startswith("CapEff:")).split()[1], 16)
    result: dict[str, Any] = {"net_admin": bool(cap_eff & (1 << 12))}
    with ColoClient() as c:
        created: list[int] = []
        result["proxy-init"] = _try(lambda: created.append(c.proxy_init(Mode.PRIMARY).index))
        if index == 0:  # operate on the node just created (own namespace)
            index = created[0] if created else 1
        result["get"] = _try(c.get, index)
        result["dump"] = _try(c.dump)
        result["proxy-reset"] = _try(c.proxy_reset, index)
        result["do-checkpoint"] = _try(c.do_checkpoint, index, Mode.PRIMARY)
        result["do-failover"] = _try(c.do_failover, index, Mode.SECONDARY)
        result["request-checkpoint"] = _try(c.request_checkpoint, index, Reason.MANUAL)
        result["proxy-destroy"] = _try(c.proxy_destroy, index)
        result["nodes_after"] = [n.index for n in c.dump()] if result["dump"] == "ok" else None
    try:
        ColoEvents().close()
        result["subscribe"] = "ok"
    except ColoNetlinkError as exc:
        result["subscribe"] = errno.errorcode.get(exc.errno, str(exc.errno))
    except Exception as exc:  # pyroute2 reports a refused membership as a plain OSError
        code = getattr(exc, "errno", None)
        result["subscribe"] = errno.errorcode.get(code, str(exc)) if code else str(exc)
    emit(result)


def main() -> None:
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "stress":
        stress(int(args[0]), int(args[1]) if len(args) > 1 else -1)
    elif cmd == "listen":
        listen(int(args[0]), float(args[1]))
    elif cmd == "hold":
        hold(int(args[0]), float(args[1]) if len(args) > 1 else 3600.0)
    elif cmd == "probe":
        probe(int(args[0]))
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
