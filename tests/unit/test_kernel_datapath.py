"""The kernel datapath's control side without a kernel: option validation, and how the
kernel's events and figures become the seam's requests and counters.  The datapath on
a real nf_colo node runs in the guest (tests/kernel/test_demo_kernel.py)."""

from __future__ import annotations

import json
import socket

import pytest
from click.testing import CliRunner

from colo_proxy.cli import main
from colo_proxy.compare.model import Config, ConnKey, PassthroughRule
from colo_proxy.compare.model import Reason as CompareReason
from colo_proxy.datapath.kernel import (
    checkpoint_request,
    conn_key,
    kernel_counters,
    limits_from_config,
    pack_vlans,
)
from colo_proxy.errors import InputError
from colo_proxy.nl.constants import Mode, Reason, State
from colo_proxy.nl.model import CheckpointNeededEvent, FlowTuple, Node, unpack_vlans
from colo_proxy.seam.events import request_record


@pytest.mark.parametrize(("args", "message"), [
    ([], "needs --pvm-if, --fwd-if"),
    (["--pvm-if", "a", "--fwd-if", "a"], "--pvm-if and --fwd-if must differ"),
    (["--pvm-if", "a", "--fwd-if", "b", "--checkpoint", "cmd"], "needs --checkpoint-cmd"),
    (["--pvm-if", "a", "--fwd-if", "b", "--checkpoint-cmd", "true", "--checkpoint", "flush"],
     "only used with --checkpoint cmd"),
    (["--pvm-if", "a", "--fwd-if", "b", "--owner-loss", "keep"], "Invalid value"),
    (["--pvm-if", "a", "--fwd-if", "b", "--checkpoint", "notify"], "Invalid value"),
    (["--pvm-if", "a", "--fwd-if", "b", "--passthrough", "proto=tcp"],
     "no passthrough flows"),
    # Another datapath's options are not accepted.
    (["--pvm-if", "a", "--fwd-if", "b", "--queue-maxlen", "9"], "No such option"),
])
def test_bad_options_are_one_line_input_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["run", "kernel", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_help_names_the_kernel_options() -> None:
    result = CliRunner().invoke(main, ["run", "kernel", "--help"])
    assert result.exit_code == 0
    for option in ("--pvm-if", "--fwd-if", "--owner-loss", "--checkpoint-cmd", "--events",
                   "--compare-timeout", "--max-queue"):
        assert option in result.output


def test_engine_options_become_the_node_limits() -> None:
    limits = limits_from_config(Config(compare_timeout_ms=250.4, max_queue_per_conn=7,
                                       max_held_bytes=4096, max_connections=9))
    assert (limits.hold_timeout_ms, limits.max_held_packets, limits.max_held_bytes,
            limits.max_connections) == (250, 7, 4096, 9)
    with pytest.raises(InputError, match="passthrough"):
        limits_from_config(Config(passthrough=(PassthroughRule(proto=6),)))


@pytest.mark.parametrize("vlans", [(), (7,), (5, 4095), (0, 1, 2)])
def test_vlans_pack_as_the_engine_does(vlans: tuple[int, ...]) -> None:
    packed = pack_vlans(vlans)
    assert (packed == -1) == (not vlans)
    # unpack drops a leading priority tag (id 0): the packed form cannot tell it apart
    assert unpack_vlans(packed) == (vlans[1:] if vlans[:1] == (0,) else vlans)


def test_a_kernel_tuple_is_the_engine_key_of_that_connection() -> None:
    key = ConnKey(7, 4, socket.inet_aton("198.18.2.2"), socket.inet_aton("198.18.1.2"), 6,
                  80, 20001)
    flow = FlowTuple.from_conn_key(key)
    assert conn_key(flow) == key
    assert str(conn_key(flow)) == str(key)
    six = FlowTuple.from_addresses(17, "fd00::2", "fd00::3", sport=53, dport=4000)
    got = conn_key(six)
    assert got is not None and got.l3 == 6 and got.vlan == -1 and got.proto == 17
    assert conn_key(None) is None


def test_checkpoint_needed_becomes_the_seams_request() -> None:
    flow = FlowTuple.from_addresses(17, "198.18.2.2", "198.18.1.2", sport=7000, dport=4242)
    event = CheckpointNeededEvent(id=3, index=1, mode=Mode.PRIMARY,
                                  reason=Reason.PAYLOAD_MISMATCH, tuple=flow)
    req = checkpoint_request(event, 12.5)
    assert req.reason == CompareReason.PAYLOAD_MISMATCH
    assert req.key == conn_key(flow) and req.time_ms == 12.5
    record = request_record(req)
    assert record["reason"] == "payload-mismatch"
    assert record["key"]["text"] == "udp 198.18.2.2:7000 -> 198.18.1.2:4242"
    # A reason the engine has no member for (request-checkpoint from userspace) is kept.
    manual = checkpoint_request(CheckpointNeededEvent(3, 1, Mode.PRIMARY, Reason.MANUAL),
                                0.0)
    assert str(manual.reason) == "manual" and manual.key is None
    assert request_record(manual)["reason"] == "manual"


def test_kernel_figures_in_the_shape_the_views_read() -> None:
    node = Node(id=1, index=1, mode=Mode.PRIMARY, state=State.ACTIVE, owner=5,
                stats={"checkpoints": 2, "checkpoint-requests": 3},
                dp_stats={"captured": 10, "svm-frames": 9, "released": 8, "matched": 6,
                          "uncompared": 2, "held-packets": 1, "held-bytes": 60})
    c = kernel_counters(node)
    assert c["frames"] == {"primary": 10, "secondary": 9}
    assert (c["released"], c["pairs_matched"], c["uncompared"]) == (8, 6, 2)
    assert (c["held_frames_now"], c["held_bytes_now"]) == (1, 60)
    assert (c["checkpoints_done"], c["checkpoint_requests"]) == (2, 3)
    assert "bytes_compared" not in c  # the kernel counts frames, not bytes


def test_the_demo_shows_the_kernels_frame_figures() -> None:
    from colo_proxy.demo.events import parse_event
    from colo_proxy.demo.state import DemoState
    from colo_proxy.demo.view import PLAIN_WIDTH, progress_line

    node = Node(id=1, index=1, mode=Mode.PRIMARY, state=State.ACTIVE, owner=5,
                dp_stats={"captured": 10, "svm-frames": 9, "matched": 6, "uncompared": 2})
    state = DemoState()
    state.on_datapath_event(parse_event(json.dumps(
        {"event": "stats", "t": 1.0, "counters": kernel_counters(node), "connections": [],
         "latency_ms": {"count": 0, "p50": None, "p99": None, "max": None}})))
    line = progress_line(state.snapshot())
    assert "kernel matched 6, uncompared 2" in line and "compared 0 B" not in line
    assert len(line) <= PLAIN_WIDTH
