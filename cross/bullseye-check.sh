#!/usr/bin/env bash
# Proves, on a bullseye-era system (Debian 11, glibc 2.31: what Raspberry Pi OS bullseye
# has), that the static aarch64 musl build runs and handles an event, and that the glibc
# build cannot start there (it needs glibc 2.34). Not part of CI: it needs root and
# downloads a root filesystem (about 2 minutes here).
#
#   1. debootstrap --foreign --arch=arm64 --variant=minbase bullseye ROOT: bullseye's
#      arm64 packages unpacked (its /lib, /etc, /usr); the second stage, which would run
#      arm64 code to configure them, is not needed for that;
#   2. copies qemu-aarch64-static, both device builds and a threshold-alert precompiled
#      for aarch64 into ROOT;
#   3. in `chroot ROOT` (so that bullseye's files are the only ones there): the glibc
#      build must fail with "GLIBC_2.3x not found"; the musl build must pass `check`, start
#      with its embedded broker, turn {"value": 31.5} into the alert, and exit 0 on SIGTERM.
#
# Usage: sudo cross/bullseye-check.sh [ROOT]   (default /tmp/bullseye-arm64; kept for reruns)
# Needs: debootstrap, qemu-user-static, mosquitto-clients (apt), and the builds:
#   cross/build.sh aarch64 device && CARGO_FLAGS='--features broker' cross/build.sh aarch64-musl device \
#       && cargo build -p edge-agent
#   (the musl build with the embedded broker, which the device build leaves out: the chroot
#   has no Mosquitto)
set -euo pipefail
root_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rootfs="${1:-/tmp/bullseye-arm64}"
target="${CARGO_TARGET_DIR:-$root_dir/target}"
gnu="$target/aarch64-unknown-linux-gnu/device/edge-agent"
musl="$target/aarch64-unknown-linux-musl/device/edge-agent"
host="$target/debug/edge-agent"
say() { echo "bullseye-check: $*"; }
die() { echo "bullseye-check: FAIL: $*" >&2; exit 1; }
for f in "$gnu" "$musl" "$host" /usr/bin/qemu-aarch64-static; do
    [[ -x $f ]] || die "missing $f (see Usage)"
done
[[ -f $root_dir/modules/dist/threshold-alert.wasm ]] || "$root_dir/modules/build.sh" >/dev/null

if [[ ! -f $rootfs/etc/debian_version ]]; then
    say "debootstrap bullseye arm64 into $rootfs"
    debootstrap --foreign --arch=arm64 --variant=minbase bullseye "$rootfs" http://deb.debian.org/debian >/dev/null
fi
say "root filesystem: Debian $(cat "$rootfs/etc/debian_version"), $(basename "$(ls "$rootfs"/lib/aarch64-linux-gnu/libc-*.so)")"

app="$rootfs/opt/edge-agent"
rm -rf "$app"
mkdir -p "$app/modules" "$app/data"
cp /usr/bin/qemu-aarch64-static "$rootfs/usr/bin/qemu-aarch64-static.new"
mv "$rootfs/usr/bin/qemu-aarch64-static.new" "$rootfs/usr/bin/qemu-aarch64-static"
cp "$gnu" "$app/edge-agent-gnu"
cp "$musl" "$app/edge-agent"
"$host" precompile --target aarch64-unknown-linux-gnu --out "$app/modules" \
    "$root_dir/modules/dist/threshold-alert.wasm" >/dev/null
in_root() { chroot "$rootfs" /usr/bin/qemu-aarch64-static "$@"; }

out=$(in_root /opt/edge-agent/edge-agent-gnu --version 2>&1) && die "the glibc build started: $out"
grep -q "GLIBC_2.3[2-9]' not found" <<<"$out" || die "the glibc build failed otherwise: $out"
say "glibc build: refuses to start, as expected: $(grep -o "version \`GLIBC_2.34' not found" <<<"$out" | head -n 1)"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$app/config.toml" <<CONFIG
[agent]
id = "bullseye"
data_dir = "data"
[broker]
url = "mqtt://127.0.0.1:$port"
embedded = true
[[function]]
name = "threshold"
module = "modules/threshold-alert.cwasm"
topics = ["sensors/+/temperature"]
timeout_ms = 5000
[function.config]
threshold = "30"
alert_topic = "alerts/{1..}"
CONFIG
say "musl build: $(in_root /opt/edge-agent/edge-agent --version)"
say "check: $(in_root /opt/edge-agent/edge-agent check --config /opt/edge-agent/config.toml 2>&1 | tail -n 1)"
# Not through in_root: SIGTERM below must reach the agent, not a subshell.
chroot "$rootfs" /usr/bin/qemu-aarch64-static /opt/edge-agent/edge-agent run \
    --config /opt/edge-agent/config.toml >"$app/agent.log" 2>&1 &
agent=$!
trap 'kill -KILL $agent 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do grep -q subscribed "$app/agent.log" && break; sleep 0.2; done
grep -q subscribed "$app/agent.log" || die "the agent did not start: $(tail -n 5 "$app/agent.log")"
mosquitto_sub -p "$port" -t 'alerts/#' -v -C 1 -W 30 >"$app/sub.out" &
sub=$!
sleep 0.5
mosquitto_pub -p "$port" -q 1 -t sensors/kitchen/temperature -m '{"value": 31.5}'
wait "$sub" || die "no alert within 30 s"
expected='alerts/kitchen/temperature {"sensor":"kitchen","value":31.5,"threshold":30}'
grep -qxF "$expected" "$app/sub.out" || die "unexpected output: $(cat "$app/sub.out")"
say "run: $expected"
kill -TERM "$agent"
rc=0
wait "$agent" || rc=$?
((rc == 0)) || die "exit status $rc after SIGTERM"
trap - EXIT
say "PASS: the static musl build runs on bullseye's glibc 2.31 root; the glibc build does not"
