#!/usr/bin/env bash
# Benchmark: shadows on live traffic (issue 27).
#
# Usage: [CASES="1 2 3"] tests/bench/shadow.sh [AGENT_BINARY] [RUNS]
#   AGENT_BINARY  default target/release/edge-agent
#   RUNS          runs of each isolation case (default 3; the median is reported)
#   CASES         which of the cases below to run (default all)
#   SHADOW_EXTRA  appended to case 2's shadow tables, e.g. 'max_cpu_percent = 100'
#   ISO_RATE      case 2 paced at this many events/s in all (four publishers at a quarter
#                 each, 10 s of events) instead of as fast as they can: the p99 of a
#                 moderate rate, where it is not the queue's length at saturation
#
# Starts Mosquitto (TCP_NODELAY) on a free port and, in turn:
#
# 1. The mismatch ratio. `threshold-alert` alerting above 89 with a shadow alerting above
#    79 (`ignore = ["threshold"]`), 10,000 events with values drawn uniformly from 0 to 99:
#    the two differ on the values 80 to 89, 10% of the events by design (1,000 expected,
#    a binomial spread of about 30). Prints the shadow's ratio.
# 2. Isolation. `echo` alone, then with a shadow (`misbehave`) that traps on every event
#    (the payload `panic`), then with one that runs to its timeout on every event (`loop`,
#    timeout_ms = 200): 20,000 QoS 1 events published as fast as four `edge-agent
#    publish` can, the time until the last output arrives, and the function's end-to-end
#    p99 from its stats. `publish_rate` is lifted (its default, 1,000 messages/s, would
#    be the rate measured). Prints the median of RUNS runs of each, and the shadow's counts.
# 3. The live model comparison against `compare`. `compare` at a steady 100 events/s,
#    then `echo` persistent with an on-demand shadow of itself and on demand with a
#    persistent shadow, 1,000 events paced at 100/s: each model's median call CPU by
#    `compare` and as the shadow, RUNS times.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bin="${1:-$root/target/release/edge-agent}"
runs="${2:-3}"
[[ -x "$bin" ]] || { echo "error: no agent binary at $bin" >&2; exit 1; }
[[ -f "$root/modules/dist/misbehave.wasm" ]] || "$root/modules/build.sh" >/dev/null

start_mosquitto 'set_tcp_nodelay true' 'max_queued_messages 100000'

# start FUNCTION_TOML: writes the config and starts the agent; waits until it is online.
start() {
    rm -rf "$work/data"
    cat >"$work/agent.toml" <<TOML
[agent]
id = "bench-shadow"
data_dir = "$work/data"
stats_interval_secs = 1
[broker]
url = "mqtt://127.0.0.1:$port"
$1
TOML
    "$bin" run --config "$work/agent.toml" >"$work/agent.log" 2>&1 &
    agent=$!
    pids+=("$agent")
    mosquitto_sub -p "$port" -t edge-agent/bench-shadow/status -C 1 -W 20 >/dev/null
}
stop() { kill "$agent"; wait "$agent" 2>/dev/null || true; }
# report FUNCTION: the function's last stats snapshot as JSON (after a report interval).
report() {
    sleep 1.5
    mosquitto_sub -p "$port" -t edge-agent/bench-shadow/stats -C 1 -W 10 |
        python3 -c "import json,sys; r=json.load(sys.stdin); print(json.dumps([f for f in r['functions'] if f['function']=='$1'][0]))"
}

want() { [[ " ${CASES:-1 2 3} " == *" $1 "* ]]; }

