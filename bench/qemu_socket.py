#!/usr/bin/env python3
"""Our qemu-socket datapath vs QEMU's colo-compare, same frames, same harness.

Usage: .venv/bin/python bench/qemu_socket.py [--quick] [--reps N] [--pairs N]

Both targets are fresh processes listening on loopback TCP; the same driver
(colo_proxy.qemu.driver.pipelined: batches of 32 pairs, at most 256 pairs in
flight) connects to primary_in, secondary_in and outdev, sends the same framed
streams and reads the released frames back.  CPU per pair is the target
process's utime+stime delta (/proc/PID/stat) over the run; repetitions are
interleaved (datapath, QEMU, datapath, QEMU, ...).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    Series,
    framed_batches,
    machine_line,
    print_table,
    ratio,
    run_qemu,
    run_socket_datapath,
    workloads,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small and 1 rep")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=50000, help="pairs per run")
    args = parser.parse_args()
    if args.quick:
        args.reps, args.pairs = 1, 5000
    print(f"# bench/qemu_socket.py{' --quick' if args.quick else ''}: {machine_line()}")
    wls = workloads(args.pairs)
    batches = {wl.name: framed_batches(wl) for wl in wls}
    ours = {wl.name: Series() for wl in wls}
    qemu = {wl.name: Series() for wl in wls}
    for rep in range(args.reps):
        for wl in wls:
            for name, runner, series in (("colo-proxy", run_socket_datapath, ours),
                                         ("qemu", run_qemu, qemu)):
                res = runner(wl, batches[wl.name])
                series[wl.name].results.append(res)
                print(f"  rep {rep + 1}/{args.reps} {wl.name:22s} {name:10s} "
                      f"{res.released}/{res.pairs} released, {res.rate:9.0f} pairs/s, "
                      f"{res.cpu_us:6.2f} CPU us/pair", file=sys.stderr, flush=True)
    rows = []
    for wl in wls:
        o, q = ours[wl.name], qemu[wl.name]
        o_cpu, q_cpu = o.median(lambda r: r.cpu_us), q.median(lambda r: r.cpu_us)
        lost = sum(r.pairs - r.released for r in o.results + q.results)
        rows.append([
            wl.name,
            f"{o.median(lambda r: r.rate) / 1000:.1f}k ({o.span(lambda r: r.rate / 1000, '.0f')}k)",
            f"{q.median(lambda r: r.rate) / 1000:.1f}k ({q.span(lambda r: r.rate / 1000, '.0f')}k)",
            f"{o_cpu:.2f} ({o.span(lambda r: r.cpu_us, '.2f')})",
            f"{q_cpu:.2f} ({q.span(lambda r: r.cpu_us, '.2f')})",
            ratio(o_cpu, q_cpu),
            str(lost),
        ])
    print_table(
        f"qemu-socket datapath vs colo-compare: {args.pairs} pairs per run, {args.reps} "
        "interleaved reps, median (min-max)",
        ["workload", "colo-proxy pairs/s", "QEMU pairs/s", "colo-proxy CPU us/pair",
         "QEMU CPU us/pair", "CPU ratio colo-proxy/QEMU", "frames lost"],
        rows)


if __name__ == "__main__":
    main()
