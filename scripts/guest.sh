#!/usr/bin/env bash
# Builds Kumo's guest artifacts from Debian packages only, cached outside the repository.
#   scripts/guest.sh stock        vmlinux + vmlinuz of linux-image-cloud-amd64
#   scripts/guest.sh initramfs    busybox-static initramfs whose /init runs guest/init/scenario.sh, with
#                                 the guest toolbox (guest/tools/*.c, static) in /usr/bin
#   scripts/guest.sh test-kernel  the Kumo test kernel from linux-source-6.1 + guest/kernel/patches/*.patch
#                                 + guest/kernel/kumo-test.config
#   scripts/guest.sh all          all three
#   scripts/guest.sh tools DIR    the guest toolbox alone (guest/tools/*.c, static) into DIR
#   scripts/guest.sh demo         what `make run` boots: stock kernel and initramfs, and the test kernel
#                                 on hosts where only it runs guest userspace (kvm_pvm)
# Each artifact is rebuilt only when its inputs (package version, script, config, init files) change.
# Prints nothing but progress on stderr; the cache path is ${KUMO_CACHE:-$HOME/.cache/kumo}/guest.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${KUMO_CACHE:-$HOME/.cache/kumo}/guest
mkdir -p "$cache/debs"
log() { echo "guest: $*" >&2; }

. "$here/scripts/apt.sh"

# fetch PKG -> prints the path of the .deb for the candidate version (downloaded once)
fetch() {
  local pkg=$1 ver
  ver=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}' || true)
  if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then
    apt_update
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
  # `|| true`: under pipefail, apt-cache's failure with no package lists yet (a fresh machine) or its
  # SIGPIPE when awk exits early would end the script instead of reaching apt_update.
  meta=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}' || true)
  [ -n "$meta" ] || { apt_update; meta=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}'); }
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

