#!/usr/bin/env bash
# Verifies cross/edge-agent.service under a real systemd (PID 1 of a systemd-nspawn
# container, Debian 12), as the Pi guide describes it:
#   1. `systemctl start`: Type=notify reaches active (running) and an event gets its alert;
#   2. `systemctl reload`: SIGHUP reloads the config, the agent keeps running (same PID);
#   3. `kill -9` of the agent: systemd restarts it (Restart=on-failure) and it works again;
#   4. a config with a mistake: the agent exits 78 (EX_CONFIG) and systemd does not
#      restart it (RestartPreventExitStatus=78): the unit is failed with NRestarts unchanged.
# Not part of CI: it needs root, systemd-container and a root filesystem (debootstrap,
# about 2 minutes to download).
#
# Usage: sudo cross/systemd-check.sh [ROOT]   (default /tmp/bookworm-amd64; kept for reruns)
# Needs: debootstrap, systemd-container, mosquitto-clients, and the agent's release build
# (cargo build --release -p edge-agent) and modules/build.sh.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rootfs="${1:-/tmp/bookworm-amd64}"
agent="${CARGO_TARGET_DIR:-$repo/target}/release/edge-agent"
say() { echo "systemd-check: $*"; }
die() { echo "systemd-check: FAIL: $*" >&2; exit 1; }
[[ -x $agent ]] || die "no release build at $agent (cargo build --release -p edge-agent)"
[[ -f $repo/modules/dist/threshold-alert.wasm ]] || "$repo/modules/build.sh" >/dev/null

if [[ ! -x $rootfs/lib/systemd/systemd ]]; then
    say "debootstrap bookworm amd64 with systemd into $rootfs"
    debootstrap --include=systemd,systemd-sysv,dbus,procps --variant=minbase bookworm "$rootfs" \
        http://deb.debian.org/debian >/dev/null
fi

# procps has /bin/kill, which the unit's ExecReload runs (Raspberry Pi OS has it).
# Install as cross/install.sh does on a Pi: binary, unit, config, module, system user.
install -m 0755 "$agent" "$rootfs/usr/bin/edge-agent"
install -m 0644 "$repo/cross/edge-agent.service" "$rootfs/etc/systemd/system/edge-agent.service"
mkdir -p "$rootfs/usr/lib/edge-agent/modules" "$rootfs/etc/edge-agent"
install -m 0644 "$repo/modules/dist/threshold-alert.wasm" "$rootfs/usr/lib/edge-agent/modules/"
chroot "$rootfs" sh -c 'id edge-agent >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin edge-agent'
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
good_config() {
    cat >"$rootfs/etc/edge-agent/config.toml" <<CONFIG
[agent]
id = "systemd"
data_dir = "/var/lib/edge-agent"
[broker]
url = "mqtt://127.0.0.1:$port"
embedded = true
[[function]]
name = "threshold"
module = "/usr/lib/edge-agent/modules/threshold-alert.wasm"
topics = ["sensors/+/temperature"]
[function.config]
threshold = "30"
alert_topic = "alerts/{1..}"
CONFIG
}
good_config

# Boot the container (sharing the host's network, so the host publishes to its broker).
systemd-nspawn -q -D "$rootfs" --boot --register=no --keep-unit >/tmp/systemd-check-console.log 2>&1 &
nspawn=$!
trap 'kill "$nspawn" 2>/dev/null || true; wait "$nspawn" 2>/dev/null || true' EXIT
pid1=""
for _ in $(seq 1 100); do
    pid1=$(pgrep -P "$nspawn" -x systemd || true)
    [[ -n $pid1 ]] && break
    sleep 0.1
done
[[ -n $pid1 ]] || die "the container's systemd did not start"
inside() { nsenter -t "$pid1" -a "$@"; }
for _ in $(seq 1 100); do
    state=$(inside systemctl is-system-running 2>/dev/null || true)
    [[ $state == running || $state == degraded ]] && break
    sleep 0.2
done
say "systemd $(inside systemctl --version | head -n 1 | cut -d' ' -f2) is PID 1 in the container: $state"
show() { inside systemctl show edge-agent -p "$1" --value; }

alert() {
    mosquitto_sub -p "$port" -t 'alerts/#' -v -C 1 -W 20 >/tmp/systemd-check-sub.out &
    local sub=$!
    sleep 0.5
    mosquitto_pub -p "$port" -q 1 -t sensors/kitchen/temperature -m '{"value": 31.5}'
    wait "$sub" || die "no alert within 20 s ($1)"
    grep -qxF 'alerts/kitchen/temperature {"sensor":"kitchen","value":31.5,"threshold":30}' \
        /tmp/systemd-check-sub.out || die "unexpected output: $(cat /tmp/systemd-check-sub.out)"
}

# 1. start: Type=notify returns once the agent said READY=1.
inside systemctl daemon-reload
inside systemctl start edge-agent || die "start failed: $(inside journalctl -u edge-agent --no-pager | tail -n 5)"
[[ $(show ActiveState)/$(show SubState) == active/running ]] || die "not running: $(show ActiveState)/$(show SubState)"
main=$(show MainPID)
alert "after start"
say "start: active (running) as $(show User), PID $main, READY from the agent; an event got its alert"

# 2. reload: SIGHUP, same process.
inside systemctl reload edge-agent
sleep 1
[[ $(show MainPID) == "$main" && $(show ActiveState) == active ]] || die "reload did not keep the agent running"
inside journalctl -u edge-agent --no-pager | grep -q 'reload' || die "no reload in the journal"
say "reload: same PID $main, journal: $(inside journalctl -u edge-agent --no-pager | grep -i reload | tail -n 1 | cut -c1-140)"

# 3. kill -9: restarted after RestartSec.
# MainPID is a PID of the container's namespace: kill it from in there.
inside kill -KILL "$main"
for _ in $(seq 1 100); do
    [[ $(show NRestarts) == 1 && $(show SubState) == running ]] && break
    sleep 0.1
done
[[ $(show NRestarts) == 1 && $(show SubState) == running ]] || die "not restarted after kill -9: $(show SubState), NRestarts $(show NRestarts)"
alert "after the restart"
say "kill -9: restarted by systemd (NRestarts=1, new PID $(show MainPID)), and handles events again"

# 4. a bad config: exit 78, no restart.
sed -i 's/^threshold = "30"/threshold = "30"\ntypo_key = 1/; s/^embedded = true/embeded = true/' \
    "$rootfs/etc/edge-agent/config.toml"
inside systemctl restart edge-agent || true
sleep 6 # longer than RestartSec=2: a restart would have happened by now
[[ $(show ActiveState) == failed ]] || die "expected failed, got $(show ActiveState)/$(show SubState)"
[[ $(show ExecMainStatus) == 78 ]] || die "expected exit status 78, got $(show ExecMainStatus)"
[[ $(show NRestarts) == 0 ]] || die "systemd restarted a bad config $(show NRestarts) times"
say "bad config: exit 78, unit failed, NRestarts=0 (not retried); journal:"
inside journalctl -u edge-agent --no-pager -o cat | grep -iE 'error|unknown' | tail -n 3 | sed 's/^/  /'
good_config
inside systemctl poweroff || true
wait "$nspawn" 2>/dev/null || true
trap - EXIT
say "PASS"
