#!/usr/bin/env bash
# Benchmark: how many events per second one function handles, against the broker alone.
#
# Usage: tests/bench/throughput.sh [AGENT_BINARY] [EVENTS] [RUNS]
#   AGENT_BINARY  default target/release/edge-agent (build: cargo build --release -p edge-agent)
#   EVENTS        events per row and run, published as fast as the broker takes them (default 20000)
#   RUNS          runs; the report gives the median of each figure (default 3)
# Environment:
#   QOS_LIST      QoS levels to measure (default "0 1")
#   PUBLISHERS    parallel `edge-agent publish` processes, each on its own sensor (default 4)
#   TIMEOUT       longest wait for the outputs of one row, seconds after publishing began (default 60)
#   STALL_SECS    stop waiting once the publishers are done and no output came for this long (default 5)
#   LATENCY=1     the latency mode below instead
#   RATES         latency mode: paced rates, events/s (default "1 100 300 5000"; "" for bursts only)
#   LAT_SECS      latency mode: seconds of traffic per paced rate (default 5; at least 10 events)
#   EXTRA_TOML    appended to the agent's config before its function, e.g.
#                 $'[state]\nmin_flush_interval_ms = 200'
#   FUNCTION_TOML appended to the function's table, e.g. 'queue_capacity = 256'
#   ALERT_QOS     the QoS `threshold-alert` publishes its alerts with (its `alert_qos`);
#                 default: the row's QoS, as the relay's `mosquitto_pub -q` does. Until
#                 2026-12-07 the alerts were QoS 1 in every row (ALERT_QOS=1 for that): the
#                 QoS 0 rows then carried a PUBACK per alert that the relay's did not.
#
# Throughput mode: for each run and QoS, three rows, each on a fresh Mosquitto on loopback
# with its default settings (in-flight window of 20 per client) but for `listener`,
# `allow_anonymous` and `max_queued_messages 0`: by default Mosquitto silently drops
# whatever is queued for a client past 1000 messages, so any consumer slower than the
# publishers (the relay as well) would lose most of a 20,000-event burst to the broker:
#   relay             mosquitto_sub 'sensors/+/temperature' | mosquitto_pub -l alerts/relay: the
#                     job's broker traffic (one message in, one out) with no processing
#   agent persistent  a fresh agent with `threshold-alert` (every event is over the threshold,
#                     so each makes one alert on alerts/<sensor>/temperature), persistent
#   agent on-demand   the same, on-demand
# EVENTS events are published by PUBLISHERS `edge-agent publish` processes (sensors s1..sN). A
# subscriber started before publishing counts the outputs; events/s is outputs over the time
# from just before publishing to the last output. Dead letters are counted on
# <prefix>/<id>/dead-letter; handled/failed come from the agent's stats topic; CPU per event
# is the agent's utime+stime (/proc/PID/stat) over the row divided by EVENTS (for the relay,
# its two processes' together: the floor for the same traffic); idle RSS is
# VmRSS before publishing.
#
# Latency mode (LATENCY=1): the stateful `counter` (persistent, counter/# -> counts/{1..})
# and the stateless `echo` (persistent, echo/# -> echoed/{topic}), QoS 1, publish_rate
# 1000000, each paced with `publish --rate R` for R in RATES (p50/p99 end-to-end latency
# from the agent's stats; state flushes per second from its stats reports' `state_flushes`
# over the steady part of the row, 2 s after the first publish to 1 s before the last
# output, and for the whole row, as raw figures, from the count the agent logs when it
# stops: that one also counts the first flushes, before the commit rate is known, what
# the cap's allowance saved up, and one on the way out),
# then each bursting EVENTS events (throughput as above).
#
# Prints the machine and a markdown table of medians to stdout; raw per-run figures to
# stderr as they come.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bin="${1:-$root/target/release/edge-agent}"
events="${2:-20000}"
runs="${3:-3}"
qos_list="${QOS_LIST:-0 1}"
publishers="${PUBLISHERS:-4}"
timeout_s="${TIMEOUT:-60}"
stall_s="${STALL_SECS:-5}"
latency="${LATENCY:-0}"
rates="${RATES-1 100 300 5000}"
lat_secs="${LAT_SECS:-5}"
extra_toml="${EXTRA_TOML:-}"
[[ -x "$bin" ]] || { echo "error: no agent binary at $bin" >&2; exit 1; }
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
for m in threshold-alert counter echo; do
    [[ -f "$root/modules/dist/$m.wasm" ]] || { echo "error: no $root/modules/dist/$m.wasm (run modules/build.sh)" >&2; exit 1; }
