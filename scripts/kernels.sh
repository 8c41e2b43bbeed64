#!/usr/bin/env bash
# Prepare the Debian kernels the module is built and tested against.
#
#   scripts/kernels.sh BUILD SERIES...        e.g. scripts/kernels.sh build 6.1 6.12 6.12-debug
#
# A series <base>-debug (6.12-debug) is not a Debian image but Debian's linux-source-<base>
# built with lockdep, KASAN and kmemleak: scripts/debug-kernel.sh, same layout as below.
#
# For each SERIES this leaves (the guest harness relies on exactly this layout):
#   BUILD/kernels/<series>/KVER   kernel release, e.g. 6.1.0-56-amd64
#   BUILD/kernels/<series>/kdir   symlink to the headers tree to pass to `make -C`
#   BUILD/kernels/<series>/root/  dpkg-deb -x of linux-image-<KVER>: root/boot/vmlinuz-<KVER>,
#                                 root/lib/modules/<KVER>/ (depmod run on the host, with
#                                 `build` and `source` links to the headers trees)
#
# Headers: if Debian's linux-headers for the series are installed (bookworm's 6.1 through
# linux-headers-amd64), those are used; otherwise (6.12 from bookworm-backports) the
# headers, their -common part and the matching linux-kbuild are downloaded and unpacked
# into BUILD/kernels/<series>/headers/.  Packages are resolved dynamically from a private
# apt index (BUILD/kernels/apt/) holding bookworm, -updates, -security and -backports, so
# the host's apt state is never touched.  Nothing assumes the running kernel is a target.
#
# Idempotent: a finished series has a stamp file; a second run only re-checks it.
set -euo pipefail

die() { echo "kernels.sh: $*" >&2; exit 1; }
say() { echo "== kernels: $*"; }

