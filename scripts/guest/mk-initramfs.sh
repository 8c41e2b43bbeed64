#!/usr/bin/env bash
# Build the guest's busybox initramfs for one unpacked Debian kernel.
#   mk-initramfs.sh ROOT KVER OUT.cpio.gz
# ROOT is the dpkg-deb -x tree of linux-image-KVER (depmod already run on it).
# The initramfs holds a static busybox, scripts/guest/init and the modules needed to mount
# the host's / over virtio-9p (compressed modules are unpacked here: busybox insmod wants .ko).
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: $0 ROOT KVER OUT.cpio.gz" >&2; exit 2; }
root=$(realpath "$1") kver=$2 out=$3
here=$(dirname "$(realpath "$0")")
busybox=$(command -v busybox) || { echo "mk-initramfs: busybox not found (apt-get install busybox-static)" >&2; exit 1; }
if ldd "$busybox" >/dev/null 2>&1; then
    echo "mk-initramfs: $busybox is dynamically linked; install busybox-static" >&2; exit 1
fi
[ -f "$root/lib/modules/$kver/modules.dep" ] || { echo "mk-initramfs: $root/lib/modules/$kver/modules.dep missing (run depmod -b $root $kver)" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,dev,proc,sys,newroot,mods}
cp "$busybox" "$stage/bin/busybox"
install -m 0755 "$here/init" "$stage/init"

# Modules for a 9p root, overlays and the entropy device, in load order, without duplicates.
mods=$(modprobe -d "$root" -S "$kver" -a --show-depends \
        virtio_pci 9pnet_virtio 9p overlay virtio_rng | awk '$1 == "insmod" && !seen[$2]++ {print $2}')
n=0
for m in $mods; do
    n=$((n + 1))
    name=$(printf '%02d-%s' "$n" "$(basename "$m")")
    case "$m" in
        *.ko.xz)  xz -dc "$m" >"$stage/mods/${name%.xz}"; name=${name%.xz} ;;
        *.ko.zst) zstd -qdc "$m" >"$stage/mods/${name%.zst}"; name=${name%.zst} ;;
        *.ko.gz)  gzip -dc "$m" >"$stage/mods/${name%.gz}"; name=${name%.gz} ;;
        *.ko)     cp "$m" "$stage/mods/$name" ;;
        *) echo "mk-initramfs: unexpected module file $m" >&2; exit 1 ;;
    esac
    echo "$name" >>"$stage/mods/order"
done
touch "$stage/mods/order"
(cd "$stage" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 >"$out"
