#!/usr/bin/env bash
# Builds Kumo's public images from Debian packages, cached outside the repository (docs/IMAGES.md).
#   scripts/image.sh busybox     the busybox initramfs (scripts/guest.sh) and a small ext4 root disk
#   scripts/image.sh debian-12   Debian 12 by mmdebstrap: systemd, openssh-server, cloud-init, the kumo
#                                agent, and the kernel its own package installs
#   scripts/image.sh path NAME   prints the image's directory
# Each image is a directory ${KUMO_CACHE:-$HOME/.cache/kumo}/images/NAME holding kernel, initrd,
# root.qcow2, cmdline and SHA256SUMS; it is rebuilt only when its inputs (this script, guest/images/NAME,
# the package versions the archive offers, the guest toolbox) change. Progress on stderr; the directory
# on stdout. A failed build leaves the previous image as it was (the new one is made beside it, then
# renamed over it).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
images=${KUMO_CACHE:-$HOME/.cache/kumo}/images
name=${1:-}
log() { echo "image $name: $*" >&2; }
. "$here/scripts/apt.sh"

step=0 steps=0 started=$(date +%s)
progress() { step=$((step + 1)); log "[$step/$steps] $* ($(($(date +%s) - started)) s)"; }

# inputs_key PACKAGE …: what decides the image's bytes. The archive's Release dates stand for every
# package version the resolver could pick; the named packages' candidates are listed to make it readable.
inputs_key() {
  [ -n "$(find /var/lib/apt/lists -name '*Release' -mmin -1440 2>/dev/null | head -1)" ] || apt_update
  {
    cat "$0" "$here/scripts/guest.sh"   # guest.sh builds the toolbox
    find "$here/guest/images/$name" "$here/guest/tools" -type f | sort | xargs cat 2>/dev/null
    grep -h '^Date:' /var/lib/apt/lists/*Release 2>/dev/null | sort
    for p in "$@"; do echo "$p $(apt-cache policy "$p" | awk '/Candidate:/ {print $2}')"; done
    gcc --version | head -1
  } | sha256sum | cut -c1-16
}

up_to_date() { [ -f "$images/$name/inputs" ] && [ "$(cat "$images/$name/inputs")" = "$1" ] && [ -f "$images/$name/SHA256SUMS" ]; }

# finish DIR KEY: checksums, then DIR becomes the image (the old one removed only now).
finish() {
  local dir=$1 key=$2
  (cd "$dir" && sha256sum kernel root.qcow2 $( [ -f initrd ] && echo initrd) > SHA256SUMS)
  echo "$key" > "$dir/inputs"
  rm -rf "$images/$name.old"
  [ -d "$images/$name" ] && mv "$images/$name" "$images/$name.old"
  mv "$dir" "$images/$name"
  rm -rf "$images/$name.old"
  log "done in $(($(date +%s) - started)) s: $images/$name ($(du -sh "$images/$name" | cut -f1) on disk)"
  sed 's/^/  /' "$images/$name/SHA256SUMS" >&2
  echo "$images/$name"
}

debian12_packages=(systemd-sysv udev dbus openssh-server cloud-init ifupdown net-tools isc-dhcp-client iproute2 netbase
  ca-certificates sudo less linux-image-cloud-amd64 initramfs-tools)

debian12() {
  need_tools mmdebstrap:mmdebstrap mkfs.ext4:e2fsprogs qemu-img:qemu-utils gcc:gcc
  local key; key=$(inputs_key "${debian12_packages[@]}")
  if up_to_date "$key"; then log "up to date ($images/$name)"; echo "$images/$name"; return; fi
  steps=5
  mkdir -p "$images"
  local work; work=$(mktemp -d "$images/.$name.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  mkdir "$work/out" "$work/tools"
  progress "the guest toolbox (kumo-agent and friends), static"
  "$here/scripts/guest.sh" tools "$work/tools"
  progress "mmdebstrap bookworm: ${debian12_packages[*]} (downloads ~200 MB the first time; minutes)"
  local include; include=$(IFS=,; echo "${debian12_packages[*]}")
  # The image's own files (guest/images/debian-12/rootfs) are copied over the tree, then the hook
  # enables the agent and leaves per-instance identity (machine id, SSH host keys) to the first boot.
  mmdebstrap --variant=apt --include="$include" --components=main \
    --customize-hook="cp -a '$here/guest/images/debian-12/rootfs/.' \"\$1/\"" \
    --customize-hook="install -m 755 '$work/tools/kumo-agent' \"\$1/usr/local/sbin/kumo-agent\"" \
    --customize-hook="chroot \"\$1\" systemctl enable kumo-agent.service serial-getty@ttyS0.service" \
    --customize-hook="rm -f \"\$1\"/etc/ssh/ssh_host_*; : > \"\$1/etc/machine-id\"; rm -f \"\$1/var/lib/dbus/machine-id\"" \
    --customize-hook="rm -rf \"\$1\"/var/cache/apt/archives/*.deb \"\$1\"/var/lib/apt/lists/*" \
    bookworm "$work/rootfs" http://deb.debian.org/debian "deb http://deb.debian.org/debian-security bookworm-security main" \
    "deb http://deb.debian.org/debian bookworm-updates main" >&2
  progress "kernel and initrd the image's linux-image package installed"
  cp "$(ls "$work"/rootfs/boot/vmlinuz-* | sort -V | tail -1)" "$work/out/kernel"
  cp "$(ls "$work"/rootfs/boot/initrd.img-* | sort -V | tail -1)" "$work/out/initrd"
  chmod 644 "$work/out/kernel" "$work/out/initrd"
  progress "ext4 root filesystem (2 GiB, sparse)"
  truncate -s 2G "$work/root.raw"
  mkfs.ext4 -q -L kumo-root -d "$work/rootfs" "$work/root.raw"
  progress "qcow2 (qemu-img convert, then check)"
  qemu-img convert -f raw -O qcow2 -o cluster_size=65536 "$work/root.raw" "$work/out/root.qcow2"
  qemu-img check -q "$work/out/root.qcow2"
  rm -f "$work/root.raw"
  # ip=off: the image configures its network from the seed's network-config (cloud-init), so kumod gives
  # the kernel no address of its own (docs/IMAGES.md).
  echo "console=ttyS0 root=LABEL=kumo-root rw ip=off" > "$work/out/cmdline"
  finish "$work/out" "$key"
  rm -rf "$work"; trap - EXIT
}

busybox() {
  need_tools mkfs.ext4:e2fsprogs qemu-img:qemu-utils
  local guest; guest=$("$here/scripts/guest.sh" path)
  local kernel=$guest/stock/vmlinux target=demo
  [ -d /sys/module/kvm_pvm ] && kernel=$guest/test-kernel/vmlinux
  "$here/scripts/guest.sh" $target >&2
  local key; key=$({ cat "$0" "$kernel.stamp" "$guest/initramfs/initramfs.cpio.stamp"; } | sha256sum | cut -c1-16)
  if up_to_date "$key"; then log "up to date ($images/$name)"; echo "$images/$name"; return; fi
  steps=2
  mkdir -p "$images"
  local work; work=$(mktemp -d "$images/.$name.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/out" "$work/root/data"
  progress "kernel ($(basename "$(dirname "$kernel")")) and the busybox initramfs"
  cp "$kernel" "$work/out/kernel"; cp "$guest/initramfs/initramfs.cpio" "$work/out/initrd"
  progress "ext4 root disk (64 MiB) and qcow2"
  echo "the busybox image's root disk" > "$work/root/data/README"
  truncate -s 64M "$work/root.raw"
  mkfs.ext4 -q -L kumo-root -d "$work/root" "$work/root.raw"
  qemu-img convert -f raw -O qcow2 "$work/root.raw" "$work/out/root.qcow2"
  rm -f "$work/root.raw"
  echo "console=ttyS0 reboot=k panic=-1" > "$work/out/cmdline"
  finish "$work/out" "$key"
  rm -rf "$work"; trap - EXIT
}

case "$name" in
  busybox) busybox ;;
  debian-12) debian12 ;;
  path) name=${2:?usage: $0 path NAME}; echo "$images/$name" ;;
  *) echo "usage: $0 busybox|debian-12|path NAME" >&2; exit 2 ;;
esac
