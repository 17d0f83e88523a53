#!/usr/bin/env bash
# Release build of the given products as static-PIE executables: the Swift runtime and glibc are linked
# in, so nothing is loaded or relocated by ld.so at start (CPU time to the first KVM_RUN), and the image
# is still position-independent (ASLR) for the process that faces the guest.
# glibc's static-PIE self-relocation refuses a RUNPATH (an assert in _dl_relocate_static_pie), hence
# --disable-local-rpath; gold cannot link static-PIE, hence lld.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --static-swift-stdlib --disable-local-rpath --product "${1:?usage: swift-release.sh PRODUCT}" \
    -Xswiftc -use-ld=lld -Xswiftc -Xclang-linker -Xswiftc -static-pie 2>&1 |
    { grep -v -e "requires at runtime the shared libraries from the glibc version" \
              -e "argument unused during compilation: '-pie'" -e "function .*dlopen" || true; }
