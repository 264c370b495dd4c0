#!/usr/bin/env bash
# Benchmark: what a function costs per language (Rust, Python, JavaScript), both models.
#
# Usage: tests/bench/languages.sh [AGENT_BINARY] [EVENTS] [RATE] [RUNS]
#   AGENT_BINARY  default target/release/edge-agent (build: cargo build --release -p edge-agent)
#   EVENTS, RATE, RUNS  as tests/bench/models.sh (default 500 events at 50/s, 3 runs)
#
# 1. builds the examples (modules/build.sh; the Python and JS toolchains must be
#    installed: modules/guest-tools/install.sh) and prints each component's size;
# 2. precompiles each with AGENT_BINARY for this host (the time it takes and the .cwasm's
#    size) and for aarch64 (size);
# 3. runs tests/bench/models.sh on the host .cwasm of echo and counter in each language,
#    both models: instantiation (the on-demand cold start), execution on a fresh instance
#    (on demand) and on a warm one (persistent), CPU per event, peak linear memory.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin="${1:-$root/target/release/edge-agent}"
events="${2:-500}"
rate="${3:-50}"
runs="${4:-3}"
[[ -x "$bin" ]] || { echo "error: no agent binary at $bin" >&2; exit 1; }
"$root/modules/build.sh" >/dev/null
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/host" "$work/aarch64"

names=()
for example in echo counter threshold-alert; do
    for suffix in "" -py -js; do
        [[ -f "$root/modules/dist/$example$suffix.wasm" ]] || { echo "error: modules/dist/$example$suffix.wasm not built (modules/guest-tools/install.sh)" >&2; exit 1; }
        names+=("$example$suffix")
    done
done

printf '%-20s %12s %14s %12s %14s\n' component "wasm bytes" "compile (s)" "cwasm bytes" "aarch64 cwasm"
for name in "${names[@]}"; do
    wasm="$root/modules/dist/$name.wasm"
    start=$(date +%s%N)
    "$bin" precompile --out "$work/host" "$wasm" >/dev/null
    ms=$((($(date +%s%N) - start) / 1000000))
    "$bin" precompile --target aarch64-unknown-linux-gnu --out "$work/aarch64" "$wasm" >/dev/null
    printf '%-20s %12d %11d.%01d %12d %14d\n' "$name" "$(wc -c <"$wasm")" $((ms / 1000)) $((ms % 1000 / 100)) \
        "$(wc -c <"$work/host/$name.cwasm")" "$(wc -c <"$work/aarch64/$name.cwasm")"
done
echo
FUNCTIONS="echo echo-py echo-js counter counter-py counter-js" MODULES="$work/host" \
    "$root/tests/bench/models.sh" "$bin" "$events" "$rate" "$runs"
