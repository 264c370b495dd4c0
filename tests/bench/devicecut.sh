#!/usr/bin/env bash
# Benchmark: a power cut of the whole device, the agent and Mosquitto together (the usual
# Raspberry Pi set-up), and how many events the agent then counts twice.
#
# Usage: tests/bench/devicecut.sh [AGENT_BINARY] [RATE] [AUTOSAVE] [AFTER_SAVE] [RUNS]   (as root:
#        Mosquitto drops to its own user, which must own its persistence folder)
#   RATE        QoS 1 events a second from a sensor "on another host" (default 3000)
#   AUTOSAVE    Mosquitto's autosave_interval, seconds (default 30)
#   AFTER_SAVE  seconds from Mosquitto's save to the cut (default 3.5)
#   RUNS        default 3
# KEEP=DIR keeps each run's logs and files in DIR.
#
# Mosquitto (persistence on, as Debian has it) keeps its sessions in memory and writes them
# to disk every `autosave_interval` s (1800 by default) and when it stops. A cut makes it
# start again from its last save: it sends the agent again what was in flight then (DUP=1)
# and what it had queued (as new messages). The agent's receipts recognise a resend (DUP=1)
# by its packet id and checksum while no newer message has taken that packet id, that is
# for 65,535 messages: AFTER_SAVE × RATE under 65,535 is the case `autosave_interval 60` in
# cross/deb/mosquitto.conf makes usual up to about 1,000 events a second; over it is
# Mosquitto's default. The sensor (tests/bench/sensor.py) publishes to cut/<seq>, so that
# the `counter` (persistent, publish_rate raised above RATE) shows an event counted twice
# as a count of 2 on its topic. Each run prints the outputs after the cut, the events
# counted twice, and the agent's `replayed` (resends recognised).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bin="${1:-$root/target/release/edge-agent}"
rate="${2:-3000}"
autosave="${3:-30}"
after="${4:-3.5}"
runs="${5:-3}"
[[ -x "$bin" ]] || die "no agent binary at $bin"
[[ $(id -u) == 0 ]] || die "run as root (Mosquitto's persistence folder is given to its user)"
[[ -f "$root/modules/dist/counter.wasm" ]] || "$root/modules/build.sh" >/dev/null
# The cut comes AFTER_SAVE s after Mosquitto's first autosave; the sensor starts 2 s after
# Mosquitto and runs 20 s past the cut.
cut_at=$(python3 -c "print($autosave + $after - 2)")
n=$(python3 -c "print(int(($autosave + $after + 18) * $rate))")
echo "Machine: $(nproc) CPUs, $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $(mosquitto -h 2>/dev/null | head -1 || true)"
echo "rate $rate/s, autosave_interval $autosave s, cut $after s after the save ($(python3 -c "print(int($after * $rate))") messages)"
for run in $(seq 1 "$runs"); do
    w="$work/run$run"
    mkdir -p "$w/mq"
    # Mosquitto runs as its own user: it must reach its folder (mktemp's is root's alone).
    chmod a+x "$work" "$w"
    chown mosquitto: "$w/mq" 2>/dev/null || chmod 777 "$w/mq"
    port="$(free_port)"
    printf '%s\n' "listener $port 127.0.0.1" "allow_anonymous true" "persistence true" \
        "persistence_location $w/mq/" "autosave_interval $autosave" \
        "max_queued_messages 100000" "max_queued_bytes 33554432" >"$w/m.conf"
    cat >"$w/a.toml" <<TOML
[agent]
id = "cut"
data_dir = "$w/data"
[broker]
url = "mqtt://127.0.0.1:$port"
[state]
max_keys_per_function = 10000000
[[function]]
name = "counter"
module = "$root/modules/dist/counter.wasm"
mode = "persistent"
publish_rate = 1000000
topics = ["cut/+"]
[function.config]
out_topic = "cutout"
TOML
    mosquitto -c "$w/m.conf" >"$w/m.log" 2>&1 &
    mq=$!
    sleep 0.5
    "$bin" run --config "$w/a.toml" >"$w/a.log" 2>&1 &
    agent=$!
    sleep 1.5
    python3 "$root/tests/bench/sensor.py" 127.0.0.1 "$port" "$n" "$rate" >"$w/sensor.out" 2>"$w/sensor.err" &
    sensor=$!
    pids+=("$sensor")
    sleep "$cut_at"
    kill -9 "$mq" "$agent"
    wait "$mq" "$agent" 2>/dev/null || true
    if ! grep -q "Saving in-memory database" "$w/m.log" || grep -q "Error saving" "$w/m.log"; then
        die "Mosquitto did not save before the cut: $(tail -3 "$w/m.log")"
    fi
    mosquitto -c "$w/m.conf" >>"$w/m.log" 2>&1 &
    mq=$!
    pids+=("$mq")
    sleep 0.3
    mosquitto_sub -p "$port" -t cutout -q 1 -F '%p' >"$w/out.txt" &
    pids+=("$!")
    sleep 0.3
    "$bin" run --config "$w/a.toml" >"$w/a2.log" 2>&1 &
    agent=$!
    wait "$sensor"
    sleep 5
    kill "$agent"
    wait "$agent" || true
    python3 - "$w/out.txt" "$w/a2.log" "$run" "$(cat "$w/sensor.out")" <<'PY'
import json, re, sys
outs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
twice = [o["topic"] for o in outs if o["count"] > 1]
log = open(sys.argv[2]).read()
replayed = re.findall(r"function totals .*replayed=(\d+)", log)
if "session_present=true" not in log:
    sys.exit(f"run {sys.argv[3]}: Mosquitto did not restore the agent's session from its save")
print(f"run {sys.argv[3]}: outputs after the cut {len(outs)}, counted twice {len(twice)}, "
      f"replayed {replayed[0] if replayed else '?'}; sensor: {sys.argv[4]}")
PY
    kill "$mq" 2>/dev/null || true
    [[ -z ${KEEP:-} ]] || cp -r "$w" "$KEEP/run$run"
done
