#!/usr/bin/env bash
# Build (or take from a cache) the debug kernel: Debian's linux-source-<base> with lockdep
# (PROVE_LOCKING), KASAN, kmemleak and debugobjects, configured from scripts/debug-kernel.config.
#
#   scripts/debug-kernel.sh BUILD SERIES         e.g. scripts/debug-kernel.sh build 6.12-debug
#
# Called by scripts/kernels.sh for a series named <base>-debug.  Leaves the same layout as the
# Debian series (what scripts/kmod-build.sh and scripts/guest-test.sh rely on):
#   BUILD/kernels/<series>/KVER       e.g. 6.12.117-colo-debug
#   BUILD/kernels/<series>/kdir       -> headers/ (a trimmed copy of the built tree, enough for
#                                        `make -C kdir M=...`)
#   BUILD/kernels/<series>/root/      boot/vmlinuz-KVER, boot/config-KVER, lib/modules/KVER/
#                                        (modules_install + depmod; build/source -> headers)
#   BUILD/kernels/<series>/.prepared  first line "key: KEY"
#
# Cache key: sha256 over the source package and version, the compiler and linker versions,
# this recipe's version and the config fragment.  Three levels, first hit wins:
#   1. BUILD/kernels/<series>/ with the same key: nothing to do;
#   2. the machine cache $COLO_KERNEL_CACHE/<series>-<key>/ (default /var/cache/colo-proxy/kernels;
#      `none` or empty disables it): a fresh clone on the same machine copies it (seconds);
#   3. otherwise build in BUILD/debug-kernel/linux-source-<base>/ (kept between builds, so a
#      changed fragment rebuilds incrementally), then publish to 1 and 2.
# Source version: that of BUILD/kernels/<base>/ if scripts/kernels.sh prepared it (so the
# debug kernel is the Debian kernel under test, rebuilt), otherwise the private apt index's
# candidate; DEBUG_KERNEL_VERSION overrides.  DEBUG_KERNEL_JOBS (default 2) is make's -j,
# DEBUG_KERNEL_NICE (default 10) its nice level.  The build's wall and CPU time are kept in
# .prepared.
set -euo pipefail

die() { echo "debug-kernel: $*" >&2; exit 1; }
say() { echo "== debug-kernel: $*"; }

