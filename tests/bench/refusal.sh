#!/usr/bin/env bash
# Benchmark: a broker that will not take one of the agent's outputs (docs/limits.md,
# "broker.max_packet_bytes"). Mosquitto with `max_packet_size 2000`; a persistent `counter`
# whose outputs are about 5 KB (its out_topic is 20 levels deep) beside an `echo`.
#   - refusal: 20 events to each at 50/s, side by side; prints the time from the first
#     close to the refusal, the echo's outputs (all 20 expected) and the counter's totals;
#   - qos0: an `echo` subscribed at QoS 0 (so its outputs are QoS 0, and about 5 KB) at 10
#     events/s beside the QoS 1 echo at 10/s, 50 each: the time from the first close to
#     the refusal, and the QoS 1 echo's outputs (all 50 expected);
#   - restart, restart0: the broker is stopped the moment the output connection starts
#     resending one message at a time (after QoS 1 outputs too large, then QoS 0 ones), and
#     started again without the sessions; then 100 echo events must all come back (a run
#     with fewer stalled: this is what found the race of 95402e8).
# Each RUNS times. Beside a busy agent the restart race shows more often: BUSY=1 runs
# another agent at 1,000 events/s next to it.
#
# Usage: tests/bench/refusal.sh BINARY [RUNS]   (a release build: target/release/edge-agent)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bin=$(realpath "${1:?usage: refusal.sh BINARY [RUNS]}")
runs=${2:-5}
modules="$root/modules/dist"

config() { # config DIR PORT: the agent's config
    local out
    out="out$(printf '/{1}%.0s' $(seq 20))"
    cat <<EOF
[agent]
id = "refusal"
data_dir = "$1/data"
[broker]
url = "mqtt://127.0.0.1:$2"
clean_session = false
[[function]]
name = "c"
module = "$modules/counter.wasm"
mode = "persistent"
topics = ["p/+"]
[function.config]
out_topic = "$out"
[[function]]
name = "e"
module = "$modules/echo.wasm"
topics = ["q/+"]
[function.config]
out_topic = "q-out/e"
[[function]]
name = "z"
module = "$modules/echo.wasm"
topics = ["z/+"]
qos = 0
[function.config]
out_topic = "$out"
EOF
}

# start DIR: the agent on $port, once connected; sets $agent
start() {
    config "$1" "$port" >"$1/agent.toml"
    "$bin" run --config "$1/agent.toml" >"$1/agent.log" 2>&1 &
    agent=$!
    pids+=("$agent")
    for _ in $(seq 1 100); do
        grep -q "connected and subscribed" "$1/agent.log" && return 0
        sleep 0.1
    done
    die "the agent did not connect: $(tail -5 "$1/agent.log")"
}

stop() { kill -TERM "$agent"; wait "$agent" || true; }

level=$(printf 'x%.0s' $(seq 240))

if [ "${BUSY:-0}" = 1 ]; then
    busy="$work/busy"
    mkdir -p "$busy"
    start_mosquitto
    printf '[agent]\nid = "busy"\ndata_dir = "%s/data"\n[broker]\nurl = "mqtt://127.0.0.1:%s"\n[[function]]\nname = "e"\nmodule = "%s/echo.wasm"\ntopics = ["in/+"]\n[function.config]\nout_topic = "out/e"\n' \
        "$busy" "$port" "$modules" >"$busy/agent.toml"
    "$bin" run --config "$busy/agent.toml" >"$busy/agent.log" 2>&1 &
    pids+=("$!")
    "$bin" publish --broker "mqtt://127.0.0.1:$port" --topic in/a --payload '{seq}' --qos 1 \
        --count 10000000 --rate 1000 >/dev/null 2>&1 &
    pids+=("$!")
fi

