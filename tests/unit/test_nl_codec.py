"""The client's message encoding/decoding, without a kernel (pyroute2 both ways)."""

from __future__ import annotations

import ipaddress
import socket
import struct
from pathlib import Path

import nl_spec as spec
import pytest
from click.testing import CliRunner

from colo_proxy.cli import main
from colo_proxy.cli.status import render_table
from colo_proxy.compare.model import ConnKey
from colo_proxy.compare.model import Reason as EngineReason
from colo_proxy.errors import ColoError
from colo_proxy.nl import codec
from colo_proxy.nl.client import _reason
from colo_proxy.nl.constants import Cmd, GoneReason, Mode, Reason, State
from colo_proxy.nl.messages import colo_msg
from colo_proxy.nl.model import CheckpointNeededEvent, FlowTuple, Node, NodeGoneEvent


def _wire(msg: colo_msg) -> colo_msg:
    msg["header"]["type"] = 0x20
    msg.encode()
    back = colo_msg(msg.data)
    back.decode()
    return back


def _attrs(data: bytes) -> list[tuple[int, bytes]]:
    """Top-level (type, payload) pairs after the nlmsghdr + genlmsghdr."""
    out, off = [], 20
    while off < len(data):
        length, typ = struct.unpack_from("HH", data, off)
        out.append((typ, data[off + 4: off + length]))
        off += (length + 3) & ~3
    return out


def test_request_bytes_follow_the_spec() -> None:
    msg = codec.request(Cmd.PROXY_INIT, mode=Mode.SECONDARY, index=7)
    msg["header"]["type"] = 0x20
    msg.encode()
    node = spec.packaged().attr_sets["node"].attrs
    assert msg.data[16] == 1  # genlmsghdr.cmd
    assert _attrs(msg.data) == [
        (node["mode"].value, bytes([2])),
        (node["index"].value, struct.pack("I", 7)),
    ]


def test_absent_attributes_are_not_sent() -> None:
    msg = codec.request(Cmd.PROXY_INIT, mode=Mode.PRIMARY, index=None)
    msg["header"]["type"] = 0x20
    msg.encode()
    mode = spec.packaged().attr_sets["node"].attrs["mode"].value
    assert [t for t, _ in _attrs(msg.data)] == [mode]


def test_tuple_is_a_flagged_nest_and_round_trips() -> None:
    flow = FlowTuple.from_addresses(6, "2001:db8::1", "2001:db8::2", sport=80, dport=5555,
                                    vlans=(5, 7))
    msg = codec.request(Cmd.REQUEST_CHECKPOINT, index=3, reason=Reason.TIMEOUT, tuple=flow)
    msg["header"]["type"] = 0x20
    msg.encode()
    nests = [(t, p) for t, p in _attrs(msg.data) if t & 0x7FFF == 7]
    assert len(nests) == 1 and nests[0][0] & 0x8000, "tuple must carry NLA_F_NESTED"
    back = _wire(codec.request(Cmd.CHECKPOINT_NEEDED, id=12, index=3, mode=Mode.PRIMARY,
                               reason=Reason.TIMEOUT, tuple=flow))
    event = codec.decode_event(back)
    assert event == CheckpointNeededEvent(12, 3, Mode.PRIMARY, Reason.TIMEOUT, flow)
    assert str(event.tuple) == "proto 6 2001:db8::1:80 -> 2001:db8::2:5555 vlan 5.7"


def _nest(data: bytes) -> list[tuple[int, bytes]]:
    """(type, payload) of the tuple nest's attributes in an encoded request."""
    (payload,) = [p for t, p in _attrs(data) if t & 0x7FFF == 7]
    out, off = [], 0
    while off < len(payload):
        length, typ = struct.unpack_from("HH", payload, off)
        out.append((typ, payload[off + 4: off + length]))
        off += (length + 3) & ~3
    return out


def test_tuple_wire_format_is_ctnetlink_style() -> None:
    """AF_INET family, big-endian v4 addresses and ports, one vlan attribute per tag."""
    tattrs = spec.packaged().attr_sets["tuple"].attrs
    num = {name: a.value for name, a in tattrs.items()}
    flow = FlowTuple.from_addresses(17, "198.18.0.1", "198.18.0.2", sport=0x1234,
                                    dport=53, vlans=(100, 200, 4095))
    msg = codec.request(Cmd.REQUEST_CHECKPOINT, index=1, tuple=flow)
    msg["header"]["type"] = 0x20
    msg.encode()
    assert _nest(msg.data) == [
        (num["family"], bytes([socket.AF_INET])),
        (num["proto"], bytes([17])),
        (num["src4"], bytes([198, 18, 0, 1])),
        (num["dst4"], bytes([198, 18, 0, 2])),
        (num["sport"], b"\x12\x34"),
        (num["dport"], b"\x00\x35"),
        (num["vlan"], struct.pack("=H", 100)),
        (num["vlan"], struct.pack("=H", 200)),
        (num["vlan"], struct.pack("=H", 4095)),
    ]
    flow6 = FlowTuple.from_addresses(6, "2001:db8::1", "::2", sport=1, dport=2)
    msg = codec.request(Cmd.REQUEST_CHECKPOINT, index=1, tuple=flow6)
    msg["header"]["type"] = 0x20
    msg.encode()
    got = dict(_nest(msg.data))
    assert got[num["family"]] == bytes([socket.AF_INET6])
    assert got[num["src6"]] == ipaddress.ip_address("2001:db8::1").packed
    assert num["vlan"] not in got and num["src4"] not in got


