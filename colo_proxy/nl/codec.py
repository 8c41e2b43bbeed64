"""Build request messages and decode replies/notifications into typed objects."""

from __future__ import annotations

import socket
from typing import Any

from .constants import FAMILY_VERSION, Cmd, GoneReason, Mode, Reason, State
from .messages import colo_msg
from .model import (
    DP_STATS_FIELDS,
    SEC_STATS_FIELDS,
    STATS_FIELDS,
    CheckpointNeededEvent,
    Event,
    FlowTuple,
    Node,
    NodeGoneEvent,
)

NLA_F_NESTED = 0x8000


def attr_name(name: str) -> str:
    return "COLO_A_NODE_" + name.upper().replace("-", "_")


def request(cmd: Cmd, **attrs: Any) -> colo_msg:
    """A colo message for ``cmd`` with the given node attributes (None = absent)."""
    msg = colo_msg()
    msg["cmd"] = int(cmd)
    msg["version"] = FAMILY_VERSION
    for name, value in attrs.items():
        if value is None:
            continue
        if name == "tuple":
            msg["attrs"].append((attr_name(name), encode_tuple(value), NLA_F_NESTED))
        else:
            msg["attrs"].append((attr_name(name), int(value)))
    return msg


def encode_tuple(flow: FlowTuple) -> dict[str, Any]:
    """The ``tuple`` nest, ctnetlink style (big-endian addresses and ports, AF_* family,
    one ``vlan`` attribute per tag, outermost first)."""
    flow.validate()
    attrs: list[tuple[str, Any]] = [
        ("COLO_A_TUPLE_FAMILY", flow.family),
        ("COLO_A_TUPLE_PROTO", flow.proto),
    ]
    if flow.family == socket.AF_INET:
        attrs += [("COLO_A_TUPLE_SRC4", int.from_bytes(flow.src, "big")),
                  ("COLO_A_TUPLE_DST4", int.from_bytes(flow.dst, "big"))]
    else:
        attrs += [("COLO_A_TUPLE_SRC6", bytes(flow.src)), ("COLO_A_TUPLE_DST6", bytes(flow.dst))]
    attrs += [("COLO_A_TUPLE_SPORT", flow.sport), ("COLO_A_TUPLE_DPORT", flow.dport)]
    attrs += [("COLO_A_TUPLE_VLAN", vlan) for vlan in flow.vlans]
    return {"attrs": attrs}


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _enum(cls: Any, value: Any, default: int = 0) -> Any:
    raw = default if value is None else int(value)
    try:
        return cls(raw)
    except ValueError:
        return raw  # a newer kernel's value: keep the number rather than fail


def decode_stats(nest: Any, fields: tuple[str, ...] = STATS_FIELDS) -> dict[str, int]:
    if nest is None:
        return {}
    stats: dict[str, int] = {}
    for name in fields:
        value = nest.get_attr("COLO_A_STATS_" + name.upper().replace("-", "_"))
        if value is not None:
            stats[name.removeprefix("dp-").removeprefix("sec-")] = int(value)
    return stats


def decode_dp_stats(nest: Any) -> dict[str, int]:
    """The datapath's figures of a ``stats`` nest, keyed without the ``dp-`` prefix."""
    return decode_stats(nest, DP_STATS_FIELDS)


def decode_sec_stats(nest: Any) -> dict[str, int]:
    """The secondary datapath's figures of a ``stats`` nest, keyed without ``sec-``."""
    return decode_stats(nest, SEC_STATS_FIELDS)


def decode_tuple(nest: Any) -> FlowTuple | None:
    if nest is None:
        return None

    def get(name: str, default: Any = 0) -> Any:
        value = nest.get_attr("COLO_A_TUPLE_" + name)
        return default if value is None else value

    def addr(name: str) -> bytes:
        v4 = nest.get_attr(f"COLO_A_TUPLE_{name}4")
        if v4 is not None:
            return int(v4).to_bytes(4, "big")
        return bytes(get(f"{name}6", b""))

    return FlowTuple(
        family=int(get("FAMILY")),
        proto=int(get("PROTO")),
        src=addr("SRC"),
        dst=addr("DST"),
        sport=int(get("SPORT")),
        dport=int(get("DPORT")),
        vlans=tuple(int(v) for v in nest.get_attrs("COLO_A_TUPLE_VLAN")),
    )


def decode_node(msg: Any) -> Node:
    return Node(
        id=int(msg.get_attr("COLO_A_NODE_ID") or 0),
        index=int(msg.get_attr("COLO_A_NODE_INDEX") or 0),
        mode=_enum(Mode, msg.get_attr("COLO_A_NODE_MODE")),
        state=_enum(State, msg.get_attr("COLO_A_NODE_STATE")),
        owner=int(msg.get_attr("COLO_A_NODE_OWNER") or 0),
        stats=decode_stats(msg.get_attr("COLO_A_NODE_STATS")),
        dp_stats=decode_dp_stats(msg.get_attr("COLO_A_NODE_STATS")),
        sec_stats=decode_sec_stats(msg.get_attr("COLO_A_NODE_STATS")),
    )


def decode_event(msg: Any) -> Event | None:
    """A notification as a typed event; None for messages that are not events."""
    cmd = msg.get("cmd")
    node_id = int(msg.get_attr("COLO_A_NODE_ID") or 0)
    index = int(msg.get_attr("COLO_A_NODE_INDEX") or 0)
    mode = _enum(Mode, msg.get_attr("COLO_A_NODE_MODE"))
    if cmd == Cmd.CHECKPOINT_NEEDED:
        return CheckpointNeededEvent(
            id=node_id,
            index=index,
            mode=mode,
            reason=_enum(Reason, msg.get_attr("COLO_A_NODE_REASON")),
            tuple=decode_tuple(msg.get_attr("COLO_A_NODE_TUPLE")),
            offset=_optional_int(msg.get_attr("COLO_A_NODE_OFFSET")),
        )
    if cmd == Cmd.NODE_GONE:
        return NodeGoneEvent(
            id=node_id,
            index=index,
            mode=mode,
            reason=_enum(GoneReason, msg.get_attr("COLO_A_NODE_GONE_REASON")),
            stats=decode_stats(msg.get_attr("COLO_A_NODE_STATS")),
            dp_stats=decode_dp_stats(msg.get_attr("COLO_A_NODE_STATS")),
            sec_stats=decode_sec_stats(msg.get_attr("COLO_A_NODE_STATS")),
        )
    return None