# toolbox DIR: the guest toolbox (guest/tools/*.c) built static into DIR (the initramfs's, scripts/image.sh's).
toolbox() {
  need_tools gcc:gcc strip:binutils
  [ -f /usr/lib/x86_64-linux-gnu/libc.a ] || need_tools __libc_a:libc6-dev
  local tool
  for tool in "$here"/guest/tools/*.c; do
    gcc -static -O2 -Wall -Werror -o "$1/$(basename "$tool" .c)" "$tool"
    strip "$1/$(basename "$tool" .c)"
  done
}

initramfs() {
  need_tools cpio:cpio dpkg-deb:dpkg gcc:gcc
  [ -f /usr/lib/x86_64-linux-gnu/libc.a ] || need_tools __libc_a:libc6-dev
  local deb key out=$cache/initramfs
  deb=$(fetch busybox-static)
  key="$(basename "$deb") $(gcc --version | head -1) $(cat "$0" "$here"/guest/init/* "$here"/guest/tools/* | sha256sum | cut -c1-16)"
  if stamp_ok "$out/initramfs.cpio" "$key"; then log "initramfs up to date ($out)"; return; fi
  rm -rf "$out" && mkdir -p "$out/x" "$out/root"/{bin,sbin,dev,proc,sys,tmp,etc/acpi/PWRF,mnt,usr/bin,var/log,var/run}
  dpkg-deb -x "$deb" "$out/x"
  cp "$out/x/bin/busybox" "$out/root/bin/busybox"
  for applet in $("$out/root/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$out/root/bin/$applet"
  done
  cp "$here/guest/init/init" "$out/root/init"
  cp "$here/guest/init/scenario.sh" "$out/root/etc/scenario.sh"
  cp "$here/guest/init/nocloud.sh" "$out/root/etc/nocloud.sh"
  cp "$here/guest/init/udhcpc.script" "$out/root/etc/udhcpc.script"
  cp "$here/guest/init/power-button" "$out/root/etc/acpi/PWRF/00000080"
  chmod 755 "$out/root/init" "$out/root/etc/scenario.sh" "$out/root/etc/nocloud.sh" "$out/root/etc/udhcpc.script" "$out/root/etc/acpi/PWRF/00000080"
  # The guest toolbox: small static programs for scenarios busybox cannot do (docs/NESTED.md).
  toolbox "$out/root/usr/bin"
  # Uncompressed cpio: decompression is the slowest thing a guest kernel can do here.
  (cd "$out/root" && find . | sort | cpio -o -H newc --quiet) > "$out/initramfs.cpio"
  rm -rf "$out/x"
  echo "$key" > "$out/initramfs.cpio.stamp"
  log "initramfs: $out/initramfs.cpio ($(du -h "$out/initramfs.cpio" | cut -f1))"
}

# unpack_source DEB SRC: the pristine kernel tree of linux-source-6.1.
unpack_source() {
  local deb=$1 src=$2
  rm -rf "$cache/linux-src" && mkdir -p "$cache/linux-src/x"
  log "unpacking $(basename "$deb")"
  dpkg-deb -x "$deb" "$cache/linux-src/x"
  mkdir -p "$src"
  tar -xaf "$cache/linux-src/x"/usr/src/linux-source-*.tar.xz -C "$src" --strip-components=1
  rm -rf "$cache/linux-src/x"
}

# apply_patches SRC: our kernel patches, in order. A tree carrying another set (a copy of what was
# applied is kept in it) is first taken back to pristine, newest patch first, so that a changed patch
# rebuilds only the files it touches. Fails (for a fresh unpack) when the tree is not as recorded.
apply_patches() {
  local src=$1 applied=$1/.kumo-patches p
  [ ! -e "$applied.new" ] || return 1   # an earlier run stopped half-way
  if [ -d "$applied" ]; then
    if diff -rq "$applied" "$here/guest/kernel/patches" >/dev/null 2>&1; then return 0; fi
    for p in $(ls "$applied"/*.patch 2>/dev/null | sort -r); do
      log "reverting $(basename "$p")"
      patch -s -R -p1 -d "$src" < "$p" || return 1
    done
    rm -rf "$applied"
  fi
  mkdir -p "$applied.new"
  for p in "$here"/guest/kernel/patches/*.patch; do
    log "applying $(basename "$p")"
    patch -s -p1 -d "$src" < "$p" || return 1
    cp "$p" "$applied.new/"
  done
  mv "$applied.new" "$applied"
}

test_kernel() {
  need_tools make:make gcc:gcc flex:flex bison:bison bc:bc xz:xz-utils patch:patch
  [ -f /usr/include/libelf.h ] || need_tools __libelf:libelf-dev
  [ -f /usr/include/openssl/ssl.h ] || need_tools __libssl:libssl-dev
  local deb key out=$cache/test-kernel
  deb=$(fetch linux-source-6.1)
  key="$(basename "$deb") $(cat "$0" "$here/guest/kernel/kumo-test.config" "$here"/guest/kernel/patches/*.patch | sha256sum | cut -c1-16)"
  if stamp_ok "$out/vmlinux" "$key"; then log "test kernel up to date ($out)"; return; fi
  local src=$cache/linux-src/$(basename "$deb" .deb)
  [ -f "$src/Makefile" ] || unpack_source "$deb" "$src"
  if ! apply_patches "$src"; then
    log "the kernel tree is not as recorded; unpacking it again"
    unpack_source "$deb" "$src"
    apply_patches "$src" || { log "guest/kernel/patches do not apply to $(basename "$deb")"; exit 1; }
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
  cp "$src/System.map" "$out/System.map"   # tests look up entry_SYSCALL_64; RIPs in reports
  strip --strip-debug "$out/vmlinux" 2>/dev/null || true
  echo "$key" > "$out/vmlinux.stamp"
  log "test kernel: $out/vmlinux"
}

case "${1:-all}" in
  stock) stock ;;
  initramfs) initramfs ;;
  test-kernel) test_kernel ;;
  all) stock; initramfs; test_kernel ;;
  demo) stock; initramfs; if [ -d /sys/module/kvm_pvm ]; then test_kernel; fi ;;
  path) echo "$cache" ;;
  tools) mkdir -p "${2:?usage: $0 tools DIR}"; toolbox "$2" ;;
  *) echo "usage: $0 stock|initramfs|test-kernel|all|demo|path|tools DIR" >&2; exit 2 ;;
esac