done
for c in mosquitto mosquitto_sub mosquitto_pub python3; do
    command -v "$c" >/dev/null || { echo "error: $c not found" >&2; exit 1; }
done
# A process is gone once it has exited (a zombie counts as gone).
alive() { [[ -r /proc/$1/stat ]] && [[ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" != Z ]]; }
stop_pids() {
    local p
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq 1 100); do
        local any=0
        for p in "${pids[@]}"; do alive "$p" && any=1; done
        ((any)) || break
        sleep 0.1
    done
    for p in "${pids[@]}"; do
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    pids=()
}
# At exit, lib.sh kills what is left; stop_pids first lets the agents end their runs.
bench_cleanup() { stop_pids; }
now() { date +%s.%N; }
clk_tck="$(getconf CLK_TCK)"
# utime + stime of a process, clock ticks (fields 14 and 15 of /proc/PID/stat).
cpu_ticks() { local s f; s="$(<"/proc/$1/stat")"; s="${s##*) }"; read -r -a f <<<"$s"; echo $((f[11] + f[12])); }
rss_mb() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

# A fresh Mosquitto on a free port, with a retained bench/ready that tells a subscriber it
# is subscribed (it gets the retained message first).
start_broker() {
    start_mosquitto 'max_queued_messages 0'
    mosquitto_pub -h 127.0.0.1 -p "$port" -r -t bench/ready -m ready
}

# start_sub FILE COUNT QOS FORMAT WAIT TOPIC...: a background subscriber (pid in sub_pid)
# that writes one line per message for at most WAIT s; returns once it is subscribed.
start_sub() {
    local file=$1 count=$2 q=$3 fmt=$4 wait_s=$5 t
    shift 5
    local args=()
    for t in "$@"; do args+=(-t "$t"); done
    mosquitto_sub -h 127.0.0.1 -p "$port" -q "$q" -t bench/ready "${args[@]}" -C "$((count + 1))" \
        -W "$wait_s" -F "$fmt" >"$file" 2>/dev/null &
    sub_pid=$!
    pids+=("$sub_pid")
    for _ in $(seq 1 200); do
        grep -q '^bench/ready ' "$file" && return 0
        sleep 0.05
    done
    die "subscriber to $* did not start"
}
count_lines() { grep -c -v '^bench/ready ' "$1" 2>/dev/null || true; }

# The agent's retained stats, as one line of JSON ("" if none within 3 s).
read_stats() {
    timeout 5 mosquitto_sub -h 127.0.0.1 -p "$port" -t "edge-agent/$agent_id/stats" -C 1 -W 3 2>/dev/null || true
}
# Figures of function $2 in stats JSON $1: received succeeded failed-total failed-kinds
# e2e-p50 e2e-p99 flushes (flushes: n/a unless a numeric field named *flush* exists).
stats_fields() {
    python3 - "$1" "$2" <<'PY'
import json, sys
raw, name = sys.argv[1], sys.argv[2]
try:
    s = json.loads(raw)
except Exception:
    print("- - - - - - n/a"); sys.exit()
fns = s if isinstance(s, list) else s.get("functions", [])
f = next((x for x in fns if isinstance(x, dict) and x.get("function") == name), None)
if f is None:
    print("- - - - - - n/a"); sys.exit()
failed = f.get("failed", [])
pairs = list(failed.items()) if isinstance(failed, dict) else [tuple(p) for p in failed]
ftotal = sum(int(n) for _, n in pairs)
kinds = ",".join(f"{k}:{n}" for k, n in pairs) or "none"
e2e = f.get("end_to_end_us", {})
def find_flush(o):
    if isinstance(o, dict):
        for k, v in o.items():
            if "flush" in k.lower() and isinstance(v, (int, float)) and not isinstance(v, bool):
                return v
        for v in o.values():
            r = find_flush(v)
            if r is not None:
                return r
    return None
fl = find_flush(f)
if fl is None and isinstance(s, dict):
    fl = find_flush({k: v for k, v in s.items() if k != "functions"})
print(f.get("received", "-"), f.get("succeeded", "-"), ftotal, kinds,
      e2e.get("p50", "-"), e2e.get("p99", "-"), "n/a" if fl is None else fl)
PY
}

# measure SECTION JOB MODE QOS COUNT RATE RUN: one row. JOB is relay, threshold, counter or
# echo; RATE is "" for a burst. Appends a line to results.tsv and prints it to stderr.
row_no=0
measure() {
    local section=$1 job=$2 mode=$3 q=$4 count=$5 rate=$6 run=$7
    row_no=$((row_no + 1))
    local in_prefix out_filter fn module topics cfg
    case $job in
        relay | threshold)
            in_prefix="sensors/s%d/temperature" out_filter='alerts/#' fn=threshold
            module=threshold-alert topics='"sensors/+/temperature"'
            cfg=$'threshold = "30"\nalert_topic = "alerts/{1..}"\n'"alert_qos = \"${ALERT_QOS:-$q}\"" ;;
        counter)
            in_prefix="counter/s%d" out_filter='counts/#' fn=counter module=counter
            topics='"counter/#"' cfg='out_topic = "counts/{1..}"' ;;
        echo)
            in_prefix="echo/s%d" out_filter='echoed/#' fn=echo module=echo
            topics='"echo/#"' cfg='out_topic = "echoed/{topic}"' ;;
    esac
    local npub=$publishers
    [[ -n $rate ]] && npub=1
    ((npub > count)) && npub=$count
    row_timeout=$timeout_s
    [[ -n $rate ]] && row_timeout=$((timeout_s + (count + rate - 1) / rate))
    start_broker
    agent_id="" agent=""
    if [[ $job == relay ]]; then
        # Ready once a retained probe has gone through the pipe.
        mosquitto_pub -h 127.0.0.1 -p "$port" -r -t sensors/probe/temperature -m '{"value": 31.5, "seq": -1}'
        start_sub "$work/probe" 1 0 '%t %U' 10 alerts/relay
        local probe=$sub_pid
        rm -f "$work/relay.fifo"
        mkfifo "$work/relay.fifo"
        mosquitto_sub -h 127.0.0.1 -p "$port" -q "$q" -t 'sensors/+/temperature' >"$work/relay.fifo" 2>/dev/null &
        relay_sub=$!
        pids+=("$!")
        mosquitto_pub -h 127.0.0.1 -p "$port" -q "$q" -l -t alerts/relay <"$work/relay.fifo" 2>/dev/null &
        relay_pub=$!
        pids+=("$!")
        for _ in $(seq 1 200); do alive "$probe" || break; sleep 0.05; done
        grep -q '^alerts/relay' "$work/probe" || die "relay did not pass the probe"
        sleep 0.2 # let the probe settle before the counting subscriber starts
    else
        agent_id="bench-$row_no-$$"
        cat >"$work/agent.toml" <<TOML
