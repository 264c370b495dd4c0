#!/usr/bin/env bash
# Runs the agent under a device-like budget with cgroup v1 (memory limit and CPU quota) and
# a steady stream of events, then reports its peak memory, whether it was OOM-killed, and
# the events per second it sustained. Needs root and the cgroup v1 `memory` and `cpu`
# controllers (/sys/fs/cgroup/memory, /sys/fs/cgroup/cpu), Mosquitto and mosquitto-clients.
#
# What runs: the HOST device build (x86_64, no Cranelift, profile `device`; built with
# cross/build.sh host device if missing) with configs/constrained.toml, its two functions
# precompiled to `.cwasm` by the host dev build. Mosquitto runs on a free port OUTSIDE the
# cgroup, so the numbers are the agent's alone. Two publishers (`edge-agent publish`, also
# outside) feed sensors/dev1/temperature (every value above the threshold: one alert each)
# and telemetry/dev1 (forwarded to uplink/...) at --rate each; mosquitto_sub counts and
# timestamps the outputs.
#
# Usage: cross/cgroup-run.sh [--runs 3] [--rate 100] [--count 1500] [--mem-mb 64]
#                            [--cpu-pct 25] [--agent BIN] [--config FILE] [--keep]
#   --rate is per publisher (two of them), so the offered load is 2 x rate events/s.
#   --keep leaves the work directory (logs, outputs) in place and prints its path.
# Prints one line per run and the medians. Every wait has a timeout.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

runs=3 rate=100 count=1500 mem_mb=64 cpu_pct=25 agent="" config="$root/configs/constrained.toml" keep=""
usage() { sed -n '2,20s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2; exit 64; }
while (($#)); do
    case $1 in
        --runs) runs=${2:?}; shift ;;
        --rate) rate=${2:?}; shift ;;
        --count) count=${2:?}; shift ;;
        --mem-mb) mem_mb=${2:?}; shift ;;
        --cpu-pct) cpu_pct=${2:?}; shift ;;
        --agent) agent=${2:?}; shift ;;
        --config) config=$(realpath "${2:?}"); shift ;;
        --keep) keep=yes ;;
        -h | --help) usage ;;
        *) echo "cross/cgroup-run.sh: unknown argument $1" >&2; usage ;;
    esac
    shift
done

die() { echo "cgroup-run: FAIL: $*" >&2; exit 1; }
now() { date +%s; }
[[ $(id -u) -eq 0 ]] || die "needs root (to create cgroups)"
mem_root=/sys/fs/cgroup/memory cpu_root=/sys/fs/cgroup/cpu
[[ -f $mem_root/memory.limit_in_bytes && -f $cpu_root/cpu.cfs_quota_us ]] ||
    die "cgroup v1 memory and cpu controllers not found under /sys/fs/cgroup"
for c in mosquitto mosquitto_sub; do
    command -v "$c" >/dev/null || [[ -x /usr/sbin/$c ]] || die "$c not found (apt-get install mosquitto mosquitto-clients)"
done
mosquitto_bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)

# The agents: the compiler build precompiles and publishes, the device build is measured.
target_dir=${CARGO_TARGET_DIR:-$root/target}
host=$(rustc -vV | sed -n 's/^host: //p')
echo "cgroup-run: building the host agent (dev) and the host device build"
timeout 1800 cargo build -q -p edge-agent
tool="$target_dir/debug/edge-agent"
if [[ -z $agent ]]; then
    agent="$target_dir/$host/device/edge-agent"
    [[ -x $agent ]] || timeout 1800 "$root/cross/build.sh" host device >/dev/null
fi
[[ -x $agent ]] || die "no agent binary at $agent"
for m in threshold-alert echo; do
    [[ -f modules/dist/$m.wasm ]] || timeout 1800 modules/build.sh >/dev/null
done

# Groups nest under the ones this shell is in, so they stay inside any outer limits.
mem_parent=$mem_root$(awk -F: '$2 == "memory" { print $3 }' /proc/self/cgroup)
cpu_parent=$cpu_root$(awk -F: '$2 ~ /(^|,)cpu(,|$)/ { print $3 }' /proc/self/cgroup)

work=$(mktemp -d "${TMPDIR:-/tmp}/edge-agent-cgroup.XXXXXX")
pids=() cgroups=()
# shellcheck disable=SC2317 # called by the trap
cleanup() {
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for g in "${cgroups[@]}"; do rmdir "$g" 2>/dev/null || true; done
    if [[ -n $keep ]]; then echo "cgroup-run: work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

mkdir -p "$work/modules" "$work/data"
"$tool" precompile --out "$work/modules" modules/dist/threshold-alert.wasm modules/dist/echo.wasm >/dev/null
cp "$config" "$work/config.toml"

# shellcheck source=cross/lib.sh
source "$root/cross/lib.sh"

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND until it succeeds.
wait_for() {
    local limit=$1 what=$2 t
    shift 2
    t=$(now)
    until "$@"; do
        (($(now) - t < limit)) || die "timed out after ${limit}s waiting for $what"
        sleep 0.1
    done
}

port=$(free_port) || die "no free port"
cat >"$work/mosquitto.conf" <<EOF
listener $port 127.0.0.1
allow_anonymous true
# Let the broker queue the whole stream for a slow agent instead of dropping QoS 1 messages.
max_queued_messages 0
persistence false
EOF
"$mosquitto_bin" -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
pids+=($!)
wait_for 10 "mosquitto on port $port" bash -c "(exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null"

echo "cgroup-run: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f", $2 / 1024 }' /proc/meminfo) MiB," \
    "agent $(basename "$(dirname "$(dirname "$agent")")")/$(basename "$(dirname "$agent")") $(stat -c %s "$agent") bytes," \
    "limit ${mem_mb} MiB and ${cpu_pct}% of one core, offered 2 x $rate events/s, $count each"

