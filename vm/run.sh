#!/usr/bin/env bash
# Boot Debian 12's own kernel (6.1, generic flavour) in a small QEMU VM under software
# emulation, with only the cgroup v2 hierarchy, and run the real execbox binary and jail in it.
#
#   vm/run.sh --execbox PATH --results DIR
#
# PATH is the execbox binary built on the host (it must lie inside this repository, which the
# guest sees read-only at /repo). DIR is a writable directory shared with the guest: it may hold
# `cases.tsv` (one case a line: name, fixture path relative to the repo, then execbox run
# arguments, tab-separated); the guest writes check.json, one <name>.json record per case and
# `done` into it. The host's /usr, /etc and /opt are shared read-only, so the guest runs the
# same interpreter and Python environment as the host. The VM has no network device.
#
# Built once into $EXECBOX_VM_CACHE (default /var/cache/execbox-vm) and reused: the kernel
# package (apt-get download), vmlinux (extracted from vmlinuz for a direct PVH boot, ~2x faster
# than through the BIOS), the 9p/virtio modules and a busybox initramfs. Facts and traps:
# vm/README.md.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cache="${EXECBOX_VM_CACHE:-/var/cache/execbox-vm}"
timeout_s="${EXECBOX_VM_TIMEOUT:-1200}"
execbox="" results=""
while [ $# -gt 0 ]; do
  case "$1" in
    --execbox) execbox="$2"; shift 2 ;;
    --results) results="$2"; shift 2 ;;
    *) echo "usage: $0 --execbox PATH --results DIR" >&2; exit 2 ;;
  esac
done
[ -n "$execbox" ] && [ -n "$results" ] || { echo "usage: $0 --execbox PATH --results DIR" >&2; exit 2; }
execbox="$(realpath "$execbox")"
case "$execbox" in
  "$repo"/*) rel_execbox="${execbox#"$repo"/}" ;;
  *) echo "execbox binary $execbox is not inside $repo (the guest sees only the repo)" >&2; exit 2 ;;
esac
mkdir -p "$results"
results="$(realpath "$results")"

log() { echo "vm: $*" >&2; }

# ---- host packages (Debian) ----
need=""
for p in qemu-system-x86 busybox-static cpio xz-utils; do
  dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"
done
if [ -n "$need" ]; then
  [ "$(id -u)" = 0 ] || { echo "missing Debian packages:$need (run as root)" >&2; exit 1; }
  log "installing:$need"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >&2
fi

# ---- kernel: the generic Debian 12 package (the cloud flavour has no 9p) ----
mkdir -p "$cache"
kpkg="${EXECBOX_VM_KERNEL_PKG:-}"
if [ -z "$kpkg" ]; then
  if [ -f "$cache/kernel-pkg" ]; then
    kpkg="$(cat "$cache/kernel-pkg")"
  else
    kpkg="$(apt-cache depends linux-image-amd64 | sed -n 's/.*Depends: \(linux-image-6\.1\.0-[0-9]*-amd64\)$/\1/p' | head -1)"
    [ -n "$kpkg" ] || { echo "cannot find the linux-image-6.1.0-*-amd64 package" >&2; exit 1; }
  fi
fi
kdir="$cache/$kpkg"
if [ ! -f "$kdir/.ready" ]; then
  log "downloading $kpkg"
  rm -rf "$kdir" && mkdir -p "$kdir/deb"
  (cd "$kdir/deb" && apt-get download -q "$kpkg" >&2 2>/dev/null || apt-get download "$kpkg" >&2)
  dpkg-deb -x "$kdir"/deb/*.deb "$kdir/root"
  vmlinuz="$(ls "$kdir"/root/boot/vmlinuz-*)"
  # vmlinuz is a bzImage whose payload is an xz stream; the uncompressed ELF boots via PVH.
  off="$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$vmlinuz" | head -1 | cut -d: -f1)"
  tail -c +"$((off + 1))" "$vmlinuz" > "$kdir/payload.xz"
  xz -dc --single-stream < "$kdir/payload.xz" > "$kdir/vmlinux"
  rm -f "$kdir/payload.xz"
  head -c 4 "$kdir/vmlinux" | grep -q ELF || { echo "no ELF vmlinux in $vmlinuz" >&2; exit 1; }
  rm -rf "$kdir/deb"
  echo "$kpkg" > "$cache/kernel-pkg"
  touch "$kdir/.ready"
fi
kver="$(ls "$kdir/root/lib/modules")"

# ---- initramfs: static busybox, the modules for 9p over virtio, /init ----
# Load order matters: busybox insmod does not resolve dependencies.
modules="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci netfs fscache 9pnet 9pnet_virtio 9p"
initrd="$cache/initramfs-$kver.cpio.gz"
stamp="$(sha256sum "$here/init" /usr/bin/busybox | sha256sum | cut -c1-16)"
if [ ! -f "$initrd" ] || [ "$(cat "$initrd.stamp" 2>/dev/null)" != "$stamp" ]; then
  log "building $initrd"
  tree="$(mktemp -d)"
  mkdir -p "$tree"/{bin,proc,sys,dev,newroot,lib/modules}
  cp /usr/bin/busybox "$tree/bin/busybox"
  for m in $modules; do
    f="$(find "$kdir/root/lib/modules/$kver/kernel" -name "$m.ko" | head -1)"
    [ -n "$f" ] || { echo "module $m not in $kpkg" >&2; exit 1; }
    cp "$f" "$tree/lib/modules/"
  done
  echo "$modules" > "$tree/modules"
  cp "$here/init" "$tree/init" && chmod 755 "$tree/init"
  (cd "$tree" && find . | cpio -o -H newc --quiet | gzip -1) > "$initrd.tmp"
  mv "$initrd.tmp" "$initrd" && echo "$stamp" > "$initrd.stamp"
  rm -rf "$tree"
fi

# ---- boot ----
rm -f "$results/done" "$results/console.log"
echo "$rel_execbox" > "$results/execbox-path"
ro="security_model=none,readonly=on,multidevs=remap"
log "booting $kpkg (TCG; console in $results/console.log)"
start=$(date +%s.%N)
set +e
timeout --kill-after=10 "$timeout_s" qemu-system-x86_64 \
  -M pc -accel tcg,thread=multi -cpu max -smp 2 -m 1024 \
  -nodefaults -display none -no-reboot -monitor none \
  -serial "file:$results/console.log" \
  -kernel "$kdir/vmlinux" -initrd "$initrd" \
  -append "console=ttyS0 cgroup_no_v1=all panic=-1 loglevel=4 rdinit=/init" \
  -virtfs "local,path=/usr,mount_tag=usr,$ro" \
  -virtfs "local,path=/etc,mount_tag=etc,$ro" \
  -virtfs "local,path=/opt,mount_tag=opt,$ro" \
  -virtfs "local,path=$repo,mount_tag=repo,$ro" \
  -virtfs "local,path=$results,mount_tag=results,security_model=none,multidevs=remap"
rc=$?
set -e
end=$(date +%s.%N)
secs="$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')"
echo "$secs" > "$results/vm-seconds"
log "VM exited ($rc) after ${secs}s"
if [ ! -f "$results/done" ]; then
  echo "the guest did not finish; last console lines:" >&2
  tail -n 40 "$results/console.log" >&2 || true
  exit 1
fi
