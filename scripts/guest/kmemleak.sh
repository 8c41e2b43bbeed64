#!/bin/bash
# kmemleak in the guest (debug kernel only; a no-op where /sys/kernel/debug/kmemleak is absent).
#   kmemleak.sh clear          scan twice, then forget every object reported so far (boot-time
#                              noise): later reports are about what ran after this point
#   kmemleak.sh report FILE    scan twice and write the report to FILE; prints the count.  The
#                              host checks FILE with the dmesg patterns ("unreferenced object").
# Why twice: an object is reported only when its contents did not change between two scans (its
# checksum starts at ~0, so the first scan that sees it never reports it: mm/kmemleak.c), and
# `clear` only forgets objects that were already reported.
set -uo pipefail
k=/sys/kernel/debug/kmemleak
[ -e "$k" ] || exit 0
case "${1:-}" in
    clear)
        t0=$SECONDS
        echo scan >"$k" && echo scan >"$k" && echo clear >"$k" \
            || { echo "guest: kmemleak: clear failed"; exit 1; }
        echo "guest: kmemleak: scanned and cleared the boot-time reports ($((SECONDS - t0)) s)" ;;
    report)
        [ $# -eq 2 ] || { echo "usage: $0 report FILE" >&2; exit 2; }
        t0=$SECONDS
        # Objects younger than 5 s are never reported.
        sleep 5
        echo scan >"$k" && echo scan >"$k" || { echo "guest: kmemleak: scan failed"; exit 1; }
        cat "$k" >"$2"
        echo "guest: kmemleak: $(grep -c '^unreferenced object' "$2") unreferenced object(s)" \
             "($((SECONDS - t0)) s; report: $2)" ;;
    *) echo "usage: $0 clear | report FILE" >&2; exit 2 ;;
esac
