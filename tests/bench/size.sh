#!/usr/bin/env bash
# Benchmark: issue 25's size target, "aarch64 and armv7 device builds <= 5.0 MB each":
# builds each device binary (cross/build.sh TARGET device: profile `device`, stripped)
# and prints its size, met or MISSED. docs/device-build.md has the figures and what each
# choice costs or saves.
#
# Usage: tests/bench/size.sh [TARGET...]   (default: aarch64 armv7; run cross/setup.sh first)
# Honours CARGO_TARGET_DIR. A cold build takes about 5 minutes per target on 2 cores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
targets=("$@")
((${#targets[@]})) || targets=(aarch64 armv7)
limit=5000000 # 5.0 MB
failed=0
results=()
for t in "${targets[@]}"; do
    if ! out=$(cross/build.sh "$t" device 2>&1); then
        echo "$out" | tail -n 20 >&2
        results+=("- $t device build: build FAILED")
        failed=1
        continue
    fi
    bytes=$(sed -n 's/.*stripped (\([0-9]*\) bytes).*/\1/p' <<<"$out" | tail -n 1)
    verdict=met
    ((bytes <= limit)) || verdict=MISSED
    results+=("$(awk -v t="$t" -v b="$bytes" -v v="$verdict" \
        'BEGIN { printf "- %s device build <= 5.0 MB: %.2f MB (%d bytes): %s", t, b / 1e6, b, v }')")
done
echo
echo "Targets (issue 25):"
echo
printf '%s\n' "${results[@]}"
exit "$failed"
