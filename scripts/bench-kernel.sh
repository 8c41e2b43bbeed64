#!/usr/bin/env bash
# bench/kernel.py (issue 10 §6: plain vs kernel datapath vs NFQUEUE vs QEMU colo-compare)
# inside a guest kernel, for a host that cannot load modules (`make bench-kernel`); with
# BENCH_SCRIPT=bench/secondary.py the secondary's bench instead (`make bench-sec`).
#   scripts/bench-kernel.sh [BUILD [SERIES]] [-- BENCH_ARGS...]      (defaults: build 6.1)
# Builds nf_colo for SERIES (scripts/kmod-build.sh), boots that kernel under QEMU TCG with
# scripts/guest-test.sh's guest (slub_nomerge: the module's slab caches are counted on
# their own), loads the module there and runs bench/kernel.py BENCH_ARGS.  The tables are
# in BUILD/guest/SERIES-bench/console.log (and on stdout).
# Environment: BENCH_SCRIPT (default bench/kernel.py), BENCH_ARGS (word-split, before those
# after --), VENV (default .venv),
# GUEST_TIMEOUT (default 2400), GUEST_SMP, GUEST_MEM as for scripts/guest-test.sh.
set -euo pipefail
here=$(dirname "$(realpath "$0")")
repo=$(dirname "$here")

if [ "${1:-}" = --in-guest ]; then
    # Guest side (run by the guest's cmd.sh, COLO_* exported by scripts/guest-test.sh).
    shift
    py=$1 script=$2; shift 2
    cd "$COLO_REPO"
    deps=$(modinfo -F depends "$COLO_KO" | tr ',' ' ')
    # shellcheck disable=SC2086  # a list of module names
    [ -z "$deps" ] || modprobe -a $deps
    insmod "$COLO_KO"
    echo "guest: $(grep -E '^nf_colo ' /proc/modules)"
    PYTHONPATH=$COLO_REPO exec "$py" "$script" "$@"
fi

build=build series=6.1
[ $# -gt 0 ] && [ "$1" != -- ] && { build=$1; shift; }
[ $# -gt 0 ] && [ "$1" != -- ] && { series=$1; shift; }
[ "${1:-}" = -- ] && shift
read -r -a env_args <<<"${BENCH_ARGS:-}"
bench_args=("${env_args[@]}" "$@")
venv=${VENV:-$repo/.venv}

if [ "$(id -u)" -ne 0 ]; then
    echo "bench-kernel: must run as root (the guest exports / over 9p with the host's permissions)" >&2
    exit 1
fi
[ -x "$venv/bin/python" ] || { echo "bench-kernel: no venv at $venv (run: make venv, or set VENV)" >&2; exit 1; }
echo "== bench-kernel: building nf_colo for $series"
"$here/kmod-build.sh" "$build" "$series"
script=${BENCH_SCRIPT:-bench/kernel.py}
[ -f "$repo/$script" ] || { echo "bench-kernel: no such bench script: $script" >&2; exit 1; }
guest_cmd=$(printf '%q ' bash "$here/bench-kernel.sh" --in-guest "$venv/bin/python" "$script" "${bench_args[@]}")
echo "== bench-kernel: booting $series under QEMU TCG"
GUEST_CMD=$guest_cmd GUEST_OUT_SUFFIX=-bench GUEST_KARGS="slub_nomerge ${GUEST_KARGS:-}" \
    GUEST_TIMEOUT=${GUEST_TIMEOUT:-2400} exec "$here/guest-test.sh" "$build" "$series"
