#!/usr/bin/env bash
# Benchmark: start-up of an agent with three Python and three JavaScript functions (issue
# 25's target: at most 2 s after the first start), with and without the compile cache.
#
# Usage: tests/bench/startup.sh [RUNS] [AGENT_BINARY]
#   RUNS          warm starts after the first (default 3)
#
# The agent runs on its embedded broker with threshold-alert, echo and counter in Python
# and in JavaScript (six `.wasm` of 12-18 MB, each compiled to 40-47 MB of native code).
# A start is timed from the process's launch to its "connected and subscribed" log line.
# First: an empty data directory (every module compiled, then kept in
# <data_dir>/compiled); then RUNS starts on that directory (loaded from the cache); then
# one start with runtime.compile_cache = false (compiled again, what every start cost
# before the cache).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
runs="${1:-3}"
bin="${2:-$root/target/release/edge-agent}"
[[ -x "$bin" ]] || { echo "error: no agent binary at $bin" >&2; exit 1; }
for m in threshold-alert echo counter; do
    for l in py js; do
        [[ -f "$root/modules/dist/$m-$l.wasm" ]] || { echo "error: no $m-$l.wasm: run modules/build.sh with the guest toolchains (modules/guest-tools/install.sh)" >&2; exit 1; }
    done
done
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
{
    printf '[agent]\nid = "startup"\ndata_dir = "%s/data"\n[broker]\nurl = "mqtt://127.0.0.1:%s"\nembedded = true\n' "$work" "$port"
    for m in threshold-alert echo counter; do
        for l in py js; do
            printf '[[function]]\nname = "%s-%s"\nmodule = "%s/modules/dist/%s-%s.wasm"\ntopics = ["%s-%s/#"]\n[function.config]\nout_topic = "out/{topic}"\nalert_topic = "alerts/{topic}"\nthreshold = "30"\n' \
                "$m" "$l" "$root" "$m" "$l" "$m" "$l"
        done
    done
} >"$work/agent.toml"
start() { # LABEL [ENV...]: one start, timed to "connected and subscribed"
    local label=$1; shift
    local t0 pid
    t0=$(date +%s%N)
    env "$@" "$bin" run --config "$work/agent.toml" >"$work/log" 2>&1 &
    pid=$!
    until grep -q "connected and subscribed" "$work/log"; do
        if ! kill -0 "$pid" 2>/dev/null; then echo "$label: the agent exited:"; tail -5 "$work/log"; exit 1; fi
        sleep 0.02
    done
    local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    kill "$pid"; wait "$pid" 2>/dev/null || true
    printf '%-28s %6d ms   cache %s\n' "$label" "$ms" "$(du -sh "$work/data/compiled" 2>/dev/null | cut -f1)"
}
start "first start (compiles)"
for i in $(seq 1 "$runs"); do start "start $((i + 1)) (cache)"; done
start "cache off (compiles)" EDGE_AGENT__RUNTIME__COMPILE_CACHE=false
