#!/usr/bin/env bash
# Benchmark: a member of a shared function dies (issue 28).
#
# Usage: tests/bench/fleet.sh [AGENT_BINARY] [EVENTS] [RATE] [DOWN_SECS]
#   AGENT_BINARY  default target/release/edge-agent
#   EVENTS        QoS 1 events in the stream (default 30000), on ten topics
#   RATE          events per second (default 500)
#   DOWN_SECS     how long the killed member stays down (default 5)
#
# Three agents share `echo` (`share = "g"`), first on Mosquitto, then on the embedded
# broker of the first agent (the other two connect to it). A third of the way in, the
# third agent is killed with SIGKILL, and started again DOWN_SECS later. Reports, for each
# broker: events handled (distinct), lost, handled twice, each agent's share, and the
# longest time an event waited from publish to output (what the dead member's share
# waited).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bin="${1:-$root/target/release/edge-agent}"
events="${2:-30000}"
rate="${3:-500}"
down="${4:-5}"
[[ -x "$bin" ]] || { echo "error: no agent binary at $bin" >&2; exit 1; }
[[ -f "$root/modules/dist/echo.wasm" ]] || "$root/modules/build.sh" >/dev/null

# member I PORT EMBEDDED: writes agent I's config and starts it; its pid in agent_pid[I].
declare -A agent_pid
member() {
    local i=$1 port=$2 embedded=$3
    mkdir -p "$work/a$i"
    cat >"$work/a$i/agent.toml" <<TOML
[agent]
id = "fleet-$i"
data_dir = "$work/a$i/data"
stats_interval_secs = 1
[broker]
url = "mqtt://127.0.0.1:$port"
embedded = $embedded
allow_anonymous = true
[[function]]
name = "e"
module = "$root/modules/dist/echo.wasm"
share = "g"
topics = ["in/+"]
[function.config]
out_topic = "out"
TOML
    "$bin" run --config "$work/a$i/agent.toml" >>"$work/a$i/log" 2>&1 &
    agent_pid[$i]=$!
    pids+=("$!")
    # (The embedded broker is not listening until its agent has started.)
    for _ in $(seq 1 50); do
        mosquitto_sub -p "$port" -t "edge-agent/fleet-$i/status" -C 1 -W 20 >/dev/null 2>&1 && return
        sleep 0.2
    done
    echo "error: agent $i did not come up" >&2
    exit 1
}

run() {
    local name=$1 port=$2 first_embedded=$3
    member 0 "$port" "$first_embedded"
    member 1 "$port" false
    member 2 "$port" false
    # Output: arrival time and payload "seq publish_ms".
    mosquitto_sub -p "$port" -t out -q 1 -F '%U %p' >"$work/out" &
    local sub=$!
    pids+=("$sub")
    sleep 0.5
    "$bin" publish --broker "mqtt://127.0.0.1:$port" -t in/a -n "$events" --rate "$rate" \
        --payload '{seq} {ts_ms}' -q 1 2>/dev/null &
    local pub=$!
    sleep "$(python3 -c "print($events / $rate / 3)")"
    kill -9 "${agent_pid[2]}"
    sleep "$down"
    member 2 "$port" false
    wait "$pub"
    # Until no output for 5 s.
    local last=-1 n
    while n=$(wc -l <"$work/out"); [[ $n != "$last" ]]; do last=$n; sleep 5; done
    kill "$sub" 2>/dev/null || true
    local shares=""
    for i in 0 1 2; do
        local s
        s=$(mosquitto_sub -p "$port" -t "edge-agent/fleet-$i/stats" -C 1 -W 5 |
            python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["functions"][0]["succeeded"])')
        shares+="$s "
    done
    python3 - "$work/out" "$events" "$name" "$shares" <<'PY'
import sys, collections
path, n, name, shares = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].split()
seen = collections.Counter()
wait_max = 0
for line in open(path):
    parts = line.split()
    if len(parts) < 3:
        continue
    arrived_ms, seq, sent_ms = float(parts[0]) * 1000, int(parts[1]), int(parts[2])
    seen[seq] += 1
    wait_max = max(wait_max, arrived_ms - sent_ms)
handled = len(seen)
twice = sum(c - 1 for c in seen.values())
print(f"{name}: {handled} of {n} handled, {n - handled} lost, {twice} twice; "
      f"shares {' '.join(shares)} (the restarted member's counts only since its restart); "
      f"longest wait {wait_max / 1000:.1f} s")
PY
    for i in 0 1 2; do kill "${agent_pid[$i]}" 2>/dev/null || true; wait "${agent_pid[$i]}" 2>/dev/null || true; done
    rm -rf "$work"/a*
}

start_mosquitto 'max_queued_messages 0'
run "Mosquitto 2.0.11" "$port" false
kill "$mosquitto_pid"
run "embedded broker (rumqttd 0.20)" "$(free_port)" true
