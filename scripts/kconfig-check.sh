#!/usr/bin/env bash
# Check that a Kconfig fragment survived merge_config.sh + olddefconfig: every "CONFIG_X=v"
# line of FRAGMENT is in CONFIG with the same value, every "# CONFIG_X is not set" is unset.
#   kconfig-check.sh FRAGMENT CONFIG      prints one line per mismatch, exit 1 if any
# (A dependency Kconfig silently dropped would otherwise turn e.g. kmemleak off unnoticed.)
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 FRAGMENT CONFIG" >&2; exit 2; }
out=$(awk '
    FNR == NR { if (match($0, /^CONFIG_[A-Za-z0-9_]+=/)) want[substr($0, 1, RLENGTH - 1)] = $0
                else if (match($0, /^# CONFIG_[A-Za-z0-9_]+ is not set/)) want[$2] = "unset"
                next }
    { if (match($0, /^CONFIG_[A-Za-z0-9_]+=/)) have[substr($0, 1, RLENGTH - 1)] = $0 }
    END { for (k in want) {
              if (want[k] == "unset") { if (k in have) print k ": fragment says not set, got " have[k] }
              else if (!(k in have)) print k ": fragment says " want[k] ", got not set"
              else if (have[k] != want[k]) print k ": fragment says " want[k] ", got " have[k] } }
' "$1" "$2" | sort)
[ -z "$out" ] && exit 0
printf '%s\n' "$out"
exit 1