def test_node_gone_event_decodes_stats() -> None:
    msg = codec.request(Cmd.NODE_GONE, id=(1 << 40) + 1, index=9, mode=Mode.SECONDARY,
                        gone_reason=GoneReason.OWNER_RELEASED)
    msg["attrs"].append(("COLO_A_NODE_STATS", {"attrs": [
        ("COLO_A_STATS_CHECKPOINTS", 5), ("COLO_A_STATS_FAILOVERS", 1),
        ("COLO_A_STATS_REQUESTS_RESENT", 3)]}))
    event = codec.decode_event(_wire(msg))
    assert event == NodeGoneEvent((1 << 40) + 1, 9, Mode.SECONDARY, GoneReason.OWNER_RELEASED,
                                  {"checkpoints": 5, "failovers": 1, "requests-resent": 3})


def test_node_decodes_and_unknown_enum_values_survive() -> None:
    msg = codec.request(Cmd.GET, id=77, index=65535, mode=Mode.PRIMARY)
    msg["attrs"] += [("COLO_A_NODE_STATE", 1), ("COLO_A_NODE_OWNER", 0xDEADBEEF)]
    node = codec.decode_node(_wire(msg))
    assert node == Node(77, 65535, Mode.PRIMARY, State.CHECKPOINT_PENDING, 0xDEADBEEF, {})
    msg = codec.request(Cmd.GET, index=1)
    msg["attrs"] += [("COLO_A_NODE_MODE", 200)]
    assert codec.decode_node(_wire(msg)).mode == 200
    assert codec.decode_event(_wire(codec.request(Cmd.GET, index=1))) is None


def test_flow_tuple_from_engine_key() -> None:
    src, dst = (ipaddress.ip_address(a).packed for a in ("10.0.0.1", "10.0.0.2"))
    key = ConnKey(-1, 4, src, dst, 17, 53, 4000)
    assert FlowTuple.from_conn_key(key) == FlowTuple(socket.AF_INET, 17, src, dst, 53, 4000, ())
    with pytest.raises(ValueError, match="only IP"):
        FlowTuple.from_conn_key(ConnKey(3, 0x0806, b"", b"", 0, 0, 0))
    with pytest.raises(ValueError, match="families differ"):
        FlowTuple.from_addresses(6, "10.0.0.1", "::1")


@pytest.mark.parametrize(("packed", "vlans"), [
    (7, (7,)),                      # one tag
    (5 << 12 | 7, (5, 7)),          # QinQ: 20487 in the engine's packed form
    ((1 << 24) | (2 << 12) | 3, (1, 2, 3)),
    ((4095 << 36) | (1 << 24) | (2 << 12) | 3, (4095, 1, 2, 3)),
])
def test_stacked_vlans_cross_the_api_as_one_attribute_per_tag(
        packed: int, vlans: tuple[int, ...]) -> None:
    """issue 9: QinQ used to be packed into one u16 (20487 > 4095; three tags raised
    struct.error).  Each tag is now its own vlan attribute, outermost first."""
    src, dst = bytes(4), bytes(4)
    flow = FlowTuple.from_conn_key(ConnKey(packed, 4, src, dst, 6, 1, 2))
    assert flow.vlans == vlans
    back = _wire(codec.request(Cmd.CHECKPOINT_NEEDED, index=1, tuple=flow))
    event = codec.decode_event(back)
    assert isinstance(event, CheckpointNeededEvent) and event.tuple == flow


def test_flow_tuple_limits() -> None:
    with pytest.raises(ValueError, match="at most 4 VLAN tags"):
        FlowTuple.from_conn_key(ConnKey((1 << 48) | 1, 4, bytes(4), bytes(4), 6, 1, 2))
    with pytest.raises(ValueError, match="VLAN ids"):
        FlowTuple.from_addresses(6, "10.0.0.1", "10.0.0.2", vlans=(4096,))
    with pytest.raises(ValueError, match="4 bytes"):
        codec.encode_tuple(FlowTuple(socket.AF_INET, 6, bytes(16), bytes(16)))
    with pytest.raises(ValueError, match="AF_INET or AF_INET6"):
        codec.encode_tuple(FlowTuple(4, 6, bytes(4), bytes(4)))


def test_engine_reasons_map_onto_kernel_reasons() -> None:
    for reason in EngineReason:
        assert _reason(reason).spec_name == reason.value
    with pytest.raises(ValueError, match="unknown reason"):
        _reason("bogus")


def test_status_table() -> None:
    assert render_table([]) == "no nodes in this network namespace"
    text = render_table([Node(8, 2, Mode.SECONDARY, State.FAILED_OVER, 42, {"failovers": 1})])
    header, row = text.splitlines()
    assert header.split()[:4] == ["index", "mode", "state", "owner"]
    assert row.split() == ["2", "secondary", "failed-over", "42", "0", "0", "0", "0", "0", "1",
                           "0"]


def test_spec_loader_rejects_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: colo\nattribute-sets: 3\n")
    with pytest.raises(ColoError, match="not a valid Generic Netlink spec"):
        spec.load(bad)
    with pytest.raises(ColoError, match="cannot read"):
        spec.load(tmp_path / "missing.yaml")


@pytest.mark.skipif(Path("/sys/module/nf_colo").exists(), reason="module is loaded")
def test_status_without_module_is_one_clear_line() -> None:
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert len(lines) == 1, result.output
    # The advice depends on whether this kernel can load modules (cli/status.py).
    assert "module nf_colo is not loaded" in lines[0]
    assert "colo-proxy load" in lines[0]
    assert "Traceback" not in result.output
