"""nfnetlink_queue messages, declared with pyroute2's netlink message classes.

pyroute2 (0.9) ships no NFQUEUE client, but its ``nfgen_msg``/``nla`` machinery
encodes and decodes the messages from a declaration of the attributes, so nothing
here packs bytes by hand.  Layouts follow ``include/uapi/linux/netfilter/
nfnetlink_queue.h``.
"""

from __future__ import annotations

from typing import Any

from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST, nla
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_QUEUE, nfgen_msg

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5

# Message types (low byte; the high byte is the nfnetlink subsystem).
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQNL_MSG_VERDICT_BATCH = 3

NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2

NFQNL_COPY_PACKET = 2

NFQA_CFG_F_FAIL_OPEN = 1 << 0
NFQA_CFG_F_CONNTRACK = 1 << 1
NFQA_CFG_F_GSO = 1 << 2

NF_DROP = 0
NF_ACCEPT = 1

NLMSG_ERROR = 2
NLMSG_HDRLEN = 16


def msg_type(kind: int) -> int:
    """The netlink message type of an nfqueue message ``kind``."""
    return int(NFNL_SUBSYS_QUEUE << 8) | kind


class nfq_packet_msg(nfgen_msg):  # type: ignore[misc]
    """NFQNL_MSG_PACKET: one queued packet (``res_id`` is the queue number)."""

    nla_map = (
        ("NFQA_UNSPEC", "none"),
        ("NFQA_PACKET_HDR", "packet_hdr"),
        ("NFQA_VERDICT_HDR", "verdict_hdr"),
        ("NFQA_MARK", "be32"),
        ("NFQA_TIMESTAMP", "hex"),
        ("NFQA_IFINDEX_INDEV", "be32"),
        ("NFQA_IFINDEX_OUTDEV", "be32"),
        ("NFQA_IFINDEX_PHYSINDEV", "be32"),
        ("NFQA_IFINDEX_PHYSOUTDEV", "be32"),
        ("NFQA_HWADDR", "hex"),
        ("NFQA_PAYLOAD", "cdata"),
        ("NFQA_CT", "hex"),
        ("NFQA_CT_INFO", "be32"),
        ("NFQA_CAP_LEN", "be32"),
        ("NFQA_SKB_INFO", "be32"),
    )

    class packet_hdr(nla):  # type: ignore[misc]
        fields = (("packet_id", ">I"), ("hw_protocol", ">H"), ("hook", "B"))

    class verdict_hdr(nla):  # type: ignore[misc]
        fields = (("verdict", ">I"), ("id", ">I"))


class nfq_verdict_msg(nfgen_msg):  # type: ignore[misc]
    """NFQNL_MSG_VERDICT and NFQNL_MSG_VERDICT_BATCH."""

    nla_map = (
        ("NFQA_UNSPEC", "none"),
        ("NFQA_PACKET_HDR", "hex"),
        ("NFQA_VERDICT_HDR", "verdict_hdr"),
    )

    class verdict_hdr(nla):  # type: ignore[misc]
        fields = (("verdict", ">I"), ("id", ">I"))


class nfq_config_msg(nfgen_msg):  # type: ignore[misc]
    """NFQNL_MSG_CONFIG: bind/unbind and queue parameters."""

    nla_map = (
        ("NFQA_CFG_UNSPEC", "none"),
        ("NFQA_CFG_CMD", "cfg_cmd"),
        ("NFQA_CFG_PARAMS", "cfg_params"),
        ("NFQA_CFG_QUEUE_MAXLEN", "be32"),
        ("NFQA_CFG_MASK", "be32"),
        ("NFQA_CFG_FLAGS", "be32"),
    )

    class cfg_cmd(nla):  # type: ignore[misc]
        fields = (("command", "B"), ("_pad", "B"), ("pf", ">H"))

    class cfg_params(nla):  # type: ignore[misc]
        fields = (("copy_range", ">I"), ("copy_mode", "B"))


def encode(msg: Any, kind: int, queue: int, seq: int, ack: bool) -> bytes:
    """Fill the nfgen header and the netlink header of ``msg`` and encode it."""
    msg["nfgen_family"] = 0
    msg["version"] = 0
    msg["res_id"] = queue
    msg["header"]["type"] = msg_type(kind)
    msg["header"]["flags"] = NLM_F_REQUEST | (NLM_F_ACK if ack else 0)
    msg["header"]["sequence_number"] = seq
    msg["header"]["pid"] = 0
    msg.encode()
    return bytes(msg.data)


def config_message(queue: int, seq: int, attrs: list[tuple[str, Any]], ack: bool = True) -> bytes:
    msg = nfq_config_msg()
    msg["attrs"] = [list(a) for a in attrs]
    return encode(msg, NFQNL_MSG_CONFIG, queue, seq, ack=ack)


def verdict_message(queue: int, packet_id: int, verdict: int, batch: bool, seq: int) -> bytes:
    msg = nfq_verdict_msg()
    msg["attrs"] = [["NFQA_VERDICT_HDR", {"verdict": verdict, "id": packet_id}]]
    kind = NFQNL_MSG_VERDICT_BATCH if batch else NFQNL_MSG_VERDICT
    return encode(msg, kind, queue, seq, ack=False)
