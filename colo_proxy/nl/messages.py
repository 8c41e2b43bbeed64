"""pyroute2 message classes of the "colo" family: attributes declared as data.

Each ``nla_map`` entry is ``(attribute number, name, pyroute2 type)``; numbers,
names and types are checked against ``colo.yaml`` by the agreement test.  The
names are the C uapi names (``COLO_A_<SET>_<ATTR>``).
"""

from __future__ import annotations

from pyroute2.netlink import genlmsg, nla

# YAML attribute type -> pyroute2 NLA type (the agreement test uses this too).
PYROUTE2_TYPES = {
    "u8": "uint8",
    "u16": "uint16",
    "u32": "uint32",
    "u64": "uint64",
    "binary": "cdata",
    "pad": "none",
}


class tuple_attrs(nla):  # type: ignore[misc]
    """The ``tuple`` nest: the connection a checkpoint request is about."""

    prefix = "COLO_A_TUPLE_"
    nla_map = (
        (1, "COLO_A_TUPLE_FAMILY", "uint8"),
        (2, "COLO_A_TUPLE_PROTO", "uint8"),
        (3, "COLO_A_TUPLE_SRC", "cdata"),
        (4, "COLO_A_TUPLE_DST", "cdata"),
        (5, "COLO_A_TUPLE_SPORT", "uint16"),
        (6, "COLO_A_TUPLE_DPORT", "uint16"),
        (7, "COLO_A_TUPLE_VLAN", "uint16"),
    )


class stats_attrs(nla):  # type: ignore[misc]
    """The ``stats`` nest: per-node counters (u64, aligned with ``pad``)."""

    prefix = "COLO_A_STATS_"
    nla_map = (
        (1, "COLO_A_STATS_CHECKPOINTS", "uint64"),
        (2, "COLO_A_STATS_CHECKPOINT_REQUESTS", "uint64"),
        (3, "COLO_A_STATS_REQUESTS_SUPPRESSED", "uint64"),
        (4, "COLO_A_STATS_FAILOVERS", "uint64"),
        (5, "COLO_A_STATS_RESETS", "uint64"),
        (6, "COLO_A_STATS_PAD", "none"),
    )


class colo_msg(genlmsg):  # type: ignore[misc]
    """Every command and notification of the family uses the ``node`` set."""

    prefix = "COLO_A_NODE_"
    nla_map = (
        (1, "COLO_A_NODE_INDEX", "uint32"),
        (2, "COLO_A_NODE_MODE", "uint8"),
        (3, "COLO_A_NODE_STATE", "uint8"),
        (4, "COLO_A_NODE_OWNER", "uint32"),
        (5, "COLO_A_NODE_STATS", "stats"),
        (6, "COLO_A_NODE_REASON", "uint8"),
        (7, "COLO_A_NODE_TUPLE", "tuple"),
        (8, "COLO_A_NODE_GONE_REASON", "uint8"),
        (9, "COLO_A_NODE_PAD", "none"),
    )

    stats = stats_attrs
    tuple = tuple_attrs


# YAML attribute-set name -> message class (for the agreement test and decoders).
ATTR_SET_CLASSES: dict[str, type[nla]] = {
    "node": colo_msg,
    "stats": stats_attrs,
    "tuple": tuple_attrs,
}


def c_name(set_name: str, attr_name: str) -> str:
    """The uapi/pyroute2 name of a YAML attribute: ``COLO_A_NODE_GONE_REASON``."""
    return f"COLO_A_{set_name}_{attr_name}".upper().replace("-", "_")
