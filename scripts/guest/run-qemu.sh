#!/usr/bin/env bash
# Boot one kernel under QEMU TCG with the host's / as a read-only 9p root and OUTDIR read-write.
#   run-qemu.sh KERNEL INITRD OUTDIR TIMEOUT_S [EXTRA_KERNEL_ARGS...]
# The serial console goes to OUTDIR/console.log and is streamed to stdout, each line prefixed
# with $LOG_PREFIX.  Exits with QEMU's code, 124 when the guest did not finish within
# TIMEOUT_S (QEMU is killed), 130 on Ctrl-C/SIGTERM.  QEMU never outlives this script.
# GUEST_INTERACTIVE=1 attaches the terminal to the serial console instead (debugging).
set -uo pipefail
[ $# -ge 4 ] || { echo "usage: $0 KERNEL INITRD OUTDIR TIMEOUT_S [KERNEL_ARGS...]" >&2; exit 2; }
kernel=$1 initrd=$2 outdir=$(realpath "$3") timeout_s=$4
shift 4
prefix=${LOG_PREFIX:-}
log=$outdir/console.log

qemu=(qemu-system-x86_64 -accel tcg,thread=multi -cpu max -M q35 -smp "${GUEST_SMP:-2}"
      -m "${GUEST_MEM:-2G}" -display none -vga none -no-reboot -net none
      -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
      -virtfs "local,path=$outdir,mount_tag=coloout,security_model=none,multidevs=remap"
      -device virtio-rng-pci
      -kernel "$kernel" -initrd "$initrd"
      -append "console=ttyS0 panic=-1 oops=panic loglevel=4 $*")

if [ "${GUEST_INTERACTIVE:-0}" = 1 ]; then
    exec "${qemu[@]}" -monitor none -serial mon:stdio
fi

qpid= spid=
stop() {
    if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then
        kill -TERM "$qpid" 2>/dev/null
        for _ in 1 2 3 4 5; do kill -0 "$qpid" 2>/dev/null || break; sleep 1; done
        kill -KILL "$qpid" 2>/dev/null
        wait "$qpid" 2>/dev/null
    fi
    if [ -n "$spid" ]; then kill "$spid" 2>/dev/null; wait "$spid" 2>/dev/null; fi
}
trap 'stop' EXIT
trap 'echo "${prefix}interrupted: QEMU killed" >&2; exit 130' INT TERM HUP

: >"$log"
"${qemu[@]}" -monitor none -serial stdio </dev/null >"$log" 2>&1 &
qpid=$!
tail -n +1 -s 0.5 -F --pid="$qpid" "$log" 2>/dev/null | sed -u "s/^/$prefix/" &
spid=$!

deadline=$((SECONDS + timeout_s))
while kill -0 "$qpid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        stop
        echo "${prefix}TIMEOUT: the guest did not finish within ${timeout_s}s; QEMU killed (console: $log)" >&2
        exit 124
    fi
    sleep 1
done
wait "$qpid"
rc=$?
wait "$spid" 2>/dev/null
spid=
exit "$rc"
