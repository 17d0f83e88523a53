#!/usr/bin/env bash
# Builds kumo-fuzz with libFuzzer and AddressSanitizer (its own build directory) and runs it over the
# seed corpus: `scripts/fuzz.sh RUNS` (make test runs a short pass; `make fuzz` a long one).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-20000}
cd "$here"
swift build -c release --product kumo-fuzz --scratch-path .build/fuzz \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -DKUMO_FUZZ 2>&1 | grep -E "error|Build" | tail -3
work=$(mktemp -d /tmp/kumo-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT
cp Fuzz/corpus/* "$work/" 2>/dev/null || true
# -timeout: an input that takes 10 s is a hang. New inputs go to the scratch copy, not the repo.
status=0
.build/fuzz/release/kumo-fuzz -runs="$runs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$here/.build/fuzz/" "$work" > "$work/log" 2>&1 || status=$?
grep -E "stat::number_of_executed_units|stat::peak_rss|ERROR|SUMMARY|Done [0-9]|crash-|timeout-" "$work/log" || true
if [ "$status" -ne 0 ]; then tail -40 "$work/log"; echo "kumo-fuzz: FAILED (artifacts in .build/fuzz/)"; fi
exit "$status"
