#!/usr/bin/env python3
"""Compare engine vs QEMU colo-compare: throughput, CPU per pair, memory.

Usage: .venv/bin/python bench/compare.py [--quick] [--reps N] [--pairs N] [--baseline REV]

(a) our Engine, in this process, over synthetic streams (TCP 1400 B, TCP 64 B,
    UDP 64 B over 1000 flows): process CPU time per pair;
(b) QEMU's colo-compare (qemu-system-x86_64 -M none, fresh process per run) fed
    the same frames over its loopback TCP chardevs, pipelined with at most 256
    pairs in flight, released frames read from outdev: QEMU's CPU from
    /proc/PID/stat per pair.
Repetitions are interleaved (engine, QEMU, engine, QEMU, ...) so both see the
same machine load.  With ``--baseline REV`` the engine as of git revision REV
(``colo_proxy/compare`` extracted with ``git archive``) runs too, interleaved, and
a second table compares the two engines.  Then memory: tracemalloc bytes of
engine state per tracked connection, and peak RSS (VmHWM) of a fresh process
tracking 100k connections.
"""

from __future__ import annotations

import argparse
import importlib
import io
import subprocess
import sys
import tarfile
import tempfile
import time
import tracemalloc
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BATCH,
    ROOT,
    Result,
    Series,
    Workload,
    bench_config,
    framed_batches,
    machine_line,
    print_table,
    ratio,
    run_engine,
    run_qemu,
    tcp_connections,
    workloads,
)

from colo_proxy.compare.engine import Engine
from colo_proxy.compare.model import Side


