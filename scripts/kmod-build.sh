#!/usr/bin/env bash
# Build the kernel modules for each kernel series.
#
#   scripts/kmod-build.sh BUILD SERIES...      e.g. scripts/kmod-build.sh build 6.1 6.12
#
# Runs scripts/kernels.sh (headers + images under BUILD/kernels/<series>/), then builds
# kmod/nfnetlink_colo with W=1 in a private copy per series, BUILD/kmod/<series>/, so the
# builds never clobber each other or the source tree.  Result:
#   BUILD/kmod/<series>/nf_colo.ko
#   BUILD/kmod/<series>/buggy/colo_buggy.ko   (debug series only: the self-test's broken module)
# Any compiler or sparse (C=1) warning fails the build.
set -euo pipefail

die() { echo "kmod-build: $*" >&2; exit 1; }
[ $# -ge 2 ] || die "usage: $0 BUILD SERIES..."
BUILD=$1; shift
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SRC=$ROOT/kmod/nfnetlink_colo

"$ROOT/scripts/kernels.sh" "$BUILD" "$@"
mkdir -p "$BUILD/kmod"
BUILD=$(cd "$BUILD" && pwd)

# build_one KDIR KVER SERIES OUT KO SRCFILES...: copy the sources into OUT, build with W=1 C=1.
build_one() {
    local kdir=$1 kver=$2 series=$3 out=$4 ko=$5; shift 5
    mkdir -p "$out"
    # Mirror the sources (only what Kbuild needs); stale object files of removed
    # sources are harmless, the Kbuild file lists the objects.
    cp -a "$@" "$out/"
    local log=$out/build.log
    if ! make -C "$kdir" M="$out" W=1 C=1 modules >"$log" 2>&1; then
        cat "$log" >&2
        die "$series: build failed (log: $log)"
    fi
    if grep -q 'warning:' "$log"; then
        grep -B2 -A4 'warning:' "$log" >&2
        # Up-to-date objects would compile silently next time: force a rebuild.
        rm -f "$out"/*.o "$out"/*.ko
        die "$series: compiler/sparse warnings (W=1 C=1 must be clean; log: $log)"
    fi
    [ -f "$out/$ko" ] || die "$series: $ko not produced"
    local vm
    vm=$(modinfo -F vermagic "$out/$ko")
    [ "${vm%% *}" = "$kver" ] || die "$series: vermagic '$vm' does not match $kver"
    echo "kmod: $out/$ko ($vm)"
}

# C=1: sparse checks every source it compiles (Makefile APT_PKGS installs sparse).
command -v sparse >/dev/null || die "sparse not found (make deps)"
for series in "$@"; do
    kdir=$BUILD/kernels/$series/kdir
    kver=$(cat "$BUILD/kernels/$series/KVER")
    out=$BUILD/kmod/$series
    echo "== kmod: nf_colo for $series ($kver)"
    mkdir -p "$out/uapi/linux" && cp -a "$SRC/uapi/linux/"*.h "$out/uapi/linux/"
    build_one "$kdir" "$kver" "$series" "$out" nf_colo.ko "$SRC/Kbuild" "$SRC"/*.c "$SRC"/*.h
    case $series in
        *-debug)
            # The deliberately broken module of the debug kernel's self-test (never loaded
            # by the suite; tests/kernel/buggy/selftest.sh).
            echo "== kmod: colo_buggy (self-test only) for $series"
            build_one "$kdir" "$kver" "$series" "$out/buggy" colo_buggy.ko \
                "$ROOT/tests/kernel/buggy/Kbuild" "$ROOT/tests/kernel/buggy/colo_buggy.c" ;;
    esac
done
