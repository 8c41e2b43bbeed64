#!/usr/bin/env bash
# Prepare the Debian kernels the module is built and tested against.
#
#   scripts/kernels.sh BUILD SERIES...        e.g. scripts/kernels.sh build 6.1 6.12
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
ARCH=amd64
DEBIAN_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

# ---- private apt index -------------------------------------------------------------
APT_OPTS=(
    -o "Dir::Etc::sourcelist=$APTDIR/sources.list"
    -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$APTDIR/lists"
    -o "Dir::State::status=$APTDIR/status"
    -o "Dir::Cache=$APTDIR/cache"
    -o "APT::Get::List-Cleanup=0"
    -o "APT::Sandbox::User=root"
    -o "APT::Architecture=$ARCH"
    -o "APT::Architectures=$ARCH"
    -o "DPkg::Lock::Timeout=600"
)
APT_READY=0

apt_prepare() {
    [ "$APT_READY" = 1 ] && return 0
    mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial"
    : > "$APTDIR/status"            # empty status: resolve against the archive, not the host
    local kr=""
    [ -r "$DEBIAN_KEYRING" ] && kr="[signed-by=$DEBIAN_KEYRING] "
    cat > "$APTDIR/sources.list" <<EOF
deb ${kr}http://deb.debian.org/debian bookworm main
deb ${kr}http://deb.debian.org/debian bookworm-updates main
deb ${kr}http://deb.debian.org/debian-security bookworm-security main
deb ${kr}http://deb.debian.org/debian bookworm-backports main
EOF
    # Refresh at most once a day (the lists are ~100 MB uncompressed: not on every build).
    local stamp=$APTDIR/updated.stamp
    if [ -z "$(find "$stamp" -mmin -1440 2>/dev/null)" ]; then
        say "apt-get update (private index: bookworm, -updates, -security, -backports)"
        apt-get "${APT_OPTS[@]}" -q update >"$APTDIR/update.log" 2>&1 \
            || { cat "$APTDIR/update.log" >&2; die "apt-get update failed"; }
        touch "$stamp"
    fi
    APT_READY=1
}

apt_version() {   # apt_version PKG -> candidate version in the private index ("" if none)
    apt-cache "${APT_OPTS[@]}" policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}' | sed 's/(none)//'
}

apt_download() {  # apt_download DIR PKG=VERSION...   (into DIR, skipping files already there)
    local dir=$1; shift
    mkdir -p "$dir"
    local spec name ver f
    for spec in "$@"; do
        name=${spec%%=*}; ver=${spec#*=}
        f=$(ls "$dir/${name}_${ver//:/%3a}_"*.deb 2>/dev/null | head -1 || true)
        if [ -z "$f" ]; then
            say "downloading $name $ver"
            (cd "$dir" && apt-get "${APT_OPTS[@]}" -q download "$spec" >/dev/null) \
                || die "apt-get download $spec failed"
        fi
    done
}

deb_of() { ls "$1/${2}_"*.deb 2>/dev/null | head -1; }

# Depends field of PKG=VERSION, one "name op version" per line.
deb_depends() {
    apt-cache "${APT_OPTS[@]}" show "$1=$2" 2>/dev/null | awk -F': ' '/^Depends:/ {print $2; exit}' \
        | tr ',' '\n' | sed 's/^ *//; s/ *$//; s/[()]//g'
}

series_re() { echo "^linux-headers-${1//./\\.}\\.[0-9][^ ]*-${ARCH}\$"; }

# ---- per series ----------------------------------------------------------------------
# Installed headers for SERIES (highest version), as "KVER VERSION", or nothing.
installed_headers() {
    local re; re=$(series_re "$1")
    dpkg-query -W -f='${Package} ${Version} ${db:Status-Abbrev}\n' 'linux-headers-*' 2>/dev/null \
        | awk '$3 ~ /^ii/ {print $1, $2}' | grep -E "${re%\$} " | grep -Ev -- '-(rt|cloud)-' \
        | sort -k2,2V | tail -1 | sed "s/^linux-headers-//" || true
}

# Headers for SERIES in the private index (highest version), as "KVER VERSION".
archive_headers() {
    local re name ver best="" bestver=""
    re=$(series_re "$1")
    for name in $(apt-cache "${APT_OPTS[@]}" pkgnames linux-headers- 2>/dev/null | grep -E "$re" \
                  | grep -Ev -- '-(rt|cloud)-'); do
        ver=$(apt_version "$name")
        [ -n "$ver" ] || continue
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
        if ! apt-cache "${APT_OPTS[@]}" show "linux-image-$kver=$ver" >/dev/null 2>&1; then
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
                        apt-cache "${APT_OPTS[@]}" show "$name=$dver" >/dev/null 2>&1 || dver=$(apt_version "$name")
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
    local img=linux-image-$kver
    apt-cache "${APT_OPTS[@]}" show "$img=$ver" >/dev/null 2>&1 \
        || die "$series: $img $ver is not in the archive index (headers and image must match)"
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
    [[ $s =~ ^[0-9]+\.[0-9]+$ ]] || die "bad series '$s' (want e.g. 6.1)"
    prepare_series "$s"
done