if want 1; then
echo "== 1. mismatch ratio: 10,000 events, version 2 differs on 10% by design"
start "[[function]]
name = \"alert\"
module = \"$root/modules/dist/threshold-alert.wasm\"
topics = [\"s/+/t\"]
[function.config]
threshold = \"89\"
alert_topic = \"alerts/{topic}\"
[function.shadow]
ignore = [\"threshold\"]
queue_capacity = 20000
config = { threshold = \"79\", alert_topic = \"alerts/{topic}\" }"
python3 -c '
import random
for i in range(10000):
    print("{\"value\": %d}" % random.randrange(100))' >"$work/values"
by_design=$(python3 -c "import sys; print(sum(1 for l in open('$work/values') if 80 <= int(l.split(':')[1].strip(' }\n')) <= 89))")
mosquitto_pub -p "$port" -q 1 -t s/k/t -l <"$work/values"
for _ in $(seq 1 60); do
    n=$(report alert | python3 -c 'import json,sys; s=json.load(sys.stdin)["shadow"]; print(s["matches"]+s["mismatches"])')
    [[ "$n" == 10000 ]] && break
done
report alert | python3 -c "
import json,sys
s=json.load(sys.stdin)['shadow']
print(f\"compared {s['matches']+s['mismatches']}, mismatches {s['mismatches']} (by design {$by_design}): \"
      f\"ratio {s['mismatch_ratio']*100:.2f}% against {$by_design/100:.2f}%; skipped {s['skipped']}\")"
stop

fi

if want 2; then
echo "== 2. isolation: echo's rate and p99 alone and beside a hostile shadow (median of $runs)"
n=20000 pace=()
if [[ -n ${ISO_RATE:-} ]]; then
    n=$((ISO_RATE * 10)) pace=(--rate "$((ISO_RATE / 4))")
    echo "   paced: $ISO_RATE events/s, $n events"
fi
# case NAME PAYLOAD SHADOW_TOML
case_run() {
    local name="$1" payload="$2" shadow="$3" out=()
    for r in $(seq 1 "$runs"); do
        start "[[function]]
name = \"e\"
module = \"$root/modules/dist/echo.wasm\"
topics = [\"in\"]
timeout_ms = 200
publish_rate = 1000000
[function.config]
out_topic = \"out\"
$shadow"
        mosquitto_sub -p "$port" -t out -q 1 -C "$n" -W 120 >/dev/null &
        local sub=$!
        sleep 0.3
        local t0; t0=$(date +%s.%N)
        for _ in 1 2 3 4; do
            "$bin" publish --broker "mqtt://127.0.0.1:$port" -t in -n $((n / 4)) "${pace[@]}" --payload "$payload" -q 1 2>/dev/null &
        done
        wait "$sub"
        local t1; t1=$(date +%s.%N)
        local totals; totals=$(report e)
        out+=("$(python3 -c "
import json,sys
t=json.loads(sys.argv[1]); s=t.get('shadow') or {}
rate=$n/($t1-$t0)
print(f\"{rate:.0f} {t['end_to_end_us']['p99']} {s.get('shadow_failed','-')} {s.get('skipped','-')}\")" "$totals")")
        stop
    done
    printf '%s\n' "${out[@]}" | python3 -c "
import sys,statistics
rows=[l.split() for l in sys.stdin]
rate=statistics.median(float(r[0]) for r in rows); p99=statistics.median(int(r[1]) for r in rows)
print(f'$name: {rate:.0f} events/s, p99 {p99/1000:.2f} ms (runs: ' + ', '.join(f'{r[0]}/s p99 {int(r[1])/1000:.2f} ms shadow-failed {r[2]} skipped {r[3]}' for r in rows) + ')')"
}
case_run "alone" "panic" ""
case_run "shadow traps on every event" "panic" "[function.shadow]
module = \"$root/modules/dist/misbehave.wasm\"
config = { out_topic = \"out\" }
${SHADOW_EXTRA:-}"
case_run "shadow runs to its timeout (200 ms) on every event" "loop" "[function.shadow]
module = \"$root/modules/dist/misbehave.wasm\"
config = { out_topic = \"out\" }
${SHADOW_EXTRA:-}"

fi

if want 3; then
echo "== 3. the live model comparison against compare's, echo at 100 events/s"
# Per run: `edge-agent compare` at a steady 100 events/s (its own agents, the same
# broker), then `echo` persistent with an on-demand shadow of itself and on demand with a
# persistent shadow, 1,000 events paced at 100/s. The figure is the median CPU of a call
# (instantiation included): compare's `agent_call_cpu_p50_us` for each model, the
# shadow's `cpu_us_p50` for the model it runs in. Means are printed beside them.
cat >"$work/compare.toml" <<TOML
duration_secs = 10
qos = 1
sensors = 4
payload = '{"seq":{seq},"ts_ms":{ts_ms},"sensor":"{sensor}","value":31.5}'
[traffic]
pattern = "steady"
rate = 100
[[function]]
name = "echo"
module = "$root/modules/dist/echo.wasm"
[function.config]
out_topic = "compare/out/{topic}"
TOML
live_run() { # PRIMARY_MODE SHADOW_MODE: prints "shadow_p50 shadow_mean primary_p50 skipped"
    start "[[function]]
name = \"e\"
module = \"$root/modules/dist/echo.wasm\"
mode = \"$1\"
topics = [\"in\"]
[function.config]
out_topic = \"out\"
[function.shadow]
mode = \"$2\""
    "$bin" publish --broker "mqtt://127.0.0.1:$port" -t in -n 1000 --rate 100 \
        --payload '{"seq":1,"ts_ms":1764900000000,"sensor":"sensor-0","value":31.5}' -q 1 >/dev/null 2>&1
    local r
    for _ in $(seq 1 20); do
        r=$(report e)
        [[ $(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["shadow"]["shadow"]["events"])' "$r") -ge 1000 ]] && break
    done
    python3 -c '
import json,sys
f=json.loads(sys.argv[1]); s=f["shadow"]
print(s["shadow"]["cpu_us_p50"], "%.1f" % s["shadow"]["cpu_us_per_event"], f["cpu_us"]["p50"], s["skipped"])' "$r"
    stop
}
for r in $(seq 1 "$runs"); do
    "$bin" compare --config "$work/compare.toml" --repeat 1 --broker "mqtt://127.0.0.1:$port" \
        --json "$work/compare.json" >"$work/compare.log" 2>&1 ||
        { echo "compare failed:"; tail -20 "$work/compare.log"; exit 1; }
    read -r cp co < <(python3 -c "
import json
m={x['model']: x['agent_call_cpu_p50_us']['median'] for x in json.load(open('$work/compare.json'))['functions'][0]['models']}
print(m['persistent'], m['on-demand'])")
    read -r so som fp skip1 < <(live_run persistent on-demand)
    read -r sp spm fo skip2 < <(live_run on-demand persistent)
    python3 -c "
cp,co,so,som,fp,sp,spm,fo=$cp,$co,$so,$som,$fp,$sp,$spm,$fo
d=lambda a,b: f'{(a-b)/b*100:+.0f}%'
ok=lambda a,b: 'within 20%' if abs(a-b)/b <= 0.2 else 'MISSED'
print(f'run $r: on demand: compare {co:.0f} µs, as the shadow {so} µs ({d(so,co)}, {ok(so,co)}; mean {som}), '
      f'as the function {fo} µs; persistent: compare {cp:.0f} µs, as the shadow {sp} µs ({d(sp,cp)}, {ok(sp,cp)}; mean {spm}), '
      f'as the function {fp} µs; on demand / persistent: compare {co/cp:.2f}, live {so/fp:.2f} and {fo/sp:.2f}; skipped $skip1, $skip2')"
done
fi
