"""The kernel datapath's control side (``colo-proxy run kernel``, PMYCOLO).

The module ``nf_colo`` holds, compares and releases the PVM's output in the
kernel (docs/architecture.md): nothing passes through this process per packet.
What it does here is what the userspace datapaths do around their I/O:

* attach: a primary node with the PVM's tap, the forward device and the limits
  (``proxy-init`` with ``tap-ifindex``/``fwd-ifindex``), after subscribing to the
  family's ``events`` group, so that no request is missed;
* every ``checkpoint-needed`` event of the node becomes a ``CheckpointRequest``
  handed to the seam (``KernelSeam``), which passes it to the checkpoint policy
  (the same ``CheckpointPolicy`` classes as the other datapaths: ``flush``,
  ``cmd``), counts it and writes the ``checkpoint-request`` event; the kernel
  resends the event while the node stays checkpoint-pending, and the resends
  (and one that crossed our ``DO_CHECKPOINT``: the node is no longer pending)
  are only counted;
* when the policy reports the checkpoint done, ``DO_CHECKPOINT``: the kernel
  releases every held PVM frame in order and drops the held SVM frames;
* every ``--stats-interval`` the node's counters (``get``) become the seam's
  counters and a ``stats`` event;
* exit (SIGINT/SIGTERM): the node is destroyed; the node-loss rule releases
  (``--owner-loss release``, the default) or drops the PVM frames still held,
  and the final figures (from ``node-gone``) make the ``exit`` event, the same
  shape as the other datapaths'.  A node lost while running (module unloaded,
  a device deleted) ends the run with one line.

The comparison itself is the kernel's: the engine options map to the node's
limits (``--compare-timeout`` to hold-timeout-ms, ``--max-queue`` to
max-held-packets, ``--max-held-bytes``, ``--max-connections``); the kernel has
no passthrough flows yet.
"""

from __future__ import annotations

import logging
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any, cast

from ..compare import Engine
from ..compare.model import CheckpointRequest, Config, ConnKey, Decision
from ..compare.model import Reason as CompareReason
from ..errors import ColoError, InputError
from ..nl.constants import State
from ..nl.model import CheckpointNeededEvent, Event, FlowTuple, Node, NodeGoneEvent
from ..seam import CommandPolicy, EventWriter, FlushPolicy, Seam
from ..seam.checkpoint import CheckpointPolicy
from ..topology import netns as ns_util

log = logging.getLogger("colo_proxy.kernel")

OWNER_LOSS = ("release", "drop")
GONE_WAIT_S = 5.0
"""How long the exit waits for the destroyed node's node-gone event (final figures)."""


@dataclass
class KernelSettings:
    pvm_if: str
    """The PVM's tap (the primary host's interface the PVM's output arrives on)."""
    fwd_if: str
    """The forward link (the SVM's output arrives here)."""
    netns: str | None = None
    owner_loss: str = "release"
    checkpoint: str = "flush"
    checkpoint_cmd: str | None = None
    events: str | None = None
    stats_interval: float = 0.5
    tick_interval: float = 0.02


@dataclass(frozen=True)
class NodeLimits:
    """The node's limits, from the engine options (``limits_from_config``)."""

    hold_timeout_ms: int
    max_held_packets: int
    max_held_bytes: int
    max_connections: int


def limits_from_config(config: Config) -> NodeLimits:
    """The kernel node's limits for an engine ``Config`` (InputError for what the
    kernel cannot do)."""
    if config.passthrough:
        raise InputError("--passthrough: the kernel datapath has no passthrough flows yet")
    return NodeLimits(hold_timeout_ms=max(1, round(config.compare_timeout_ms)),
                      max_held_packets=config.max_queue_per_conn,
                      max_held_bytes=config.max_held_bytes,
                      max_connections=config.max_connections)


def pack_vlans(vlans: tuple[int, ...]) -> int:
    """VLAN ids (outermost first) in the engine's packed form (-1: untagged)."""
    if not vlans:
        return -1
    packed = 0
    for vid in vlans:
        packed = packed << 12 | vid
    return packed


def conn_key(flow: FlowTuple | None) -> ConnKey | None:
    """The engine's connection key of a kernel tuple (None without one)."""
    if flow is None:
        return None
    l3 = {int(socket.AF_INET): 4, int(socket.AF_INET6): 6}.get(flow.family)
    if l3 is None:
        return None
    return ConnKey(pack_vlans(flow.vlans), l3, flow.src, flow.dst, flow.proto,
                   flow.sport, flow.dport)


