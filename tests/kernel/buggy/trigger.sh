#!/bin/bash
# Guest side of the debug kernel's self-test (run through GUEST_CMD by selftest.sh):
#   trigger.sh BUG...     BUG: inversion | bh | uaf | leak (see colo_buggy.c)
# Loads colo_buggy.ko, fires each bug, and for `leak` writes kmemleak's report to
# $COLO_OUT/kmemleak.txt.  The verdict is the host's: guest-test.sh runs its kernel-log check
# and, with GUEST_EXPECT_BAD, requires the expected reports to be flagged.
set -euo pipefail
ko=$COLO_KMOD_DIR/buggy/colo_buggy.ko
[ -f "$ko" ] || { echo "self-test: $ko missing (scripts/kmod-build.sh BUILD $COLO_SERIES)"; exit 90; }
kmemleak=$COLO_REPO/scripts/guest/kmemleak.sh
bash "$kmemleak" clear
insmod "$ko"
for bug in "$@"; do
    echo "self-test: firing $bug"
    # In a child process that exits: a stale copy of the leaked pointer on a live task's kernel
    # stack would hide the leak from kmemleak, which scans task stacks.
    (echo 1 >"/sys/module/colo_buggy/parameters/$bug")
done
sleep 1    # the bh timer fires in softirq a jiffy later
case " $* " in
    *" leak "*) bash "$kmemleak" report "$COLO_OUT/kmemleak.txt" ;;
esac
