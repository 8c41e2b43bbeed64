# shellcheck shell=bash
# Private apt index of Debian bookworm (+ -updates, -security, -backports) under $APTDIR,
# used by scripts/kernels.sh and scripts/debug-kernel.sh to resolve and download kernel
# packages without touching the host's apt state.  Source it after setting APTDIR and
# defining die() and say().
ARCH=${ARCH:-amd64}
DEBIAN_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

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

apt_has() {       # apt_has PKG VERSION -> true if the private index offers exactly PKG=VERSION
    # Not `apt-cache show PKG=VERSION`: it exits 0 for a purely virtual PKG (no versions),
    # which is what a signed kernel image looks like while only its -unsigned build is
    # published (bookworm-security, 6.12.118-1~deb12u1, Dec 2026).
    apt-cache "${APT_OPTS[@]}" madison "$1" 2>/dev/null | awk -F'|' -v v="$2" '{gsub(/ /, "", $2)} $2 == v {f=1} END {exit !f}'
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
