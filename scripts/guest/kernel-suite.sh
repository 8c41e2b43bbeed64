#!/bin/bash
# Guest side of `make test-kernel`: load the freshly built module(s), run the kernel test suite
# with the host venv's pytest.  Run by OUT/cmd.sh (written by scripts/guest-test.sh) with
# COLO_REPO, COLO_KO, COLO_OUT, COLO_SERIES exported; arguments go to pytest.
set -uo pipefail
cd "$COLO_REPO" || exit 99

echo "guest: loading $COLO_KO"
if [ ! -f "$COLO_KO" ]; then
    echo "guest: FAIL: module $COLO_KO missing"
    exit 90
fi
# Debug kernel: from here on, kmemleak reports only what the module and the suite leaked.
bash "$COLO_REPO/scripts/guest/kmemleak.sh" clear
# Dependencies come from the kernel's own (host-depmod'ed) tree; the module itself is insmod'ed
# from the build directory (no depmod -a in the guest: ~100 s over 9p under TCG).
deps=$(modinfo -F depends "$COLO_KO" | tr ',' ' ')
if [ -n "$deps" ] && ! modprobe -a $deps; then
    echo "guest: FAIL: modprobe of the dependencies ($deps) failed"
    exit 91
fi
if ! insmod "$COLO_KO"; then
    echo "guest: FAIL: insmod $COLO_KO failed"
    exit 92
fi
grep -E "^$(basename "$COLO_KO" .ko) " /proc/modules

# Run tests/kernel unless the arguments name test files/directories themselves.
where=(tests/kernel)
for arg in "$@"; do
    case "$arg" in -*) continue ;; esac
    [ -e "${arg%%::*}" ] && where=()
done
echo "guest: pytest -m kernel ${where[*]} $*"
.venv/bin/python -m pytest -m kernel \
    --junitxml="$COLO_OUT/junit.xml" -o junit_suite_name="kernel-$COLO_SERIES" \
    "${where[@]}" "$@" 2>&1 | tee "$COLO_OUT/pytest.log"
rc=${PIPESTATUS[0]}
# Debug kernel: OUT/kmemleak.txt, checked on the host with the dmesg patterns.
bash "$COLO_REPO/scripts/guest/kmemleak.sh" report "$COLO_OUT/kmemleak.txt"
exit "$rc"
