"""Every operation of the colo family, and its errors, against the real module.

Each test works in a fresh network namespace (nodes and events are per netns),
through the real client (colo_proxy.nl) or raw bytes where the client cannot
express the request.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest
from colo_raw import NLM_F_ACK, NLM_F_REQUEST, RawGenl, encode
from pyroute2 import netns as pyroute2_netns

from colo_proxy.errors import ColoError
from colo_proxy.nl import (
    CheckpointNeededEvent,
    Cmd,
    ColoClient,
    ColoEvents,
    ColoNetlinkError,
    FlowTuple,
    GoneReason,
    Mode,
    NodeGoneEvent,
    Reason,
    State,
)
from colo_proxy.nl.model import STATS_FIELDS

pytestmark = pytest.mark.kernel


@pytest.fixture
def client(ns: str) -> Iterator[ColoClient]:
    with ColoClient(netns=ns) as c:
        yield c


@pytest.fixture
def events(ns: str) -> Iterator[ColoEvents]:
    with ColoEvents(netns=ns, timeout=5.0) as ev:
        yield ev


def kernel_error(exc: pytest.ExceptionInfo[ColoNetlinkError], code: int) -> str:
    """Assert the errno and that the kernel explained itself; return the extack text."""
    assert exc.value.errno == code, f"expected {errno.errorcode[code]}, got {exc.value}"
    assert exc.value.extack, f"no extack message with {exc.value}"
    assert not exc.value.extack.startswith("colo"), "extack messages carry no module prefix"
    return exc.value.extack


def raw_in(ns: str) -> RawGenl:
    sock = pyroute2_netns.create_socket(ns, family=16, socket_type=3, proto=16, flags=0)
    return RawGenl(sock, timeout=20.0)


# -- proxy-init -------------------------------------------------------------------------

def test_init_allocates_and_reports_the_node(client: ColoClient) -> None:
    node = client.proxy_init(Mode.PRIMARY)
    assert 1 <= node.index <= 65535
    assert (node.mode, node.state, node.owner) == (Mode.PRIMARY, State.ACTIVE, client.portid)
    other = client.proxy_init(Mode.SECONDARY)
    assert other.index != node.index
    assert other.mode == Mode.SECONDARY
    assert other.id > node.id > 0


def test_node_ids_are_never_reused(client: ColoClient) -> None:
    """An index is reused once its node is gone; the node id never is (in the netns)."""
    first = client.proxy_init(Mode.PRIMARY, index=7)
    client.proxy_destroy(7)
    again = client.proxy_init(Mode.PRIMARY, index=7)
    assert again.index == first.index and again.id > first.id
    assert client.get(7).id == again.id
    assert [n.id for n in client.dump()] == [again.id]


def test_init_with_index_and_duplicate(client: ColoClient) -> None:
    assert client.proxy_init(Mode.SECONDARY, index=65535).index == 65535
    assert client.proxy_init(Mode.PRIMARY, index=1).index == 1
    with pytest.raises(ColoNetlinkError) as exc:
        client.proxy_init(Mode.PRIMARY, index=65535)
    assert "exists" in kernel_error(exc, errno.EEXIST)
    assert client.get(65535).mode == Mode.SECONDARY  # the original is untouched


@pytest.mark.parametrize("index", [0, 65536, 0xFFFFFFFF])
def test_init_index_out_of_range(client: ColoClient, index: int) -> None:
    with pytest.raises(ColoNetlinkError) as exc:
        client.proxy_init(Mode.PRIMARY, index=index)
    kernel_error(exc, errno.ERANGE)
    assert client.dump() == []


@pytest.mark.parametrize("mode", [3, 7, 255])
def test_init_invalid_mode(client: ColoClient, mode: int) -> None:
    with pytest.raises(ColoNetlinkError) as exc:
        client._one(Cmd.PROXY_INIT, mode=mode)
    kernel_error(exc, errno.ERANGE)
    assert client.dump() == []


def test_init_without_mode_names_the_missing_attribute(ns: str) -> None:
    with raw_in(ns) as raw:
        fam = ColoClient(netns=ns)
        try:
            msg = encode(fam.family_id, Cmd.PROXY_INIT, 1, index=5)
        finally:
            fam.close()
        (ans,) = raw.exchange({1: msg})[1]
        assert ans.error == -errno.EINVAL
        # NLMSGERR_ATTR_MISS_TYPE (5) names COLO_A_NODE_MODE (2)
        assert b"\x08\x00\x05\x00\x02\x00\x00\x00" in ans.payload


def test_unprotected_mode_node(client: ColoClient) -> None:
    node = client.proxy_init(Mode.UNPROTECTED)
    assert client.get(node.index).mode == Mode.UNPROTECTED


# -- get / dump ----------------------------------------------------------------------------

def test_get_and_dump(client: ColoClient) -> None:
    assert client.dump() == []
    made = {client.proxy_init(Mode.PRIMARY).index for _ in range(5)}
    made.add(client.proxy_init(Mode.SECONDARY, index=4242).index)
    nodes = client.dump()
    assert {n.index for n in nodes} == made
    assert [n.index for n in nodes] == sorted(made), "dump is in index order"
    for node in nodes:
        assert node.owner == client.portid
        assert node.stats == dict.fromkeys(STATS_FIELDS, 0)
        assert client.get(node.index) == node


def test_dump_larger_than_one_message(client: ColoClient) -> None:
    made = {client.proxy_init(Mode.PRIMARY).index for _ in range(300)}
    assert {n.index for n in client.dump()} == made


def test_get_unknown_node(client: ColoClient) -> None:
    with pytest.raises(ColoNetlinkError) as exc:
        client.get(77)
    assert "no such node" in kernel_error(exc, errno.ENOENT)


def test_node_cap_per_netns(client: ColoClient) -> None:
    for _ in range(1024):
        client.proxy_init(Mode.PRIMARY)
    with pytest.raises(ColoNetlinkError) as exc:
        client.proxy_init(Mode.PRIMARY)
    assert "too many" in kernel_error(exc, errno.ENOSPC)
    assert len(client.dump()) == 1024


# -- do-checkpoint / request-checkpoint / reset ----------------------------------------------

def test_checkpoint_request_cycle(client: ColoClient, events: ColoEvents) -> None:
    node = client.proxy_init(Mode.PRIMARY)
    flow = FlowTuple.from_addresses(6, "198.18.0.1", "198.18.0.2", sport=80, dport=40000,
                                    vlans=(12,))
    client.request_checkpoint(node.index, Reason.PAYLOAD_MISMATCH, flow, offset=(1 << 40) + 161)
    ev = events.next()
    assert ev == CheckpointNeededEvent(node.id, node.index, Mode.PRIMARY,
                                       Reason.PAYLOAD_MISMATCH, flow, (1 << 40) + 161)
    assert client.get(node.index).state == State.CHECKPOINT_PENDING

    # pending: further requests are counted, not sent
    client.request_checkpoint(node.index, Reason.TIMEOUT)
    client.request_checkpoint(node.index, Reason.TIMEOUT)
    assert events.next(timeout=1.0) is None
    stats = client.get(node.index).stats
    assert (stats["checkpoint-requests"], stats["requests-suppressed"]) == (1, 2)

    client.do_checkpoint(node.index, Mode.PRIMARY)
    got = client.get(node.index)
    assert (got.state, got.stats["checkpoints"]) == (State.ACTIVE, 1)

    # the next request goes out again; without a tuple, with IPv6, with stacked VLANs
    # and with do-checkpoint's optional mode left out
    client.request_checkpoint(node.index, Reason.MANUAL)
    assert events.next() == CheckpointNeededEvent(node.id, node.index, Mode.PRIMARY,
                                                  Reason.MANUAL)
    client.do_checkpoint(node.index)
    flow6 = FlowTuple.from_addresses(17, "2001:db8::1", "2001:db8::2", sport=1, dport=2,
                                     vlans=(5, 7, 4095, 0))
    client.request_checkpoint(node.index, Reason.TIMEOUT, flow6, offset=0)
    assert events.next() == CheckpointNeededEvent(node.id, node.index, Mode.PRIMARY,
                                                  Reason.TIMEOUT, flow6, 0)
    client.do_checkpoint(node.index)
    client.request_checkpoint(node.index, Reason.CONTROL_MISMATCH, offset=(1 << 64) - 1)
    assert events.next() == CheckpointNeededEvent(node.id, node.index, Mode.PRIMARY,
                                                  Reason.CONTROL_MISMATCH, None, (1 << 64) - 1)
    assert client.get(node.index).stats["checkpoints"] == 3
    with pytest.raises(ColoError, match="not a u64"):
        client.request_checkpoint(node.index, Reason.MANUAL, offset=-1)


def test_checkpoint_wrong_mode(client: ColoClient) -> None:
    node = client.proxy_init(Mode.SECONDARY)
    with pytest.raises(ColoNetlinkError) as exc:
        client.do_checkpoint(node.index, Mode.PRIMARY)
    assert "mode" in kernel_error(exc, errno.EINVAL)
    assert client.get(node.index).stats["checkpoints"] == 0


@pytest.mark.parametrize(
    "op",
    ["do_checkpoint", "do_failover", "proxy_reset", "proxy_destroy", "request_checkpoint"],
)
def test_unknown_node(client: ColoClient, op: str) -> None:
    args = {"do_checkpoint": (Mode.PRIMARY,), "do_failover": (Mode.SECONDARY,),
            "request_checkpoint": (Reason.MANUAL,)}.get(op, ())
    with pytest.raises(ColoNetlinkError) as exc:
        getattr(client, op)(999, *args)
    assert "no such node" in kernel_error(exc, errno.ENOENT)


AF_INET, AF_INET6 = 2, 10


@pytest.mark.parametrize(
    ("attrs", "code"),
    [
        ([("FAMILY", 4)], errno.EINVAL),            # the IP version is not the family
        ([("FAMILY", 6)], errno.EINVAL),
        ([("FAMILY", 0)], errno.EINVAL),
        ([("FAMILY", AF_INET), ("SRC6", bytes(16))], errno.EINVAL),
        ([("FAMILY", AF_INET6), ("DST4", 1)], errno.EINVAL),
        ([("SRC4", 1)], errno.EINVAL),              # an address needs the family
        ([("FAMILY", AF_INET6), ("SRC6", bytes(17))], errno.ERANGE),
        ([("FAMILY", AF_INET6), ("DST6", bytes(4))], errno.ERANGE),
        ([("VLAN", 4096)], errno.ERANGE),
        ([("VLAN", 1)] * 5, errno.E2BIG),           # more tags than tuple-max-vlans
    ],
    ids=["family-4", "family-6", "family-0", "v6-addr-in-v4", "v4-addr-in-v6",
         "addr-without-family", "src6-17-bytes", "dst6-4-bytes", "vlan-4096", "five-vlans"],
)
def test_request_checkpoint_bad_tuple(ns: str, attrs: list[tuple[str, object]],
                                      code: int) -> None:
    with ColoClient(netns=ns) as client, raw_in(ns) as raw:
        node = client.proxy_init(Mode.PRIMARY)
        nest = {"attrs": [(f"COLO_A_TUPLE_{k}", v) for k, v in attrs]}
        msg = encode(client.family_id, Cmd.REQUEST_CHECKPOINT, 1, nla=[
            ("COLO_A_NODE_INDEX", node.index), ("COLO_A_NODE_REASON", 1),
            ("COLO_A_NODE_TUPLE", nest, 0x8000)])
        (ans,) = raw.exchange({1: msg})[1]
        assert ans.error == -code
        assert ans.extack, "no extack message"
        got = client.get(node.index)
        assert (got.state, got.stats["checkpoint-requests"]) == (State.ACTIVE, 0)


def test_tuple_nest_without_nested_flag_is_rejected(ns: str) -> None:
    with ColoClient(netns=ns) as client, raw_in(ns) as raw:
        node = client.proxy_init(Mode.PRIMARY)
        nest = {"attrs": [("COLO_A_TUPLE_FAMILY", 4)]}
        msg = encode(client.family_id, Cmd.REQUEST_CHECKPOINT, 1, nla=[
            ("COLO_A_NODE_INDEX", node.index), ("COLO_A_NODE_TUPLE", nest)])
        (ans,) = raw.exchange({1: msg})[1]
        assert ans.error == -errno.EINVAL
        assert client.get(node.index).state == State.ACTIVE


def test_reset_clears_counters_and_pending(client: ColoClient, events: ColoEvents) -> None:
    node = client.proxy_init(Mode.SECONDARY)
    client.request_checkpoint(node.index, Reason.TIMEOUT)
    client.request_checkpoint(node.index, Reason.TIMEOUT)
    client.do_checkpoint(node.index, Mode.SECONDARY)
    client.request_checkpoint(node.index, Reason.TIMEOUT)
    assert client.get(node.index).state == State.CHECKPOINT_PENDING
    client.proxy_reset(node.index)
    got = client.get(node.index)
    assert got.mode == Mode.SECONDARY
    assert got.state == State.ACTIVE
    assert got.stats == {**dict.fromkeys(STATS_FIELDS, 0), "resets": 1}
    got_events = events.collect(lambda e: len(e) >= 2, timeout=5.0)
    assert [type(e) for e in got_events] == [CheckpointNeededEvent] * 2
    assert events.next(timeout=0.5) is None
    client.proxy_reset(node.index)
    assert client.get(node.index).stats["resets"] == 2


# -- failover ------------------------------------------------------------------------------

def test_failover_secondary(client: ColoClient, events: ColoEvents) -> None:
    node = client.proxy_init(Mode.SECONDARY)
    client.do_failover(node.index, Mode.SECONDARY)
    got = client.get(node.index)
    assert (got.state, got.stats["failovers"]) == (State.FAILED_OVER, 1)
    with pytest.raises(ColoNetlinkError) as exc:
        client.do_failover(node.index, Mode.SECONDARY)
    kernel_error(exc, errno.EALREADY)
    # a failed-over node takes no more checkpoints or requests
    with pytest.raises(ColoNetlinkError) as exc:
        client.do_checkpoint(node.index, Mode.SECONDARY)
    kernel_error(exc, errno.EINVAL)
    with pytest.raises(ColoNetlinkError) as exc:
        client.request_checkpoint(node.index, Reason.MANUAL)
    kernel_error(exc, errno.EINVAL)
    assert events.next(timeout=1.0) is None


def test_failover_on_primary_is_refused(client: ColoClient) -> None:
    node = client.proxy_init(Mode.PRIMARY)
    for mode in (Mode.PRIMARY, Mode.SECONDARY):
        with pytest.raises(ColoNetlinkError) as exc:
            client.do_failover(node.index, mode)
        kernel_error(exc, errno.EINVAL)
    got = client.get(node.index)
    assert (got.state, got.stats["failovers"]) == (State.ACTIVE, 0)


# -- destroy and ownership -------------------------------------------------------------------

def test_destroy_emits_node_gone(client: ColoClient, events: ColoEvents) -> None:
    node = client.proxy_init(Mode.SECONDARY, index=10)
    client.request_checkpoint(10, Reason.TIMEOUT)
    client.do_checkpoint(10, Mode.SECONDARY)
    assert isinstance(events.next(), CheckpointNeededEvent)
    client.proxy_destroy(node.index)
    assert events.next() == NodeGoneEvent(node.id, 10, Mode.SECONDARY, GoneReason.DESTROYED, {
        **dict.fromkeys(STATS_FIELDS, 0), "checkpoints": 1, "checkpoint-requests": 1})
    with pytest.raises(ColoNetlinkError) as exc:
        client.get(10)
    kernel_error(exc, errno.ENOENT)
    with pytest.raises(ColoNetlinkError) as exc:
        client.proxy_destroy(10)
    kernel_error(exc, errno.ENOENT)
    assert client.proxy_init(Mode.PRIMARY, index=10).index == 10  # the index is free again


def test_close_releases_only_own_nodes(ns: str, events: ColoEvents) -> None:
    with ColoClient(netns=ns) as keeper:
        kept = keeper.proxy_init(Mode.PRIMARY).index
        owner = ColoClient(netns=ns)
        gone = {owner.proxy_init(Mode.SECONDARY).index for _ in range(3)}
        owner.close()
        got = events.collect(lambda evs: len(evs) >= 3, timeout=5.0)
        assert {(e.index, e.reason) for e in got if isinstance(e, NodeGoneEvent)} == {
            (i, GoneReason.OWNER_RELEASED) for i in gone}
        assert [n.index for n in keeper.dump()] == [kept]


def test_other_socket_may_destroy(ns: str) -> None:
    """Any CAP_NET_ADMIN socket of the netns may operate on a node (index is the key)."""
    with ColoClient(netns=ns) as owner, ColoClient(netns=ns) as other:
        node = owner.proxy_init(Mode.PRIMARY)
        other.do_checkpoint(node.index, Mode.PRIMARY)
        assert owner.get(node.index).stats["checkpoints"] == 1
        other.proxy_destroy(node.index)
        assert owner.dump() == []


# -- malformed requests the client cannot build ----------------------------------------------

def _family_id(ns: str) -> int:
    with ColoClient(netns=ns) as c:
        return c.family_id


@pytest.mark.parametrize(
    ("name", "mutate", "code"),
    [
        ("unknown command", lambda m: m[:16] + b"\x63" + m[17:], errno.EOPNOTSUPP),
        ("notification command sent", lambda m: m[:16] + b"\x09" + m[17:], errno.EOPNOTSUPP),
        ("reserved header field", lambda m: m[:18] + b"\x01\x00" + m[20:], errno.EINVAL),
        ("attribute not in op policy",
         lambda m: _with_len(m + b"\x05\x00\x03\x00\x01\x00\x00\x00"), errno.EINVAL),
        ("attribute above maxattr",
         lambda m: _with_len(m + b"\x05\x00\x30\x00\x01\x00\x00\x00"), errno.EINVAL),
        ("u8 mode as u32", lambda m: _with_len(m[:20] + b"\x08\x00\x02\x00\x01\x00\x00\x00"),
         errno.EINVAL),
        ("zero-length index", lambda m: _with_len(m + b"\x04\x00\x01\x00"), errno.EINVAL),
    ],
)
def test_malformed_requests(ns: str, name: str, mutate: object, code: int) -> None:
    fid = _family_id(ns)
    with raw_in(ns) as raw:
        msg = mutate(encode(fid, Cmd.PROXY_INIT, 1, mode=Mode.PRIMARY))  # type: ignore[operator]
        (ans,) = raw.exchange({1: msg})[1]
        assert ans.error == -code, f"{name}: got {ans.error}"
    with ColoClient(netns=ns) as c:
        assert c.dump() == [], f"{name}: created a node"


def test_dump_takes_no_attributes(ns: str) -> None:
    """The dump has its own (empty) policy: an index is refused, not silently ignored."""
    with ColoClient(netns=ns) as client, raw_in(ns) as raw:
        client.proxy_init(Mode.PRIMARY, index=3)
        msg = encode(client.family_id, Cmd.GET, 1, flags=NLM_F_REQUEST | NLM_F_ACK | 0x300,
                     index=3)
        answers = raw.exchange({1: msg})[1]
        assert [a.error for a in answers] == [-errno.EINVAL]
        # 6.1 does not pass a dump's .start extack on; 6.12 does
        assert answers[0].extack in (None, "a dump takes no attributes")
        assert [n.index for n in client.dump()] == [3]


def test_dump_flag_on_do_only_op(ns: str) -> None:
    fid = _family_id(ns)
    with raw_in(ns) as raw:
        msg = encode(fid, Cmd.PROXY_INIT, 1, flags=NLM_F_REQUEST | NLM_F_ACK | 0x300,
                     mode=Mode.PRIMARY)
        (ans,) = raw.exchange({1: msg})[1]
        assert ans.error == -errno.EOPNOTSUPP


def _with_len(msg: bytes) -> bytes:
    return len(msg).to_bytes(4, "little") + msg[4:]
