#!/usr/bin/env bash
# A CPU flame graph of the agent handling a burst of the `threshold-alert` job (or, with
# JOB=counter, of the stateful `counter`; with JOB=echo, of the stateless `echo`), or,
# with RATE=N, the same events paced at N a second (the moderate rates of issue 25).
#
# Usage: [JOB=threshold|counter|echo] [RATE=N] tests/bench/flamegraph.sh AGENT_BINARY MODE OUT.svg [EVENTS] [QOS]
#   (the threshold job's alerts go at QOS, as in throughput.sh; ALERT_QOS=1 for the QoS 1
#   alerts of the flame graphs before 2026-12-07)
#   AGENT_BINARY  an agent built with symbols, e.g.
#                 CARGO_PROFILE_RELEASE_STRIP=false CARGO_TARGET_DIR=target-prof \
#                     cargo build --release -p edge-agent
#                 (the release profile strips them; the code is otherwise the same)
#   MODE          persistent | on-demand
#   EVENTS        events published as fast as the broker takes them (default 20000)
#   QOS           0 or 1 (default 1)
#
# Needs perf (Debian: linux-perf) and inferno (cargo install inferno). Starts Mosquitto on
# a free port, the agent with one `threshold-alert` function, records the agent process
# with `perf record --call-graph dwarf` from the first event to the last output, and
# folds the stacks into OUT.svg (and OUT.folded next to it, for diffs). With RATE, it also
# prints what the agent did per event meanwhile: context switches (perf's software
# counters, summed over its threads) and CPU time.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bin="${1:?agent binary}"
mode="${2:?persistent or on-demand}"
out="${3:?output .svg}"
events="${4:-20000}"
qos="${5:-1}"
job="${JOB:-threshold}"
case $job in
    threshold) module=threshold-alert filter='sensors/+/temperature' out_filter='alerts/#'
        cfg=$'threshold = "30"\nalert_topic = "alerts/{1..}"\n'"alert_qos = \"${ALERT_QOS:-$qos}\"" ;;
    counter) module=counter filter='sensors/#' out_filter='counts/#' cfg='out_topic = "counts/{1..}"' ;;
    echo) module=echo filter='sensors/#' out_filter='echoed/#' cfg='out_topic = "echoed/{topic}"' ;;
    *) echo "error: JOB is threshold, counter or echo" >&2; exit 64 ;;
esac
for c in perf inferno-collapse-perf inferno-flamegraph mosquitto mosquitto_sub; do
    command -v "$c" >/dev/null || { echo "error: $c not found" >&2; exit 1; }
done
start_mosquitto 'max_queued_messages 0'
cat >"$work/agent.toml" <<TOML
[agent]
id = "flame-$$"
data_dir = "$work/data"
[broker]
url = "mqtt://127.0.0.1:$port"
[[function]]
name = "$job"
module = "$root/modules/dist/$module.wasm"
mode = "$mode"
topics = ["$filter"]
qos = $qos
publish_rate = 1000000
[function.config]
$cfg
TOML
"$bin" run --config "$work/agent.toml" 2>"$work/agent.log" &
agent=$!
pids+=("$agent")
timeout 30 mosquitto_sub -p "$port" -t "edge-agent/flame-$$/status" -C 1 >/dev/null
mosquitto_sub -p "$port" -q "$qos" -t "$out_filter" -C "$events" -W 120 >/dev/null &
sub=$!
pids+=("$sub")
rate="${RATE:-}"
perf record -q -F 999 --call-graph dwarf,16384 -p "$agent" -o "$work/perf.data" 2>/dev/null &
perf_pid=$!
if [[ -n $rate ]]; then
    perf stat -e context-switches,cpu-migrations,task-clock -p "$agent" -o "$work/stat.txt" 2>/dev/null &
    stat_pid=$!
fi
# switches THREAD...: each thread's name and voluntary + involuntary context switches.
switches() {
    for t in /proc/"$agent"/task/*; do
        printf '%s %s\n' "$(tr ' ' _ <"$t/comm")" \
            "$(awk '/ctxt_switches/ { s += $2 } END { print s }' "$t/status")"
    done | sort
}
sleep 0.5
switches >"$work/switches0"
ticks0=$(awk '{ print $14 + $15 }' "/proc/$agent/stat")
for i in 1 2 3 4; do
    pace=()
    [[ -n $rate ]] && pace=(--rate "$(((rate + 3) / 4))")
    "$bin" publish --broker "mqtt://127.0.0.1:$port" --topic "sensors/s$i/temperature" \
        --payload '{"value": 31.5}' --count "$((events / 4))" --qos "$qos" "${pace[@]}" >/dev/null 2>&1 &
    pids+=("$!")
done
wait "$sub" || true
switches >"$work/switches1"
ticks1=$(awk '{ print $14 + $15 }' "/proc/$agent/stat")
kill -INT "$perf_pid"
wait "$perf_pid" || true
if [[ -n $rate ]]; then
    kill -INT "$stat_pid"
    wait "$stat_pid" || true
    hz=$(getconf CLK_TCK)
    awk -v n="$events" -v t="$((ticks1 - ticks0))" -v hz="$hz" '
        /context-switches|cpu-migrations/ { gsub(",", "", $1); printf "%s per event: %.2f\n", $2, $1 / n }
        END { printf "CPU per event: %.0f µs (user+system ticks, perf running alongside)\n", t / hz * 1e6 / n }' "$work/stat.txt"
    echo "context switches per event, by thread (threads of the same name summed):"
    join -a 2 -e 0 -o 2.1,1.2,2.2 <(awk '{ s[$1] += $2 } END { for (k in s) print k, s[k] }' "$work/switches0" | sort) \
        <(awk '{ s[$1] += $2 } END { for (k in s) print k, s[k] }' "$work/switches1" | sort) |
        awk -v n="$events" '$3 > $2 { printf "  %-20s %.2f\n", $1, ($3 - $2) / n }'
fi
perf script -i "$work/perf.data" 2>/dev/null | inferno-collapse-perf >"${out%.svg}.folded"
inferno-flamegraph --title "edge-agent, $mode, $module, $events events at QoS $qos${rate:+, $rate/s}" \
    <"${out%.svg}.folded" >"$out"
echo "$out"
