#!/usr/bin/env bash
# The debug kernel's part of `make test`: build (or reuse) the debug kernel and the module
# for it, run the kernel tests on it, then the checker's self-test (tests/kernel/buggy/).
#
#   scripts/debug-test.sh BUILD [SERIES]        SERIES defaults to 6.12-debug
#
# Schedule: the run costs tens of minutes under TCG, so it is skipped when this exact input
# already passed on this machine.  The input hash covers what the run's verdict depends on:
# kmod/ (the module), tests/kernel/ (the tests and the buggy module), scripts/ (kernel build,
# config fragment, harness), colo_proxy/nl/ and tests/nl_spec.py (the tests' netlink client
# and its spec loader), and the debug kernel's cache key.  A pass leaves a stamp in the
# machine cache ($COLO_KERNEL_CACHE/results/, default
# /var/cache/colo-proxy/kernels/results/), or in
# BUILD/debug-kernel/results/ when the machine cache is off (COLO_KERNEL_CACHE=none).
# A second, checked-in stamp, scripts/debug-verified, names the tree of kmod/ and of the debug
# recipe (debug-kernel.sh, debug-kernel.config, this script, tests/kernel/buggy/) that last
# passed; a pass rewrites it (commit it with the change).  DEBUG_TEST=changed (what .ci/run
# uses) skips the run when that tree is unchanged, so CI runs the debug suite on every change
# to the module or the recipe, and on no other change.
# Environment:
#   DEBUG_TEST=auto     (default) run unless this exact input already passed on this machine
#   DEBUG_TEST=changed  as auto, and skipped if kmod/ and the recipe match scripts/debug-verified
#   DEBUG_TEST=always   run even if a stamp exists;  DEBUG_TEST=skip  do nothing
#   DEBUG_PYTEST_ARGS   pytest arguments (default: the lifetime, stress, fuzz and rmmod tests
#                       and the datapath tests)
#   PYTEST_ARGS         as for scripts/guest-test.sh, added before DEBUG_PYTEST_ARGS
set -uo pipefail
[ $# -ge 1 ] && [ $# -le 2 ] || { echo "usage: $0 BUILD [SERIES]" >&2; exit 2; }
build=$1 series=${2:-6.12-debug}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
mode=${DEBUG_TEST:-auto}
case $mode in
    skip) echo "== debug-test: skipped (DEBUG_TEST=skip)"; exit 0 ;;
    auto|changed|always) ;;
    *) echo "debug-test: DEBUG_TEST must be auto, changed, always or skip (got '$mode')" >&2; exit 2 ;;
esac
t0=$SECONDS

# The tree scripts/debug-verified records: kmod/ and the debug recipe, without build output.
verified=$here/debug-verified
tree=$(cd "$repo" && find kmod scripts/debug-kernel.sh scripts/debug-kernel.config \
           scripts/debug-test.sh tests/kernel/buggy -type f \
           ! -name '*.o' ! -name '*.ko' ! -name '*.mod*' ! -name '.*.cmd' ! -name 'Module.symvers' \
           ! -name 'modules.order' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
if [ "$mode" = changed ] && [ -f "$verified" ] \
        && [ "$(sed -n 's/^tree: //p' "$verified")" = "$tree" ]; then
    echo "== debug-test: kmod/ and the debug recipe are the tree that passed last ($tree,"
    echo "   scripts/debug-verified); skipped (DEBUG_TEST=always runs it)"
    exit 0
fi

# Kernel and modules first: the kernel's cache key is part of the input hash (which leaves out
# scripts/debug-verified: a pass rewrites it, and must not change the input it passed for).
"$here/kmod-build.sh" "$build" "$series" || exit 1
key=$(sed -n 's/^key: //p' "$build/kernels/$series/.prepared")

input=$( { echo "series $series kernel $key"; echo "pytest ${PYTEST_ARGS:-} ${DEBUG_PYTEST_ARGS:-}";
           cd "$repo" && find kmod tests/kernel tests/nl_spec.py scripts colo_proxy/nl -type f \
               ! -name '*.pyc' ! -path '*/__pycache__/*' ! -name '*.o' ! -name '*.ko' \
               ! -name '*.mod*' ! -name '.*.cmd' ! -path scripts/debug-verified \
               -print0 | sort -z | xargs -0 sha256sum; } \
         | sha256sum | cut -c1-16)
mcache=${COLO_KERNEL_CACHE-/var/cache/colo-proxy/kernels}
[ "$mcache" = none ] && mcache=
results=${mcache:-$build/debug-kernel}/results
stamp=$results/$series-$input.pass
if [ "$mode" = auto ] && [ -f "$stamp" ]; then
    echo "== debug-test: $series already passed for this input ($input, $(head -1 "$stamp")); skipped"
    echo "   (DEBUG_TEST=always runs it again)"
    exit 0
fi

defaults="tests/kernel/test_nl_lifetime.py tests/kernel/test_nl_stress.py tests/kernel/test_nl_fuzz.py
    tests/kernel/test_nl_rmmod.py tests/kernel/test_dp_udp.py tests/kernel/test_dp_loss.py
    tests/kernel/test_dp_nfqueue.py"
# shellcheck disable=SC2206  # a list of words, split on white space
args=(${DEBUG_PYTEST_ARGS:-$defaults})
rc=0
echo "== debug-test: the kernel suite on $series (${args[*]})"
"$here/guest-test.sh" "$build" "$series" -- "${args[@]}" || rc=1
echo "== debug-test: the checker's self-test on $series"
"$repo/tests/kernel/buggy/selftest.sh" "$build" "$series" || rc=1
if [ "$rc" = 0 ]; then
    mkdir -p "$results" 2>/dev/null && \
        echo "passed $(date -u +%FT%TZ) in $((SECONDS - t0)) s" >"$stamp" 2>/dev/null \
        || echo "debug-test: could not write the stamp $stamp"
    kver=$(cat "$build/kernels/$series/KVER")
    printf '%s\n' "# Written by scripts/debug-test.sh after the debug suite passed: the tree of kmod/ and" \
        "# the debug recipe that passed (DEBUG_TEST=changed skips that tree).  Commit it." \
        "tree: $tree" "passed: $(date -u +%F) on $kver, $((SECONDS - t0)) s" >"$verified.tmp" \
        && mv "$verified.tmp" "$verified"
    echo "== debug-test: PASS ($((SECONDS - t0)) s); scripts/debug-verified: tree $tree"
else
    echo "== debug-test: FAIL ($((SECONDS - t0)) s)"
fi
exit "$rc"
