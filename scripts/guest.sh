#!/usr/bin/env bash
# Builds Kumo's guest artifacts from Debian packages only, cached outside the repository.
#   scripts/guest.sh stock        vmlinux + vmlinuz of linux-image-cloud-amd64
#   scripts/guest.sh initramfs    busybox-static initramfs whose /init runs guest/init/scenario.sh
#   scripts/guest.sh test-kernel  the Kumo test kernel from linux-source-6.1 + guest/kernel/kumo-test.config
#   scripts/guest.sh all          all three
# Each artifact is rebuilt only when its inputs (package version, script, config, init files) change.
# Prints nothing but progress on stderr; the cache path is ${KUMO_CACHE:-$HOME/.cache/kumo}/guest.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${KUMO_CACHE:-$HOME/.cache/kumo}/guest
mkdir -p "$cache/debs"
log() { echo "guest: $*" >&2; }

need_tools() {
  local missing=()
  for pair in "$@"; do
    local tool=${pair%%:*} pkg=${pair##*:}
    command -v "$tool" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    [ -n "$(find /var/lib/apt/lists -name '*Packages*' -mmin -1440 2>/dev/null | head -1)" ] || apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  fi
}

# fetch PKG -> prints the path of the .deb for the candidate version (downloaded once)
fetch() {
  local pkg=$1 ver
  ver=$(apt-cache policy "$pkg" | awk '/Candidate:/ {print $2}')
  if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then
    apt-get update -qq >&2
    ver=$(apt-cache policy "$pkg" | awk '/Candidate:/ {print $2}')
  fi
  [ -n "$ver" ] && [ "$ver" != "(none)" ] || { log "package $pkg is not available"; exit 1; }
  local f
  f=$(ls "$cache/debs/${pkg}_${ver//:/%3a}_"*.deb 2>/dev/null | head -1 || true)
  if [ -z "$f" ]; then
    log "downloading $pkg $ver"
    (cd "$cache/debs" && apt-get download -qq "$pkg=$ver" >&2)
    f=$(ls "$cache/debs/${pkg}_${ver//:/%3a}_"*.deb | head -1)
  fi
  echo "$f"
}

stamp_ok() { [ -f "$1.stamp" ] && [ "$(cat "$1.stamp")" = "$2" ] && [ -e "$1" ]; }

stock() {
  need_tools lz4:lz4 dpkg-deb:dpkg
  local meta image deb key out=$cache/stock
  meta=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
  [ -n "$meta" ] || { apt-get update -qq >&2; meta=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}'); }
  deb=$(fetch "$meta")
  key="$(basename "$deb") $(sha256sum "$0" | cut -c1-16)"
  if stamp_ok "$out/vmlinux" "$key"; then log "stock kernel up to date ($out)"; return; fi
  rm -rf "$out" && mkdir -p "$out/x"
  dpkg-deb -x "$deb" "$out/x"
  cp "$out/x"/boot/vmlinuz-* "$out/vmlinuz"
  # vmlinux is the LZ4 (legacy frame) payload of the bzImage: find the magic, decompress.
  local off
  off=$(grep -obUaP '\x02\x21\x4c\x18' "$out/vmlinuz" | head -1 | cut -d: -f1)
  [ -n "$off" ] || { log "no LZ4 payload in $out/vmlinuz"; exit 1; }
  tail -c +$((off + 1)) "$out/vmlinuz" | lz4 -dc > "$out/vmlinux" 2>/dev/null || true
  head -c 4 "$out/vmlinux" | grep -q ELF || { log "extracted vmlinux is not ELF"; exit 1; }
  cp "$out/x"/boot/config-* "$out/config"
  rm -rf "$out/x"
  echo "$key" > "$out/vmlinux.stamp"
  log "stock kernel: $out/vmlinux ($(du -h "$out/vmlinux" | cut -f1))"
}

initramfs() {
  need_tools cpio:cpio dpkg-deb:dpkg
  local deb key out=$cache/initramfs
  deb=$(fetch busybox-static)
  key="$(basename "$deb") $(cat "$0" "$here"/guest/init/* | sha256sum | cut -c1-16)"
  if stamp_ok "$out/initramfs.cpio" "$key"; then log "initramfs up to date ($out)"; return; fi
  rm -rf "$out" && mkdir -p "$out/x" "$out/root"/{bin,sbin,dev,proc,sys,tmp,etc,mnt}
  dpkg-deb -x "$deb" "$out/x"
  cp "$out/x/bin/busybox" "$out/root/bin/busybox"
  for applet in $("$out/root/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$out/root/bin/$applet"
  done
  cp "$here/guest/init/init" "$out/root/init"
  cp "$here/guest/init/scenario.sh" "$out/root/etc/scenario.sh"
  cp "$here/guest/init/udhcpc.script" "$out/root/etc/udhcpc.script"
  chmod 755 "$out/root/init" "$out/root/etc/scenario.sh" "$out/root/etc/udhcpc.script"
  # Uncompressed cpio: decompression is the slowest thing a guest kernel can do here.
  (cd "$out/root" && find . | sort | cpio -o -H newc --quiet) > "$out/initramfs.cpio"
  rm -rf "$out/x"
  echo "$key" > "$out/initramfs.cpio.stamp"
  log "initramfs: $out/initramfs.cpio ($(du -h "$out/initramfs.cpio" | cut -f1))"
}

test_kernel() {
  need_tools make:make gcc:gcc flex:flex bison:bison bc:bc xz:xz-utils
  [ -f /usr/include/libelf.h ] || need_tools __libelf:libelf-dev
  [ -f /usr/include/openssl/ssl.h ] || need_tools __libssl:libssl-dev
  local deb key out=$cache/test-kernel
  deb=$(fetch linux-source-6.1)
  key="$(basename "$deb") $(cat "$0" "$here/guest/kernel/kumo-test.config" | sha256sum | cut -c1-16)"
  if stamp_ok "$out/vmlinux" "$key"; then log "test kernel up to date ($out)"; return; fi
  local src=$cache/linux-src/$(basename "$deb" .deb)
  if [ ! -f "$src/Makefile" ]; then
    rm -rf "$cache/linux-src" && mkdir -p "$cache/linux-src/x"
    log "unpacking $(basename "$deb")"
    dpkg-deb -x "$deb" "$cache/linux-src/x"
    mkdir -p "$src"
    tar -xaf "$cache/linux-src/x"/usr/src/linux-source-*.tar.xz -C "$src" --strip-components=1
    rm -rf "$cache/linux-src/x"
  fi
  log "configuring the test kernel"
  (cd "$src" && make -s allnoconfig >&2 \
    && KCONFIG_ALLCONFIG="$here/guest/kernel/kumo-test.config" make -s allnoconfig >&2 \
    && make -s olddefconfig >&2)
  # Every line of the fragment must have survived Kconfig's dependency resolution.
  local bad=0 line
  while IFS= read -r line; do
    case "$line" in ''|'#'*) continue ;; esac
    local k=${line%%=*} v=${line#*=}
    if [ "$v" = n ]; then grep -q "^$k=" "$src/.config" && { log "config: $k should be off"; bad=1; }
    else grep -qx "$line" "$src/.config" || { log "config: $line did not take ($(grep "^$k=\|# $k " "$src/.config" || echo unset))"; bad=1; }; fi
  done < "$here/guest/kernel/kumo-test.config"
  [ $bad = 0 ] || exit 1
  log "building the test kernel (make -j$(nproc) vmlinux bzImage; several minutes)"
  (cd "$src" && make -s -j"$(nproc)" vmlinux bzImage >&2)
  mkdir -p "$out"
  cp "$src/vmlinux" "$out/vmlinux"; cp "$src/arch/x86/boot/bzImage" "$out/bzImage"; cp "$src/.config" "$out/config"
  strip --strip-debug "$out/vmlinux" 2>/dev/null || true
  echo "$key" > "$out/vmlinux.stamp"
  log "test kernel: $out/vmlinux"
}

case "${1:-all}" in
  stock) stock ;;
  initramfs) initramfs ;;
  test-kernel) test_kernel ;;
  all) stock; initramfs; test_kernel ;;
  path) echo "$cache" ;;
  *) echo "usage: $0 stock|initramfs|test-kernel|all|path" >&2; exit 2 ;;
esac
