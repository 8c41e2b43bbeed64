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
import subprocess
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
from .datapaths import DATAPATHS, KERNEL_MODULE, NEEDS_MODULE
from .drain import BASELINE_SYSCTLS, read_sysctls, wait_quiet
from .events import parse_event
from .interrupts import Interrupts
from .lock import PrefixLock, lock_path
from .preflight import (
    check_kernel,
    check_module,
    check_prefix,
    check_root,
    check_tools,
    probe_namespace,
    require_tool,
)
from .procs import Child, kill_netns_pids, netns_pids
from .state import DemoSnapshot, DemoState
from .summary import (
    BASELINE_NOTE,
    build_summary,
    print_checkpoints,
    print_headline,
    print_next,
)
from .view import (
    DATAPATH_NOTE,
    FLUSH_NOTE,
    NO_TTY_NOTE,
    PLAIN_WIDTH,
    PROGRESS_LEGEND,
    baseline_line,
    checkpoint_line,
    human_bytes,
    progress_line,
    render_live,
    say,
)

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
    """Seconds the services, the datapath and the captures may take to start (more under
    emulation: ``make demo-kernel``)."""
    log_dir: str | None = None
    """Keep the children's output (stdout lines, stderr) here; default: a temporary
    directory removed at the end."""
    baseline: float = 5.0
    """Seconds of unprotected traffic, half before and half after the protected run
    (0: none)."""
    save_captures: str | None = None
    """Capture the PVM's and the SVM's interfaces (tcpdump) into this directory."""
    plot: str | None = None
    """Draw request latency over time into this PNG file (matplotlib)."""

CAPTURE_FILES = {"pvm": "primary.pcap", "svm": "secondary.pcap"}
BASELINE_PORTS = (45000, 50000)
"""First client port of the baseline's two parts (the protected run's are 20000 up)."""


def _helper_timeout(ready_timeout: float) -> None:
    """pyroute2 gives its forked helpers (netns create) 2 s to answer, too little on a
    loaded emulated guest (seen: "no response from the child" under TCG); scale it with
    ``--ready-timeout`` (a tenth of it: 3 s at the default 30 s, 30 s at 300 s)."""
    from pyroute2 import config as pyroute2_config

    pyroute2_config.default_communicate_timeout = max(
        pyroute2_config.default_communicate_timeout, int(ready_timeout / 10))


def _python_m(module: str) -> list[str]:
    return [sys.executable, "-m", module]


