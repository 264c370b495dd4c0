#!/usr/bin/env bash
# Benchmark: does one function's flood of outputs hold up another function's outputs?
# (issue 25, item 3: every function's outputs share the agent's output connection, its
# request queue and the publisher's ordering lock.)
#
# Usage: tests/bench/outputs.sh [AGENT_BINARY] [RUNS] [SECS]
#   AGENT_BINARY  default target/release/edge-agent
#   RUNS          runs of each case (default 3; medians reported)
#   SECS          seconds of paced traffic per case (default 10)
#
# One agent, two functions, QoS 1 in and out, on a fresh Mosquitto (TCP_NODELAY on):
#   quiet  `echo`, paced at 100 events/s by `edge-agent publish --rate`; each payload
#          carries its publish time ({ts_ms}), and a subscriber stamps each output as it
#          arrives: publish-to-output latency, p50 and p99, in ms.
#   loud   `misbehave` with the payload `publish-many:N`: N QoS 1 outputs per event,
#          published as fast as four `edge-agent publish` can (publish_rate lifted).
# Cases: quiet alone; beside loud with N = 0 (the same flood of events, no outputs: what
# the broker's and the agent's intake share costs); beside loud with N = 50 (a flood of
# outputs through the shared output path). Prints each with the outputs per second loud
# got out, and the verdict: quiet's p99 beside the flood of outputs within 10% (or 1 ms)
# of beside the flood without them.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bin="${1:-$root/target/release/edge-agent}"
runs="${2:-3}"
secs="${3:-10}"
[[ -x "$bin" ]] || die "no agent binary at $bin"
[[ -f "$root/modules/dist/misbehave.wasm" ]] || "$root/modules/build.sh" >/dev/null

# one_run OUTPUTS: OUTPUTS is "" (quiet alone) or loud's outputs per event; writes
# "p50_ms p99_ms outputs loud_outputs_per_s" to $work/result (run in this shell, not in
# $(...), so that the broker it starts is the one the next run stops)
one_run() {
    local many="$1" flood=0
    [[ -n $many ]] && flood=1
    # A fresh broker each run: a flood left queued in the agent's session would be the
    # next run's backlog.
    [[ -n ${mosquitto_pid:-} ]] && { kill "$mosquitto_pid" 2>/dev/null || true; wait "$mosquitto_pid" 2>/dev/null || true; }
    start_mosquitto 'set_tcp_nodelay true' 'max_queued_messages 0'
    cat >"$work/agent.toml" <<TOML
[agent]
id = "bench-outputs"
data_dir = "$work/data"
stats_interval_secs = 1
[broker]
url = "mqtt://127.0.0.1:$port"

[[function]]
name = "quiet"
module = "$root/modules/dist/echo.wasm"
topics = ["quiet/#"]
qos = 1
[function.config]
out_topic = "quiet-out"

[[function]]
name = "loud"
module = "$root/modules/dist/misbehave.wasm"
topics = ["loud/#"]
qos = 1
publish_rate = 1000000
[function.config]
out_topic = "loud-out"
TOML
    rm -rf "$work/data"
    "$bin" run --config "$work/agent.toml" >"$work/agent.log" 2>&1 &
    local agent=$!
    pids+=("$agent")
    mosquitto_sub -p "$port" -t edge-agent/bench-outputs/status -C 1 -W 20 >/dev/null
    local n=$((secs * 100))
    mosquitto_sub -p "$port" -t quiet-out -q 1 -F '%U %p' -C "$n" -W $((secs + 30)) >"$work/quiet.out" &
    local sub=$!
    local loud_sub=""
    if [[ $flood == 1 ]]; then
        # Ends on its own (-W), so that its output is written out.
        mosquitto_sub -p "$port" -t loud-out -q 1 -F '%U' -W $((secs + 1)) >"$work/loud.out" 2>/dev/null &
        loud_sub=$!
    fi
    sleep 0.3
    local floods=()
    if [[ $flood == 1 ]]; then
        for i in 1 2 3 4; do
            "$bin" publish --broker "mqtt://127.0.0.1:$port" -t "loud/$i" -q 1 -n 1000000 \
                --payload "publish-many:$many" >/dev/null 2>&1 &
            floods+=("$!")
        done
        sleep 1
    fi
    "$bin" publish --broker "mqtt://127.0.0.1:$port" -t quiet/a -q 1 -n "$n" --rate 100 \
        --payload '{ts_ms}' >/dev/null 2>&1
    wait "$sub" || true
    for p in "${floods[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    [[ -n $loud_sub ]] && { wait "$loud_sub" 2>/dev/null || true; }
    kill "$agent"; wait "$agent" 2>/dev/null || true
    python3 - "$work/quiet.out" "${loud_sub:+$work/loud.out}" >"$work/result" <<'PY'
import sys, statistics
lat = []
for line in open(sys.argv[1]):
    parts = line.split()
    if len(parts) == 2:
        lat.append(float(parts[0]) * 1000 - int(parts[1]))
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")
loud = 0.0
if len(sys.argv) > 2 and sys.argv[2]:
    ts = [float(l) for l in open(sys.argv[2]) if l.strip()]
    if len(ts) > 1:
        loud = len(ts) / (ts[-1] - ts[0])
print(f"{q(0.5):.1f} {q(0.99):.1f} {len(lat)} {loud:.0f}")
PY
}

declare -A p50s p99s loud
cases=("" 0 50)
names=("alone" "beside a flood of events without outputs" "beside a flood of 50 outputs per event")
for r in $(seq 1 "$runs"); do
    for c in 0 1 2; do
        one_run "${cases[$c]}"
        out="$(cat "$work/result")"
        echo "  run $r ${names[$c]}: p50/p99 ms, outputs, loud outputs/s: $out" >&2
        p50s[$c]+="$(cut -d' ' -f1 <<<"$out") "
        p99s[$c]+="$(cut -d' ' -f2 <<<"$out") "
        loud[$c]+="$(cut -d' ' -f4 <<<"$out") "
    done
done
python3 - "${p50s[0]}" "${p99s[0]}" "${p50s[1]}" "${p99s[1]}" "${p50s[2]}" "${p99s[2]}" "${loud[2]}" <<'PY'
import sys, statistics
m = lambda s: statistics.median(float(x) for x in s.split())
a50, a99, e50, e99, f50, f99, loud = (m(x) for x in sys.argv[1:])
print("| quiet (echo at 100 events/s, QoS 1) | publish-to-output p50 ms | p99 ms |")
print("|---|---|---|")
print(f"| alone | {a50:.1f} | {a99:.1f} |")
print(f"| beside a flood of events without outputs | {e50:.1f} | {e99:.1f} |")
print(f"| beside a flood of outputs ({loud:.0f}/s) | {f50:.1f} | {f99:.1f} |")
ok = f99 <= max(e99 * 1.1, e99 + 1.0)
print(f"\n- quiet's p99 beside a flood of outputs within 10% (or 1 ms) of beside the same flood "
      f"without outputs: {f99:.1f} against {e99:.1f} ms: {'met' if ok else 'MISSED'}")
PY