def checkpoint_request(event: CheckpointNeededEvent, now_ms: float) -> CheckpointRequest:
    """A kernel checkpoint-needed event as the seam's ``CheckpointRequest``.  The
    kernel's reasons use the engine's spellings; ``manual`` (request-checkpoint from
    userspace) and ``unspec`` have no engine member and are kept as text."""
    text = str(event.reason)
    try:
        reason = CompareReason(text)
    except ValueError:
        reason = cast(CompareReason, text)
    detail = f"kernel node {event.index}"
    if event.offset is not None:
        detail += f", first difference at offset {event.offset}"
    return CheckpointRequest(reason, conn_key(event.tuple), detail, now_ms)


def kernel_counters(node: Node) -> dict[str, Any]:
    """The node's figures in the shape of the engine's counters (``stats`` events):
    the names the views read mean the same; the kernel's own are added as they are."""
    dp, st = node.dp_stats, node.stats
    return {
        "frames": {"primary": dp.get("captured", 0), "secondary": dp.get("svm-frames", 0)},
        "released": dp.get("released", 0),
        "pairs_matched": dp.get("matched", 0),
        "mismatches": dp.get("mismatches", 0),
        "uncompared": dp.get("uncompared", 0),
        "control_passed": dp.get("control-passed", 0),
        "dropped_frames": dp.get("dropped", 0),
        "flushed": dp.get("flushed", 0),
        "checkpoint_requests": st.get("checkpoint-requests", 0),
        "requests_suppressed": st.get("requests-suppressed", 0),
        "requests_resent": st.get("requests-resent", 0),
        "checkpoints_done": st.get("checkpoints", 0),
        "connections_now": dp.get("connections", 0),
        "held_frames_now": dp.get("held-packets", 0),
        "held_bytes_now": dp.get("held-bytes", 0),
    }


class _NoIO:
    """The seam's ``DatapathIO``: the kernel releases and drops by itself, so the
    seam never routes a frame here."""

    def release(self, tags: list[object]) -> int:
        return 0

    def drop(self, tags: list[object]) -> None:
        return None


class KernelSeam(Seam):
    """The seam with the kernel node in the engine's place.

    Requests, the policy, the overdue report and the events are the seam's own;
    a completed checkpoint is ``DO_CHECKPOINT`` to the kernel, and the counters,
    the stats and the exit figures come from the node.  The ``Engine`` the base
    class is built with never sees a frame (it supplies the compare timeout of
    the overdue report, and ``tick`` on it decides nothing).
    """

    def __init__(self, datapath: KernelDatapath, config: Config, policy: CheckpointPolicy,
                 events: EventWriter) -> None:
        self.dp = datapath
        super().__init__(Engine(config), policy, _NoIO(), events=events,
                         clock_ms=datapath.now_ms, log=log.info, warn=log.warning)
        if self.control.wrapper is not None:
            raise ColoError(f"checkpoint policy {policy.name}: it wraps the engine (epoch "
                            "gate), which the kernel datapath cannot do yet")

    def held(self) -> tuple[int, int]:
        """The frames the node held at its last reading (both sides: the kernel reports
        one figure), as (held, 0)."""
        node = self.dp.node
        return (node.dp_stats.get("held-packets", 0) if node is not None else 0), 0

    def checkpoint_done(self, note: str | None = None,
                        decisions: list[Decision] | None = None) -> None:
        if self.settled:
            return
        held = self.dp.refresh().dp_stats.get("held-packets", 0)
        self.dp.do_checkpoint()
        self.counters.checkpoints_done += 1
        self._requested_at = None
        if decisions:
            self.handle(decisions)
        # The kernel settles what it held: PVM frames released, SVM frames dropped; it
        # reports one figure for both (``held``).
        self.events.emit("checkpoint-done", released=held, dropped=0, held=held,
                         policy=self.policy.name, note=note or self.policy.note)

    def settle(self, rule: str) -> tuple[int, int]:
        """Exit: the policy stops and nothing is released by the seam any more; the
        node's destruction settles what the kernel holds (``KernelDatapath``)."""
        self.policy.stop()
        self._settled = True
        return 0, 0

    def stats(self, **datapath: Any) -> None:
        if not self.events.enabled:
            return
        node = self.dp.node
        self.events.emit(
            "stats",
            counters=kernel_counters(node) if node is not None else {},
            seam=self.counters.as_dict(),
            connections=[],
            latency_ms={"count": 0, "p50": None, "p99": None, "max": None},
            datapath=datapath or dict(self.counters.io),
        )

    def finish(self, reason: str) -> None:
        self.stats()
        node = self.dp.node
        dp = node.dp_stats if node is not None else {}
        c = self.counters
        self.events.emit("exit", reason=reason,
                         frames={"primary": dp.get("captured", 0),
                                 "secondary": dp.get("svm-frames", 0)},
                         released=c.released_frames, delivered=c.delivered_frames,
                         lost=c.lost_frames, exit_released=c.exit_released,
                         exit_dropped_primary=c.exit_dropped_primary,
                         exit_dropped_secondary=c.exit_dropped_secondary,
                         checkpoint_requests=sum(c.checkpoint_requests.values()),
                         checkpoints_done=c.checkpoints_done)
        self.events.close()


