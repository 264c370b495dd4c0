#!/usr/bin/env bash
# Benchmark: a distant broker. The agent reaches Mosquitto through tests/bench/delay.py,
# which delays each direction by ONE_WAY_MS (default 100: a 200 ms round trip, a broker
# across a mobile link); publishers and the subscriber that stamps the outputs talk to
# Mosquitto directly. `echo` functions answer events stamped with their publish time
# (`{ts_ms}`), so each output's latency is its arrival time less that stamp.
#   - stream-N: two echoes, each paced at RATE events/s (default 100) for 20 s: every output
#     and its latency (a round trip and a bit is the least it can be); "kept up" if all
#     arrived and the p50 is under three round trips;
#   - fast-N: one echo at 4 × RATE events/s: a queue's worth of unsettled events
#     (`queue_capacity`, 64) over the round trip is about 310 a second at 200 ms;
#   - slower-N: the stream's two echoes for twice as long, on a link 5 ms away each way that
#     gets ONE_WAY_MS away 10 s in (delay.py's SIGUSR1: Wi-Fi failing over to a mobile
#     link): whether, and when, the outputs are back to a round trip;
#   - narrow-N: a quiet echo at 5 events/s beside a flood of 1 KB outputs at 400/s, for
#     40 s, over an uplink of 200 KB/s (delay.py's UP_BYTES_PER_SEC): the flood's outputs
#     queue on the link, and the quiet one's wait behind what the flood has unconfirmed
#     (both on demand, the default; FLOOD_MODE=persistent runs the flood persistent);
#   - refusal-N, refusal0-N: one echo at 200 events/s and, 5 s in, one 5 KB output (QoS 1,
#     then QoS 0) that the broker refuses (`max_packet_size 2000`): how long the echo's
#     outputs were held, and when they were back to a round trip.
# Each RUNS times (default 3). Mosquitto keeps up to 100,000 messages queued per client
# (as the Raspberry Pi package sets it), so falling behind shows as latency, not loss.
#
# Usage: tests/bench/distant.sh BINARY [RUNS]   (ONE_WAY_MS=100 RATE=100 ROWS="stream slower fast narrow refusal refusal0" FLOOD_MODE=)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bin=$(realpath "${1:?usage: distant.sh BINARY [RUNS]}")
runs=${2:-3}
one_way=${ONE_WAY_MS:-100}
rate=${RATE:-100}
modules="$root/modules/dist"
secs=20

# echo_fn NAME FILTER OUT QOS [MODE]: one echo function's config (MODE: the default's).
echo_fn() {
    printf '[[function]]\nname = "%s"\nmodule = "%s/echo.wasm"\ntopics = ["%s"]\nqos = %s\n%s[function.config]\nout_topic = "%s"\n' \
        "$1" "$modules" "$2" "$4" "${5:+mode = \"$5\"$'\n'}" "$3"
}

# run DIR [FIRST_MS]: Mosquitto, the proxy (FIRST_MS away each way until SIGUSR1 to
# $proxy, then ONE_WAY_MS) and the agent with the functions of DIR/functions.toml; sets
# $proxy_port and $agent once the agent is connected.
run() {
    local dir=$1
    start_mosquitto "max_packet_size 2000" "max_queued_messages 100000" "set_tcp_nodelay true"
    proxy_port="$(free_port)" || die "no free port"
    UP_BYTES_PER_SEC="${up:-}" python3 "$root/tests/bench/delay.py" "$proxy_port" "$port" "${2:-$one_way}" "$one_way" 2>/dev/null &
    proxy=$!
    pids+=("$proxy")
    sleep 0.3
    { printf '[agent]\nid = "distant"\ndata_dir = "%s/data"\n[broker]\nurl = "mqtt://127.0.0.1:%s"\nclean_session = false\n' "$dir" "$proxy_port"; cat "$dir/functions.toml"; } >"$dir/agent.toml"
    "$bin" run --config "$dir/agent.toml" >"$dir/agent.log" 2>&1 &
    agent=$!
    pids+=("$agent")
    for _ in $(seq 1 100); do
        grep -q "connected and subscribed" "$dir/agent.log" && break
        sleep 0.1
    done
    grep -q "connected and subscribed" "$dir/agent.log" || die "the agent did not connect: $(tail -5 "$dir/agent.log")"
    mosquitto_sub -p "$port" -t 'out/#' -q 1 -F '%U %t %p' >"$dir/out.txt" &
    pids+=("$!")
    sleep 0.3
}

finish() { # finish: stops the agent and Mosquitto
    sleep 3
    kill -TERM "$agent"; wait "$agent" || true
    kill "$mosquitto_pid"; wait "$mosquitto_pid" 2>/dev/null || true
}

paced() { # paced TOPIC RATE: events stamped with their publish time, for $secs
    "$bin" publish --broker "mqtt://127.0.0.1:$port" --topic "$1" --payload '{ts_ms}' --qos 1 \
        --count $(($2 * secs)) --rate "$2" >/dev/null 2>&1
}

