#!/usr/bin/env bash
# The demo on the kernel datapath (PMYCOLO) inside a guest kernel, for a host that cannot
# load modules (`make demo-kernel`).
#   scripts/demo-kernel.sh [BUILD [SERIES]] [-- DEMO_ARGS...]      (defaults: build 6.1)
# Builds nf_colo for SERIES (scripts/kmod-build.sh), boots that kernel under QEMU TCG with
# scripts/guest-test.sh's guest, loads the module there and runs
#   colo-proxy demo --datapath kernel DEMO_ARGS
# On a terminal the guest's serial console is attached to it (GUEST_INTERACTIVE): the live
# view, Ctrl-C stops the demo (which cleans up), Ctrl-A X kills QEMU.  Without one, plain
# progress lines on stdout.  Logs: BUILD/guest/SERIES-demo/ (console.log, dmesg.txt, rc).
# Exit status: the demo's (and 1 on a bad kernel log line, see scripts/guest-test.sh).
# Environment: DEMO_ARGS (word-split, before those after --), GUEST_TIMEOUT, GUEST_SMP,
# GUEST_MEM as for scripts/guest-test.sh.
set -euo pipefail
here=$(dirname "$(realpath "$0")")
repo=$(dirname "$here")

if [ "${1:-}" = --in-guest ]; then
    # Guest side (run by the guest's cmd.sh, COLO_* exported by scripts/guest-test.sh).
    shift
    cd "$COLO_REPO"
    deps=$(modinfo -F depends "$COLO_KO" | tr ',' ' ')
    # shellcheck disable=SC2086  # a list of module names
    [ -z "$deps" ] || modprobe -a $deps
    insmod "$COLO_KO"
    echo "guest: $(grep -E '^nf_colo ' /proc/modules)"
    exec .venv/bin/colo-proxy demo --datapath kernel "$@"
fi

build=build series=6.1
[ $# -gt 0 ] && [ "$1" != -- ] && { build=$1; shift; }
[ $# -gt 0 ] && [ "$1" != -- ] && { series=$1; shift; }
[ "${1:-}" = -- ] && shift
read -r -a env_args <<<"${DEMO_ARGS:-}"
demo_args=("${env_args[@]}" "$@")

if [ "$(id -u)" -ne 0 ]; then
    echo "demo-kernel: must run as root (the guest exports / over 9p with the host's permissions)" >&2
    exit 1
fi
[ -x "$repo/.venv/bin/colo-proxy" ] || { echo "demo-kernel: no .venv (run: make venv)" >&2; exit 1; }
echo "== demo-kernel: building nf_colo for $series"
"$here/kmod-build.sh" "$build" "$series"

if [ -t 0 ] && [ -t 1 ]; then
    guest_cmd=$(printf '%q ' bash "$here/demo-kernel.sh" --in-guest --ready-timeout 300 "${demo_args[@]}")
    # The serial console is the terminal: give it the terminal's size and type, and make
    # it the demo's controlling terminal so that Ctrl-C reaches the demo.
    cols=$(tput cols 2>/dev/null || echo 80) rows=$(tput lines 2>/dev/null || echo 24)
    guest_cmd="stty -F /dev/ttyS0 cols $cols rows $rows sane; export TERM=$(printf %q "${TERM:-xterm}");
setsid -w -c $guest_cmd </dev/ttyS0 >/dev/ttyS0 2>&1"
    export GUEST_INTERACTIVE=1
    echo "== demo-kernel: booting $series under QEMU TCG; the guest's console is this terminal" \
         "(Ctrl-C stops the demo, Ctrl-A X kills QEMU)"
else
    guest_cmd=$(printf '%q ' bash "$here/demo-kernel.sh" --in-guest --plain --ready-timeout 300 "${demo_args[@]}")
    echo "== demo-kernel: booting $series under QEMU TCG (no terminal: plain progress lines)"
fi
GUEST_CMD=$guest_cmd GUEST_OUT_SUFFIX=-demo GUEST_TIMEOUT=${GUEST_TIMEOUT:-1200} \
    exec "$here/guest-test.sh" "$build" "$series"