[agent]
id = "$agent_id"
data_dir = "$work/data-$row_no"
stats_interval_secs = 1
[broker]
url = "mqtt://127.0.0.1:$port"
$extra_toml

[[function]]
name = "$fn"
module = "$root/modules/dist/$module.wasm"
mode = "$mode"
topics = [$topics]
qos = $q
publish_rate = 1000000
${FUNCTION_TOML:-}
[function.config]
$cfg
TOML
        "$bin" run --config "$work/agent.toml" >"$work/agent-$row_no.log" 2>&1 &
        agent=$!
        pids+=("$agent")
        local ok=0 st
        for _ in $(seq 1 5); do
            st="$(timeout 12 mosquitto_sub -h 127.0.0.1 -p "$port" -t "edge-agent/$agent_id/status" -C 1 -W 10 2>/dev/null || true)"
            if [[ $st == *'"online"'* && $st == *"\"pid\":$agent"[,}]* ]]; then ok=1; break; fi
            alive "$agent" || break
            sleep 0.2
        done
        ((ok)) || { tail -20 "$work/agent-$row_no.log" >&2; die "agent $agent_id did not come online"; }
    fi
    start_sub "$work/out" "$count" "$q" '%t %U' "$row_timeout" "$out_filter"
    local out_sub=$sub_pid
    : >"$work/dl"
    if [[ -n $agent ]]; then
        start_sub "$work/dl" 100000000 1 '%t %p' "$((row_timeout + 60))" "edge-agent/$agent_id/dead-letter"
        # Every stats report of the row (one a second): the state store's flushes in the
        # steady part of a paced row.
        start_sub "$work/stats" 100000000 0 '%t %p' "$((row_timeout + 60))" "edge-agent/$agent_id/stats"
    fi
    local rss="-" cpu0=0
    if [[ -n $agent ]]; then
        rss="$(rss_mb "$agent")"
        cpu0="$(cpu_ticks "$agent")"
    else
        # The relay's two processes together: the floor for the same MQTT traffic.
        cpu0=$(($(cpu_ticks "$relay_sub") + $(cpu_ticks "$relay_pub")))
    fi

    # Publish.
    local pubs=() i share
    local t0
    t0="$(now)"
    for i in $(seq 1 "$npub"); do
        share=$((count / npub))
        ((i == 1)) && share=$((share + count % npub))
        local args=(publish --broker "mqtt://127.0.0.1:$port" --topic "$(printf "$in_prefix" "$i")"
            --payload '{"value": 31.5, "seq": {seq}}' --count "$share" --qos "$q")
        [[ -n $rate ]] && args+=(--rate "$rate")
        "$bin" "${args[@]}" >"$work/pub-$i.log" 2>&1 &
        pubs+=("$!")
        pids+=("$!")
    done

    # Wait: every output, or outputs plus dead letters make COUNT, or no progress for
    # STALL_SECS after the publishers are done, or the row's timeout.
    local n=0 d=0 last=-1 quiet=0 ticks=0 pubs_done=0 t_pub="" p
    while :; do
        n="$(count_lines "$work/out")"
        d="$(count_lines "$work/dl")"
        ((n >= count || n + d >= count)) && break
        alive "$out_sub" || break
        if ((!pubs_done)); then
            pubs_done=1
            for p in "${pubs[@]}"; do alive "$p" && pubs_done=0; done
            ((pubs_done)) && t_pub="$(now)"
        fi
        if ((pubs_done)); then
            if ((n == last)); then quiet=$((quiet + 1)); else quiet=0; fi
            ((quiet >= stall_s * 5)) && break
        fi
        last=$n
        ticks=$((ticks + 1))
        ((ticks >= row_timeout * 5)) && break
        sleep 0.2
    done
    local cpu1=0
    if [[ -n $agent ]]; then
        cpu1="$(cpu_ticks "$agent")"
    else
        cpu1=$(($(cpu_ticks "$relay_sub") + $(cpu_ticks "$relay_pub")))
    fi
    kill "$out_sub" 2>/dev/null || true
    wait "$out_sub" 2>/dev/null || true
    local killed=()
    for p in "${pubs[@]}"; do
        alive "$p" && kill "$p" 2>/dev/null && killed+=("$p")
    done
    i=0
    for p in "${pubs[@]}"; do
        i=$((i + 1))
        if ! wait "$p" 2>/dev/null; then
            if [[ " ${killed[*]} " == *" $p "* ]]; then
                echo "  warning: publisher $i still running at the end of the row, stopped" >&2
            else
                echo "  warning: publisher $i failed: $(tail -n 1 "$work/pub-$i.log")" >&2
            fi
        fi
    done
    [[ -n $t_pub ]] || t_pub="$(now)"
    n="$(count_lines "$work/out")"
    local t_last eps pub_rate
    t_last="$(grep -v '^bench/ready ' "$work/out" | awk '{print $2}' | sort -n | tail -1)"
    eps="$(awk -v n="$n" -v a="$t0" -v b="${t_last:-0}" 'BEGIN { printf "%.0f", (n > 0 && b > a) ? n / (b - a) : 0 }')"
    pub_rate="$(awk -v n="$count" -v a="$t0" -v b="$t_pub" 'BEGIN { printf "%.0f", (b > a) ? n / (b - a) : 0 }')"

    local cpu_us received="-" handled="-" ftotal="-" fkinds="-" p50="-" p99="-" flushes="n/a" flush_s="n/a" dlkinds="-"
    cpu_us="$(awk -v t="$((cpu1 - cpu0))" -v hz="$clk_tck" -v n="$count" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')"
    if [[ -n $agent ]]; then
        # Final stats: until every received event is finished and two reports agree.
        local s prev="" f
        for _ in $(seq 1 6); do
            sleep 1.1
            s="$(read_stats)"
            f="$(stats_fields "$s" "$fn")"
            read -r received handled ftotal fkinds p50 p99 flushes <<<"$f"
            if [[ $received =~ ^[0-9]+$ && $handled =~ ^[0-9]+$ ]] && ((handled + ftotal >= received)) && [[ $f == "$prev" ]]; then
                break
            fi
            prev=$f
        done
        d="$(count_lines "$work/dl")"
        dlkinds="$({ grep -o '"kind":"[^"]*"' "$work/dl" || true; } | cut -d'"' -f4 | sort | uniq -c | awk '{printf "%s%s:%s", (NR > 1 ? "," : ""), $2, $1}')"
        [[ -n $dlkinds ]] || dlkinds=none
    else
        d="-"
    fi
    stop_pids
    local flush_row="n/a"
    if [[ -n $agent ]]; then
        # The agent logs its state flushes when it stops; it flushes only while there are
        # commits, so they all fall in the row, with the first few before the commit rate
        # is known, what the cap's allowance saved up, and one on the way out.
        flushes="$(sed 's/\x1b\[[0-9;]*m//g' "$work/agent-$row_no.log" | grep -o 'flushes=[0-9]*' | tail -1 | cut -d= -f2 || true)"
        [[ -n $flushes ]] && flush_row="$(awk -v b="$flushes" -v t0="$t0" -v t1="${t_last:-$t_pub}" \
            'BEGIN { printf "%.1f", (t1 > t0) ? b / (t1 - t0) : 0 }')"
        flush_s=$flush_row
        # Paced: the rate the store keeps to, from the stats reports' `state_flushes`
        # between 2 s after the first publish and 1 s before the last output.
        if [[ -n $rate ]]; then
            local steady
            steady="$(python3 - "$work/stats" "$t0" "${t_last:-$t_pub}" <<'PY'
import json, sys
path, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
points = []
for line in open(path, errors="replace"):
    topic, _, body = line.partition(" ")
    try:
        s = json.loads(body)
    except ValueError:
        continue
    if topic != "bench/ready" and isinstance(s, dict) and "state_flushes" in s:
        ts = s["ts_ms"] / 1000
        if t0 + 2 <= ts <= t1 - 1:
            points.append((ts, s["state_flushes"]))
if len(points) >= 2 and points[-1][0] - points[0][0] >= 2:
    (a, fa), (b, fb) = points[0], points[-1]
    print(f"{(fb - fa) / (b - a):.1f}")
else:
    print("n/a")
PY
)"
            [[ $steady != n/a ]] && flush_s=$steady
        fi
    fi

    local row=$job
    [[ -n $agent ]] && row="$job $mode"
    local param=$q
    [[ -n $rate ]] && param=$rate
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$section" "$row" "$q" "${rate:--}" "$run" "$count" "$eps" "$n" "$handled" "$received" \
        "$ftotal" "$fkinds" "$d" "$dlkinds" "$cpu_us" "$rss" "$p50" "$p99" "$flush_s" >>"$work/results.tsv"
    printf '  run %s %-20s %s %-6s events/s %-7s outputs %s/%s handled %s received %s failed [%s] dead letters %s [%s] cpu µs/event %s idle RSS MB %s e2e p50/p99 µs %s/%s flushes/s %s (whole row %s) publish rate %s/s\n' \
        "$run" "$row" "$([[ -n $rate ]] && echo rate || echo QoS)" "$param" "$eps" "$n" "$count" "$handled" "$received" \
        "$fkinds" "$d" "$dlkinds" "$cpu_us" "$rss" "$p50" "$p99" "$flush_s" "$flush_row" "$pub_rate" >&2
}

