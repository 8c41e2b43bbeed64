#!/usr/bin/env python3
"""Our qemu-socket datapath vs QEMU's colo-compare, same frames, same harness.

Usage: .venv/bin/python bench/qemu_socket.py [--quick] [--reps N] [--pairs N] [--baseline REV]

Both targets are fresh processes listening on loopback TCP; the same driver
(qemu_harness.driver.pipelined: batches of 32 pairs, at most 256 pairs in
flight) connects to primary_in, secondary_in and outdev, sends the same framed
streams and reads the released frames back.  CPU per pair is the target
process's utime+stime delta (/proc/PID/stat) over the run; repetitions are
interleaved (datapath, QEMU, datapath, QEMU, ...).  The table gives the ratio of
the medians and the ratio of the minima (on a shared machine other jobs can only
add CPU time, through cache and SMT contention, so the minimum is the least
disturbed run of each).  With ``--baseline REV`` the
datapath as of git revision REV (``colo_proxy`` extracted with ``git archive``,
engine included) runs too, interleaved, and a further table compares the two.
The engine alone (``run_engine``: this process, same frames) and the framing
alone (``FrameDecoder.split`` over the same streams) run in every repetition too,
to split the datapath's CPU; the datapath processes' system time and minor page
faults are reported as well.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    ROOT,
    Result,
    Series,
    Workload,
    _connect,
    _drive,
    framed_batches,
    machine_line,
    print_table,
    ratio,
    run_engine,
    run_qemu,
    stop_process,
    workloads,
)
from qemu_harness.process import free_tcp_port

from colo_proxy.qemu.framing import FrameDecoder

Runner = Callable[[Workload, tuple[list[bytes], list[bytes]]], Result]
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class DatapathResult(Result):
    sys: float = 0.0
    """System (kernel) CPU seconds of the datapath process over the run."""
    minflt: int = 0
    """Minor page faults of the datapath process over the run."""

    @property
    def sys_us(self) -> float:
        return self.sys / self.released * 1e6 if self.released else float("nan")


def _stime_minflt(pid: int) -> tuple[float, int]:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[12]) / CLK_TCK, int(fields[7])


def run_split(wl: Workload, batches: tuple[list[bytes], list[bytes]], per_read: int = 8) -> Result:
    """FrameDecoder.split alone, in this process, over the same framed streams cut into
    reads of ``per_read`` driver batches (256 pairs, what the datapath reads at a time)."""
    p_reads = [b"".join(batches[0][i:i + per_read]) for i in range(0, len(batches[0]), per_read)]
    s_reads = [b"".join(batches[1][i:i + per_read]) for i in range(0, len(batches[1]), per_read)]
    primary, secondary = FrameDecoder(False), FrameDecoder(False)
    frames = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for p, s in zip(p_reads, s_reads, strict=True):
        frames += len(primary.split(p)[0]) + len(secondary.split(s)[0])
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return Result(len(wl.pairs), frames // 2, wall, cpu)


def extract_baseline(rev: str, into: Path) -> Path:
    """``colo_proxy`` as of git revision ``rev`` under ``into``; returns ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "colo_proxy"],
                             capture_output=True, check=False)
    if archive.returncode:
        sys.exit(f"--baseline {rev}: {archive.stderr.decode().strip()}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


def datapath_at(tree: Path) -> Runner:
    """Like ``run_socket_datapath``, for the ``colo_proxy`` package under ``tree``
    (the child imports it from its working directory, ahead of the installed one)."""

    def run(wl: Workload, batches: tuple[list[bytes], list[bytes]]) -> Result:
        ports = [free_tcp_port() for _ in range(3)]
        # Revisions before the run sub-commands took --datapath.
        run = (["run", "qemu-socket"] if (tree / "colo_proxy/cli/run_options.py").exists()
               else ["run", "--datapath", "qemu-socket"])
        cmd = [sys.executable, "-c", "from colo_proxy.cli import main; main()",
               *run, "--max-connections", str(1 << 20),
               "--primary-in", f"tcp:127.0.0.1:{ports[0]},server",
               "--secondary-in", f"tcp:127.0.0.1:{ports[1]},server",
               "--outdev", f"tcp:127.0.0.1:{ports[2]},server"]
        with tempfile.TemporaryFile() as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    cwd=tree)
            socks = []
            try:
                deadline = time.monotonic() + 20
                for port in (ports[2], ports[0], ports[1]):
                    socks.append(_connect(port, deadline))
                out, pin, sin = socks
                sys0, flt0 = _stime_minflt(proc.pid)
                res = _drive(proc.pid, (pin, sin, out), wl, batches)
                sys1, flt1 = _stime_minflt(proc.pid)
                return DatapathResult(res.pairs, res.released, res.wall, res.cpu,
                                      sys1 - sys0, flt1 - flt0)
            finally:
                for sock in socks:
                    sock.close()
                stop_process(proc)

    return run


def _min_cpu(series: Series) -> float:
    """The least CPU per pair of a series: load on a shared machine only adds to it."""
    return min(r.cpu_us for r in series.results)


