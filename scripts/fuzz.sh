#!/usr/bin/env bash
# Builds kumo-fuzz with libFuzzer and AddressSanitizer (its own build directory) and runs each target over
# its seed corpus: `scripts/fuzz.sh RUNS [TARGET...]`, RUNS inputs per target, or `scripts/fuzz.sh
# TARGET=RUNS...` (make test runs a short pass of every target; `make fuzz` a long one). Targets: virtio,
# pio, control, config, disk (Sources/kumo-fuzz).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
declare -A count=()
targets=()
if [[ "${1:-}" == *=* ]]; then
    for pair in "$@"; do targets+=("${pair%%=*}"); count[${pair%%=*}]=${pair#*=}; done
else
    runs=${1:-20000}
    shift || true
    targets=("$@")
    [ ${#targets[@]} -gt 0 ] || targets=(virtio pio control config disk)
    for t in "${targets[@]}"; do count[$t]=$runs; done
fi
cd "$here"
# The seccomp plugin's host tool fails to link under the sanitizer flags (gold), and SwiftPM goes on to
# build kumo-fuzz, which does not use it: those lines are left out.
swift build -c release --product kumo-fuzz --scratch-path .build/fuzz \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -DKUMO_FUZZ 2>&1 | grep -E "error|Build" | grep -vE "link command failed|linker command failed" | tail -3
status=0 total=0
for t in "${targets[@]}"; do
    case "$t" in
        virtio) corpus=Fuzz/corpus ;;
        pio | control | config | disk) corpus=Fuzz/corpus-$t ;;
        *) echo "scripts/fuzz.sh: unknown target $t (virtio, pio, control, config, disk)"; exit 2 ;;
    esac
    work=$(mktemp -d /tmp/kumo-fuzz.XXXXXX)
    cp "$corpus"/* "$work/" 2>/dev/null || true
    # -timeout: an input that takes 10 s is a hang. New inputs go to the scratch copy, not the repo.
    s=0
    KUMO_FUZZ_TARGET=$t .build/fuzz/release/kumo-fuzz -runs="${count[$t]}" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$here/.build/fuzz/$t-" "$work" > "$work/log" 2>&1 || s=$?
    done_line=$(grep -E "^#[0-9]+[[:space:]]+DONE" "$work/log" | tail -1 || true)
    executed=$(grep -E "stat::number_of_executed_units" "$work/log" | awk '{print $2}' || true)
    cov=$(echo "$done_line" | grep -oE "cov: [0-9]+" | awk '{print $2}' || true)
    rate=$(grep -E "stat::average_exec_per_sec" "$work/log" | awk '{print $2}' || true)
    echo "kumo-fuzz $t: ${executed:-0} inputs, ${cov:-?} edges covered, ${rate:-?} inputs/s"
    grep -E "ERROR|SUMMARY|crash-|timeout-|leak-" "$work/log" || true
    if [ "$s" -ne 0 ]; then tail -40 "$work/log"; echo "kumo-fuzz $t: FAILED (artifacts in .build/fuzz/)"; status=$s; fi
    total=$((total + ${executed:-0}))
    rm -rf "$work"
done
echo "kumo-fuzz: $total inputs in all"
exit "$status"
