"""Fuzz: 100,000 malformed or mutated requests; each gets an error or a correct answer.

Requests are sent in batches (several netlink messages per sendmsg) on a raw socket in
a private namespace; the socket has a timeout, so a request the kernel never answers
fails the test instead of hanging it.  Afterwards the socket still works, every node
the fuzz created goes away with it, every event the kernel sent decodes, and the
conftest fails the test on any kernel BUG/WARNING line.
"""

from __future__ import annotations

import random
import struct
import time
from collections import Counter

import pytest
from colo_env import report
from colo_fuzz import Fuzzer
from colo_raw import NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, RawGenl, encode
from pyroute2 import netns as pyroute2_netns
from pyroute2.netlink import ctrlmsg
from pyroute2.netlink.generic import GenericNetlinkSocket

from colo_proxy.nl import ColoClient, ColoEvents, GoneReason, Mode, NodeGoneEvent, Reason
from colo_proxy.nl.constants import Cmd
from colo_proxy.nl.messages import colo_msg

pytestmark = pytest.mark.kernel

MESSAGES = 100_000
BATCH = 64
SEED = 20151


def unused_family_id(ns: str) -> int:
    """A Generic Netlink id no family uses (so fuzz never reaches another family)."""
    with GenericNetlinkSocket(netns=ns, flags=0) as sock:
        sock.bind("nlctrl", ctrlmsg)
        msg = ctrlmsg()
        msg["cmd"] = 3  # CTRL_CMD_GETFAMILY
        msg["version"] = 1
        used = {m.get_attr("CTRL_ATTR_FAMILY_ID")
                for m in sock.nlm_request(msg, msg_type=16, msg_flags=NLM_F_REQUEST | NLM_F_DUMP)}
    return next(i for i in range(0x7000, 0x8000) if i not in used)


class Campaign:
    """Sends the messages and accounts for every answer."""

    def __init__(self, raw: RawGenl, fuzzer: Fuzzer, family_id: int) -> None:
        self.raw, self.fuzzer, self.fid = raw, fuzzer, family_id
        self.kinds: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.replies = 0
        self.decoded = 0
        self.silent_expected: set[int] = set()
        self.sent = 0

    def _account(self, pending: dict[int, str], done: set[int]) -> None:
        for ans in self.raw.recv():
            if ans.seq in self.silent_expected:
                self.outcomes["answered-broken-header"] += 1
                continue
            if ans.seq in done:
                # an ack after NLMSG_DONE is the only thing allowed after a terminal answer
                assert ans.type == NLMSG_ERROR and ans.error == 0, f"late answer {ans}"
                self.outcomes["ack-after-done"] += 1
                continue
            assert ans.seq in pending, f"answer for a sequence number never sent: {ans}"
            if ans.type == NLMSG_ERROR:
                code = -ans.error
                self.outcomes["ack" if code == 0 else f"errno-{code}"] += 1
                del pending[ans.seq]
                done.add(ans.seq)
            elif ans.type == NLMSG_DONE:
                self.outcomes["dump-done"] += 1
                del pending[ans.seq]
                done.add(ans.seq)
            elif ans.type == self.fid:
                self._check_reply(ans.payload, ans.type, ans.flags, ans.seq)
            else:
                raise AssertionError(f"unexpected answer type {ans.type}: {ans}")

    def _check_reply(self, payload: bytes, typ: int, flags: int, seq: int) -> None:
        """A correct answer: a GET/PROXY_INIT reply; every 32nd is decoded by pyroute2 to a
        valid node (decoding all of them dominates the run time under TCG)."""
        self.replies += 1
        assert payload[0] in (Cmd.GET, Cmd.PROXY_INIT), payload[:4]
        if self.replies % 32:
            return
        data = struct.pack("=IHHII", 16 + len(payload), typ, flags, seq, 0) + payload
        msg = colo_msg(data)
        msg.decode()
        assert msg["cmd"] in (Cmd.GET, Cmd.PROXY_INIT), msg
        index = msg.get_attr("COLO_A_NODE_INDEX")
        assert index is not None and 1 <= index <= 65535
        assert Mode(msg.get_attr("COLO_A_NODE_MODE")) in Mode
        self.decoded += 1

    def run(self, total: int) -> None:
        seq = 1000
        done: set[int] = set()
        while self.sent < total:
            pending: dict[int, str] = {}
            chunk = []
            for _ in range(min(BATCH, total - self.sent)):
                seq += 1
                kind, msg = self.fuzzer.message(seq)
                pending[seq] = kind
                self.kinds[kind] += 1
                chunk.append(msg)
                self.sent += 1
            if self.sent < total and self.fuzzer.rng.random() < 0.05:
                seq += 1
                chunk.append(self.fuzzer.broken_header(seq))
                self.silent_expected.add(seq)
                self.kinds["broken-header"] += 1
                self.sent += 1
            # netlink steps NLMSG_ALIGN(nlmsg_len) to the next message: pad each one
            self.raw.send(b"".join(m + b"\0" * (-len(m) % 4) for m in chunk))
            while pending:
                self._account(pending, done)
            done = {s for s in done if s > seq - 4 * BATCH}


