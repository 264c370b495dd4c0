# shellcheck shell=bash
# Shared set-up of the benchmarks in tests/bench (sourced, not run). Sourcing it sets
#   root   the repository
#   work   a temporary folder, removed at exit
#   pids   processes to kill at exit (append with pids+=("$!"))
# and defines free_port (cross/lib.sh), die, and start_mosquitto. A script with more to
# undo at exit defines bench_cleanup before sourcing this file; it runs after the kills.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=../../cross/lib.sh
source "$root/cross/lib.sh"

die() { echo "error: $*" >&2; exit 1; }

work="$(mktemp -d)"
pids=()
_bench_cleanup() {
    local p
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if declare -F bench_cleanup >/dev/null; then bench_cleanup; fi
    rm -rf "$work"
}
trap _bench_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_mosquitto [CONF_LINE...]: a fresh Mosquitto on a free port of 127.0.0.1, anonymous,
# with the extra mosquitto.conf lines given; sets $port and $mosquitto_pid, and returns once
# it answers (or dies with its log).
start_mosquitto() {
    port="$(free_port)" || die "no free port"
    {
        printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port"
        printf '%s\n' "$@"
    } >"$work/mosquitto.conf"
    mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
    mosquitto_pid=$!
    pids+=("$mosquitto_pid")
    for _ in $(seq 1 50); do
        mosquitto_pub -h 127.0.0.1 -p "$port" -t bench/probe -n 2>/dev/null && return 0
        kill -0 "$mosquitto_pid" 2>/dev/null || break
        sleep 0.1
    done
    die "mosquitto did not start on port $port: $(cat "$work/mosquitto.log")"
}