# latency FILE EXPECTED: outputs, p50 and max latency, and the seconds (from the first
# event) whose outputs took over three round trips.
latency() {
    python3 - "$1" "$2" "$one_way" <<'PY'
import sys
rows = [line.split() for line in open(sys.argv[1]) if line.strip()]
expected, rtt = int(sys.argv[2]), 2 * float(sys.argv[3])
if not rows:
    print(f"outputs 0 of {expected}")
    sys.exit()
lat = sorted(float(at) * 1000 - int(ts) for at, _, ts in rows)
t0 = min(int(ts) for _, _, ts in rows)
slow = sorted({(int(ts) - t0) // 1000 for at, _, ts in rows if float(at) * 1000 - int(ts) > 3 * rtt})
p50 = lat[len(lat) // 2]
kept = "kept up" if len(rows) == expected and p50 < 3 * rtt else "FELL BEHIND"
span = f"s {slow[0]}-{slow[-1]}" if slow else "none"
print(f"outputs {len(rows)} of {expected}, p50 {p50:.0f} ms, max {lat[-1]:.0f} ms; over 3 round trips: {span}; {kept}")
PY
}

stream() {
    local dir="$work/$1"
    mkdir -p "$dir"
    { echo_fn a 'a/+' out/a 1; echo_fn b 'b/+' out/b 1; } >"$dir/functions.toml"
    run "$dir"
    paced a/x "$rate" &
    local pa=$!
    paced b/x "$rate"
    wait "$pa"
    finish
    echo "$1: two echoes at $rate/s each: $(latency "$dir/out.txt" $((2 * rate * secs)))"
}

slower() {
    local dir="$work/$1"
    mkdir -p "$dir"
    { echo_fn a 'a/+' out/a 1; echo_fn b 'b/+' out/b 1; } >"$dir/functions.toml"
    run "$dir" 5
    local secs=$((2 * secs))
    paced a/x "$rate" &
    local pa=$!
    paced b/x "$rate" &
    local pb=$!
    sleep 10
    kill -USR1 "$proxy"
    wait "$pa" "$pb"
    finish
    echo "$1: two echoes at $rate/s each, the link 5 ms away each way, ${one_way} ms from 10 s on: $(latency "$dir/out.txt" $((2 * rate * secs)))"
}

narrow() {
    local dir="$work/$1" up=200000 secs=$((2 * secs)) payload
    mkdir -p "$dir"
    { echo_fn f 'f/+' out/f 1 "${FLOOD_MODE:-}"; echo_fn q 'q/+' out/q 1; } >"$dir/functions.toml"
    run "$dir"
    payload=$(printf 'x%.0s' $(seq 1000))
    "$bin" publish --broker "mqtt://127.0.0.1:$port" --topic f/x --payload "$payload" --qos 1 \
        --count $((400 * secs)) --rate 400 >/dev/null 2>&1 &
    local pf=$!
    paced q/x 5
    kill "$pf" 2>/dev/null || true
    wait "$pf" || true
    finish
    grep ' out/q ' "$dir/out.txt" >"$dir/quiet.txt" || true
    echo "$1: a quiet echo at 5/s beside a flood of 1 KB outputs at 400/s over a $up B/s uplink: $(latency "$dir/quiet.txt" $((5 * secs))); the flood's outputs: $(grep -c ' out/f ' "$dir/out.txt")"
}

fast() {
    local dir="$work/$1"
    mkdir -p "$dir"
    echo_fn a 'a/+' out/a 1 >"$dir/functions.toml"
    run "$dir"
    paced a/x $((4 * rate))
    finish
    echo "$1: one echo at $((4 * rate))/s: $(latency "$dir/out.txt" $((4 * rate * secs)))"
}

refusal() { # refusal NAME QOS
    local dir="$work/$1" deep level
    mkdir -p "$dir"
    deep="out/big$(printf '/{1}%.0s' $(seq 20))"
    level=$(printf 'x%.0s' $(seq 240))
    { echo_fn e 'e/+' out/e 1; echo_fn big 'big/+' "$deep" "$2"; } >"$dir/functions.toml"
    run "$dir"
    paced e/x 200 &
    local pe=$!
    sleep 5
    "$bin" publish --broker "mqtt://127.0.0.1:$port" --topic "big/$level" --payload x --qos "$2" \
        --count 1 >/dev/null 2>&1
    wait "$pe"
    finish
    grep -v ' out/big' "$dir/out.txt" >"$dir/echo.txt" || true
    echo "$1: one refused QoS $2 output beside an echo at 200/s: $(latency "$dir/echo.txt" $((200 * secs)))"
}

echo "Machine: $(nproc) CPUs, $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); broker ${one_way} ms away each way"
rows=${ROWS:-stream slower fast narrow refusal refusal0}
for run in $(seq 1 "$runs"); do
    for row in $rows; do
        case $row in
            refusal) refusal "refusal-$run" 1 ;;
            refusal0) refusal "refusal0-$run" 0 ;;
            *) "$row" "$row-$run" ;;
        esac
    done
done