model="$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "Machine: $(nproc) CPUs, ${model:-unknown CPU}, Linux $(uname -r); $(mosquitto -h 2>/dev/null | head -1 || true)"
echo "Agent: $bin (sha256 $(sha256sum "$bin" | cut -c1-12)); publisher: the same binary; modules: $root/modules/dist"
: >"$work/results.tsv"

if [[ $latency == 1 ]]; then
    echo "Latency mode: QoS 1, persistent, paced at: $rates events/s (${lat_secs} s each, at least 10 events); bursts of $events; $runs run(s), medians" >&2
    for run in $(seq 1 "$runs"); do
        for job in counter echo; do
            for r in $rates; do
                c=$((r * lat_secs))
                ((c < 10)) && c=10
                measure latency "$job" persistent 1 "$c" "$r" "$run"
            done
            measure latency "$job" persistent 1 "$events" "" "$run"
        done
    done
else
    echo "Throughput mode: $events events, QoS $qos_list, $publishers publisher(s), $runs run(s), medians" >&2
    for run in $(seq 1 "$runs"); do
        for q in $qos_list; do
            measure throughput relay - "$q" "$events" "" "$run"
            measure throughput threshold persistent "$q" "$events" "" "$run"
            measure throughput threshold on-demand "$q" "$events" "" "$run"
        done
    done
