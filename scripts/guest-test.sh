#!/usr/bin/env bash
# Run the kernel test suite inside each given Debian kernel under QEMU TCG.
#   scripts/guest-test.sh BUILD SERIES... [-- PYTEST_ARGS...]
#   e.g.  scripts/guest-test.sh build 6.1 -- -k stress -x
# Needs (from scripts/kernels.sh and scripts/kmod-build.sh):
#   BUILD/kernels/SERIES/{KVER,root/}   BUILD/kmod/SERIES/nf_colo.ko
# Writes BUILD/guest/SERIES/{console.log,pytest.log,junit.xml,dmesg.txt,rc,times} (and
# kmemleak.txt on a debug kernel).
# Environment:
#   PYTEST_ARGS      extra pytest arguments (word-split), added before those after --
#   GUEST_TIMEOUT    seconds per kernel before QEMU is killed (default 1800; 3600 for a
#                    debug series, <base>-debug: lockdep + KASAN + kmemleak under TCG)
#   GUEST_CMD        run this shell command in the guest instead of the suite (debugging);
#                    the module is then not required
#   GUEST_INTERACTIVE=1  attach the terminal to the guest's console (with GUEST_CMD='bash -i')
#   GUEST_SMP, GUEST_MEM  QEMU -smp / -m (default 2, 2G)
#   GUEST_KARGS      extra kernel command line words (e.g. slub_nomerge, scripts/bench-kernel.sh)
#   GUEST_OUT_SUFFIX  write to BUILD/guest/SERIES<suffix>/ instead (the self-test's runs)
#   GUEST_EXPECT_BAD=FILE  self-test of the checker (tests/kernel/buggy/selftest.sh): the run
#                    passes only if every extended regex in FILE matches a line the kernel-log
#                    check flagged; flagged lines are then expected, not failures
# Fails (exit 1) when any kernel fails: a failed test, a bad kernel log line (scripts/guest/
# dmesg-bad.regex), a timeout, a missing kernel or module.
set -uo pipefail
here=$(dirname "$(realpath "$0")")
repo=$(dirname "$here")
[ $# -ge 2 ] || { echo "usage: $0 BUILD SERIES... [-- PYTEST_ARGS...]" >&2; exit 2; }
mkdir -p "$1"
build=$(realpath "$1")
shift
series=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do series+=("$1"); shift; done
[ "${1:-}" = -- ] && shift
read -r -a env_args <<<"${PYTEST_ARGS:-}"
pytest_args=("${env_args[@]}" "$@")
expect_bad=${GUEST_EXPECT_BAD:-}
if [ -n "$expect_bad" ]; then
    [ -f "$expect_bad" ] || { echo "guest-test: GUEST_EXPECT_BAD: no file $expect_bad" >&2; exit 2; }
    expect_bad=$(realpath "$expect_bad")
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "guest-test: must run as root (QEMU exports / over 9p with the host's permissions)" >&2
    exit 1
fi
for tool in qemu-system-x86_64 busybox modprobe cpio; do
    command -v "$tool" >/dev/null || { echo "guest-test: $tool not found (make deps)" >&2; exit 1; }
done

declare -A verdict
failed=0
runner=
# On Ctrl-C / SIGTERM: stop the QEMU runner (it kills QEMU) before exiting.
on_signal() {
    if [ -n "$runner" ]; then
        kill -TERM "$runner" 2>/dev/null
        wait "$runner" 2>/dev/null
    fi
    echo "guest-test: interrupted" >&2
    exit 130
}
trap on_signal INT TERM HUP

# Prints why SERIES cannot run, or nothing.
check_inputs() {
    local s=$1 k=$build/kernels/$1 kver
    [ -f "$k/KVER" ] || { echo "kernel missing: $k/KVER (run scripts/kernels.sh $build $s)"; return; }
    kver=$(<"$k/KVER")
    [ -f "$k/root/boot/vmlinuz-$kver" ] || { echo "kernel image missing: $k/root/boot/vmlinuz-$kver"; return; }
    [ -f "$k/root/lib/modules/$kver/modules.dep" ] || { echo "modules.dep missing in $k/root/lib/modules/$kver (depmod -b)"; return; }
    if [ -z "${GUEST_CMD:-}" ] && [ ! -f "$build/kmod/$s/nf_colo.ko" ]; then
        echo "module missing: $build/kmod/$s/nf_colo.ko (run scripts/kmod-build.sh $build $s)"
    fi
}

# Exit codes of scripts/guest/kernel-suite.sh (pytest's own, 90-92) and of the guest init.
explain_rc() {
    case "$1" in
        1) echo "tests failed (pytest exit 1)" ;;
        2) echo "pytest was interrupted (exit 2)" ;;
        3) echo "pytest internal error (exit 3)" ;;
        4) echo "pytest usage error (exit 4)" ;;
        5) echo "no tests collected (pytest exit 5)" ;;
        90) echo "module file missing in the guest" ;;
        91) echo "the module's dependencies did not load" ;;
        92) echo "insmod of the module failed (see the console)" ;;
        97) echo "the guest init failed (see the console)" ;;
        *) echo "guest command exit code $1" ;;
    esac
}