results=()
for run in $(seq "$runs"); do
    mem_cg="$mem_parent/edge-agent-run.$$.$run"
    cpu_cg="$cpu_parent/edge-agent-run.$$.$run"
    mkdir "$mem_cg" "$cpu_cg"
    cgroups+=("$mem_cg" "$cpu_cg")
    echo $((mem_mb * 1024 * 1024)) >"$mem_cg/memory.limit_in_bytes"
    # No swap here, but if there were, forbid it too (the file exists only with swap accounting).
    [[ -f $mem_cg/memory.memsw.limit_in_bytes ]] &&
        { echo $((mem_mb * 1024 * 1024)) >"$mem_cg/memory.memsw.limit_in_bytes" 2>/dev/null || true; }
    echo 100000 >"$cpu_cg/cpu.cfs_period_us"
    echo $((cpu_pct * 1000)) >"$cpu_cg/cpu.cfs_quota_us"

    out="$work/out.$run" log="$work/agent.$run.log"
    # stdbuf: line-buffered, so that the SUBACK and the outputs can be watched as they come.
    stdbuf -oL mosquitto_sub -h 127.0.0.1 -p "$port" -i "cgroup-run-sub-$$-$run" -q 1 -d -F '%U %t %p' \
        -t 'alerts/#' -t 'uplink/#' -t 'edge-agent/+/dead-letter' >"$out" 2>&1 &
    sub_pid=$!
    pids+=("$sub_pid")
    wait_for 10 "the subscriber's SUBACK" grep -q 'received SUBACK' "$out"

    # Into the cgroups first, then exec the agent: every thread it starts is inside.
    (cd "$work" && EDGE_AGENT__BROKER__URL="mqtt://127.0.0.1:$port" EDGE_AGENT__AGENT__ID="constrained-$run" \
        exec sh -c 'echo $$ >"$1/cgroup.procs" && echo $$ >"$2/cgroup.procs" && shift 2 && exec "$@"' \
        sh "$mem_cg" "$cpu_cg" "$agent" run --config config.toml) >"$log" 2>&1 &
    agent_pid=$!
    pids+=("$agent_pid")
    t=$(now)
    until grep -q 'subscribed' "$log"; do
        kill -0 "$agent_pid" 2>/dev/null || die "the agent exited during start-up: $(tail -n 5 "$log")"
        (($(now) - t < 60)) || die "the agent did not subscribe within 60s: $(tail -n 5 "$log")"
        sleep 0.1
    done
    cpu0=$(awk '{ print $14 + $15 }' "/proc/$agent_pid/stat")

    t_pub=$(now)
    "$tool" publish --broker "mqtt://127.0.0.1:$port" --topic sensors/dev1/temperature \
        --payload '{"value": 40, "seq": {seq}}' --rate "$rate" --count "$count" >"$work/pub1.$run" 2>&1 &
    pub1=$!
    "$tool" publish --broker "mqtt://127.0.0.1:$port" --topic telemetry/dev1 \
        --payload '{"seq": {seq}, "ts_ms": {ts_ms}}' --rate "$rate" --count "$count" >"$work/pub2.$run" 2>&1 &
    pub2=$!
    pids+=("$pub1" "$pub2")
    pub_limit=$(awk -v c="$count" -v r="$rate" 'BEGIN { printf "%d", c / r * 3 + 60 }')
    for p in $pub1 $pub2; do
        wait_for "$pub_limit" "the publishers" bash -c "! kill -0 $p 2>/dev/null"
        wait "$p" || die "a publisher failed: $(cat "$work/pub1.$run" "$work/pub2.$run")"
    done
    pub_secs=$(($(now) - t_pub))

    # Outputs: wait for all 2 x count, or until none arrived for 10 s (or the agent died).
    expected=$((2 * count))
    last=-1 idle_since=$(now)
    while :; do
        n=$(grep -cE '^[0-9]+\.[0-9]+ (alerts|uplink)/' "$out" || true)
        ((n >= expected)) && break
        kill -0 "$agent_pid" 2>/dev/null || break
        if ((n != last)); then last=$n idle_since=$(now); fi
        (($(now) - idle_since < 10)) || break
        sleep 0.2
    done

    alive=yes
    kill -0 "$agent_pid" 2>/dev/null || alive=""
    hwm_kb=$(awk '/^VmHWM/ { print $2 }' "/proc/$agent_pid/status" 2>/dev/null || echo 0)
    cpu1=$(awk '{ print $14 + $15 }' "/proc/$agent_pid/stat" 2>/dev/null || echo "$cpu0")
    peak=$(cat "$mem_cg/memory.max_usage_in_bytes")
    failcnt=$(cat "$mem_cg/memory.failcnt")
    oom_kills=$(awk '/^oom_kill / { print $2 }' "$mem_cg/memory.oom_control")
    throttled=$(awk '/^nr_throttled/ { t = $2 } /^nr_periods/ { p = $2 } END { printf "%d/%d", t, p }' "$cpu_cg/cpu.stat")

    stop_rc=""
    if [[ -n $alive ]]; then
        kill -TERM "$agent_pid"
        wait_for 30 "the agent to exit after SIGTERM" bash -c "! kill -0 $agent_pid 2>/dev/null"
        stop_rc=0
        wait "$agent_pid" || stop_rc=$?
    else
        wait "$agent_pid" || stop_rc=$?
    fi
    sleep 0.5 # let the last dead letters reach the subscriber
    kill -TERM "$sub_pid" 2>/dev/null || true
    wait "$sub_pid" 2>/dev/null || true

    # Sustained rate: outputs over the time from the first to the last output. End-to-end
    # latency of the telemetry stream: arrival at the subscriber minus the publisher's ts_ms.
    read -r n_out rate_out < <(awk '
        /^[0-9]+\.[0-9]+ (alerts|uplink)\// {
            t = $1 + 0; if (n == 0 || t < first) first = t; if (t > last) last = t; n++
        }
        END { printf "%d %.1f\n", n, (last > first ? (n - 1) / (last - first) : 0) }' "$out")
    awk '/^[0-9]+\.[0-9]+ uplink\// && match($0, /"ts_ms": [0-9]+/) {
            printf "%.0f\n", $1 * 1000 - substr($0, RSTART + 9, RLENGTH - 9) }' "$out" |
        sort -n >"$work/lat.$run"
    lat_p50=$(awk '{ v[NR] = $1 } END { print NR ? v[int((NR + 1) / 2)] : "-" }' "$work/lat.$run")
    lat_max=$(tail -n 1 "$work/lat.$run")
    dead=$(grep -cE '^[0-9]+\.[0-9]+ edge-agent/[^ ]+/dead-letter ' "$out" || true)
    kinds=$({ grep -E '^[0-9]+\.[0-9]+ edge-agent/[^ ]+/dead-letter ' "$out" || true; } | { grep -o '"kind":"[a-z-]*"' || true; } |
        cut -d'"' -f4 | sort | uniq -c | awk '{ printf "%s%s %s", (NR > 1 ? ", " : " ("), $2, $1 } END { if (NR) printf ")" }')
    oom=no
    [[ ${oom_kills:-0} -gt 0 || $stop_rc == 137 ]] && oom=yes
    line=$(printf 'run %d: outputs %d/%d, %.1f events/s sustained (publishers took %ds), telemetry latency p50 %s ms max %s ms, dead letters %d%s, peak cgroup memory %.1f MiB, VmHWM %.1f MiB, memory.failcnt %s, OOM-killed %s, CPU %.1f s, throttled periods %s, exit %s' \
        "$run" "$n_out" "$expected" "$rate_out" "$pub_secs" "$lat_p50" "$lat_max" "$dead" "$kinds" \
        "$(awk -v b="$peak" 'BEGIN { print b / 1048576 }')" "$(awk -v k="$hwm_kb" 'BEGIN { print k / 1024 }')" \
        "$failcnt" "$oom" "$(awk -v a="$cpu0" -v b="$cpu1" -v hz="$(getconf CLK_TCK)" 'BEGIN { print (b - a) / hz }')" \
        "$throttled" "${stop_rc:-?}")
    echo "cgroup-run: $line"
    results+=("$rate_out $(awk -v b="$peak" 'BEGIN { print b / 1048576 }') $(awk -v k="$hwm_kb" 'BEGIN { print k / 1024 }') $lat_p50 $oom")
    if [[ $oom == yes ]]; then
        echo "cgroup-run: run $run was OOM-killed; agent log tail:"
        tail -n 5 "$log"
    fi

    rmdir "$mem_cg" "$cpu_cg" 2>/dev/null || true
done

# Medians, column by column (mawk has no sort of its own).
median() { printf '%s\n' "${results[@]}" | awk -v c="$1" '{ print $c }' | sort -n |
    awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ooms=$(printf '%s\n' "${results[@]}" | awk '$5 == "yes"' | wc -l)
printf 'cgroup-run: median of %d runs: %.1f events/s sustained, peak cgroup memory %.1f MiB, VmHWM %.1f MiB, telemetry latency p50 %s ms; OOM-killed in %d of %d runs\n' \
    "$runs" "$(median 1)" "$(median 2)" "$(median 3)" "$(median 4)" "$ooms" "$runs"
