#!/usr/bin/env bash
# Benchmark: the same components in both execution models, side by side, in one agent.
#
# Usage: tests/bench/models.sh [AGENT_BINARY] [EVENTS] [RATE] [RUNS]
#   AGENT_BINARY  default target/release/edge-agent (build: cargo build --release -p edge-agent)
#   EVENTS        events per function per run (default 2000)
#   RATE          events per second per function (default 500)
#   RUNS          runs; the report gives the median of each figure (default 3)
#
# Starts Mosquitto (TCP_NODELAY) on a free port, an agent with `echo` and `counter` each
# in both models, publishes EVENTS to each function at RATE with `edge-agent publish`, and
# reads the agent's own per-function statistics from <prefix>/<id>/stats.
#
# FUNCTIONS (environment) names other components of modules/dist instead, e.g.
# FUNCTIONS="counter counter-py counter-js" (tests/bench/languages.sh); `.cwasm` beside
# the agent's config dir are not used: MODULES=DIR takes them from DIR (NAME.cwasm).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bin="${1:-$root/target/release/edge-agent}"
events="${2:-2000}"
rate="${3:-500}"
runs="${4:-3}"
[[ -x "$bin" ]] || { echo "error: no agent binary at $bin" >&2; exit 1; }
functions="${FUNCTIONS:-echo counter}"
modules="${MODULES:-}"
[[ -f "$root/modules/dist/echo.wasm" ]] || "$root/modules/build.sh" >/dev/null
module() { if [[ -n $modules ]]; then echo "$modules/$1.cwasm"; else echo "$root/modules/dist/$1.wasm"; fi; }


for run in $(seq 1 "$runs"); do
    start_mosquitto 'set_tcp_nodelay true' 'max_inflight_messages 100'
    rm -rf "$work/data"
    cat >"$work/agent.toml" <<TOML
[agent]
id = "bench"
data_dir = "$work/data"
stats_interval_secs = 1
[broker]
url = "mqtt://127.0.0.1:$port"
TOML
    for mode in on-demand persistent; do
        for fn in $functions; do
            cat >>"$work/agent.toml" <<TOML
[[function]]
name = "$fn-$mode"
module = "$(module "$fn")"
mode = "$mode"
topics = ["bench/$fn-$mode"]
queue_capacity = 1024
[function.config]
out_topic = "out/$fn-$mode"
threshold = "30"
alert_topic = "out/{1..}"
TOML
        done
    done
    "$bin" run --config "$work/agent.toml" 2>"$work/agent.log" &
    agent=$!
    pids+=("$agent")
    # Compiling interpreter-carrying components (.wasm of Python or JS) takes a while.
    for _ in $(seq 1 1800); do grep -q subscribed "$work/agent.log" && break; sleep 0.1; done
    publishers=()
    for mode in on-demand persistent; do
        for fn in $functions; do
            "$bin" publish --broker "mqtt://127.0.0.1:$port" --topic "bench/$fn-$mode" \
                --payload '{"seq":{seq},"value":31.5}' --count "$events" --rate "$rate" 2>/dev/null &
            publishers+=("$!")
        done
    done
    wait "${publishers[@]}"
    # Until every event is handled (the stats say so), at most 60 s.
    for _ in $(seq 1 60); do
        sleep 1
        timeout 5 mosquitto_sub -p "$port" -t edge-agent/bench/stats -C 1 >"$work/stats-$run.json" || true
        python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); sys.exit(0 if all(f["succeeded"]>=int(sys.argv[2]) for f in s["functions"]) else 1)' \
            "$work/stats-$run.json" "$events" 2>/dev/null && break
    done
    kill -TERM "$agent"; wait "$agent" 2>/dev/null || true
    kill "${pids[0]}" 2>/dev/null || true; wait "${pids[0]}" 2>/dev/null || true
    pids=()
done

for r in $(seq 1 "$runs"); do python3 -c 'import json,sys; print([(f["function"], f["received"], f["failed"]) for f in json.load(open(sys.argv[1]))["functions"]])' "$work/stats-$r.json"; done
python3 - "$work" "$runs" "$events" "$rate" <<'PY'
import json, statistics, sys
work, runs, events, rate = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
snaps = [json.load(open(f"{work}/stats-{r}.json"))["functions"] for r in range(1, runs + 1)]
names = [f["function"] for f in snaps[0]]
def med(name, path):
    vals = []
    for s in snaps:
        f = next(x for x in s if x["function"] == name)
        v = f
        for p in path:
            v = v[p]
        vals.append(v)
    return statistics.median(vals)
print(f"{runs} runs, {events} events per function at {rate}/s; medians of runs; times in µs")
print(f"{'function':22} {'ok':>6} {'e2e p50':>8} {'e2e p99':>8} {'inst p50':>8} {'exec p50':>8} {'cpu p50':>8} {'cpu/ev':>7} {'peak mem':>9}")
for n in names:
    ok = med(n, ["succeeded"])
    cpu_ev = med(n, ["cpu_total_us"]) / max(ok, 1)
    print(f"{n:22} {ok:>6.0f} {med(n, ['end_to_end_us','p50']):>8.0f} {med(n, ['end_to_end_us','p99']):>8.0f} "
          f"{med(n, ['instantiate_us','p50']):>8.0f} {med(n, ['execute_us','p50']):>8.0f} {med(n, ['cpu_us','p50']):>8.0f} "
          f"{cpu_ev:>7.0f} {med(n, ['peak_memory_bytes'])/1024:>8.0f}K")
PY