def _cpu(series: Series) -> tuple[float, str]:
    return series.median(lambda r: r.cpu_us), series.span(lambda r: r.cpu_us, ".2f")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small and 1 rep")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=50000, help="pairs per run")
    parser.add_argument("--baseline", metavar="REV",
                        help="also run the datapath of this git revision (interleaved)")
    args = parser.parse_args()
    if args.quick:
        args.reps, args.pairs = 1, 5000
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"# bench/qemu_socket.py{' --quick' if args.quick else ''}"
          f"{f' --baseline {args.baseline}' if args.baseline else ''}: {machine_line()}; "
          f"load average at start {load}")
    wls = workloads(args.pairs)
    batches = {wl.name: framed_batches(wl) for wl in wls}
    ours = {wl.name: Series() for wl in wls}
    qemu = {wl.name: Series() for wl in wls}
    base = {wl.name: Series() for wl in wls}
    engine = {wl.name: Series() for wl in wls}
    split = {wl.name: Series() for wl in wls}
    with tempfile.TemporaryDirectory(prefix="colo-bench-") as tmp:
        runs: list[tuple[str, Runner, dict[str, Series]]] = [
            ("colo-proxy", datapath_at(ROOT), ours), ("qemu", run_qemu, qemu),
            ("engine", lambda wl, _: run_engine(wl), engine), ("framing", run_split, split)]
        if args.baseline:
            runs.append(("baseline", datapath_at(extract_baseline(args.baseline, Path(tmp))),
                         base))
        for rep in range(args.reps):
            for wl in wls:
                for name, runner, series in runs:
                    res = runner(wl, batches[wl.name])
                    series[wl.name].results.append(res)
                    print(f"  rep {rep + 1}/{args.reps} {wl.name:22s} {name:10s} "
                          f"{res.released}/{res.pairs} released, {res.rate:9.0f} pairs/s, "
                          f"{res.cpu_us:6.2f} CPU us/pair", file=sys.stderr, flush=True)
    rows = []
    for wl in wls:
        o, q = ours[wl.name], qemu[wl.name]
        (o_cpu, o_span), (q_cpu, q_span) = _cpu(o), _cpu(q)
        lost = sum(r.pairs - r.released for r in o.results + q.results)
        rows.append([
            wl.name,
            f"{o.median(lambda r: r.rate) / 1000:.1f}k ({o.span(lambda r: r.rate / 1000, '.0f')}k)",
            f"{q.median(lambda r: r.rate) / 1000:.1f}k ({q.span(lambda r: r.rate / 1000, '.0f')}k)",
            f"{o_cpu:.2f} ({o_span})",
            f"{q_cpu:.2f} ({q_span})",
            ratio(o_cpu, q_cpu),
            ratio(_min_cpu(o), _min_cpu(q)),
            str(lost),
        ])
    print_table(
        f"qemu-socket datapath vs colo-compare: {args.pairs} pairs per run, {args.reps} "
        "interleaved reps, median (min-max)",
        ["workload", "colo-proxy pairs/s", "QEMU pairs/s", "colo-proxy CPU us/pair",
         "QEMU CPU us/pair", "CPU ratio colo-proxy/QEMU", "ratio of the minima",
         "frames lost"],
        rows)
    rows = []
    for wl in wls:
        (o_cpu, o_span), (e_cpu, e_span) = _cpu(ours[wl.name]), _cpu(engine[wl.name])
        (f_cpu, f_span), (q_cpu, _) = _cpu(split[wl.name]), _cpu(qemu[wl.name])
        rows.append([wl.name, f"{o_cpu:.2f} ({o_span})", f"{e_cpu:.2f} ({e_span})",
                     f"{o_cpu - e_cpu:.2f}", f"{f_cpu:.2f} ({f_span})", ratio(e_cpu, q_cpu),
                     ratio(o_cpu - e_cpu, q_cpu)])
    print_table(
        "Where the datapath's CPU goes: the engine alone and the framing alone (in this "
        "process, same frames) vs the whole datapath process, same runs, median (min-max)",
        ["workload", "datapath CPU us/pair", "engine alone CPU us/pair",
         "rest (I/O, framing, event loop)", "of which framing alone", "engine alone / QEMU",
         "rest / QEMU"],
        rows)
    runs_of = [("colo-proxy", ours)] + ([("baseline", base)] if args.baseline else [])
    rows = []
    for wl in wls:
        row = [wl.name]
        for _, series in runs_of:
            results = [r for r in series[wl.name].results if isinstance(r, DatapathResult)]
            row += [f"{series[wl.name].median(lambda r: r.sys_us):.2f}",  # type: ignore[attr-defined]
                    f"{min(r.minflt for r in results)}-{max(r.minflt for r in results)}"]
        rows.append(row)
    print_table(
        "Kernel time and minor page faults of the datapath process, same runs: median "
        "system CPU per pair, min-max faults per run",
        ["workload"] + [h for name, _ in runs_of
                        for h in (f"{name} system CPU us/pair", f"{name} page faults/run")],
        rows)
    if args.baseline:
        rows = []
        for wl in wls:
            (o_cpu, o_span), (b_cpu, b_span) = _cpu(ours[wl.name]), _cpu(base[wl.name])
            q_cpu, _ = _cpu(qemu[wl.name])
            lost = sum(r.pairs - r.released for r in base[wl.name].results)
            rows.append([wl.name, f"{b_cpu:.2f} ({b_span})", f"{o_cpu:.2f} ({o_span})",
                         ratio(o_cpu, b_cpu), ratio(b_cpu, q_cpu), str(lost)])
        print_table(
            f"qemu-socket datapath vs baseline {args.baseline}: same runs, median (min-max)",
            ["workload", "baseline CPU us/pair", "colo-proxy CPU us/pair",
             "CPU ratio colo-proxy/baseline", "CPU ratio baseline/QEMU",
             "baseline frames lost"],
            rows)


if __name__ == "__main__":
    main()