[ $# -eq 2 ] || die "usage: $0 BUILD SERIES   (SERIES e.g. 6.12-debug)"
BUILD=$1 SERIES=$2
[[ $SERIES =~ ^([0-9]+\.[0-9]+)-debug$ ]] || die "bad series '$SERIES' (want e.g. 6.12-debug)"
BASE=${BASH_REMATCH[1]}
HERE=$(cd "$(dirname "$0")" && pwd)
FRAGMENT=$HERE/debug-kernel.config
RECIPE=2                     # bump when the build steps below change their result
mkdir -p "$BUILD/kernels" "$BUILD/debug-kernel"
KROOT=$(cd "$BUILD/kernels" && pwd)
WORK=$(cd "$BUILD/debug-kernel" && pwd)
APTDIR=$KROOT/apt
DEST=$KROOT/$SERIES
SRCPKG=linux-source-$BASE
# shellcheck source=lib/debian-apt.sh
. "$HERE/lib/debian-apt.sh"

# ---- source version and cache key --------------------------------------------------------
version=${DEBUG_KERNEL_VERSION:-}
if [ -z "$version" ] && [ -f "$KROOT/$BASE/.prepared" ]; then
    version=$(sed -n 's/^used: [^ ]* \([^ ]*\) .*/\1/p' "$KROOT/$BASE/.prepared")
fi
if [ -z "$version" ]; then
    apt_prepare
    version=$(apt_version "$SRCPKG")
    [ -n "$version" ] || die "$SRCPKG is not in the private apt index ($APTDIR)"
fi
cc_version=$(gcc --version | head -1)
ld_version=$(ld --version | head -1)
key=$( { printf 'recipe %s\nsource %s %s\ncc %s\nld %s\nbase allnoconfig\n' \
             "$RECIPE" "$SRCPKG" "$version" "$cc_version" "$ld_version"; cat "$FRAGMENT"; } \
       | sha256sum | cut -c1-16)
say "$SERIES: $SRCPKG $version, $cc_version, fragment $(sha256sum "$FRAGMENT" | cut -c1-12): key $key"

valid_dest() {   # valid_dest DIR KEY
    local d=$1 kver
    [ -f "$d/.prepared" ] && [ "$(head -1 "$d/.prepared")" = "key: $2" ] && [ -f "$d/KVER" ] || return 1
    kver=$(<"$d/KVER")
    [ -f "$d/root/boot/vmlinuz-$kver" ] && [ -f "$d/root/lib/modules/$kver/modules.dep" ] \
        && [ -f "$d/headers/Module.symvers" ]
}

# Point kdir and the modules tree's build/source links at DIR/headers (after a copy).
link_headers() {
    local d=$1 kver
    kver=$(<"$d/KVER")
    ln -sfn headers "$d/kdir"
    ln -sfn "$d/headers" "$d/root/lib/modules/$kver/build"
    ln -sfn "$d/headers" "$d/root/lib/modules/$kver/source"
}

if valid_dest "$DEST" "$key"; then
    echo "kernels: $SERIES: $(cat "$DEST/KVER") (cached, key $key)"
    exit 0
fi

MCACHE=${COLO_KERNEL_CACHE-/var/cache/colo-proxy/kernels}
[ "$MCACHE" = none ] && MCACHE=
MENTRY=${MCACHE:+$MCACHE/$SERIES-$key}

if [ -n "$MENTRY" ] && valid_dest "$MENTRY" "$key"; then
    say "$SERIES: copying from the machine cache $MENTRY"
    rm -rf "$DEST.tmp" && cp -a "$MENTRY" "$DEST.tmp"
    rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"
    link_headers "$DEST"
    valid_dest "$DEST" "$key" || die "$SERIES: the copy from $MENTRY is incomplete"
    echo "kernels: $SERIES: $(cat "$DEST/KVER") ready from the machine cache ($DEST)"
    exit 0
fi

# ---- build -----------------------------------------------------------------------------
for tool in flex bison bc make gcc ld xz; do
    command -v "$tool" >/dev/null || die "$tool not found (make deps)"
done
[ -e /usr/include/libelf.h ] || die "libelf headers not found (make deps: libelf-dev)"
[ -e /usr/include/openssl/ssl.h ] || die "openssl headers not found (make deps: libssl-dev)"

# One build at a time per BUILD directory.
exec 9>"$WORK/.lock"
flock 9

tree=$WORK/$SRCPKG
if [ ! -f "$tree/.colo-source-version" ] || [ "$(<"$tree/.colo-source-version")" != "$version" ]; then
    apt_prepare
    apt_download "$WORK/debs" "$SRCPKG=$version"
    deb=$(deb_of "$WORK/debs" "$SRCPKG")
    say "$SERIES: unpacking $(basename "$deb")"
    rm -rf "$tree" "$WORK/pkg"
    dpkg-deb -x "$deb" "$WORK/pkg"
    tar -C "$WORK" -xf "$WORK/pkg/usr/src/$SRCPKG.tar.xz"
    rm -rf "$WORK/pkg"
    [ -f "$tree/Makefile" ] || die "$SERIES: $deb did not unpack to $tree"
    echo "$version" >"$tree/.colo-source-version"
fi

cd "$tree"
say "$SERIES: configuring (allnoconfig + $(basename "$FRAGMENT"))"
make -s allnoconfig >/dev/null
scripts/kconfig/merge_config.sh -m .config "$FRAGMENT" >"$WORK/merge_config.log" 2>&1 \
    || { cat "$WORK/merge_config.log" >&2; die "$SERIES: merge_config.sh failed"; }
make -s olddefconfig
# Every line of the fragment must have survived olddefconfig.
missing=$("$HERE/kconfig-check.sh" "$FRAGMENT" .config) \
    || die "$SERIES: the fragment does not apply to $SRCPKG $version:"$'\n'"$missing"

kver=$(make -s kernelrelease)
say "$SERIES: building $kver with make -j${DEBUG_KERNEL_JOBS:-2} (log: $WORK/build.log)"
# CPU seconds of the children this shell waited for (make and everything under it).
children_cpu() { local f; read -r -a f <"/proc/$$/stat"; echo $(( (f[15] + f[16]) / $(getconf CLK_TCK) )); }
t0=$SECONDS c0=$(children_cpu)
if ! nice -n "${DEBUG_KERNEL_NICE:-10}" make -j"${DEBUG_KERNEL_JOBS:-2}" bzImage modules >"$WORK/build.log" 2>&1; then
    tail -40 "$WORK/build.log" >&2
    die "$SERIES: kernel build failed (log: $WORK/build.log)"
fi
build_s=$((SECONDS - t0)) build_cpu=$(( $(children_cpu) - c0 ))
# The release as built: before the first build include/config/auto.conf does not exist yet,
# so `make kernelrelease` above left out CONFIG_LOCALVERSION (a fresh tree said "6.12.118"
# and modules_install wrote lib/modules/6.12.118-colo-debug).
kver=$(<include/config/kernel.release)
say "$SERIES: built $kver in $build_s s ($build_cpu s CPU)"

# ---- publish: root/ and a trimmed headers/ tree ----------------------------------------
rm -rf "$DEST.tmp" && mkdir -p "$DEST.tmp/root/boot"
make -s modules_install INSTALL_MOD_PATH="$DEST.tmp/root" INSTALL_MOD_STRIP=1 DEPMOD=/sbin/depmod >/dev/null
cp arch/x86/boot/bzImage "$DEST.tmp/root/boot/vmlinuz-$kver"
cp .config "$DEST.tmp/root/boot/config-$kver"
cp System.map "$DEST.tmp/root/boot/System.map-$kver"
rm -f "$DEST.tmp/root/lib/modules/$kver/build" "$DEST.tmp/root/lib/modules/$kver/source"
# What an out-of-tree `make M=` needs: the top Makefile and config, every Makefile/Kbuild/
# Kconfig, include/ and the arch headers (with the generated ones), scripts/ with its host
# programs, objtool, Module.symvers.  No objects, no kernel sources (about 100 MB).
mkdir -p "$DEST.tmp/headers"
{
    printf '%s\0' Makefile .config Module.symvers System.map tools/objtool/objtool
    find . -path ./tools -prune -o \( -name 'Makefile*' -o -name 'Kbuild*' -o -name 'Kconfig*' \) -type f -print0
    find include scripts arch/x86/include -type f ! -name '*.o' ! -name '.*.cmd' -print0
    find arch/x86 -maxdepth 1 -name 'Makefile*' -print0
} | sed -z 's|^\./||' | sort -zu | cpio -0 -pdm --quiet "$DEST.tmp/headers"
printf 'key: %s\nsource: %s %s\ncc: %s\nld: %s\nbuilt: %s in %s s, %s s CPU (make -j%s)\n' "$key" \
    "$SRCPKG" "$version" "$cc_version" "$ld_version" "$(date -u +%FT%TZ)" "$build_s" "$build_cpu" \
    "${DEBUG_KERNEL_JOBS:-2}" >"$DEST.tmp/.prepared"
echo "$kver" >"$DEST.tmp/KVER"
rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"
link_headers "$DEST"
valid_dest "$DEST" "$key" || die "$SERIES: incomplete result in $DEST"
echo "kernels: $SERIES: $kver ready ($DEST)"

if [ -n "$MENTRY" ]; then
    if mkdir -p "$MCACHE" 2>/dev/null && [ -w "$MCACHE" ]; then
        rm -rf "$MENTRY.tmp.$$" && cp -a "$DEST" "$MENTRY.tmp.$$"
        if [ -e "$MENTRY" ]; then rm -rf "$MENTRY.tmp.$$"; else mv "$MENTRY.tmp.$$" "$MENTRY"; fi
        echo "kernels: $SERIES: saved in the machine cache $MENTRY ($(du -sh "$MENTRY" | cut -f1))"
    else
        echo "kernels: $SERIES: machine cache $MCACHE not writable; not saved"
    fi
fi
