#!/usr/bin/env bash
# schemathesis (PyPI) against a running kumod and the OpenAPI document it serves: every generated
# request must get an answer that is not a 5xx, and kumod must still be up at the end.
# The VMM is a stand-in process (kumod supervises it as it would kumo-vmm): this exercises the API,
# not guest boots. Usage: scripts/schemathesis.sh [MAX_EXAMPLES]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
examples=${1:-25}
command -v schemathesis >/dev/null || pip install -q schemathesis >&2
kumod=$here/.build/debug/kumod
[ -x "$kumod" ] || swift build --product kumod >&2
work=$(mktemp -d /tmp/kumo-schemathesis.XXXXXX)
port=$(( 20000 + RANDOM % 30000 ))
# It answers kumod's contract check as the kumo-vmm of this tree does.
contract=$("$here/.build/release/kumo-vmm" --contract-version 2>/dev/null || "$here/.build/debug/kumo-vmm" --contract-version)
printf '#!/bin/sh\n[ "$1" = --contract-version ] && { echo %s; exit 0; }\ntrap "exit 0" TERM\nwhile :; do sleep 0.5; done\n' "$contract" > "$work/fake-vmm"
chmod +x "$work/fake-vmm"
# Networks on (the generated requests create real ones) in an nftables table of its own.
table=kumo_st_$port
"$kumod" --data-dir "$work" --listen "127.0.0.1:$port" --vmm "$work/fake-vmm" --nft-table "$table" > "$work/kumod.log" 2>&1 &
pid=$!
cleanup() {
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pkill -f "$work/fake-vmm" 2>/dev/null || true
  # Each jailed VMM (the stand-ins too) had a cgroup of its own, which kumod would have removed.
  for d in "$work"/instances/*/; do
    [ -d "$d" ] || continue
    id=$(basename "$d")
    for cg in /sys/fs/cgroup/cpu/kumo /sys/fs/cgroup/unified/kumo; do
      [ -d "$cg/$id" ] || continue
      for _ in $(seq 50); do rmdir "$cg/$id" 2>/dev/null && break; sleep 0.1; done
    done
  done
  # kumod leaves networks up when it dies (as it leaves VMs): their dnsmasqs name the work directory.
  # Their bridges go, with the instances' taps in them.
  # (pgrep finds nothing when no network was made: under pipefail that must not fail the exit.)
  { pgrep -af -- "$work/networks/" 2>/dev/null || true; } | sed -n 's/.*--interface=\([^ ]*\).*/\1/p' | while read -r br; do
    for tap in $(ip -o link show master "$br" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do ip link del "$tap" 2>/dev/null || true; done
    ip link del "$br" 2>/dev/null || true
  done
  pkill -9 -f -- "$work/networks/" 2>/dev/null || true
  for family in inet bridge; do nft delete table "$family" "$table" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 100); do [ -s "$work/admin.token" ] && [ -S "$work/kumod.sock" ] && break; sleep 0.1; done
rc=0
# From the work directory: schemathesis keeps its own state (.schemathesis/) in the current directory.
(cd "$work" && schemathesis run "http://127.0.0.1:$port/v1/openapi.yaml" --url "http://127.0.0.1:$port" \
  -H "Authorization: Bearer $(cat "$work/admin.token")" --checks not_a_server_error \
  -n "$examples" --seed 1 --no-color) > "$work/report.txt" 2>&1 || rc=$?
tail -n 15 "$work/report.txt"
if ! kill -0 "$pid" 2>/dev/null; then
  echo "schemathesis: kumod died during the run:" >&2
  grep -m1 -A3 "Fatal" "$work/kumod.log" >&2 || tail -n 20 "$work/kumod.log" >&2
  exit 1
fi
[ $rc = 0 ] || { echo "schemathesis: failures above (exit $rc)" >&2; exit $rc; }
echo "schemathesis: no server errors, kumod still up"
