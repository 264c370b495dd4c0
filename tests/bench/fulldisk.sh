#!/usr/bin/env bash
# Benchmark: what a full disk costs the functions that do not write state (issue 23's
# target: their throughput and p99 within 10% of a healthy disk's).
#
# Usage: tests/bench/fulldisk.sh [RATE] [SECONDS] [RUNS] [AGENT_BINARY]   (as root: mounts a tmpfs)
#   RATE     events/s to each of `echo` (stateless) and `counter` (stateful) (default 300)
#   SECONDS  length of each phase (default 20)
#   RUNS     runs; the report gives each run and the median (default 3)
#
# One agent with `echo` and `counter` (both on demand, QoS 1) on Mosquitto, its data
# directory on a 128 MiB tmpfs. Per run, three phases of SECONDS each with both functions
# fed at RATE: the disk healthy; the disk filled to the last byte by another file (counter
# pauses, echo should not notice); the file deleted (counter resumes and catches up). From
# the agent's stats topic (one report a second): echo's handled events/s and its
# end-to-end p99 per second, medians over each phase. At the end: counter's count against
# the events sent to it, and the dead letters (there must be none).
set -euo pipefail
bench_cleanup() { umount "$work/data" 2>/dev/null || true; }
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
rate="${1:-300}"
secs="${2:-20}"
runs="${3:-3}"
bin="${4:-$root/target/release/edge-agent}"
[[ -x "$bin" ]] || { echo "error: no agent binary at $bin" >&2; exit 1; }
[[ $(id -u) == 0 ]] || { echo "error: run as root (it mounts a tmpfs)" >&2; exit 1; }
[[ -f "$root/modules/dist/echo.wasm" ]] || "$root/modules/build.sh" >/dev/null
n=$((rate * secs))

for run in $(seq 1 "$runs"); do
    start_mosquitto 'max_queued_messages 0'
    url="mqtt://127.0.0.1:$port"
    mkdir -p "$work/data"
    mount -t tmpfs -o size=128m tmpfs "$work/data"
    cat >"$work/agent.toml" <<TOML
[agent]
id = "fulldisk"
data_dir = "$work/data"
stats_interval_secs = 1
[broker]
url = "$url"
clean_session = false
[[function]]
name = "echo"
module = "$root/modules/dist/echo.wasm"
topics = ["echo/in"]
[function.config]
out_topic = "out/echo"
[[function]]
name = "counter"
module = "$root/modules/dist/counter.wasm"
topics = ["counter/in"]
[function.config]
out_topic = "out/counter"
TOML
    mosquitto_sub -p "$port" -t edge-agent/fulldisk/stats -F '%p' >>"$work/stats" &
    pids+=("$!")
    mosquitto_sub -p "$port" -t edge-agent/fulldisk/dead-letter -F '%p' >"$work/dead" &
    pids+=("$!")
    "$bin" run --config "$work/agent.toml" >"$work/agent.log" 2>&1 &
    agent=$!
    pids+=("$agent")
    for _ in $(seq 50); do grep -q '"function"' "$work/stats" 2>/dev/null && break; sleep 0.2; done
    phase() { # NAME: both functions fed at RATE for SECONDS; marks the stats file
        echo "PHASE $1" >>"$work/stats"
        "$bin" publish -b "$url" -t echo/in -p '{"seq":{seq}}' -n "$n" -r "$rate" &
        local e=$!
        "$bin" publish -b "$url" -t counter/in -p '{"seq":{seq}}' -n "$n" -r "$rate"
        wait "$e"
    }
    phase healthy
    fill="$work/data/fill"
    dd if=/dev/zero of="$fill" bs=1M 2>/dev/null || true
    while head -c 4096 /dev/zero >>"$fill" 2>/dev/null; do :; done
    phase full
    rm -f "$fill"
    phase freed
    echo "PHASE end" >>"$work/stats"
    sleep 5
    kill "$agent"; wait "$agent" 2>/dev/null || true
    python3 - "$work/stats" "$work/dead" "$((3 * n))" "$run" <<'PY' | tee -a "$work/runs"
import json, statistics, sys
stats, dead, sent, run = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
phases, name, last = {}, None, None
counter_at = {}
for line in open(stats):
    line = line.strip()
    if line.startswith("PHASE "):
        name = line[6:]
        continue
    try:
        r = json.loads(line)
    except ValueError:
        continue
    last = r
    f = {x["function"]: x for x in r["functions"]}
    if name and name != "end":
        counter_at.setdefault(name, []).append(f["counter"]["succeeded"])
        if f["echo"]["rates"]["events_per_sec"] > 0:
            phases.setdefault(name, []).append(
                (f["echo"]["rates"]["events_per_sec"], f["echo"]["rates"]["end_to_end_us"]["p99"]))
counts = {x["function"]: x for x in last["functions"]}
deads = sum(1 for l in open(dead) if l.strip())
out = [f"run {run}"]
for p in ("healthy", "full", "freed"):
    v = phases.get(p, [])
    c = counter_at.get(p, [0])
    if v:
        out.append(f"{p}: echo {statistics.median(x[0] for x in v):.0f}/s p99 {statistics.median(x[1] for x in v)/1000:.3f} ms, counter handled {c[-1] - c[0]}")
out.append(f"counter succeeded {counts['counter']['succeeded']} of {sent}, echo {counts['echo']['succeeded']} of {sent}, dead letters {deads}")
print("; ".join(out))
PY
    umount "$work/data"
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    pids=()
    : >"$work/stats"
done
# The medians over the runs: echo's p99 with the disk full against healthy.
python3 - "$work/runs" <<'PY'
import re, statistics, sys
p99 = {"healthy": [], "full": [], "freed": []}
for line in open(sys.argv[1]):
    for phase, ms in re.findall(r"(healthy|full|freed): echo \d+/s p99 ([0-9.]+) ms", line):
        p99[phase].append(float(ms))
h, f = statistics.median(p99["healthy"]), statistics.median(p99["full"])
print(f"median of the runs: echo p99 healthy {h:.3f} ms, disk full {f:.3f} ms ({(f / h - 1) * 100:+.0f}%), freed {statistics.median(p99['freed']):.3f} ms")
PY
