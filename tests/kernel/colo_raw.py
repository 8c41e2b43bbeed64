"""Raw Generic Netlink sockets for the kernel tests: send bytes, account for every answer.

pyroute2 builds the valid messages (``encode``); this module only moves bytes and
reads the netlink headers of the answers, so malformed requests can be sent and
every request's fate (error, ack, reply, dump, nothing) can be counted.
"""

from __future__ import annotations

import socket
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from colo_proxy.nl import codec
from colo_proxy.nl.constants import Cmd

NETLINK_GENERIC = 16
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
SO_RCVBUFFORCE = 33

NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE = 1, 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP = 0x300
NLMSGERR_ATTR_MSG = 1
NLM_F_ACK_TLVS = 0x200

HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid


def encode(family_id: int, cmd: Cmd | int, seq: int, flags: int = NLM_F_REQUEST | NLM_F_ACK,
           nla: list[Any] | None = None, **attrs: Any) -> bytes:
    """A colo request built by pyroute2 (see colo_proxy.nl.codec); ``nla`` replaces the
    attributes with a pyroute2 attribute list (to send values the client refuses)."""
    msg = codec.request(Cmd.GET, **attrs)
    if nla is not None:
        msg["attrs"] = list(nla)
    msg["cmd"] = int(cmd)
    msg["header"]["type"] = family_id
    msg["header"]["flags"] = flags
    msg["header"]["sequence_number"] = seq
    msg["header"]["pid"] = 0
    msg.encode()
    return bytes(msg.data)


@dataclass
class Answer:
    """One netlink message received: its header fields and payload."""

    type: int
    flags: int
    seq: int
    payload: bytes

    @property
    def error(self) -> int:
        """For NLMSG_ERROR: the (negative) errno, 0 for an ack."""
        return int(struct.unpack_from("=i", self.payload)[0])

    @property
    def extack(self) -> str | None:
        """NLMSGERR_ATTR_MSG of an NLMSG_ERROR, if the kernel sent one."""
        if not self.flags & NLM_F_ACK_TLVS:
            return None
        # struct nlmsgerr = error + the request's header (only, with NETLINK_CAP_ACK) or
        # the whole request; the TLVs follow
        inner_len = HDR.unpack_from(self.payload, 4)[0]
        off = 4 + (HDR.size if self.flags & 0x100 else inner_len)  # NLM_F_CAPPED = 0x100
        off = (off + 3) & ~3
        while off + 4 <= len(self.payload):
            alen, atype = struct.unpack_from("=HH", self.payload, off)
            if alen < 4:
                break
            if atype & 0x3FFF == NLMSGERR_ATTR_MSG:
                return self.payload[off + 4: off + alen].split(b"\0", 1)[0].decode()
            off += (alen + 3) & ~3
        return None


def split(data: bytes) -> list[Answer]:
    out, off = [], 0
    while off + HDR.size <= len(data):
        length, typ, flags, seq, _pid = HDR.unpack_from(data, off)
        if length < HDR.size:
            raise AssertionError(f"kernel sent a netlink message of length {length}")
        out.append(Answer(typ, flags, seq, data[off + HDR.size: off + length]))
        off += (length + 3) & ~3
    return out


@dataclass
class Tally:
    """What happened to requests: counts per outcome ("ok", "reply", errno names...)."""

    outcomes: Counter[str] = field(default_factory=Counter)
    extacks: Counter[str] = field(default_factory=Counter)

    def merge(self, other: Tally) -> None:
        self.outcomes.update(other.outcomes)
        self.extacks.update(other.extacks)


class RawGenl:
    """A raw NETLINK_GENERIC socket with a receive timeout (a hang fails the test)."""

    def __init__(self, sock: socket.socket | None = None, timeout: float = 30.0,
                 rcvbuf: int = 8 << 20) -> None:
        self.sock = sock or socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        self.sock.settimeout(timeout)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self.sock.bind((0, 0))
        self._buf = bytearray(1 << 18)
        self._view = memoryview(self._buf)

    @property
    def portid(self) -> int:
        return int(self.sock.getsockname()[0])

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawGenl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.send(data)

    def recv(self) -> list[Answer]:
        size = self.sock.recv_into(self._buf)
        return split(bytes(self._view[:size]))

    def exchange(self, requests: dict[int, bytes]) -> dict[int, list[Answer]]:
        """Send ``{seq: message}`` in one sendmsg and collect answers until every seq has
        a terminal answer (NLMSG_ERROR or NLMSG_DONE).  Raises TimeoutError on a hang."""
        self.send(b"".join(requests.values()))
        pending = set(requests)
        answers: dict[int, list[Answer]] = {seq: [] for seq in requests}
        while pending:
            for ans in self.recv():
                if ans.seq not in answers:
                    raise AssertionError(f"answer for a sequence number never sent: {ans}")
                if ans.seq not in pending:
                    raise AssertionError(f"answer after the terminal one for seq {ans.seq}")
                answers[ans.seq].append(ans)
                if ans.type in (NLMSG_ERROR, NLMSG_DONE):
                    pending.discard(ans.seq)
        return answers