fi

python3 - "$work/results.tsv" "$latency" "$events" "$runs" "$publishers" <<'PY'
import statistics, sys
from collections import OrderedDict
path, latency, events, runs, publishers = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), sys.argv[4], sys.argv[5]
cols = ["section", "row", "qos", "rate", "run", "count", "eps", "outputs", "handled", "received",
        "ftotal", "fkinds", "dl", "dlkinds", "cpu", "rss", "p50", "p99", "flush_s"]
rows = [dict(zip(cols, l.rstrip("\n").split("\t"))) for l in open(path) if l.strip()]
groups = OrderedDict()
for r in rows:
    groups.setdefault((r["row"], r["qos"], r["rate"]), []).append(r)

def med(rs, k, fmt="{:.0f}"):
    vals = [float(r[k]) for r in rs if r[k] not in ("-", "n/a", "")]
    if not vals:
        return "n/a" if any(r[k] == "n/a" for r in rs) else "-"
    return fmt.format(statistics.median(vals))
def kinds(rs, k):
    ks = sorted({p.split(":")[0] for r in rs for p in r[k].split(",") if p not in ("-", "none", "")})
    return ", ".join(ks)
def handled_col(rs):
    out = med(rs, "outputs")
    return f"{med(rs, 'handled')} ({out}) of {rs[0]['count']}"