# search NAME FUNCTION QOS COUNT RATE: on a broker that takes packets up to 2000 bytes, COUNT
# events at RATE to FUNCTION (c or z: its outputs about 5 KB, at QOS) beside as many to the
# echo; prints the time from the first close to the refusal, the echo's outputs, and
# FUNCTION's totals.
search() {
    local dir="$work/$1" first found totals prefix=$2
    [ "$2" = c ] && prefix=p # the counter listens on p/+
    mkdir -p "$dir"
    start_mosquitto "max_packet_size 2000"
    mosquitto_sub -p "$port" -t 'q-out/#' -q 1 >"$dir/out.txt" &
    pids+=("$!")
    start "$dir"
    "$bin" publish --broker "mqtt://127.0.0.1:$port" --topic "$prefix/$level" --payload '{seq}' --qos "$3" \
        --count "$4" --rate "$5" >/dev/null 2>&1 &
    pids+=("$!")
    "$bin" publish --broker "mqtt://127.0.0.1:$port" --topic q/a --payload '{seq}' --qos 1 \
        --count "$4" --rate "$5" >/dev/null 2>&1
    sleep 2
    stop
    first=$(grep -m1 "connection lost\|one at a time" "$dir/agent.log" | cut -c12-26 || true)
    found=$(grep -m1 "alone in flight" "$dir/agent.log" | cut -c12-26 || true)
    totals=$(grep -o "function=$2 mode=[a-z-]* received=[0-9]* succeeded=[0-9]*" "$dir/agent.log" || true)
    echo "$1: first close $first, refused $found; echo outputs $(sort -u "$dir/out.txt" | wc -l) of $4 $totals"
    kill "$mosquitto_pid"; wait "$mosquitto_pid" 2>/dev/null || true
}

# restart NAME PREFIX QOS: the broker is stopped the moment the search starts (outputs
# about 5 KB at QOS, from the function on PREFIX/+, beside a QoS 1 echo) and started again
# without the sessions; then 100 echo events must all come back.
restart() {
    local dir="$work/$1" back
    mkdir -p "$dir"
    start_mosquitto "max_packet_size 2000"
    start "$dir"
    "$bin" publish --broker "mqtt://127.0.0.1:$port" --topic q/a --payload '{seq}' --qos 1 \
        --count 400 --rate 200 >/dev/null 2>&1 &
    pids+=("$!")
    "$bin" publish --broker "mqtt://127.0.0.1:$port" --topic "$2/$level" --payload '{seq}' --qos "$3" \
        --count 5 --rate 50 >/dev/null 2>&1 &
    pids+=("$!")
    local searching="no search seen before the broker stopped"
    for _ in $(seq 1 300); do
        grep -q "one at a time" "$dir/agent.log" && searching="the search had started" && break
        sleep 0.01
    done
    kill "$mosquitto_pid"; wait "$mosquitto_pid" 2>/dev/null || true
    mosquitto -c "$work/mosquitto.conf" >>"$work/mosquitto.log" 2>&1 &
    mosquitto_pid=$!
    pids+=("$mosquitto_pid")
    sleep 3
    mosquitto_sub -p "$port" -t 'q-out/#' -q 1 >"$dir/out.txt" &
    pids+=("$!")
    sleep 0.5
    "$bin" publish --broker "mqtt://127.0.0.1:$port" --topic q/b --payload '{seq}' --qos 1 \
        --count 100 --rate 200 >/dev/null 2>&1
    sleep 3
    stop
    back=$(wc -l <"$dir/out.txt")
    [ "$back" -eq 100 ] || stalled=$((stalled + 1))
    echo "$1: echo outputs after the restart $back of 100 ($searching)"
    kill "$mosquitto_pid"; wait "$mosquitto_pid" 2>/dev/null || true
}

echo "Machine: $(nproc) CPUs, $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
stalled=0
for run in $(seq 1 "$runs"); do
    search refusal-$run c 1 20 50
    search qos0-$run z 0 50 10

    restart restart-$run p 1
    restart restart0-$run z 0
done
echo "restart runs with fewer than 100: $stalled of $((2 * runs))"
[ "$stalled" -eq 0 ]
