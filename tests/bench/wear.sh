#!/usr/bin/env bash
# Benchmark: what a state-writing function writes to the disk under the agent's data
# directory (on a device, the SD card) per event, and how much room its store takes.
#
# Usage: tests/bench/wear.sh [RATE] [SECONDS] [SETTINGS] [OUTPUT_BYTES] [AGENT_BINARY]
#   RATE          events/s, QoS 1, to one persistent function (default 50)
#   SECONDS       length of each row (default 30)
#   SETTINGS      `[state]` settings, KEY=VALUE, one row each (default: the defaults, then
#                 "min_flush_interval_ms=500" and "max_flushes_per_sec=5")
#   OUTPUT_BYTES  0: the `counter` example (outputs of about 40 bytes); N: `misbehave`'s
#                 `state-pad:N` (one counter, outputs of N bytes more) (default 0)
#
# Per row, a fresh data directory (in $TMPDIR: put it on the disk you want to measure) and
# a fresh Mosquitto on a free port. Reports, per event: the bytes the agent caused to be
# written (`write_bytes` in /proc/PID/io: what reaches the block layer, page by page), the
# sectors written to the data directory's block device over the row (/proc/diskstats:
# adds the file system's journal, and anything else writing to that device meanwhile),
# the flushes a second (all of the row's, over its length: an idle store does not flush), the
# end-to-end p50, and what the store takes on disk at the end;
# and the device's writes a day at this rate.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
rate="${1:-50}"
secs="${2:-30}"
settings="${3:-max_flushes_per_sec=100 min_flush_interval_ms=500 max_flushes_per_sec=5}"
pad="${4:-0}"
bin="${5:-$root/target/release/edge-agent}"
[[ -x "$bin" ]] || die "no agent binary at $bin"
[[ -f "$root/modules/dist/counter.wasm" ]] || "$root/modules/build.sh" >/dev/null
n=$((rate * secs))

# The block device under the data directory (a partition's whole disk is not needed:
# diskstats has a line per partition too).
mkdir -p "$work/probe"
dev="$(findmnt -n -o SOURCE -T "$work/probe" | sed 's|^/dev/||')"
sectors() { awk -v d="$dev" '$3 == d { print $10 }' /proc/diskstats; }
[[ -n "$(sectors)" ]] || die "no /proc/diskstats line for $dev (the data directory's device); on tmpfs nothing reaches a disk"

if [[ "$pad" == 0 ]]; then
    module="$root/modules/dist/counter.wasm"
    fconfig='out_topic = "counts/{1..}"'
    payload='{"seq":{seq}}'
else
    module="$root/modules/dist/misbehave.wasm"
    fconfig='out_topic = "padded/{topic}"'
    payload="state-pad:$pad"
fi

echo "rate $rate/s for ${secs}s, outputs +$pad bytes, data on /dev/$dev, $(basename "$bin")"
printf '%-26s %12s %12s %10s %10s %12s %12s\n' setting agent_B/ev device_B/ev flushes/s e2e_p50 store_KiB device_GB/day
for setting in $settings; do
    start_mosquitto 'max_queued_messages 0'
    rm -rf "$work/data"
    cat >"$work/agent.toml" <<TOML
[agent]
id = "wear"
data_dir = "$work/data"
stats_interval_secs = 1
[broker]
url = "mqtt://127.0.0.1:$port"
clean_session = false
[state]
${setting%%=*} = ${setting#*=}
[[function]]
name = "f"
module = "$module"
mode = "persistent"
topics = ["wear/#"]
[function.config]
$fconfig
TOML
    "$bin" run --config "$work/agent.toml" >"$work/agent.log" 2>&1 &
    agent=$!
    pids+=("$agent")
    for _ in $(seq 1 100); do
        grep -q "connected and subscribed" "$work/agent.log" && break
        kill -0 "$agent" 2>/dev/null || die "the agent stopped: $(tail -5 "$work/agent.log")"
        sleep 0.1
    done
    # One event first, so that compiling and opening the store are not counted.
    "$bin" publish --broker "mqtt://127.0.0.1:$port" -t wear/a -n 1 -q 1 -p "$payload" >/dev/null 2>"$work/publish.log"
    sleep 2
    sync
    w0=$(awk '/^write_bytes/ { print $2 }' "/proc/$agent/io")
    s0=$(sectors)
    "$bin" publish --broker "mqtt://127.0.0.1:$port" -t wear/a -n "$n" -r "$rate" -q 1 -p "$payload" >/dev/null 2>"$work/publish.log"
    sleep 1
    sync
    w1=$(awk '/^write_bytes/ { print $2 }' "/proc/$agent/io")
    s1=$(sectors)
    kill "$agent"
    wait "$agent" 2>/dev/null || true
    kill "$mosquitto_pid"
    wait "$mosquitto_pid" 2>/dev/null || true
    totals="$(grep 'function totals' "$work/agent.log" | tail -1)"
    received=$(sed -n 's/.*received=\([0-9]*\).*/\1/p' <<<"$totals")
    p50=$(sed -n 's/.*e2e_p50_us=\([0-9]*\).*/\1/p' <<<"$totals")
    flushes=$(sed -n 's/.*state store closed flushes=\([0-9]*\).*/\1/p' "$work/agent.log" | tail -1)
    [[ "$received" == $((n + 1)) ]] || die "the function received ${received:-nothing} of $((n + 1)) events"
    store=$(du -sk "$work/data/state" | cut -f1)
    awk -v sp="$setting" -v w=$((w1 - w0)) -v s=$(((s1 - s0) * 512)) -v n="$n" -v f="${flushes:-0}" \
        -v secs="$secs" -v p50="$p50" -v store="$store" -v rate="$rate" 'BEGIN {
        printf "%-26s %12.0f %12.0f %10.1f %8.1fms %12d %12.2f\n", sp, w / n, s / n,
            f / secs, p50 / 1000, store, s / n * rate * 86400 / 1e9 }'
done