class KernelDatapath:
    """Attach a node, turn its events into checkpoints, destroy it on exit."""

    def __init__(self, settings: KernelSettings, config: Config,
                 policy: CheckpointPolicy | None = None) -> None:
        """``policy``: a checkpoint policy object instead of the one the settings name."""
        self.s = settings
        self.limits = limits_from_config(config)
        if settings.owner_loss not in OWNER_LOSS:
            raise InputError(f"--owner-loss {settings.owner_loss!r}: one of "
                             f"{', '.join(OWNER_LOSS)}")
        self.start = time.monotonic()
        self.events = EventWriter(settings.events)
        self.policy: CheckpointPolicy = policy if policy is not None else (
            CommandPolicy(settings.checkpoint_cmd) if settings.checkpoint == "cmd"
            and settings.checkpoint_cmd else FlushPolicy())
        self.node: Node | None = None
        """The node's last reading (None before the attach)."""
        self._client: Any = None
        self._events: Any = None
        self.seam = KernelSeam(self, config, self.policy, self.events)
        self.counters = self.seam.counters
        for name in ("events", "events_resent", "events_stale", "do_checkpoint_msgs",
                     "stats_reads"):
            self.counters.io[name] = 0
        self.exit_reason = "stopped"
        self.gone: NodeGoneEvent | None = None
        """The node-gone event of our node, once it arrived."""

    def now_ms(self) -> float:
        return (time.monotonic() - self.start) * 1000.0

    # -- the node ---------------------------------------------------------------
    def refresh(self) -> Node:
        """Read the node's counters; they become the seam's."""
        assert self._client is not None and self.node is not None
        if self.gone is not None:
            return self.node
        self.node = self._client.get(self.node.index)
        self.counters.io["stats_reads"] += 1
        self._take_figures(self.node.dp_stats)
        return self.node

    def _take_figures(self, dp: dict[str, int]) -> None:
        c = self.counters
        c.released_frames = dp.get("released", 0)
        c.delivered_frames = c.released_frames  # the kernel re-injects what it releases
        for name in ("captured", "svm-frames", "matched", "mismatches", "uncompared",
                     "control-passed", "dropped", "flushed"):
            c.io[name.replace("-", "_")] = dp.get(name, 0)

    def do_checkpoint(self) -> None:
        assert self._client is not None and self.node is not None
        if self.gone is not None:
            return
        self._client.do_checkpoint(self.node.index)
        self.counters.io["do_checkpoint_msgs"] += 1

    def _check_interfaces(self) -> tuple[int, int]:
        where = f" in netns {self.s.netns}" if self.s.netns else ""
        indexes = []
        for option, name in (("--pvm-if", self.s.pvm_if), ("--fwd-if", self.s.fwd_if)):
            try:
                indexes.append(socket.if_nametoindex(name))
            except OSError:
                raise InputError(f"{option} {name}: no such interface{where}") from None
        return indexes[0], indexes[1]

    def _attach(self) -> None:
        from ..nl.client import ColoClient
        from ..nl.events import ColoEvents

        tap, fwd = self._check_interfaces()
        # Subscribed first: no request of the new node is missed.
        self._events = ColoEvents(timeout=self.s.tick_interval)
        self._client = ColoClient()
        lim = self.limits
        self.node = self._client.proxy_init(
            "primary", tap_ifindex=tap, fwd_ifindex=fwd,
            max_held_packets=lim.max_held_packets, max_held_bytes=lim.max_held_bytes,
            hold_timeout_ms=lim.hold_timeout_ms, max_connections=lim.max_connections,
            owner_loss=self.s.owner_loss)

    # -- events -----------------------------------------------------------------
    def _on_event(self, event: Event) -> None:
        node = self.node
        assert node is not None
        if event.id != node.id:
            return  # another node of this network namespace
        self.counters.io["events"] += 1
        if isinstance(event, NodeGoneEvent):
            self._gone(event)
            raise ColoError(f"kernel node {node.index} gone ({event.reason}): comparison "
                            "stopped, held PVM output released by the node-loss rule")
        if self.seam.requesting:
            self.counters.io["events_resent"] += 1  # the kernel resends while pending
            return
        if self.refresh().state != State.CHECKPOINT_PENDING:
            # A resend that crossed our DO_CHECKPOINT: no request is outstanding.
            self.counters.io["events_stale"] += 1
            return
        self.seam.handle([checkpoint_request(event, self.now_ms())])

    def _gone(self, event: NodeGoneEvent) -> None:
        """Our node is gone: its final figures; the PVM frames it still held were
        released (or dropped, owner-loss drop) by the node-loss rule."""
        node = self.node
        assert node is not None
        before = node.dp_stats.get("flushed", 0)
        self.gone = event
        self.node = Node(node.id, node.index, node.mode, node.state, node.owner,
                         dict(event.stats), dict(event.dp_stats))
        self._take_figures(event.dp_stats)
        flushed = event.dp_stats.get("flushed", 0) - before
        if self.s.owner_loss == "release":
            self.counters.exit_released += flushed
        else:
            self.counters.exit_dropped_primary += flushed

    def _next_event(self, timeout: float) -> Event | None:
        from ..nl.events import ColoEvents, EventsOverrun

        try:
            event: Event | None = self._events.next(timeout)
        except EventsOverrun:
            # Lost notifications: subscribe again; a node still checkpoint-pending has
            # its checkpoint-needed resent by the kernel.
            log.warning("kernel events overrun: resubscribing")
            self._events.close()
            self._events = ColoEvents(timeout=self.s.tick_interval)
            return None
        return event

    # -- main loop --------------------------------------------------------------
    def run(self) -> None:
        if self.s.netns:
            ns_util.enter(self.s.netns)  # nodes and their devices are per netns
        stop = {"signal": 0}

        def on_signal(signum: int, frame: Any) -> None:
            stop["signal"] = signum

        old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._attach()
            assert self.node is not None
            self.events.emit("ready", node=self.node.index, node_id=self.node.id)
            log.info("kernel datapath running (node %d, %s -> %s, checkpoint policy %s, "
                     "owner-loss %s, hold timeout %d ms)", self.node.index, self.s.pvm_if,
                     self.s.fwd_if, self.policy.name, self.s.owner_loss,
                     self.limits.hold_timeout_ms)
            self._loop(stop)
            self.exit_reason = f"signal {signal.Signals(stop['signal']).name}"
        except ColoError as exc:
            self.exit_reason = f"error: {exc}"
            raise
        except Exception as exc:
            self.exit_reason = f"crash: {exc!r}"
            raise
        finally:
            try:
                self._detach()
            finally:
                for sig, handler in old.items():
                    signal.signal(sig, handler)
                c = self.counters
                node = self.node
                dp = node.dp_stats if node is not None else {}
                log.info("exit: frames primary=%d secondary=%d released=%d "
                         "exit-released=%d exit-dropped-primary=%d checkpoint-requests=%d "
                         "checkpoints-done=%d", dp.get("captured", 0),
                         dp.get("svm-frames", 0), c.released_frames, c.exit_released,
                         c.exit_dropped_primary, sum(c.checkpoint_requests.values()),
                         c.checkpoints_done)
                self.seam.finish(self.exit_reason)

    def _loop(self, stop: dict[str, int]) -> None:
        tick = self.s.tick_interval
        next_tick = next_stats = time.monotonic()
        while not stop["signal"]:
            timeout = max(0.0, min(next_tick, next_stats) - time.monotonic())
            event = self._next_event(max(0.005, min(timeout, tick)))
            if stop["signal"]:
                break
            if event is not None:
                self._on_event(event)
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + tick
                self.seam.tick()
            else:
                self.seam.poll()
            if now >= next_stats:
                next_stats = now + self.s.stats_interval
                self.refresh()
                self.seam.stats()

    def _detach(self) -> None:
        """Exit: the policy stops, the node is destroyed (node-loss rule), the final
        figures come from its node-gone event (or a last reading)."""
        self.seam.settle("flush")
        client, events, node = self._client, self._events, self.node
        try:
            if client is not None and node is not None and self.gone is None:
                self.refresh()
                client.proxy_destroy(node.index)
                deadline = time.monotonic() + GONE_WAIT_S
                while self.gone is None and time.monotonic() < deadline:
                    event = events.next(0.2)
                    if isinstance(event, NodeGoneEvent) and event.id == node.id:
                        self._gone(event)
                if self.gone is None:
                    log.warning("kernel node %d destroyed; its node-gone event did not "
                                "arrive within %.0f s (final figures are the last reading)",
                                node.index, GONE_WAIT_S)
        finally:
            for handle in (events, client):
                if handle is not None:
                    handle.close()
            self._events = self._client = None

