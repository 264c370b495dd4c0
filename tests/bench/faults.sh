#!/usr/bin/env bash
# Benchmark: the fault suite's stream faults struck again and again within one stream, for
# issue 23's targets (numbers in docs/state.md). Each line runs one test of
# tests/integration/faults.rs with EDGE_AGENT_FAULT_ROUNDS set, so a run checks the same
# thing as the suite (both counters, persistent and on demand, end at exactly the number of
# distinct events sent; the store opens after each cut), only with more faults:
#   - 10 graceful Mosquitto restarts (with persistence) in a 3,000-event QoS 1 backlog,
#     then 3,000 more events;
#   - 10 `kill -9` of the agent in a 3,000-event backlog;
#   - 5 power cuts (the agent frozen, its ext4 disk image copied as a cut leaves it, the
#     agent killed, a new one started on the copy), then 5 more on XFS and on btrfs
#     where they can be made (EDGE_AGENT_FAULT_FS);
# and, RUNS times, the events `echo` handles twice across one broker restart, and an ext4
# error on the data directory's disk (mounted errors=remount-ro) followed by fsck: the
# error must land inside a flush to show whether the store believes an fsync that ext4
# answered wrongly, which one run does only now and then.
#
# Usage: tests/bench/faults.sh [RUNS]   (default 5; as root: the power cuts mount loop devices)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
runs=${1:-5}

run() { # run ROUNDS TEST: the test's verdict and what it printed
    local rounds=$1 test=$2 t=$SECONDS
    if EDGE_AGENT_FAULT_ROUNDS=$rounds EDGE_AGENT_REQUIRE_FAULTS=1 \
        cargo test -q -p edge-agent --test integration -- --exact "faults::$test" --nocapture \
        >"$log" 2>&1; then
        printf '%-70s rounds %2d  ok    %3d s\n' "$test" "$rounds" $((SECONDS - t))
    else
        printf '%-70s rounds %2d  FAILED %3d s\n' "$test" "$rounds" $((SECONDS - t))
        grep -E 'counted|panicked' "$log" | head -5
        failed=1
    fi
}

log=$(mktemp)
trap 'rm -f "$log"' EXIT
failed=0
cargo test -q -p edge-agent --test integration --no-run
echo "Machine: $(nproc) CPUs, $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $(mosquitto -h 2>/dev/null | head -1 || true)"
run 10 a_broker_restart_with_persistence_counts_every_event_once
run 10 kill_9_mid_stream_counts_every_event_once
run 5 a_power_cut_mid_stream_loses_nothing_acknowledged_and_counts_once
for fs in xfs btrfs; do
    if grep -qw "$fs" /proc/filesystems && command -v "mkfs.$fs" >/dev/null; then
        echo "on $fs:"
        export EDGE_AGENT_FAULT_FS=$fs
        run 5 a_power_cut_mid_stream_loses_nothing_acknowledged_and_counts_once
        unset EDGE_AGENT_FAULT_FS
    fi
done
for _ in $(seq 1 "$runs"); do
    run 1 a_broker_restart_loses_no_stateless_event
    grep -E 'handled twice across' "$log" | sed 's/^/    /'
done
for _ in $(seq 1 "$runs"); do
    run 1 a_data_directory_turned_read_only_pauses_with_its_cause_and_counts_once_after_fsck
done
exit "$failed"
