#!/usr/bin/env bash
# Benchmark: an auto-mode `counter` switching models under bursts while the agent is killed
# with SIGKILL and Mosquitto is restarted, alternately, every FAULT_SECS; then how many
# events were counted twice and how many acknowledged by the broker were never counted.
#
# Usage: tests/bench/autochaos.sh [AGENT_BINARY] [BURSTS] [FAULT_SECS]
#   BURSTS      bursts of 1,500 events at 1,500/s, 1.2 s of quiet after each (default 20)
#   FAULT_SECS  seconds between faults (default 1.9)
#
# The sensor (tests/bench/sensor.py) publishes QoS 1 to cut/<seq>, one topic per event, so
# an event counted twice shows as a count of 2 on its topic; it never sends a message
# again, so every duplicate the agent meets comes from the broker or itself. The
# controller's windows are short (as in tests/integration/auto.rs): each burst promotes the
# function to persistent, each quiet demotes it, so faults land before, during and after
# switches. The outputs are read by a QoS 1 subscriber with a persistent session, and
# Mosquitto (persistence on) keeps the queues across its graceful restarts.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bin="${1:-$root/target/release/edge-agent}"
bursts="${2:-20}"
fault_secs="${3:-1.9}"
[[ -x "$bin" ]] || die "no agent binary at $bin"
[[ -f "$root/modules/dist/counter.wasm" ]] || "$root/modules/build.sh" >/dev/null
echo "Machine: $(nproc) CPUs, $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $(mosquitto -h 2>/dev/null | head -1 || true)"

start_mosquitto "user root" "persistence true" "persistence_location $work/" \
    "max_queued_messages 0" "set_tcp_nodelay true"
cat >"$work/a.toml" <<TOML
[agent]
id = "chaos"
data_dir = "$work/data"
[broker]
url = "mqtt://127.0.0.1:$port"
reconnect_max_ms = 500
[state]
max_keys_per_function = 10000000
[[function]]
name = "c"
module = "$root/modules/dist/counter.wasm"
mode = "auto"
instances = 2
publish_rate = 1000000
topics = ["cut/+"]
auto = { objective = "money", tick_secs = 0.05, stable_window_secs = 0.6, panic_window_secs = 0.1, min_secs_in_model = 0.2, prices = { per_million_invocations = 1.0, per_gb_second = 0.0, per_vcpu_hour = 0.0, per_gb_hour = 0.0 } }
[function.config]
out_topic = "cutout"
TOML
mosquitto_sub -p "$port" -c -i chaos-out -q 1 -t cutout -F '%p' >"$work/out.txt" 2>/dev/null &
pids+=("$!")
start_agent() {
    "$bin" run --config "$work/a.toml" >>"$work/a.log" 2>&1 &
    agent=$!
    pids+=("$agent")
}
start_agent
sleep 1
(
    for b in $(seq 0 $((bursts - 1))); do
        python3 "$root/tests/bench/sensor.py" 127.0.0.1 "$port" 1500 1500 $((b * 100000)) "s$b" \
            "$work/acked-$b.txt" >>"$work/sensor.out" 2>/dev/null
        sleep 1.2
    done
) &
sensor=$!
kills=0 restarts=0
while kill -0 "$sensor" 2>/dev/null; do
    sleep "$fault_secs"
    if (( (kills + restarts) % 2 == 0 )); then
        kill -KILL "$agent"
        wait "$agent" 2>/dev/null || true
        start_agent
        kills=$((kills + 1))
    else
        kill -TERM "$mosquitto_pid"
        wait "$mosquitto_pid" 2>/dev/null || true
        mosquitto -c "$work/mosquitto.conf" >>"$work/mosquitto.log" 2>&1 &
        mosquitto_pid=$!
        pids+=("$mosquitto_pid")
        restarts=$((restarts + 1))
    fi
done
sleep 6
kill -TERM "$agent"
wait "$agent" || true
switches=$(grep -c "auto: switched model" "$work/a.log" || true)
echo "$bursts bursts of 1,500 events; $kills SIGKILLs of the agent, $restarts Mosquitto restarts; $switches model switches"
python3 - "$work" <<'PY'
import glob, json, sys
work = sys.argv[1]
counts = {}
for line in open(f"{work}/out.txt"):
    if line.strip():
        o = json.loads(line)
        t = int(o["topic"].split("/")[1])
        counts[t] = max(counts.get(t, 0), o["count"])
acked = set()
for f in glob.glob(f"{work}/acked-*.txt"):
    acked |= {int(x) for x in open(f).read().split()}
twice = sorted(t for t, c in counts.items() if c > 1)
lost = sorted(acked - counts.keys())
print(f"acknowledged by the broker {len(acked)}, counted {len(counts)}: "
      f"counted twice {len(twice)} {twice[:10]}, acknowledged and never counted {len(lost)} {lost[:10]}")
sys.exit(1 if twice or lost else 0)
PY