[ $# -ge 2 ] || die "usage: $0 BUILD SERIES..."
BUILD=$1; shift
mkdir -p "$BUILD/kernels"
KROOT=$(cd "$BUILD/kernels" && pwd)
APTDIR=$KROOT/apt
# ---- private apt index (shared with scripts/debug-kernel.sh) ---------------------------
# shellcheck source=lib/debian-apt.sh
. "$(dirname "$0")/lib/debian-apt.sh"

series_re() { echo "^linux-headers-${1//./\\.}\\.[0-9][^ ]*-${ARCH}\$"; }

# ---- per series ----------------------------------------------------------------------
# Installed headers for SERIES (highest version), as "KVER VERSION", or nothing.
installed_headers() {
    local re; re=$(series_re "$1")
    dpkg-query -W -f='${Package} ${Version} ${db:Status-Abbrev}\n' 'linux-headers-*' 2>/dev/null \
        | awk '$3 ~ /^ii/ {print $1, $2}' | grep -E "${re%\$} " | grep -Ev -- '-(rt|cloud)-' \
        | sort -k2,2V | tail -1 | sed "s/^linux-headers-//" || true
}

# The image package for KVER at VERSION: Debian's signed linux-image-KVER, else the
# linux-image-KVER-unsigned it is built from (same vmlinuz and modules, no Secure Boot
# signature, which a TCG guest does not check).  Nothing if neither is in the index.
image_of() {
    local p
    for p in "linux-image-$1" "linux-image-$1-unsigned"; do
        if apt_has "$p" "$2"; then echo "$p"; return 0; fi
    done
}

# Headers for SERIES in the private index (highest version whose image is also there),
# as "KVER VERSION".
archive_headers() {
    local re name ver best="" bestver=""
    re=$(series_re "$1")
    for name in $(apt-cache "${APT_OPTS[@]}" pkgnames linux-headers- 2>/dev/null | grep -E "$re" \
                  | grep -Ev -- '-(rt|cloud)-'); do
        ver=$(apt_version "$name")
        [ -n "$ver" ] || continue
        [ -n "$(image_of "${name#linux-headers-}" "$ver")" ] || continue
        if [ -z "$bestver" ] || dpkg --compare-versions "$ver" gt "$bestver"; then
            best=$name; bestver=$ver
        fi
    done
    [ -n "$best" ] && echo "${best#linux-headers-} $bestver"
}

prepare_series() {
    local series=$1 dir=$KROOT/$1
    local kver ver hdr common inst stamp
    mkdir -p "$dir"
    stamp=$dir/.prepared

    inst=$(installed_headers "$series")
    local seen="installed-headers: ${inst:-none}"
    if [ -f "$stamp" ] && [ -f "$dir/KVER" ] && [ -e "$dir/kdir/Makefile" ] \
        && [ -e "$dir/root/boot/vmlinuz-$(cat "$dir/KVER")" ]; then
        # Still valid unless the installed headers for this series changed under us.
        if [ "$(head -1 "$stamp")" = "$seen" ]; then
            echo "kernels: $series: $(cat "$dir/KVER") (cached)"
            return 0
        fi
    fi
    rm -f "$stamp"

    apt_prepare
    if [ -n "$inst" ]; then
        read -r kver ver <<<"$inst"
        # The archive keeps only current versions: if the image matching the installed
        # headers is gone, fall back to the archive's newest headers + image.
        if [ -z "$(image_of "$kver" "$ver")" ]; then
            say "$series: linux-image-$kver $ver no longer in the archive; using the archive's kernel"
            inst=""
        fi
    fi
    if [ -n "$inst" ]; then
        hdr=/usr/src/linux-headers-$kver
        [ -f "$hdr/Makefile" ] || die "$series: package linux-headers-$kver installed but $hdr missing"
        common=$(readlink -f "/lib/modules/$kver/source" 2>/dev/null || true)
        [ -d "$common" ] || common=$(sed -n 's|^include \(.*\)/Makefile$|\1|p' "$hdr/Makefile" | head -1)
        say "$series: using installed headers $kver ($ver)"
    else
        read -r kver ver <<<"$(archive_headers "$series")" || true
        [ -n "${kver:-}" ] || die "$series: no linux-headers-$series.*-$ARCH in bookworm/bookworm-backports"
        say "$series: headers $kver ($ver) from the archive"
        local debs=$dir/debs dep name op dver specs=("linux-headers-$kver=$ver")
        while read -r name op dver; do
            case $name in
                linux-headers-*-common|linux-kbuild-*)
                    # The -common part is pinned (=); kbuild is ">=": take the same version if offered.
                    if [ "$op" != "=" ]; then
                        dver=$ver
                        apt_has "$name" "$dver" || dver=$(apt_version "$name")
                    fi
                    specs+=("$name=$dver") ;;
            esac
        done < <(deb_depends "linux-headers-$kver" "$ver")
        [ ${#specs[@]} -ge 3 ] || die "$series: could not resolve -common/kbuild dependencies of linux-headers-$kver"
        apt_download "$debs" "${specs[@]}"
        local hroot=$dir/headers
        rm -rf "$hroot.tmp" && mkdir -p "$hroot.tmp"
        for spec in "${specs[@]}"; do
            say "$series: unpacking ${spec%%=*}"
            dpkg-deb -x "$(deb_of "$debs" "${spec%%=*}")" "$hroot.tmp"
        done
        hdr=$hroot/usr/src/linux-headers-$kver
        common=$(sed -n 's|^include /usr/src/\(.*\)/Makefile$|\1|p' "$hroot.tmp/usr/src/linux-headers-$kver/Makefile" | head -1)
        [ -n "$common" ] || die "$series: unexpected Makefile in linux-headers-$kver"
        # The -amd64 Makefile includes the -common one by absolute path: point it at our copy.
        sed -i "s|^include /usr/src/|include $hroot/usr/src/|" "$hroot.tmp/usr/src/linux-headers-$kver/Makefile"
        common=$hroot/usr/src/$common
        rm -rf "$hroot" && mv "$hroot.tmp" "$hroot"
        # `scripts` and `tools` are relative links into usr/lib/linux-kbuild-*: check they resolve.
        [ -e "$hdr/scripts/Makefile.build" ] || [ -e "$common/scripts/Makefile.build" ] \
            || die "$series: kbuild scripts not found under $hdr"
    fi

    # Image: same source version as the headers.
    local img
    img=$(image_of "$kver" "$ver")
    [ -n "$img" ] || die "$series: linux-image-$kver $ver (signed or -unsigned) is not in the archive index (headers and image must match)"
    apt_download "$dir/debs" "$img=$ver"
    say "$series: unpacking $img"
    rm -rf "$dir/root.tmp" && mkdir -p "$dir/root.tmp"
    dpkg-deb -x "$(deb_of "$dir/debs" "$img")" "$dir/root.tmp"
    [ -f "$dir/root.tmp/boot/vmlinuz-$kver" ] || die "$series: $img has no boot/vmlinuz-$kver"
    ln -sfn "$hdr" "$dir/root.tmp/lib/modules/$kver/build"
    ln -sfn "$common" "$dir/root.tmp/lib/modules/$kver/source"
    say "$series: depmod"
    depmod -b "$dir/root.tmp" "$kver"
    rm -rf "$dir/root" && mv "$dir/root.tmp" "$dir/root"

    echo "$kver" > "$dir/KVER"
    ln -sfn "$hdr" "$dir/kdir"
    printf '%s\nused: %s %s (%s)\n' "$seen" "$kver" "$ver" "$([ -n "$inst" ] && echo installed || echo archive)" > "$stamp"
    echo "kernels: $series: $kver ready ($dir)"
}

for s in "$@"; do
    if [[ $s =~ ^[0-9]+\.[0-9]+-debug$ ]]; then
        # Built from Debian's linux-source with lockdep/KASAN/kmemleak (scripts/debug-kernel.sh).
        "$(dirname "$0")/debug-kernel.sh" "$BUILD" "$s"
        continue
    fi
    [[ $s =~ ^[0-9]+\.[0-9]+$ ]] || die "bad series '$s' (want e.g. 6.1 or 6.12-debug)"
    prepare_series "$s"
done