def test_fuzz(ns: str, request: pytest.FixtureRequest) -> None:
    with ColoClient(netns=ns) as client:
        fid = client.family_id
    rng = random.Random(SEED)
    fuzzer = Fuzzer(fid, rng, unused_family_id(ns))
    sock = pyroute2_netns.create_socket(ns, family=16, socket_type=3, proto=16, flags=0)
    events = ColoEvents(netns=ns, rcvbuf=64 << 20, timeout=5.0)
    try:
        raw = RawGenl(sock, timeout=60.0, rcvbuf=32 << 20)
        campaign = Campaign(raw, fuzzer, fid)
        t0 = time.monotonic()
        campaign.run(MESSAGES)
        elapsed = time.monotonic() - t0

        # the socket still works, and everything it created is its own
        answers = raw.exchange({1: encode(fid, Cmd.GET, 1, flags=NLM_F_REQUEST | NLM_F_DUMP)})
        owned = [a for a in answers[1] if a.type == fid]
        with ColoClient(netns=ns) as check:
            nodes = check.dump()
            assert len(nodes) == len(owned) <= 1024
            assert {n.owner for n in nodes} <= {raw.portid}
            raw.close()
            assert check.dump() == [], "nodes survived their owner"
    finally:
        sock.close()

    try:
        seen: Counter[str] = Counter()
        while (event := events.next(timeout=5.0)) is not None:
            assert event.mode in Mode, event
            if isinstance(event, NodeGoneEvent):
                assert event.reason in (GoneReason.DESTROYED, GoneReason.OWNER_RELEASED)
                seen[f"node-gone {event.reason}"] += 1
            else:
                assert event.reason in Reason, event
                seen["checkpoint-needed"] += 1
    finally:
        events.close()

    answered = sum(v for k, v in campaign.outcomes.items()
                   if k not in ("answered-broken-header", "ack-after-done"))
    silent = len(campaign.silent_expected)
    assert answered == campaign.sent - silent
    assert campaign.outcomes["ack"] > 0 and campaign.decoded > 0, "no request ever succeeded"
    errors = {k: v for k, v in campaign.outcomes.items() if k.startswith("errno-")}
    assert sum(errors.values()) > campaign.sent // 2, "most mutations must be refused"

    report(request, f"{campaign.sent} messages in {elapsed:.1f}s "
                    f"({campaign.sent / elapsed:.0f}/s, batches of {BATCH}, seed {SEED})")
    report(request, f"answered {answered}: " + ", ".join(
        f"{k} {v}" for k, v in sorted(campaign.outcomes.items())) +
        f"; replies with a node {campaign.replies} ({campaign.decoded} decoded); "
        f"broken headers dropped by netlink {silent}")
    report(request, "kinds: " + ", ".join(f"{k} {v}" for k, v in sorted(campaign.kinds.items())))
    report(request, "events: " + (", ".join(f"{k} {v}" for k, v in sorted(seen.items()))
                                  or "none"))
