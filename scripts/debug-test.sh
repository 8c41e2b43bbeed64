#!/usr/bin/env bash
# The debug kernel's part of `make test`: build (or reuse) the debug kernel and the module
# for it, run the kernel tests on it, then the checker's self-test (tests/kernel/buggy/).
#
#   scripts/debug-test.sh BUILD [SERIES]        SERIES defaults to 6.12-debug
#
# Schedule: the run costs tens of minutes under TCG, so it is skipped when this exact input
# already passed on this machine.  The input hash covers what the run's verdict depends on:
# kmod/ (the module), tests/kernel/ (the tests and the buggy module), scripts/ (kernel build,
# config fragment, harness), colo_proxy/nl/ (the tests' netlink client), and the debug
# kernel's cache key.  A pass leaves a stamp in the machine cache
# ($COLO_KERNEL_CACHE/results/, default /var/cache/colo-proxy/kernels/results/), or in
# BUILD/debug-kernel/results/ when the machine cache is off (COLO_KERNEL_CACHE=none).
# Environment:
#   DEBUG_TEST=always   run even if a stamp exists;  DEBUG_TEST=skip  do nothing
#   DEBUG_PYTEST_ARGS   pytest arguments (default: the lifetime, stress, fuzz and rmmod tests)
#   PYTEST_ARGS         as for scripts/guest-test.sh, added before DEBUG_PYTEST_ARGS
set -uo pipefail
[ $# -ge 1 ] && [ $# -le 2 ] || { echo "usage: $0 BUILD [SERIES]" >&2; exit 2; }
build=$1 series=${2:-6.12-debug}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
mode=${DEBUG_TEST:-auto}
case $mode in
    skip) echo "== debug-test: skipped (DEBUG_TEST=skip)"; exit 0 ;;
    auto|always) ;;
    *) echo "debug-test: DEBUG_TEST must be auto, always or skip (got '$mode')" >&2; exit 2 ;;
esac
t0=$SECONDS

# Kernel and modules first: the kernel's cache key is part of the input hash.
"$here/kmod-build.sh" "$build" "$series" || exit 1
key=$(sed -n 's/^key: //p' "$build/kernels/$series/.prepared")

input=$( { echo "series $series kernel $key"; echo "pytest ${PYTEST_ARGS:-} ${DEBUG_PYTEST_ARGS:-}";
           cd "$repo" && find kmod tests/kernel scripts colo_proxy/nl -type f \
               ! -name '*.pyc' ! -path '*/__pycache__/*' ! -name '*.o' ! -name '*.ko' \
               ! -name '*.mod*' ! -name '.*.cmd' -print0 | sort -z | xargs -0 sha256sum; } \
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

read -r -a args <<<"${DEBUG_PYTEST_ARGS:-tests/kernel/test_nl_lifetime.py tests/kernel/test_nl_stress.py tests/kernel/test_nl_fuzz.py tests/kernel/test_nl_rmmod.py}"
rc=0
echo "== debug-test: the kernel suite on $series (${args[*]})"
"$here/guest-test.sh" "$build" "$series" -- "${args[@]}" || rc=1
echo "== debug-test: the checker's self-test on $series"
"$repo/tests/kernel/buggy/selftest.sh" "$build" "$series" || rc=1
if [ "$rc" = 0 ]; then
    mkdir -p "$results" 2>/dev/null && \
        echo "passed $(date -u +%FT%TZ) in $((SECONDS - t0)) s" >"$stamp" 2>/dev/null \
        || echo "debug-test: could not write the stamp $stamp"
    echo "== debug-test: PASS ($((SECONDS - t0)) s)"
else
    echo "== debug-test: FAIL ($((SECONDS - t0)) s)"
fi
exit "$rc"
