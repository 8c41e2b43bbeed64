"""One demo run: preflight, topology, services, datapath, traffic, live view,
summary, and cleanup that happens whatever goes wrong.

Children run in process groups of their own; SIGINT/SIGTERM/SIGHUP become
KeyboardInterrupt in the main thread, and while cleaning up those signals are
ignored, so a second Ctrl-C cannot cut the cleanup short.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

from rich.console import Console
from rich.live import Live

from ..errors import ColoError
from ..topology import Topology, build
from .datapaths import DATAPATHS
from .events import parse_event
from .preflight import preflight
from .procs import Child, kill_netns_pids
from .state import DemoState
from .summary import build_summary, print_summary
from .view import FLUSH_NOTE, progress_line, render_live

SERVICE_PORT = 80
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGINT/SIGTERM/SIGHUP raise KeyboardInterrupt in this process only.

    Libraries fork helpers (pyroute2 forks to reach into namespaces) and later stop
    them with SIGTERM: a forked copy must die as by default instead of unwinding
    through the demo's stack and running its cleanup."""
    owner = os.getpid()

    def handler(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, handler) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def _python_m(module: str) -> list[str]:
    return [sys.executable, "-m", module]


class Demo:
    def __init__(self, options: DemoOptions) -> None:
        self.o = options
        self.out = Console(stderr=options.as_json)
        self.state = DemoState()
        self.children: list[Child] = []
        self.topo: Topology | None = None
        if options.log_dir is not None:
            self.log_dir = Path(options.log_dir)
            self.log_dir.mkdir(parents=True, exist_ok=True)
        else:
            self.log_dir = Path(tempfile.mkdtemp(prefix="colo-demo-"))
        self._stdout_logs: dict[str, IO[str]] = {}
        self.live = options.live if options.live is not None else self.out.is_terminal

    # -- lifecycle -----------------------------------------------------------

    def run(self) -> int:
        owner = os.getpid()
        ok = False
        try:
            with _signals_raise():
                code = self._run()
            ok = True
            return code
        finally:
            if os.getpid() == owner:  # never in a forked helper
                with _signals_ignored():
                    if not ok:
                        self.out.print("colo-proxy demo: cleaning up (namespaces, rules, "
                                       "processes)...", style="yellow")
                    self.cleanup()

    def cleanup(self) -> None:
        """Stop every child, kill whatever else lives in our namespaces, remove them."""
        for child in reversed(self.children):
            child.stop()
        topo = self.topo or Topology(self.o.prefix)
        for name in topo.namespaces():
            kill_netns_pids(name)
        topo.destroy()
        for f in self._stdout_logs.values():
            f.close()
        if self.o.log_dir is None:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def _start(self, name: str, netns: str, argv: list[str],
               events: bool = False, driver: bool = False) -> Child:
        full = ["ip", "netns", "exec", netns, *argv]
        if events:
            child = Child(name, full, self.log_dir, on_line=self._datapath_line)
        elif driver:
            child = Child(name, full, self.log_dir, on_line=self._driver_line)
        else:
            child = Child(name, full, self.log_dir)
        self.children.append(child)
        return child

    def _keep(self, name: str, line: str) -> None:
        """With --log-dir, every stdout line of a child goes to <name>.out too."""
        if self.o.log_dir is None:
            return
        f = self._stdout_logs.get(name)
        if f is None:
            f = self._stdout_logs[name] = open(self.log_dir / f"{name}.out", "w")  # noqa: SIM115
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
        preflight(o.prefix)
        self._remove_leftovers()
        self.topo = topo = build(o.prefix)
        self._say(f"topology {o.prefix}: client {topo.client_ip} -> service {topo.vm_ip}:"
                  f"{SERVICE_PORT} in {topo.pvm} (primary) and {topo.svm} (secondary)")
        self._start_services(topo)
        datapath = self._start_datapath(topo)
        self._say(f"datapath {o.datapath} running in {topo.phost}; driving traffic for "
                  f"{o.duration:.0f} s.  {FLUSH_NOTE}")
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


def run_demo(options: DemoOptions) -> int:
    return Demo(options).run()
