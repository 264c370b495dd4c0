#!/usr/bin/env bash
# Soak: a healthy function next to every hostile case of issue 9 at once, for a while.
# Reports the agent's RSS over time and the healthy function's replies and latency.
#
# Usage: tests/bench/soak.sh [AGENT_BINARY] [SECONDS]
#   AGENT_BINARY  default target/release/edge-agent, else target/debug/edge-agent
#   SECONDS       default 600
#
# Hostile traffic, round-robin, about 20 events/s: 800 KB payloads (dead letters cut),
# 1 MB guest errors, log floods, oversized uncommitted state writes, endless loops, memory
# bombs, publishes under the agent's prefix and to the function's own filters, and a
# function that listens to the dead letters and rejects them (no cascade). Healthy traffic:
# 10 events/s to an echo function, each stamped with its send time.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bin="${1:-}"
if [[ -z $bin ]]; then
    bin="$root/target/release/edge-agent"
    [[ -x $bin ]] || bin="$root/target/debug/edge-agent"
fi
secs="${2:-600}"
[[ -x "$bin" ]] || { echo "error: no agent binary at $bin" >&2; exit 1; }
[[ -f "$root/modules/dist/misbehave.wasm" ]] || "$root/modules/build.sh" >/dev/null

start_mosquitto 'set_tcp_nodelay true'
m="$root/modules/dist"
cat >"$work/agent.toml" <<TOML
[agent]
id = "soak"
data_dir = "$work/data"
stats_interval_secs = 5
[broker]
url = "mqtt://127.0.0.1:$port"

[[function]]
name = "healthy"
module = "$m/echo.wasm"
topics = ["healthy/in"]
[function.config]
out_topic = "out/healthy"

[[function]]
name = "hostile"
module = "$m/misbehave.wasm"
topics = ["hostile/#"]
timeout_ms = 300
memory_limit_mb = 16
[function.config]
out_topic = "out/hostile"

[[function]]
name = "hostile-p"
module = "$m/misbehave.wasm"
mode = "persistent"
topics = ["hostile-p/#"]
timeout_ms = 300
memory_limit_mb = 16
[function.config]
out_topic = "out/hostile-p"

[[function]]
name = "dlq-reader"
module = "$m/misbehave.wasm"
topics = ["edge-agent/soak/dead-letter"]
[function.config]
out_topic = "out/reader"
TOML
"$bin" run --config "$work/agent.toml" >"$work/agent.log" 2>&1 &
agent=$!
pids+=("$agent")
sleep 2

# Healthy replies, stamped with their arrival time (ms).
mosquitto_sub -p "$port" -t out/healthy | while read -r sent; do
    echo "$(date +%s%3N) $sent"
done >"$work/replies" &
pids+=("$!")
"$bin" publish --broker "mqtt://127.0.0.1:$port" --topic healthy/in --payload '{ts_ms}' \
    --count $((secs * 10)) --rate 10 --qos 1 >/dev/null 2>&1 &
healthy=$!
pids+=("$healthy")

head -c 819200 /dev/zero | tr '\0' x >"$work/big"
cmds=(loop alloc:100 err-big:1048576 log-many:200:100000 state-fill:10000:65536
      publish-to:edge-agent/soak/stats publish-to:hostile/self recurse panic)
(
    i=0
    while true; do
        for t in hostile/in hostile-p/in; do
            "$bin" publish --broker "mqtt://127.0.0.1:$port" --topic "$t" --qos 1 \
                --payload "${cmds[i % ${#cmds[@]}]}" >/dev/null 2>&1 || true
        done
        if ((i % 10 == 0)); then
            "$bin" publish --broker "mqtt://127.0.0.1:$port" --topic hostile/big --qos 1 \
                --payload-file "$work/big" >/dev/null 2>&1 || true
        fi
        i=$((i + 1))
        sleep 0.1
    done
) &
pids+=("$!")

rss() { awk '/VmRSS/ {print $2}' "/proc/$agent/status" 2>/dev/null || echo 0; }
echo "t_s rss_kib healthy_replies agent_log_bytes"
start=$(date +%s)
while (($(date +%s) - start < secs)); do
    sleep 10
    kill -0 "$agent" 2>/dev/null || { echo "agent died"; tail -20 "$work/agent.log"; exit 1; }
    echo "$(($(date +%s) - start)) $(rss) $(wc -l <"$work/replies") $(wc -c <"$work/agent.log")"
done
wait "$healthy" || true
sleep 2
sent=$((secs * 10))
got=$(wc -l <"$work/replies")
echo
echo "healthy: $got of $sent replies"
awk '{ d = $1 - $2; print d }' "$work/replies" | sort -n | awk '
    { v[NR] = $1 } END { if (NR) printf "healthy latency ms: p50 %d p90 %d p99 %d max %d\n",
        v[int(NR*0.5)+1], v[int(NR*0.9)+1], v[int(NR*0.99)+1], v[NR] }'
echo "agent log: $(wc -c <"$work/agent.log") bytes; last stats:"
grep -c "event failed" "$work/agent.log" | sed 's/^/failures logged: /'
kill -TERM "$agent"
wait "$agent" || true
grep "function totals" "$work/agent.log" | sed 's/.*function totals//' | cut -c1-200
