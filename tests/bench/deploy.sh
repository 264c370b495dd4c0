#!/usr/bin/env bash
# Benchmark: a signed deployment reaches three agents under a stream (issue 28).
#
# Usage: tests/bench/deploy.sh [AGENT_BINARY] [RUNS] [EVENTS] [RATE]
#   AGENT_BINARY  default target/release/edge-agent
#   RUNS          repetitions (default 3); the median time is printed last
#   EVENTS        QoS 1 events in each run's stream (default 10000), on ten topics
#   RATE          events per second (default 500)
#
# Three agents on one Mosquitto share `echo` (`share`, `[fleet] group`, a group of each per
# run, probation off so that "applied" is the moment the new version is in force). A third of
# the way into the stream, `edge-agent deploy --wait 3` publishes a signed deployment that
# swaps the function for `misbehave` (several 16 KiB chunks); both versions answer every
# event with its number. Reports per run: the time from the start of `deploy` to all three
# agents applied, events answered (distinct), lost, answered twice, and by which version.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bin="${1:-$root/target/release/edge-agent}"
runs="${2:-3}"
events="${3:-10000}"
rate="${4:-500}"
[[ -x "$bin" ]] || { echo "error: no agent binary at $bin" >&2; exit 1; }
[[ -f "$root/modules/dist/misbehave.wasm" ]] || "$root/modules/build.sh" >/dev/null

start_mosquitto 'max_queued_messages 0'
"$bin" keygen "$work/ops.key" >"$work/ops.pub" 2>/dev/null
times=()
for run in $(seq 1 "$runs"); do
    # Each run a deployment group and a share group of its own, so that each starts from
    # echo and version 1, and no session of an earlier run's (killed) agents takes a turn
    # of the stream (Mosquitto keeps them in the share group: docs/fleet.md).
    group="site$run"
    mkdir -p "$work/r$run/bundle"
    cp "$root/modules/dist/misbehave.wasm" "$work/r$run/bundle/"
    cat >"$work/r$run/bundle/functions.toml" <<TOML
[[function]]
name = "e"
module = "misbehave.wasm"
share = "g$run"
topics = ["in/+"]
[function.config]
out_topic = "out"
TOML
    agent_pids=()
    for i in 0 1 2; do
        mkdir -p "$work/r$run/a$i"
        cat >"$work/r$run/a$i/agent.toml" <<TOML
[agent]
id = "deploy-$run-$i"
data_dir = "$work/r$run/a$i/data"
[broker]
url = "mqtt://127.0.0.1:$port"
[fleet]
group = "$group"
trusted_keys = ["$(cat "$work/ops.pub")"]
probation_secs = 0
[[function]]
name = "e"
module = "$root/modules/dist/echo.wasm"
share = "g$run"
topics = ["in/+"]
[function.config]
out_topic = "out"
TOML
        "$bin" run --config "$work/r$run/a$i/agent.toml" >>"$work/r$run/a$i/log" 2>&1 &
        agent_pids+=("$!")
        pids+=("$!")
        mosquitto_sub -p "$port" -t "edge-agent/deploy-$run-$i/status" -C 1 -W 30 >/dev/null
    done
    mosquitto_sub -p "$port" -t out -q 1 >"$work/r$run/out" &
    sub=$!
    pids+=("$sub")
    sleep 0.5
    "$bin" publish --broker "mqtt://127.0.0.1:$port" -t in/a -n "$events" --rate "$rate" \
        --payload 'slow-echo:0:{seq}' -q 1 2>/dev/null &
    pub=$!
    sleep "$(python3 -c "print($events / $rate / 3)")"
    start=$(date +%s.%N)
    "$bin" deploy --group "$group" --key "$work/ops.key" --broker "mqtt://127.0.0.1:$port" \
        --chunk-bytes 16384 --wait 3 --wait-secs 60 "$work/r$run/bundle" >/dev/null 2>"$work/r$run/deploy.err"
    took=$(python3 -c "print(f'{$(date +%s.%N) - $start:.2f}')")
    times+=("$took")
    wait "$pub"
    last=-1
    while n=$(wc -l <"$work/r$run/out"); [[ $n != "$last" ]]; do last=$n; sleep 2; done
    kill "$sub" 2>/dev/null || true
    python3 - "$work/r$run/out" "$events" "$run" "$took" <<'PY'
import sys, collections
path, n, run, took = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
seen, new = collections.Counter(), 0
for line in open(path):
    line = line.strip()
    if not line:
        continue
    old = line.startswith("slow-echo:0:")
    seen[int(line.removeprefix("slow-echo:0:"))] += 1
    new += not old
answered = len(seen)
twice = sum(c - 1 for c in seen.values())
print(f"run {run}: applied by 3 agents in {took} s; {answered} of {n} answered, "
      f"{n - answered} lost, {twice} twice, {new} by the new version")
PY
    for p in "${agent_pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
done
printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print "median time to applied on all three: " a[int((NR+1)/2)] " s"}'