run_series() {
    local s=$1 p="[$1] " k=$build/kernels/$1 out=$build/guest/$1${GUEST_OUT_SUFFIX:-} kver problem
    problem=$(check_inputs "$s")
    if [ -n "$problem" ]; then
        verdict[$s]="FAIL: $problem"
        return 1
    fi
    kver=$(<"$k/KVER")
    rm -rf "$out"
    mkdir -p "$out"
    local initrd=$build/guest/initramfs-$s.cpio.gz t0=$SECONDS timeout_s=${GUEST_TIMEOUT:-1800} debug=0
    case $s in *-debug) debug=1; timeout_s=${GUEST_TIMEOUT:-3600} ;; esac
    echo "${p}building initramfs for $kver"
    "$here/guest/mk-initramfs.sh" "$k/root" "$kver" "$initrd" || { verdict[$s]="FAIL: initramfs build failed"; return 1; }

    {
        echo "# written by scripts/guest-test.sh; run in the guest by scripts/guest/stage2.sh"
        printf 'export COLO_GUEST=1 COLO_SERIES=%q COLO_KVER=%q COLO_REPO=%q COLO_OUT=%q\n' \
            "$s" "$kver" "$repo" "$out"
        printf 'export COLO_KO=%q COLO_KMOD_DIR=%q COLO_DMESG_PATTERNS=%q\n' \
            "$build/kmod/$s/nf_colo.ko" "$build/kmod/$s" "$here/guest"
        # 1 on the debug kernel (lockdep, KASAN, kmemleak): for tests that must scale down.
        printf 'export COLO_DEBUG_KERNEL=%q\n' "$debug"
        printf 'cd %q\n' "$repo"
        if [ -n "${GUEST_CMD:-}" ]; then
            printf '%s\n' "$GUEST_CMD"
        else
            printf 'exec bash %q' "$here/guest/kernel-suite.sh"
            [ ${#pytest_args[@]} -gt 0 ] && printf ' %q' "${pytest_args[@]}"
            echo
        fi
    } >"$out/cmd.sh"

    echo "${p}booting $kver under QEMU TCG (timeout ${timeout_s}s)"
    local args=("$k/root/boot/vmlinuz-$kver" "$initrd" "$out" "$timeout_s"
                "colo.stage2=$here/guest/stage2.sh" "colo.modroot=$(realpath "$k/root/lib/modules")"
                "colo.out=$(realpath "$out")" "colo.rw=$repo")
    local kargs
    read -r -a kargs <<<"${GUEST_KARGS:-}"
    [ ${#kargs[@]} -eq 0 ] || args+=("${kargs[@]}")
    local attempt qrc
    for attempt in 1 2; do
        if [ "${GUEST_INTERACTIVE:-0}" = 1 ]; then
            "$here/guest/run-qemu.sh" "${args[@]}"
        else
            # In the background so that a signal to this script reaches the trap below at once.
            LOG_PREFIX="$p" "$here/guest/run-qemu.sh" "${args[@]}" &
            runner=$!
            wait "$runner"
        fi
        qrc=$?
        # A guest that died before stage 2 never loaded our module: that is the emulator or the
        # stock kernel booting under TCG (seen: an int3 text-patching Oops in early boot with
        # thread=multi).  Boot once more, keeping the first console.  A crash at or after stage 2
        # is never retried.
        if [ "$attempt" = 1 ] && [ "$qrc" -ne 130 ] && [ "$qrc" -ne 124 ] &&
           [ ! -f "$out/stage2" ] && [ ! -f "$out/rc" ]; then
            mv "$out/console.log" "$out/console-boot1.log" 2>/dev/null
            echo "${p}guest died during boot, before the module was loaded" \
                 "($(grep -m1 -E 'Oops|panic|BUG' "$out/console-boot1.log" 2>/dev/null ||
                     echo "no kernel message")); booting once more" \
                 "(first console: $out/console-boot1.log)"
            continue
        fi
        break
    done
    local total=$((SECONDS - t0)) reasons=() rc=
    runner=
    [ "$qrc" -eq 130 ] && exit 130
    [ "$qrc" -eq 124 ] && reasons+=("guest timed out after ${timeout_s}s")
    if [ -f "$out/rc" ]; then
        rc=$(<"$out/rc")
        if [ "$rc" != 0 ]; then
            if [ -n "${GUEST_CMD:-}" ]; then reasons+=("guest command exit code $rc")
            else reasons+=("$(explain_rc "$rc")"); fi
        fi
    elif [ "$qrc" -ne 124 ]; then
        reasons+=("guest ended without an exit code (QEMU rc $qrc; kernel panic? see $out/console.log)")
    fi
    # The guest's own dmesg copy is complete up to a crash; the console (loglevel 4) also has
    # what was printed while the guest went down.  On the debug kernel, kmemleak's report
    # (written at the end by scripts/guest/kmemleak.sh) is checked with the same patterns.
    local logs=() bad=
    [ -s "$out/dmesg.txt" ] && logs+=("$out/dmesg.txt")
    [ -f "$out/rc" ] && [ ${#logs[@]} -gt 0 ] || logs+=("$out/console.log")
    [ -s "$out/kmemleak.txt" ] && logs+=("$out/kmemleak.txt")
    if ! bad=$(cat "${logs[@]}" | "$here/guest/check-dmesg.sh" /dev/stdin | awk '!seen[$0]++'); then
        if [ -z "$expect_bad" ]; then
            reasons+=("kernel log has $(wc -l <<<"$bad") bad line(s)")
            sed "s/^/${p}dmesg: /" <<<"$bad"
        fi
    fi
    if [ -n "$expect_bad" ]; then
        # Self-test of the checker: each expected report must be among the flagged lines.
        local re
        while IFS= read -r re; do
            case $re in ''|'#'*) continue ;; esac
            if grep -q -E -- "$re" <<<"$bad"; then
                echo "${p}self-test: flagged as expected: $(grep -m1 -E -- "$re" <<<"$bad")"
            else
                reasons+=("self-test: the kernel-log check did not flag /$re/")
            fi
        done <"$expect_bad"
    fi
    if [ -f "$out/pytest.log" ]; then
        local summary
        # "==== 59 passed in 305.1s ====" (or without the rules under -q)
        summary=$(grep -E '^(=+ )?[0-9]+ (passed|failed|error|skipped|deselected).* in [0-9.]+s' \
                  "$out/pytest.log" | tail -1)
        echo "${p}pytest: ${summary:-no summary line (see $out/pytest.log)}"
    fi
    local boot_s='?' cmd_s='?'
    if [ -f "$out/times" ]; then
        boot_s=$(sed -n 's/^boot_s=//p' "$out/times")
        cmd_s=$(sed -n 's/^cmd_s=//p' "$out/times")
    fi
    local timing="kernel up ${boot_s}s, suite ${cmd_s}s, total ${total}s wall"
    if [ ${#reasons[@]} -eq 0 ]; then
        verdict[$s]="PASS ($timing)"
        return 0
    fi
    local joined
    joined=$(printf '%s; ' "${reasons[@]}")
    verdict[$s]="FAIL: ${joined%; } ($timing; logs in $out)"
    return 1
}

for s in "${series[@]}"; do
    run_series "$s" || failed=1
    echo "[$s] verdict: ${verdict[$s]}"
done
echo "== guest-test summary"
for s in "${series[@]}"; do echo "  $s: ${verdict[$s]}"; done
exit "$failed"
