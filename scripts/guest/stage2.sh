#!/bin/bash
# PID 1 in the guest after switch_root into the host tree (see init).  Runs OUT/cmd.sh, keeps
# the kernel log in OUT/dmesg.txt as it grows, writes the command's exit code to OUT/rc and
# the guest-side timings to OUT/times, then reboots (QEMU runs with -no-reboot, so it exits).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 TERM=dumb PYTHONDONTWRITEBYTECODE=1
out=
for arg in $(</proc/cmdline); do
    case "$arg" in colo.out=*) out=${arg#*=} ;; esac
done

finish() {
    echo "$1" >"$out/rc"
    sync
    echo b >/proc/sysrq-trigger
    sleep 30
}

ready=$(cut -d' ' -f1 /proc/uptime)
echo "guest: $(uname -r) up in ${ready}s (guest clock)"
# Marker for the host: the kernel booted and the host tree is up; the module is loaded after this.
: >"$out/stage2"
hostname colo-guest
ip link set lo up
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
dmesg --follow --nopager >"$out/dmesg.txt" 2>&1 &

start=$(date +%s.%N)
if [ -f "$out/cmd.sh" ]; then
    bash "$out/cmd.sh"
    rc=$?
else
    echo "guest: $out/cmd.sh missing"
    rc=98
fi
end=$(date +%s.%N)
echo "boot_s=$ready" >"$out/times"
awk -v a="$start" -v b="$end" 'BEGIN { printf "cmd_s=%.1f\n", b - a }' >>"$out/times"
sleep 0.5    # let dmesg --follow write the last lines
kill %1 2>/dev/null
wait 2>/dev/null
finish "$rc"
