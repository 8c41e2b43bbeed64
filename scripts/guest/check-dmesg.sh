#!/usr/bin/env bash
# Fail (exit 1, printing the lines) when a kernel log contains a line of dmesg-bad.regex that is
# not excused by dmesg-allow.regex.   check-dmesg.sh LOGFILE
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 LOGFILE" >&2; exit 2; }
here=$(dirname "$(realpath "$0")")
patterns() { grep -v -E '^[[:space:]]*(#|$)' "$1"; }
bad=$(grep -a -E -f <(patterns "$here/dmesg-bad.regex") "$1" \
      | grep -a -v -E -f <(patterns "$here/dmesg-allow.regex") || true)
[ -z "$bad" ] && exit 0
printf '%s\n' "$bad"
exit 1