def load_baseline(rev: str, into: Path) -> tuple[ModuleType, ModuleType]:
    """``colo_proxy/compare`` as of git revision ``rev``, imported as the package
    ``baseline_compare`` (the engine package uses relative imports only)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "colo_proxy/compare"],
                             capture_output=True, check=False)
    if archive.returncode:
        sys.exit(f"--baseline {rev}: {archive.stderr.decode().strip()}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    (into / "colo_proxy" / "compare").rename(into / "baseline_compare")
    sys.path.insert(0, str(into))
    return (importlib.import_module("baseline_compare.engine"),
            importlib.import_module("baseline_compare.model"))


def run_baseline(mods: tuple[ModuleType, ModuleType], wl: Workload) -> Result:
    """Like ``run_engine`` (same batches, same decision loop), for the baseline engine."""
    engine_mod, model = mods
    engine = engine_mod.Engine(model.Config(max_connections=1 << 20))
    push, release = engine.push, model.Release
    primary, secondary = model.Side.PRIMARY, model.Side.SECONDARY
    pairs = wl.pairs
    released = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for i in range(0, len(pairs), BATCH):
        chunk = pairs[i:i + BATCH]
        now = time.monotonic() * 1000.0
        for p, _ in chunk:
            for d in push(primary, p, now, p):
                released += type(d) is release
        for _, s in chunk:
            for d in push(secondary, s, now, None):
                released += type(d) is release
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return Result(len(pairs), released, wall, cpu)


def throughput(pairs: int, reps: int, baseline: str | None) -> None:
    wls = workloads(pairs)
    batches = {wl.name: framed_batches(wl) for wl in wls}
    engine = {wl.name: Series() for wl in wls}
    qemu = {wl.name: Series() for wl in wls}
    base = {wl.name: Series() for wl in wls}
    with tempfile.TemporaryDirectory(prefix="colo-bench-") as tmp:
        mods = load_baseline(baseline, Path(tmp)) if baseline else None
        for rep in range(reps):
            for wl in wls:
                runs: list[tuple[str, dict[str, Series]]] = [("engine", engine), ("qemu", qemu)]
                if mods:
                    runs.append(("base", base))
                for name, series in runs:
                    res: Result = (run_engine(wl) if name == "engine"
                                   else run_qemu(wl, batches[wl.name]) if name == "qemu"
                                   else run_baseline(mods, wl))  # type: ignore[arg-type]
                    series[wl.name].results.append(res)
                    print(f"  rep {rep + 1}/{reps} {wl.name:22s} {name:6s} "
                          f"{res.released}/{res.pairs} released, {res.rate:9.0f} pairs/s, "
                          f"{res.cpu_us:6.2f} CPU us/pair", file=sys.stderr, flush=True)
    rows = []
    for wl in wls:
        e, q = engine[wl.name], qemu[wl.name]
        e_cpu, q_cpu = e.median(lambda r: r.cpu_us), q.median(lambda r: r.cpu_us)
        e_rate, q_rate = e.median(lambda r: r.rate), q.median(lambda r: r.rate)
        lost = sum(r.pairs - r.released for r in e.results + q.results)
        rows.append([
            wl.name,
            f"{e_rate / 1000:.1f}k ({e.span(lambda r: r.rate / 1000, '.0f')}k)",
            f"{q_rate / 1000:.1f}k ({q.span(lambda r: r.rate / 1000, '.0f')}k)",
            f"{e_cpu:.2f} ({e.span(lambda r: r.cpu_us, '.2f')})",
            f"{q_cpu:.2f} ({q.span(lambda r: r.cpu_us, '.2f')})",
            ratio(e_cpu, q_cpu),
            str(lost),
        ])
    print_table(
        f"Throughput: {pairs} pairs per run, {reps} interleaved reps, median (min-max)",
        ["workload", "engine pairs/s", "QEMU pairs/s", "engine CPU us/pair",
         "QEMU CPU us/pair", "CPU ratio engine/QEMU", "frames lost"],
        rows)
    if baseline:
        rows = []
        for wl in wls:
            e, b = engine[wl.name], base[wl.name]
            e_cpu, b_cpu = e.median(lambda r: r.cpu_us), b.median(lambda r: r.cpu_us)
            lost = sum(r.pairs - r.released for r in b.results)
            rows.append([
                wl.name,
                f"{b_cpu:.2f} ({b.span(lambda r: r.cpu_us, '.2f')})",
                f"{e_cpu:.2f} ({e.span(lambda r: r.cpu_us, '.2f')})",
                ratio(e_cpu, b_cpu),
                str(lost),
            ])
        print_table(
            f"Engine vs baseline {baseline}: same runs, median (min-max)",
            ["workload", "baseline CPU us/pair", "engine CPU us/pair",
             "CPU ratio engine/baseline", "baseline frames lost"],
            rows)


def state_per_connection(conns: int) -> float:
    """tracemalloc bytes held by the engine per connection with one matched pair each."""
    make = tcp_connections()
    frames = [make(i) for i in range(conns)]
    tracemalloc.start()
    engine = Engine(bench_config())
    base = tracemalloc.get_traced_memory()[0]
    now = time.monotonic() * 1000.0
    for p, s in frames:
        engine.push(Side.PRIMARY, p, now, None)
        engine.push(Side.SECONDARY, s, now, None)
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    tracked = engine.stats.connections_now or conns
    del engine
    return used / tracked


def _status_bytes(field: str) -> int:
    """A ``kB`` field of /proc/self/status in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def rss_child(conns: int) -> None:
    """Run in a fresh process: track ``conns`` connections, print RSS numbers.

    The peak is VmHWM: getrusage's ru_maxrss would include the parent's peak,
    which Linux carries across fork and exec."""
    make = tcp_connections()
    engine = Engine(bench_config())
    before = _status_bytes("VmRSS")
    now = time.monotonic() * 1000.0
    for i in range(conns):
        p, s = make(i)
        engine.push(Side.PRIMARY, p, now, None)
        engine.push(Side.SECONDARY, s, now, None)
    peak = _status_bytes("VmHWM")
    print(f"{before} {peak} {engine.stats.connections_now}")


def memory(conns_traced: int, conns_rss: int) -> None:
    per_conn = state_per_connection(conns_traced)
    out = subprocess.run([sys.executable, __file__, "--rss-child", str(conns_rss)],
                         capture_output=True, text=True, check=True).stdout.split()
    before, peak, tracked = (int(x) for x in out)
    print_table(
        "Memory (engine state; TCP connections with one matched 64 B pair each)",
        ["measure", "value"],
        [["tracemalloc bytes per tracked connection", f"{per_conn:.0f} B ({conns_traced} conns)"],
         [f"peak RSS, fresh process, {conns_rss} connections", f"{peak / 2**20:.1f} MiB"],
         ["  RSS before the first frame (interpreter, imports)", f"{before / 2**20:.1f} MiB"],
         ["  connections the engine reports tracked", str(tracked)]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small and 1 rep")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=50000, help="pairs per run")
    parser.add_argument("--rss-conns", type=int, default=100_000)
    parser.add_argument("--baseline", metavar="REV",
                        help="also run the engine of this git revision and compare")
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child)
        return
    if args.quick:
        args.reps, args.pairs, args.rss_conns = 1, 5000, 5000
    print(f"# bench/compare.py{' --quick' if args.quick else ''}: {machine_line()}")
    throughput(args.pairs, args.reps, args.baseline)
    memory(min(10_000, args.rss_conns), args.rss_conns)


if __name__ == "__main__":
    main()
