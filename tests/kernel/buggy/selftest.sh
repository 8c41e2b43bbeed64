#!/usr/bin/env bash
# Self-test of the debug kernel and of the guest harness's kernel-log check: boots SERIES (a
# debug series, e.g. 6.12-debug) with the deliberately broken colo_buggy.ko and requires that
# the check flags every bug it fires.  Passing means the splats WERE reported; it never makes
# the normal suite's verdict worse (its own output directories: BUILD/guest/SERIES-selftest-*).
#   tests/kernel/buggy/selftest.sh BUILD SERIES
# Two boots, because lockdep switches itself off after its first report:
#   1. inversion uaf leak warn -> expect-1.regex (circular locking, KASAN, kmemleak, WARNING)
#   2. bh                      -> expect-2.regex (inconsistent lock state: softirq-unsafe lock)
# Needs scripts/kmod-build.sh BUILD SERIES (it builds BUILD/kmod/SERIES/buggy/colo_buggy.ko).
set -uo pipefail
[ $# -eq 2 ] || { echo "usage: $0 BUILD SERIES" >&2; exit 2; }
build=$1 series=$2
here=$(dirname "$(realpath "$0")")
repo=$(cd "$here/../../.." && pwd)
case $series in *-debug) ;; *) echo "selftest: $series is not a debug series" >&2; exit 2 ;; esac
[ -f "$build/kmod/$series/buggy/colo_buggy.ko" ] \
    || { echo "selftest: $build/kmod/$series/buggy/colo_buggy.ko missing (scripts/kmod-build.sh $build $series)" >&2; exit 1; }
rc=0
run() {   # run N BUG...
    local n=$1; shift
    echo "== debug-kernel self-test $n/2: $*"
    GUEST_OUT_SUFFIX=-selftest-$n GUEST_EXPECT_BAD=$here/expect-$n.regex \
        GUEST_CMD="bash $(printf '%q' "$here/trigger.sh") $*" \
        "$repo/scripts/guest-test.sh" "$build" "$series" || rc=1
}
run 1 inversion uaf leak warn
run 2 bh
if [ "$rc" = 0 ]; then
    echo "== debug-kernel self-test: PASS (lockdep, KASAN and kmemleak reports were all flagged)"
else
    echo "== debug-kernel self-test: FAIL (see above; logs in $build/guest/$series-selftest-*)"
fi
exit "$rc"
