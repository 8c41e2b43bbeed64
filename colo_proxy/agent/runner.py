"""``colo-proxy agent CONFIG``: every VM of the config file, until SIGTERM/SIGINT.

Per VM: the role's agent (primary.py or secondary.py), the heartbeat with the
peer, and the watch loop that applies the split-brain rule (failover.py) once
per tick while COLO runs.  Failover happens at most once per VM per agent run;
after it the VM runs unprotected until re-protection (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass, field
from typing import Any

from ..compare.engine import Engine
from ..compare.model import Config
from ..datapath.qemu_socket import QemuSocketSettings
from ..errors import ColoError
from .config import AgentConfig, VmConfig
from .failover import peer_is_dead
from .heartbeat import Heartbeat
from .metrics import MetricsServer, Snapshot, write_status
from .primary import PrimaryAgent
from .secondary import SecondaryAgent

log = logging.getLogger("colo_proxy.agent")


@dataclass
class VmRuntime:
    vm: VmConfig
    heartbeat: Heartbeat
    primary: PrimaryAgent | None = None
    secondary: SecondaryAgent | None = None
    failed_over: bool = False
    guard_logged: bool = False
    watch: asyncio.Task[None] | None = None
    failover_steps: list[tuple[str, str]] = field(default_factory=list)

    @property
    def in_colo(self) -> bool:
        if self.primary is not None:
            return self.primary.controller.in_colo
        assert self.secondary is not None
        return self.secondary.in_colo

    @property
    def protected(self) -> bool:
        """In COLO, or COLO broke with an error and QEMU waits for a failover command."""
        if self.failed_over:
            return False
        if self.primary is not None:
            return self.in_colo or self.primary.controller.exit_reason == "error"
        assert self.secondary is not None
        return self.in_colo or self.secondary.colo_error

    @property
    def healthy(self) -> bool | None:
        agent = self.primary or self.secondary
        assert agent is not None
        return agent.qemu_healthy


def vm_figures(rt: VmRuntime) -> dict[str, Any]:
    hb = rt.heartbeat.counters
    figures: dict[str, Any] = {
        "role": rt.vm.role, "in_colo": int(rt.in_colo), "failed_over": rt.failed_over,
        "qemu_healthy": rt.healthy,
        "peer": {"silent": rt.heartbeat.silent, "healthy": rt.heartbeat.peer_healthy,
                 "accepted": hb.accepted},
        "heartbeats_refused": {"forged": hb.forged, "replayed": hb.replayed,
                               "stale": hb.stale, "malformed": hb.malformed,
                               "wrong_peer": hb.wrong_peer},
        "failover_steps": [list(s) for s in rt.failover_steps],
    }
    if rt.primary is not None:
        ctl = rt.primary.controller
        c = ctl.counters
        gate = rt.primary.gate.counters
        st = rt.primary.datapath.engine.stats
        figures.update({
            "checkpoint_requests": dict(c.by_reason),
            "checkpoints": {"requested": c.requested_done, "periodic": c.periodic_done},
            "checkpoint_retries": c.retries, "checkpoints_outside_colo": c.outside_colo,
            "coalesced": c.coalesced,
            "frames_released": gate.released_frames, "bytes_released": gate.released_bytes,
            "frames_dropped": {str(k): v for k, v in st.dropped.items()},
            "solo_dropped": gate.solo_dropped,
            "frames_held": st.held_frames_now + rt.primary.gate.parked,
            "bytes_held": st.held_bytes_now, "overflow": st.overflow,
            "out_lost": rt.primary.datapath.counters.lost_frames,
            "last_checkpoints": [r.as_dict() for r in list(ctl.history)[-5:]],
        })
    return figures


class AgentRunner:
    def __init__(self, config: AgentConfig, engine_config: Config | None = None) -> None:
        self.config = config
        self.engine_config = engine_config or Config()
        self.vms: list[VmRuntime] = []
        self.metrics: MetricsServer | None = None
        self._stop = asyncio.Event()

    def snapshot(self) -> Snapshot:
        return {rt.vm.name: vm_figures(rt) for rt in self.vms}

    def _build(self, vm: VmConfig) -> VmRuntime:
        key = vm.read_key()
        if vm.role == "primary":
            dp = vm.datapath
            assert dp is not None
            settings = QemuSocketSettings(primary_in=dp.primary_in, secondary_in=dp.secondary_in,
                                          outdev=dp.outdev, vnet_hdr=dp.vnet_hdr)
            cfg = Config(compare_timeout_ms=self.engine_config.compare_timeout_ms,
                         max_queue_per_conn=self.engine_config.max_queue_per_conn,
                         max_held_bytes=self.engine_config.max_held_bytes,
                         max_connections=self.engine_config.max_connections,
                         passthrough=vm.passthrough or self.engine_config.passthrough)
            primary = PrimaryAgent(vm.name, str(vm.qmp), settings, Engine(cfg),
                                   timeouts=vm.timeouts, failover_before=vm.failover_before)
            hb = Heartbeat(vm.name, primary=True, key=key, listen=vm.listen, peer=vm.peer,
                           interval_ms=vm.heartbeat.interval_ms, misses=vm.heartbeat.misses,
                           healthy=lambda: primary.qemu_healthy)
            return VmRuntime(vm, hb, primary=primary)
        secondary = SecondaryAgent(vm.name, str(vm.qmp), vm.redirectors, timeouts=vm.timeouts,
                                   failover_before=vm.failover_before)
        hb = Heartbeat(vm.name, primary=False, key=key, listen=vm.listen, peer=vm.peer,
                       interval_ms=vm.heartbeat.interval_ms, misses=vm.heartbeat.misses,
                       healthy=lambda: secondary.qemu_healthy)
        return VmRuntime(vm, hb, secondary=secondary)

    async def _watch(self, rt: VmRuntime) -> None:
        hb = rt.heartbeat
        while not rt.failed_over:
            await asyncio.sleep(hb.interval_s)
            if not rt.protected or not rt.healthy:
                continue
            unhealthy = hb.peer_healthy is False and not hb.silent
            dead, why = await peer_is_dead(said_unhealthy=unhealthy, silent=hb.silent,
                                           witness=rt.vm.witness)
            if not dead:
                if hb.silent and not rt.guard_logged:
                    log.warning("%s: %s", rt.vm.name, why)
                    rt.guard_logged = True
                elif not hb.silent:
                    rt.guard_logged = False
                continue
            log.warning("%s: peer declared dead: %s; failing over", rt.vm.name, why)
            rt.failed_over = True
            agent = rt.primary or rt.secondary
            assert agent is not None
            result = await agent.failover()
            rt.failover_steps = result.steps
            log.warning("%s: failover %s", rt.vm.name,
                        "done" if result.ok else f"incomplete: {result.steps}")

    async def _status_loop(self) -> None:
        path = self.config.status_file
        if path is None:
            return
        while True:
            try:
                write_status(path, self.snapshot())
            except OSError as exc:
                log.warning("status file %s: %s", path, exc)
                return
            await asyncio.sleep(1.0)

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.vms = [self._build(vm) for vm in self.config.vms]
        if self.config.metrics is not None:
            self.metrics = MetricsServer(self.snapshot)
            try:
                self.metrics.start(self.config.metrics)
            except OSError as exc:
                raise ColoError(f"metrics on {self.config.metrics}: {exc.strerror or exc}"
                                ) from None
            for rt in self.vms:
                self._hook_histograms(rt)
        started: list[VmRuntime] = []
        status: asyncio.Task[None] | None = None
        try:
            for rt in self.vms:
                agent = rt.primary or rt.secondary
                assert agent is not None
                await agent.start()
                started.append(rt)
                try:
                    await rt.heartbeat.start()
                except OSError as exc:
                    raise ColoError(f"{rt.vm.name}: heartbeat on {rt.vm.listen}: "
                                    f"{exc.strerror or exc}") from None
                rt.watch = loop.create_task(self._watch(rt))
                log.info("%s: %s agent running (heartbeat %s -> %s, every %d ms, dead after "
                         "%d misses)", rt.vm.name, rt.vm.role, rt.vm.listen, rt.vm.peer,
                         rt.vm.heartbeat.interval_ms, rt.vm.heartbeat.misses)
            status = loop.create_task(self._status_loop())
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
            await self._stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            if status is not None:
                status.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await status
            for rt in started:
                if rt.watch is not None:
                    rt.watch.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await rt.watch
                agent = rt.primary or rt.secondary
                assert agent is not None
                await agent.stop()
                await rt.heartbeat.close()
            if self.config.status_file is not None and self.vms:
                with contextlib.suppress(OSError):
                    write_status(self.config.status_file, self.snapshot())
            if self.metrics is not None:
                self.metrics.stop()
            log.info("agent stopped")

    def _hook_histograms(self, rt: VmRuntime) -> None:
        assert self.metrics is not None
        h = self.metrics.histograms
        if rt.primary is None:
            return
        latency = h.match_release.labels(vm=rt.vm.name)
        duration = h.checkpoint.labels(vm=rt.vm.name)
        rt.primary.gate.on_match_release = lambda ms: latency.observe(ms / 1000.0)
        previous = rt.primary.controller.on_checkpoint

        def on_checkpoint(rec: Any) -> None:
            if rec.stop is not None and rec.resume is not None:
                duration.observe(max(0.0, rec.resume - rec.stop))
            if previous is not None:
                previous(rec)

        rt.primary.controller.on_checkpoint = on_checkpoint
