#!/usr/bin/env bash
# Benchmark: `mode = "auto"` switching under a stream, checked event by event (issue 26).
#
# Usage: tests/bench/auto.sh [AGENT_BINARY] [STEPS] [RATE]
#   AGENT_BINARY  default target/release/edge-agent
#   STEPS         bursts (each promotes, and the quiet after it demotes: 2 switches each;
#                 default 12, so 24 switches)
#   RATE          events per second during a burst, over four topics (default 1000)
#
# Starts Mosquitto (TCP_NODELAY) on a free port and an agent with the `counter` example in
# `mode = "auto"` (objective cpu, 2 instances, windows scaled down: tick 0.05 s, stable
# window 0.5 s, panic 0.1 s, least time in a model 0.2 s). Each step publishes RATE
# events/s for 1 s on four topics, then nothing for 1 s. `counter` writes each topic's
# count to the state store and caches it in a persistent instance's memory, so a switch
# that lost, repeated or reordered an event, or kept a stale instance, shows as a wrong
# count: each topic's outputs must read 1, 2, ..., N in the order they came. Then an agent
# with the default windows idles 30 s on demand and runs 30 s at one event a second
# (promoted), and the script reports the process's CPU over each (what the controller
# and the idle checks cost) against an agent with the same function on demand.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bin="${1:-$root/target/release/edge-agent}"
steps="${2:-12}"
rate="${3:-1000}"
[[ -x "$bin" ]] || { echo "error: no agent binary at $bin" >&2; exit 1; }
[[ -f "$root/modules/dist/counter.wasm" ]] || "$root/modules/build.sh" >/dev/null

start_mosquitto 'set_tcp_nodelay true' 'max_inflight_messages 100'

# agent MODE EXTRA: writes the config and starts the agent; sets $agent to its pid.
agent() {
    rm -rf "$work/data"
    cat >"$work/agent.toml" <<TOML
[agent]
id = "bench-auto"
data_dir = "$work/data"
stats_interval_secs = 1
[broker]
url = "mqtt://127.0.0.1:$port"
[[function]]
name = "c"
module = "$root/modules/dist/counter.wasm"
mode = "$1"
topics = ["in/+"]
$2
[function.config]
out_topic = "out/c"
TOML
    "$bin" run --config "$work/agent.toml" >"$work/agent-$1.log" 2>&1 &
    agent=$!
    pids+=("$agent")
    for _ in $(seq 1 100); do
        grep -q 'function ready' "$work/agent-$1.log" 2>/dev/null && sleep 0.5 && return 0
        sleep 0.1
    done
    echo "error: the agent did not start:" >&2
    cat "$work/agent-$1.log" >&2
    exit 1
}
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
hz="$(getconf CLK_TCK)"

agent auto 'instances = 2
auto = { objective = "cpu", tick_secs = 0.05, stable_window_secs = 0.5, panic_window_secs = 0.1, min_secs_in_model = 0.2 }'
mosquitto_sub -p "$port" -t 'out/c' -q 1 >"$work/out.txt" &
sub=$!
pids+=("$sub")
sleep 0.3

echo "== $steps steps: $rate events/s for 1 s on 4 topics, then 1 s quiet"
python3 - "$port" "$steps" "$rate" <<'PY'
import subprocess, sys, time
port, steps, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
pubs = [subprocess.Popen(["mosquitto_pub", "-p", port, "-q", "1", "-t", f"in/{t}", "-l"],
                         stdin=subprocess.PIPE, text=True, bufsize=1) for t in range(4)]
n = 0
for step in range(steps):
    start = time.monotonic()
    for i in range(rate):
        due = start + i / rate
        while time.monotonic() < due:
            time.sleep(max(0.0, min(0.001, due - time.monotonic())))
        pubs[i % 4].stdin.write(f"{step}-{i}\n")
        n += 1
    time.sleep(1.0)
for p in pubs:
    p.stdin.close()
    p.wait()
print(f"published {n}")
PY
want=$((steps * rate))
for _ in $(seq 1 300); do
    [[ $(wc -l <"$work/out.txt") -ge $want ]] && break
    sleep 0.1
done
sleep 1
switches_up=$(grep -c 'auto: switched model.*to="\?persistent' "$work/agent-auto.log" || true)
switches_down=$(grep -c 'auto: switched model.*to="\?on-demand' "$work/agent-auto.log" || true)
python3 - "$work/out.txt" "$rate" "$steps" "$switches_up" "$switches_down" <<'PY'
import json, sys
path, rate, steps, up, down = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
counts = {}
for line in open(path):
    j = json.loads(line)
    counts.setdefault(j["topic"], []).append(j["count"])
bad = 0
for t in sorted(counts):
    got = counts[t]
    want = list(range(1, rate * steps // 4 + 1))
    lost = len(set(want) - set(got))
    twice = len(got) - len(set(got))
    ordered = all(a < b for a, b in zip(got, got[1:]))
    print(f"{t}: {len(got)} outputs, lost {lost}, handled twice {twice}, in order {ordered}")
    bad += lost + twice + (not ordered)
print(f"switches: {up} to persistent, {down} to on demand ({up + down} in all)")
print("RESULT:", "ok" if bad == 0 and len(counts) == 4 else "FAILED", f"({up + down} switches)")
PY
grep 'auto: switched model' "$work/agent-auto.log" | head -2

echo "== the controller's cost: process CPU over 30 s"
measure() { # measure LABEL PACE: CPU % of one core over 30 s, one event each PACE s (0: none)
    local t0 t1 ticks0 ticks1
    ticks0=$(cpu_ticks "$agent"); t0=$(date +%s.%N)
    if [[ $2 == 0 ]]; then sleep 30; else
        for i in $(seq 1 30); do mosquitto_pub -p "$port" -q 1 -t in/0 -m "idle-$i"; sleep "$2"; done
    fi
    ticks1=$(cpu_ticks "$agent"); t1=$(date +%s.%N)
    python3 -c "print(f'$1: {($ticks1 - $ticks0) / $hz / ($t1 - $t0) * 100:.3f}% of a core')"
}
# The default windows and tick (2 s) from here on.
stop_agent() { kill "$agent" 2>/dev/null || true; wait "$agent" 2>/dev/null || true; }
stop_agent
agent auto 'instances = 2'
measure "auto (defaults), idle (on demand)" 0
measure "auto (defaults), 1 event/s (persistent)" 1
stop_agent
agent on-demand ""
measure "on-demand, idle" 0
measure "on-demand, 1 event/s" 1
