#!/usr/bin/env bash
# Scenario: the agent restarts with its clock behind the run before (a device without a
# real-time clock, such as a Raspberry Pi, comes back at the time it last saved and keeps
# it until it reaches a time server). A persistent `counter` on Mosquitto gets EVENTS QoS 1
# events; the agent, its clock a day ahead (libfaketime), is killed with -9 in the middle,
# then started again with the real clock and left to finish. Every event must be counted
# once: the last count is EVENTS. Resends that the new run answered from the receipts of
# the old one are the agent's `replayed`.
#
# Usage: tests/bench/clockback.sh [AGENT_BINARY] [EVENTS] [RUNS]
#   AGENT_BINARY  default target/release/edge-agent; EVENTS default 30000; RUNS default 5
# Needs mosquitto, mosquitto-clients and libfaketime (Debian: faketime). Prints one line
# per run and `clockback: N of RUNS exact`; exits 1 if any run counted an event twice or
# lost one.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bin="$(realpath "${1:-$root/target/release/edge-agent}")"
events="${2:-30000}"
runs="${3:-5}"
[[ -x $bin ]] || die "no agent binary at $bin"
faketime_lib=$(find /usr/lib -name libfaketime.so.1 2>/dev/null | head -n 1)
[[ -n $faketime_lib ]] || die "libfaketime not found (Debian: apt-get install faketime)"
[[ -f $root/modules/dist/counter.wasm ]] || die "no modules/dist/counter.wasm (run modules/build.sh)"

# The count in the last output line of counts.log.
last_count() { tail -n 1 "$1" | grep -o '"count":[0-9]*' | cut -d: -f2; }

exact=0
for run in $(seq 1 "$runs"); do
    # Mosquitto keeps every queued message: its default (1000) would drop most of a burst.
    start_mosquitto 'max_queued_messages 0'
    dir="$work/run$run"
    mkdir -p "$dir"
    cat >"$dir/agent.toml" <<EOF
[agent]
id = "clockback"
data_dir = "data"
[broker]
url = "mqtt://127.0.0.1:$port"
[[function]]
name = "counter"
module = "$root/modules/dist/counter.wasm"
mode = "persistent"
topics = ["counter/#"]
publish_rate = 1000000
[function.config]
out_topic = "counts/{1..}"
EOF
    LD_PRELOAD=$faketime_lib FAKETIME="+1d" "$bin" run --config "$dir/agent.toml" >"$dir/ahead.log" 2>&1 &
    agent=$!
    pids+=("$agent")
    for _ in $(seq 1 100); do grep -q "connected and subscribed" "$dir/ahead.log" && break; sleep 0.1; done
    mosquitto_sub -p "$port" -q 1 -t 'counts/#' >"$dir/counts.log" 2>/dev/null &
    pids+=("$!")
    sleep 0.3
    "$bin" publish --broker "mqtt://127.0.0.1:$port" -t counter/x -n "$events" -q 1 --payload 1 >/dev/null 2>&1 &
    publisher=$!
    # Killed a third of the way in, or so.
    for _ in $(seq 1 600); do
        [[ $(wc -l <"$dir/counts.log") -ge $((events / 3)) ]] && break
        sleep 0.05
    done
    kill -KILL "$agent"
    wait "$agent" 2>/dev/null || true
    killed_at=$(last_count "$dir/counts.log")
    "$bin" run --config "$dir/agent.toml" >"$dir/now.log" 2>&1 &
    agent=$!
    pids+=("$agent")
    wait "$publisher"
    # Until the count stands still for 3 s.
    count="" still=0
    while [[ $still -lt 30 ]]; do
        sleep 0.1
        now=$(last_count "$dir/counts.log")
        if [[ $now == "$count" ]]; then still=$((still + 1)); else still=0 count=$now; fi
    done
    kill -TERM "$agent"
    wait "$agent" 2>/dev/null || true
    replayed=$(grep -o 'replayed=[0-9]*' "$dir/now.log" | tail -n 1 | cut -d= -f2)
    verdict=MISSED
    [[ $count == "$events" ]] && verdict=exact exact=$((exact + 1))
    echo "run $run: killed at count $killed_at, last count $count of $events, replayed ${replayed:-?}: $verdict"
    kill -KILL "$mosquitto_pid" 2>/dev/null || true
    wait "$mosquitto_pid" 2>/dev/null || true
    pkill -P $$ mosquitto_sub 2>/dev/null || true
done
echo "clockback: $exact of $runs exact"
[[ $exact == "$runs" ]]
