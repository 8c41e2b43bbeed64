"""One demo run: preflight, topology, services, datapath, traffic, live view,
summary, and cleanup that happens whatever goes wrong.

Children run in process groups of their own.  SIGINT/SIGTERM/SIGHUP belong to
``Interrupts`` from the start of the run to the end of the process: the first one
becomes KeyboardInterrupt in the main thread (exit 130), later ones and any during
the cleanup are only recorded, so no Ctrl-C can cut the cleanup short.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.live import Live

from ..errors import ColoError
from ..topology import Topology, build, netns
from .datapaths import DATAPATHS
from .events import parse_event
from .interrupts import Interrupts
from .preflight import check_kernel, check_prefix, check_root, check_tools, probe_namespace
from .procs import Child, kill_netns_pids
from .state import DemoState
from .summary import build_summary, print_summary
from .view import DATAPATH_NOTE, FLUSH_NOTE, PROGRESS_LEGEND, progress_line, render_live

SERVICE_PORT = 80


@dataclass
class DemoOptions:
    duration: float = 20.0
    datapath: str = "nfqueue"
    prefix: str = "colo"
    as_json: bool = False
    live: bool | None = None
    """Rich live view; None: when stderr/stdout is a terminal."""
    token_interval: float = 2.0
    stats_interval: float = 0.5
    ready_timeout: float = 30.0
    log_dir: str | None = None
    """Keep the children's output (stdout lines, stderr) here; default: a temporary
    directory removed at the end."""


def _python_m(module: str) -> list[str]:
    return [sys.executable, "-m", module]


class Demo:
    def __init__(self, options: DemoOptions, interrupts: Interrupts | None = None) -> None:
        self.o = options
        self.sig = interrupts or Interrupts()
        self.out = Console(stderr=options.as_json)
        self.state = DemoState()
        self.children: list[Child] = []
        self.topo: Topology | None = None
        self.owns_prefix = False
        """Set once root and the tools are confirmed: the cleanup may remove
        ``<prefix>-*``."""
        self.log_dir: Path | None = None
        self._stdout_logs: dict[str, IO[str]] = {}
        self.live = options.live if options.live is not None else self.out.is_terminal

    # -- lifecycle -----------------------------------------------------------

    def run(self) -> int:
        """The whole run and its cleanup.  Owns the process's SIGINT/SIGTERM/SIGHUP
        until the process exits (``Interrupts``): call it last.  Raises
        KeyboardInterrupt (after the cleanup) if any of them arrived, whatever else
        went wrong meanwhile."""
        owner = os.getpid()
        self.sig.install()
        ok = False
        try:
            code = self._run()
            ok = True
        except BaseException:
            if os.getpid() == owner and self.sig.interrupted:
                # A Ctrl-C also kills the foreground helpers (pyroute2's forks,
                # the preflight's commands): their failure is the interrupt.
                raise KeyboardInterrupt from None
            raise
        finally:
            try:
                self.sig.hold()
            except KeyboardInterrupt:  # arrived just before hold(): recorded all the same
                self.sig.hold()
            if os.getpid() == owner:  # never in a forked helper
                if not ok and self.owns_prefix:
                    self.out.print("colo-proxy demo: cleaning up (namespaces, rules, "
                                   "processes)...", style="yellow")
                try:
                    self.cleanup()
                except ColoError as exc:
                    if ok:
                        raise
                    # The run's own error (or the interrupt) is the one to report.
                    self.out.print(f"colo-proxy demo: {exc}", style="red")
                finally:
                    self.sig.finish()
        if self.sig.interrupted:
            raise KeyboardInterrupt
        self._say(f"cleaned up: namespaces {self.o.prefix}-* and everything in them removed")
        return code

    def cleanup(self) -> None:
        """Stop every child, kill whatever else lives in our namespaces, remove them.
        Every step runs even if an earlier one failed; the first failure is raised."""
        errors: list[Exception] = []

        def step(func: Callable[[], object]) -> None:
            try:
                func()
            except Exception as exc:
                errors.append(exc)

        for child in reversed(self.children):
            step(child.stop)
        if self.owns_prefix:  # else it failed before the first namespace: none is ours
            topo = self.topo or Topology(self.o.prefix)
            probe = probe_namespace(self.o.prefix)
            for name in [*topo.namespaces(), probe]:
                step(partial(kill_netns_pids, name))
            step(topo.destroy)
            step(partial(netns.remove, probe))
        for f in self._stdout_logs.values():
            step(f.close)
        if self.o.log_dir is None and self.log_dir is not None:
            shutil.rmtree(self.log_dir, ignore_errors=True)
        if errors:
            raise ColoError(f"demo: cleanup: {errors[0]}") from errors[0]

    def _make_log_dir(self) -> Path:
        if self.o.log_dir is not None:
            self.log_dir = Path(self.o.log_dir)
            self.log_dir.mkdir(parents=True, exist_ok=True)
        else:
            with self.sig.deferred():
                self.log_dir = Path(tempfile.mkdtemp(prefix="colo-demo-"))
        return self.log_dir

    def _start(self, name: str, netns: str, argv: list[str],
               events: bool = False, driver: bool = False) -> Child:
        full = ["ip", "netns", "exec", netns, *argv]
        on_line = self._datapath_line if events else self._driver_line if driver else None
        log_dir = self._make_log_dir() if self.log_dir is None else self.log_dir
        # Started and registered for the cleanup as one step.
        with self.sig.deferred():
            child = Child(name, full, log_dir, on_line=on_line)
            self.children.append(child)
        return child

    def _keep(self, name: str, line: str) -> None:
        """With --log-dir, every stdout line of a child goes to <name>.out too."""
        if self.o.log_dir is None:
            return
        f = self._stdout_logs.get(name)
        if f is None:
            path = Path(self.o.log_dir) / f"{name}.out"
            f = self._stdout_logs[name] = open(path, "w")  # noqa: SIM115
        f.write(line + "\n")

    def _datapath_line(self, name: str, line: str) -> None:
        self._keep(name, line)
        self.state.on_datapath_event(parse_event(line))

    def _driver_line(self, name: str, line: str) -> None:
        self._keep(name, line)
        self.state.on_driver_line(line)

    # -- the run ---------------------------------------------------------------

    def _run(self) -> int:
        o = self.o
        if o.datapath not in DATAPATHS:
            raise ColoError(f"demo: unknown datapath {o.datapath!r}")
        self._make_log_dir()
        check_prefix(o.prefix)
        check_root()
        check_tools()
        # From the kernel probe on, the prefix's namespaces are this run's (a crashed
        # run's leftovers are removed); before, a failed run must not touch those of
        # a demo running with the same prefix.
        self.owns_prefix = True
        check_kernel(o.prefix)
        self._remove_leftovers()
        # Not interrupted half way: pyroute2's forked helpers would finish their
        # namespace after the cleanup removed it.  The cleanup removes it all.
        with self.sig.deferred():
            self.topo = topo = build(o.prefix)
        self._say(f"topology {o.prefix}: client {topo.client_ip} -> service {topo.vm_ip}:"
                  f"{SERVICE_PORT} in {topo.pvm} (primary) and {topo.svm} (secondary)")
        self._start_services(topo)
        datapath = self._start_datapath(topo)
        self._say(f"datapath {o.datapath} running in {topo.phost}: {DATAPATH_NOTE}  "
                  f"{FLUSH_NOTE}")
        tokens = (f"every {o.token_interval:g} s one /session request, whose random token "
                  "differs between the replicas: one checkpoint each, expected"
                  if o.token_interval > 0 else "no /session requests: no checkpoint expected")
        self._say(f"driving HTTP traffic for {o.duration:g} s ({tokens})")
        if not self.live:
            self._say(PROGRESS_LEGEND)
        self.state.restart_clock()
        driver = self._start("traffic", topo.client, [
            *_python_m("colo_proxy.demo.traffic"), "--server", topo.vm_ip,
            "--port", str(SERVICE_PORT), "--duration", str(o.duration),
            "--token-interval", str(o.token_interval)], driver=True)
        self._watch(driver, datapath)
        self._finish_datapath(datapath)
        snap = self.state.snapshot()
        summary = build_summary(snap, o.duration, o.datapath)
        print_summary(self.out, summary, snap)
        if o.as_json:
            sys.stdout.write(json.dumps(summary, indent=2) + "\n")
            sys.stdout.flush()
        if summary["requests"]["failed"]:
            raise ColoError(f"demo: {summary['requests']['failed']} of "
                            f"{summary['requests']['total']} HTTP requests failed")
        return 0

    def _say(self, text: str) -> None:
        self.out.print(text, highlight=False, soft_wrap=True)

    def _remove_leftovers(self) -> None:
        """Processes of a crashed run still living in our namespaces."""
        for role in ("client", "phost", "pvm", "shost", "svm"):
            killed = kill_netns_pids(f"{self.o.prefix}-{role}")
            if killed:
                self._say(f"removed {killed} leftover processes in {self.o.prefix}-{role}")

    def _start_services(self, topo: Topology) -> None:
        argv = [*_python_m("colo_proxy.demo.httpd"), "--port", str(SERVICE_PORT)]
        services = [self._start(f"httpd-{role}", ns, argv)
                    for role, ns in (("pvm", topo.pvm), ("svm", topo.svm))]
        for svc in services:
            line = svc.wait_line(timeout=15)
            if line is None or not line.startswith("listening"):
                raise ColoError(f"demo: HTTP service {svc.name} did not start: "
                                f"{svc.stderr_tail() or 'no output'}")

    def _start_datapath(self, topo: Topology) -> Child:
        argv = DATAPATHS[self.o.datapath](topo, self.o.stats_interval)
        datapath = self._start(f"datapath-{self.o.datapath}", topo.phost, argv, events=True)
        deadline = time.monotonic() + self.o.ready_timeout
        while not self.state.ready:
            if not datapath.running():
                datapath.stop()
                raise ColoError(f"demo: datapath {self.o.datapath} exited before it was "
                                f"ready: {datapath.stderr_tail() or 'no message'}")
            if time.monotonic() > deadline:
                raise ColoError(f"demo: datapath {self.o.datapath} not ready after "
                                f"{self.o.ready_timeout:.0f} s: {datapath.stderr_tail()}")
            time.sleep(0.05)
        return datapath

    def _check_datapath(self, datapath: Child) -> None:
        if not datapath.running():
            datapath.stop()
            raise ColoError(f"demo: datapath {self.o.datapath} died "
                            f"(exit {datapath.proc.returncode}): "
                            f"{datapath.stderr_tail() or 'no message'}")

    def _watch(self, driver: Child, datapath: Child) -> None:
        # The driver stops by itself after --duration; allow for a request in flight.
        hard_stop = time.monotonic() + self.o.duration + 30.0
        if self.live:
            with Live(self._render(), console=self.out, refresh_per_second=4,
                      transient=False) as live:
                while driver.running() and time.monotonic() < hard_stop:
                    self._check_datapath(datapath)
                    live.update(self._render())
                    time.sleep(0.25)
                live.update(self._render())
        else:
            next_line = time.monotonic() + 1.0
            while driver.running() and time.monotonic() < hard_stop:
                self._check_datapath(datapath)
                if time.monotonic() >= next_line:
                    self._say(progress_line(self.state.snapshot()))
                    next_line += 1.0
                time.sleep(0.1)
        driver.stop()
        self.state.stop_clock()

    def _render(self) -> Any:
        return render_live(self.state.snapshot(), self.o.duration, self.o.datapath)

    def _finish_datapath(self, datapath: Child) -> None:
        """Let the last releases settle, then SIGINT the datapath so that it writes its
        final stats and the exit event."""
        time.sleep(max(self.o.stats_interval, 0.2) * 2)
        self._check_datapath(datapath)
        datapath.signal(signal.SIGINT)
        deadline = time.monotonic() + 10
        while datapath.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        datapath.stop()


def run_demo(options: DemoOptions, interrupts: Interrupts | None = None) -> int:
    """Run the demo; ``interrupts``: already installed by the caller."""
    return Demo(options, interrupts).run()
