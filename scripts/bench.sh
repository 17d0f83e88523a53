#!/usr/bin/env bash
# make bench: every figure measured in this run, kumo-vmm against its baseline side by side.
set -euo pipefail
vmm=$(realpath "$1") guest=$2
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/kumo-bench.XXXXXX)
trap 'pkill -P $$ 2>/dev/null || true; rm -rf "$work"' EXIT
log() { echo "bench: $*" >&2; }
. "$here/scripts/apt.sh"
need_tools qemu-system-x86_64:qemu-system-x86 cc:gcc as:binutils ld:binutils haproxy:haproxy
"$here/scripts/swift-release.sh" kumo-bench >/dev/null
swift build -c release --product kumod --package-path "$here" >/dev/null
# Freshly linked binaries sit in dirty page-cache pages, which smaps counts as Private_Dirty: flush first.
sync
bench=$here/.build/release/kumo-bench
cc -O2 -o "$work/exit-loop" "$here/bench/exit-loop.c"
cc -O2 -pthread -o "$work/lb-conn" "$here/bench/lb-conn.c"
python3 "$here/bench/tiny-elf.py" "$work/tiny.elf"
exec python3 "$here/bench/bench.py" --vmm "$vmm" --bench "$bench" --cloop "$work/exit-loop" --tiny "$work/tiny.elf" --guest "$guest" --work "$work" --kumod "$here/.build/release/kumod"