class Demo:
    def __init__(self, options: DemoOptions, interrupts: Interrupts | None = None) -> None:
        self.o = options
        self.sig = interrupts or Interrupts()
        self.out = Console(stderr=options.as_json)
        self.tty = self.out.is_terminal
        if not self.tty:  # logs, pipes, CI: wrapped at a fixed width
            self.out = Console(stderr=options.as_json, width=PLAIN_WIDTH)
        self.lock = PrefixLock(options.prefix)
        self.captures: list[Child] = []
        self.final: Callable[[], None] | None = None
        """The headline summary and what to try next: printed after the cleanup."""
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
        if self.final is not None:
            self.final()
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
        step(self.lock.release)  # last: the namespaces are gone
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

    def _start(self, name: str, netns: str, argv: list[str], *,
               events: bool = False, driver: bool = False, baseline: bool = False) -> Child:
        full = ["ip", "netns", "exec", netns, *argv]
        on_line = (self._datapath_line if events else self._baseline_line if baseline
                   else self._driver_line if driver else None)
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

    def _baseline_line(self, name: str, line: str) -> None:
        self._keep(name, line)
        self.state.on_driver_line(line, baseline=True)

    # -- the run ---------------------------------------------------------------

    def _run(self) -> int:
        o = self.o
        if o.datapath not in DATAPATHS:
            raise ColoError(f"demo: unknown datapath {o.datapath!r}")
        if o.save_captures is not None:  # first: --plot may point into it
            self._captures_dir(Path(o.save_captures))
        if o.plot is not None:
            from .plot import check_plot

            check_plot(o.plot)
        self._make_log_dir()
        _helper_timeout(o.ready_timeout)
        check_prefix(o.prefix)
        check_root()
        if o.datapath in NEEDS_MODULE:
            check_module(KERNEL_MODULE)
        # One demo per prefix: a second one refuses here, before it touches anything.
        self.lock.acquire()
        check_tools()
        if o.save_captures is not None:
            require_tool("tcpdump", "tcpdump")
        # From here on the prefix's namespaces are this run's (we hold its lock: any
        # that exist are a crashed run's leftovers); before, a failed run must not
        # touch those of a demo running with the same prefix.
        self.owns_prefix = True
        self._remove_leftovers()
        check_kernel(o.prefix, o.datapath)
        # Not interrupted half way: pyroute2's forked helpers would finish their
        # namespace after the cleanup removed it.  The cleanup removes it all.
        with self.sig.deferred():
            self.topo = topo = build(o.prefix)
        self._say(f"topology {o.prefix}: client {topo.client_ip} -> service {topo.vm_ip}:"
                  f"{SERVICE_PORT} in {topo.pvm} (primary) and {topo.svm} (secondary)")
        self._start_services(topo)
        self._baseline(topo, 1)
        datapath = self._start_datapath(topo)
        self._say(f"datapath {o.datapath} running in {topo.phost}: {DATAPATH_NOTE}  "
                  f"{FLUSH_NOTE}")
        if o.save_captures is not None:
            self._start_captures(topo, Path(o.save_captures))
        tokens = (f"every {o.token_interval:g} s one /session request, whose random token "
                  "differs between the replicas: one checkpoint each, expected"
                  if o.token_interval > 0 else "no /session requests: no checkpoint expected")
        self._say(f"driving HTTP traffic for {o.duration:g} s ({tokens})")
        if not self.live:
            if not self.tty:
                self._say(NO_TTY_NOTE)
            self._say(PROGRESS_LEGEND)
        self.state.restart_clock()
        driver = self._start("traffic", topo.client, self._driver_argv(topo, o.duration),
                             driver=True)
        self._watch(driver, datapath)
        self._finish_datapath(datapath)
        captures = self._stop_captures()
        self._baseline(topo, 2)
        snap = self.state.snapshot()
        summary = build_summary(snap, o.duration, o.datapath)
        print_checkpoints(self.out, summary, snap)
        if o.plot is not None:
            from .plot import write_plot

            write_plot(o.plot, snap, summary)
            self._say(f"plot: {o.plot} (request latency over time, checkpoints marked)")

        def final() -> None:
            print_headline(self.out, summary)
            print_next(self.out, captures, o.plot)
            if o.as_json:
                sys.stdout.write(json.dumps(summary, indent=2) + "\n")
                sys.stdout.flush()
            if summary["requests"]["failed"]:
                raise ColoError(f"demo: {summary['requests']['failed']} of "
                                f"{summary['requests']['total']} HTTP requests failed")

        self.final = final
        return 0

    def _driver_argv(self, topo: Topology, duration: float) -> list[str]:
        return [*_python_m("colo_proxy.demo.traffic"), "--server", topo.vm_ip,
                "--port", str(SERVICE_PORT), "--duration", str(duration),
                "--token-interval", str(self.o.token_interval)]

    def _say(self, text: str) -> None:
        # Wrapped at the terminal's width, or at PLAIN_WIDTH without one.
        say(self.out, text)

    def _remove_leftovers(self) -> None:
        """A crashed run's namespaces and the processes still living in them.  We hold
        the prefix's lock, so no live demo owns them."""
        topo = Topology(self.o.prefix)
        names = [n for n in [*topo.namespaces(), probe_namespace(self.o.prefix)]
                 if os.path.exists(os.path.join("/run/netns", n))]
        if not names:
            return
        procs = sum(len(netns_pids(n)) for n in names)
        self._say(f"removing a crashed demo's leftovers (no live demo holds "
                  f"{lock_path(self.o.prefix)}): namespaces {', '.join(names)}"
                  f"{f' and {procs} processes in them' if procs else ''}")
        for name in names:
            kill_netns_pids(name)
        topo.destroy()
        netns.remove(probe_namespace(self.o.prefix))

    def _start_services(self, topo: Topology) -> None:
        argv = [*_python_m("colo_proxy.demo.httpd"), "--port", str(SERVICE_PORT)]
        services = [self._start(f"httpd-{role}", ns, argv)
                    for role, ns in (("pvm", topo.pvm), ("svm", topo.svm))]
        deadline = time.monotonic() + self.o.ready_timeout
        for svc in services:
            line = svc.wait_line(timeout=max(0.1, deadline - time.monotonic()))
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
        hard_stop = time.monotonic() + self.o.duration + max(30.0, self.o.ready_timeout)
        if self.live:
            with Live(self._render(), console=self.out, refresh_per_second=4,
                      transient=False) as live:
                while driver.running() and time.monotonic() < hard_stop:
                    self._check_datapath(datapath)
                    live.update(self._render())
                    time.sleep(0.25)
                live.update(self._render())
            if not self.tty:  # the final frame, printed once, ends without a newline
                self.out.line()
        else:
            next_line = time.monotonic() + 1.0
            told = 0
            while driver.running() and time.monotonic() < hard_stop:
                self._check_datapath(datapath)
                if time.monotonic() >= next_line:
                    snap = self.state.snapshot()
                    told = self._tell_checkpoints(snap, told)
                    self._say(progress_line(snap))
                    next_line += 1.0
                time.sleep(0.1)
            self._tell_checkpoints(self.state.snapshot(), told)
        driver.stop()
        self.state.stop_clock()

    def _tell_checkpoints(self, snap: DemoSnapshot, told: int) -> int:
        """A plain line for each checkpoint not told yet; returns how many are told."""
        for i in range(told, len(snap.checkpoints)):
            at = snap.checkpoint_times[i] if i < len(snap.checkpoint_times) else snap.elapsed
            self._say(f"[{at:5.1f}s] {checkpoint_line(snap, i)}")
        return len(snap.checkpoints)

    def _start_captures(self, topo: Topology, where: Path) -> None:
        """tcpdump on the PVM's and the SVM's interface: what each replica sent and
        received, the input of ``colo-proxy diff``."""
        self._captures_dir(where)
        for role, netns_name in (("pvm", topo.pvm), ("svm", topo.svm)):
            # -Z root: Debian's tcpdump would otherwise switch to its own user before
            # creating the file; -U: every packet written at once.
            self.captures.append(self._start(
                f"tcpdump-{role}", netns_name,
                ["tcpdump", "-i", topo.vm_if, "-n", "-U", "-s", "0", "-Z", "root",
                 "-w", str(where / CAPTURE_FILES[role]), "tcp", "port", str(SERVICE_PORT)]))
        deadline = time.monotonic() + self.o.ready_timeout
        for child in self.captures:
            while "listening on" not in child.stderr_tail(lines=5):
                if not child.running() or time.monotonic() > deadline:
                    raise ColoError(f"demo: tcpdump in {child.name[8:]} did not start: "
                                    f"{child.stderr_tail() or 'no message'}")
                time.sleep(0.05)

    @staticmethod
    def _captures_dir(where: Path) -> None:
        try:
            where.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ColoError(f"demo: --save-captures {where}: {exc.strerror}") from exc

    def _stop_captures(self) -> tuple[str, str] | None:
        if not self.captures or self.o.save_captures is None:
            return None
        for child in self.captures:
            child.stop()
        where = Path(self.o.save_captures)
        files = (str(where / CAPTURE_FILES["pvm"]), str(where / CAPTURE_FILES["svm"]))
        sizes = ", ".join(f"{f} ({human_bytes(os.path.getsize(f))})" for f in files
                          if os.path.exists(f))
        self._say(f"captures saved: {sizes}")
        return files

    def _baseline(self, topo: Topology, part: int) -> None:
        """Half of the unprotected baseline (``part`` 1 before the protected run, 2
        after it): the same traffic with no datapath, on the same topology."""
        secs = self.o.baseline / 2
        if secs <= 0:
            return
        when = "before" if part == 1 else "after"
        self._say(f"unprotected baseline, part {part} of 2: {secs:g} s of the same traffic "
                  f"{when} the protected run, no datapath ({BASELINE_NOTE})")
        self._drop_secondary(topo, "-I")
        # The secondary, being slower, may be left with answers nothing will ever
        # acknowledge (drain.py): it gives them up quickly, and the part ends only
        # when it has, so that none of them reaches the datapath or a capture.
        defaults = read_sysctls(topo.svm, list(BASELINE_SYSCTLS))
        netns.write_sysctls(topo.svm, BASELINE_SYSCTLS)
        self.state.baseline_part(part)
        # Client ports of their own: a port the other phases used could meet a
        # connection still in TIME_WAIT in the VMs.
        driver = self._start(f"traffic-baseline-{part}", topo.client,
                             [*self._driver_argv(topo, secs), "--first-port",
                              str(BASELINE_PORTS[part - 1])], baseline=True)
        hard_stop = time.monotonic() + secs + max(30.0, self.o.ready_timeout)
        started = time.monotonic()
        next_line = started + 1.0
        while driver.running() and time.monotonic() < hard_stop:
            if time.monotonic() >= next_line:
                self._say(baseline_line(self.state.snapshot(), part,
                                        time.monotonic() - started))
                next_line += 1.0
            time.sleep(0.1)
        driver.stop()
        left = wait_quiet(topo.svm, SERVICE_PORT, max(5.0, self.o.ready_timeout))
        if left:
            self._say(f"warning: after the baseline's part {part} the secondary still has "
                      f"{len(left)} connections that may send into the protected run "
                      f"(client ports {', '.join(str(s.remote_port) for s in left[:5])}; "
                      f"states {', '.join(sorted({s.state for s in left}))})")
        netns.write_sysctls(topo.svm, defaults)
        self._drop_secondary(topo, "-D")

    def _drop_secondary(self, topo: Topology, op: str) -> None:
        """Insert (``-I``) or delete (``-D``) the primary host's rule that drops what
        the secondary sends (without the datapath the host would route it on)."""
        argv = ["ip", "netns", "exec", topo.phost, "iptables", "-w", "-t", "raw", op,
                "PREROUTING", "-i", topo.phost_fwd_if, "-j", "DROP"]
        res = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
        if res.returncode != 0:
            raise ColoError(f"demo: baseline: `{' '.join(argv[4:])}` in {topo.phost}: "
                            f"{res.stderr.strip() or 'failed'}")

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
