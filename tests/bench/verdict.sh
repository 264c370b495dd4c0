#!/usr/bin/env bash
# Benchmark: does `compare`'s verdict hold still? Runs `compare` back to back and checks
# that no two runs name different winners for the same function, kind of cost and rates.
#
# Usage: tests/bench/verdict.sh [QUICK_RUNS] [FULL_RUNS] [OUT_DIR] [AGENT_BINARY]
#   QUICK_RUNS    `compare --quick` runs (default 5)
#   FULL_RUNS     default `compare` runs (default 3; about 8 minutes each)
#   OUT_DIR       where the JSON reports, pages and outputs go (default a temporary folder)
#   AGENT_BINARY  default target/release/edge-agent (build: cargo build --release -p edge-agent)
#
# Prints each run's time and verdict lines, then `compare --from` over each set, which
# says for every pair of reports whether a verdict contradicts the other.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
quick="${1:-5}"
full="${2:-3}"
out="${3:-$(mktemp -d)}"
bin="${4:-$root/target/release/edge-agent}"
[[ -x "$bin" ]] || { echo "error: no agent binary at $bin" >&2; exit 1; }
[[ -f "$root/modules/dist/echo.wasm" ]] || "$root/modules/build.sh" >/dev/null
mkdir -p "$out"
cd "$root"
run() { # NAME ARGS...
    local name="$1"; shift
    local start=$SECONDS
    "$bin" compare "$@" --json "$out/$name.json" --html "$out/$name.html" >"$out/$name.txt" 2>"$out/$name.err"
    echo "$name: $((SECONDS - start)) s"
    grep -E '^(echo|counter): |^- (cpu|memory|energy|money): ' "$out/$name.txt" | sed 's/^/  /'
}
for i in $(seq 1 "$quick"); do run "quick-$i" --quick; done
for i in $(seq 1 "$full"); do run "full-$i"; done
agree() { # PREFIX
    local args=()
    for f in "$out/$1"-*.json; do [[ -f $f ]] && args+=(--from "$f"); done
    (( ${#args[@]} > 1 )) && "$bin" compare "${args[@]}" | grep -E '^reports [0-9]+ and [0-9]+'
    true
}
echo "quick runs:"; agree quick
echo "full runs:"; agree full
echo "reports in $out"