def dl_col(rs):
    # Dead letters received on the topic, and failed events by the agent's stats (the agent
    # drops dead letters of QoS 0 events when its connection backlog is full).
    d = med(rs, "dl")
    if d == "-":
        return d
    k = kinds(rs, "fkinds")
    return f"{d} of {med(rs, 'ftotal')} failed" + (f" ({k})" if k else "")

def eps(rs):
    return statistics.median(float(r["eps"]) for r in rs)

if not latency:
    print()
    print(f"{events} events per row ({publishers} publishers, as fast as the broker takes them), "
          f"medians of {runs} run(s); Mosquitto defaults (in-flight window 20), unlimited queue")
    print()
    print(f"| row | QoS | events/s | handled (outputs) of {events} | dead letters | % of relay | CPU µs/event | idle RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for (row, qos, _), rs in groups.items():
        relay = groups.get(("relay", qos, "-"))
        if row == "relay":
            pct = "100"
        elif relay and eps(relay) > 0:
            pct = f"{100 * eps(rs) / eps(relay):.0f}"
        else:
            pct = "-"
        name = "agent " + row.split(" ", 1)[1] if row != "relay" else row
        print(f"| {name} | {qos} | {eps(rs):.0f} | {handled_col(rs)} | {dl_col(rs)} | {pct} | "
              f"{med(rs, 'cpu', '{:.1f}')} | {med(rs, 'rss', '{:.1f}')} |")
    notes = [(k, rs) for k, rs in groups.items() if k[0] != "relay"]
    if notes:
        print()
        print("Events the agent received (its stats; fewer than published means the broker dropped them) "
              "and its own end-to-end latency, µs:")
        print()
        for (row, qos, _), rs in notes:
            print(f"- agent {row.split(' ', 1)[1]}, QoS {qos}: received {med(rs, 'received')} of {rs[0]['count']}; "
                  f"end-to-end p50 {med(rs, 'p50')}, p99 {med(rs, 'p99')}")
else:
    print()
    print(f"Paced, QoS 1, persistent; latency = the agent's end-to-end (MQTT receive to outputs handed "
          f"to the connection), µs; medians of {runs} run(s)")
    print()
    print("| job | rate (events/s) | handled (outputs) of events | dead letters | e2e p50 µs | e2e p99 µs | flushes/s | CPU µs/event |")
    print("|---|---|---|---|---|---|---|---|")
    for (row, qos, rate), rs in groups.items():
        if rate == "-":
            continue
        print(f"| {row.split(' ')[0]} | {rate} | {handled_col(rs)} | {dl_col(rs)} | {med(rs, 'p50')} | "
              f"{med(rs, 'p99')} | {med(rs, 'flush_s', '{:.1f}')} | {med(rs, 'cpu', '{:.1f}')} |")
    print()
    print(f"Burst of {events} events ({publishers} publishers), QoS 1, persistent; medians of {runs} run(s)")
    print()
    print(f"| job | events/s | handled (outputs) of {events} | dead letters | e2e p50 µs | e2e p99 µs | flushes/s | CPU µs/event | idle RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (row, qos, rate), rs in groups.items():
        if rate != "-":
            continue
        print(f"| {row.split(' ')[0]} | {eps(rs):.0f} | {handled_col(rs)} | {dl_col(rs)} | {med(rs, 'p50')} | "
              f"{med(rs, 'p99')} | {med(rs, 'flush_s', '{:.1f}')} | {med(rs, 'cpu', '{:.1f}')} | {med(rs, 'rss', '{:.1f}')} |")

# Targets, each met or missed by how much (docs/benchmarks.md says why): issue 10's rates,
# issue 25's CPU per event, flush rate and counter-to-echo ratio.
def num(rs, k):
    v = med(rs, k, "{}")
    return float(v) if v not in ("-", "n/a") else None
def verdict(name, value, ok, unit=""):
    if value is None:
        print(f"- {name}: not measured")
    else:
        print(f"- {name}: {value:.4g}{unit}: " + ("met" if ok(value) else "MISSED"))
print()
print("Targets (issues 10 and 25):")
print()
if not latency:
    for qos in ("0", "1"):
        relay = groups.get(("relay", qos, "-"))
        # Issue 25 sets CPU per event at QoS 1 only (below Node-RED's on the same job).
        for mode, share, cpu_max in (("persistent", 0.9 if qos == "0" else 1.0, None if qos == "0" else 25),
                                     ("on-demand", 0.6 if qos == "0" else 1.0, None if qos == "0" else 40)):
            rs = next((g for (row, q, _), g in groups.items() if row.endswith(mode) and q == qos), None)
            if rs is None:
                continue
            pct = 100 * eps(rs) / eps(relay) if relay and eps(relay) > 0 else None
            verdict(f"QoS {qos} {mode}: throughput >= {share * 100:.0f}% of the relay", pct,
                    lambda v, s=share: v >= s * 100, "%")
            lost = num(rs, "ftotal")
            got = num(rs, "received")
            dropped = (lost or 0) + (events - got if got is not None else 0)
            verdict(f"QoS {qos} {mode}: nothing dropped or dead-lettered", dropped, lambda v: v == 0, " events")
            if cpu_max is not None:
                verdict(f"QoS {qos} {mode}: CPU per event <= {cpu_max} us", num(rs, "cpu"),
                        lambda v, m=cpu_max: v <= m, " us")
else:
    def at(job, rate):
        return next((g for (row, _, r), g in groups.items() if row.startswith(job) and r == rate), None)
    c100 = at("counter", "100")
    verdict("counter end-to-end p50 <= 10 ms at 100 events/s",
            num(c100, "p50") / 1000 if c100 and num(c100, "p50") is not None else None,
            lambda v: v <= 10, " ms")
    c300, e300 = at("counter", "300"), at("echo", "300")
    verdict("counter at 300 events/s: at most 50 state flushes a second", num(c300, "flush_s") if c300 else None,
            lambda v: v <= 50, "/s")
    verdict("counter end-to-end p50 <= 10 ms at 300 events/s",
            num(c300, "p50") / 1000 if c300 and num(c300, "p50") is not None else None,
            lambda v: v <= 10, " ms")
    # Issue 25's paced figure is for the threshold job; echo is the same shape (one
    # output per event, no state), persistent.
    verdict("echo (persistent) at 300 events/s: CPU per event <= 120 us",
            num(e300, "cpu") if e300 else None, lambda v: v <= 120, " us")
    cb, eb = at("counter", "-"), at("echo", "-")
    verdict("counter burst throughput at QoS 1 >= 80% of echo's",
            100 * eps(cb) / eps(eb) if cb and eb and eps(eb) > 0 else None, lambda v: v >= 80, "%")
PY
