#!/usr/bin/env bash
# Boots an image made by cross/image.sh under qemu-system-aarch64 (`-M virt -cpu max`,
# 512 MB, the image's own kernel and initrd from its FAT partition, its root file system
# on a virtio disk) and checks, on a copy of it (the image is not changed):
#   1. first boot: the settings file written onto the copy's FAT partition (hostname,
#      an SSH key made for the check, mqtt_lan=yes) is applied, the root grows into the
#      larger disk, no unit failed; the agent's retained `online` arrives through a
#      forwarded port (the boot-to-online time is printed) and an event on
#      sensors/kitchen/temperature brings its alert on alerts/kitchen/temperature (the
#      image's config must have configs/device.toml's `threshold` function);
#   2. memory under the guest's kernel, for the three example functions (threshold-alert,
#      echo, counter) all on demand, then all persistent: the agent's RSS idle, and its
#      peak (VmHWM) and RSS samples under LOAD events/s (default 1000) spread over the
#      three, for SECS seconds (default 20), with the outputs counted;
#   3. `edge-agent compare --quick` inside the VM (its memory figures; its CPU and latency
#      figures are those of an emulated CPU, not a Pi's);
#   4. counter's count is carried to a reboot: `systemctl poweroff`, the VM must exit by
#      itself (a clean shutdown), boot again, and the count goes on.
#
# Usage: sudo cross/image-check.sh IMAGE [--skip-compare] [--keep]
#   --skip-compare  leave out step 3 (the longest, a few minutes emulated)
#   --keep          keep the work folder (disk copy, console logs, outputs) and print it
# Environment: LOAD (events/s, default 1000), SECS (default 20), VM_SMP (default 2
# vCPUs: this machine has 2 cores; a Pi has 4), BOOT_TIMEOUT (default 300 s).
# Needs: python3 (for the QEMU monitor), qemu-system-arm, mtools, fdisk, mosquitto-clients, openssh-client (installed
# when missing), and the host's agent for its publisher (cargo build -p edge-agent).
# Exit status: 64 usage, 66 the image is missing or unsuitable, 69 a tool is missing,
# 1 a check failed. Every wait has a timeout.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=lib.sh
source "$repo/cross/lib.sh"
me=image-check

usage() { sed -n '2,28s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2; exit 64; }
say() { echo "$me: $*"; }
die() { echo "$me: FAIL: $1" >&2; exit "${2:-1}"; }

image="" skip_compare="" keep=""
while (($#)); do
    case $1 in
        --skip-compare) skip_compare=yes ;;
        --keep) keep=yes ;;
        -h | --help) usage ;;
        -*) die "unknown option $1 (--help for usage)" 64 ;;
        *) [[ -z $image ]] || die "one image only (--help for usage)" 64; image=$1 ;;
    esac
    shift
done
[[ -n $image ]] || usage
[[ -f $image ]] || die "image '$image' not found" 66
load=${LOAD:-1000} secs=${SECS:-20} smp=${VM_SMP:-2} boot_timeout=${BOOT_TIMEOUT:-300}
host_agent=""
for b in "${CARGO_TARGET_DIR:-$repo/target}"/{release,debug}/edge-agent; do
    [[ -x $b ]] && { host_agent=$b; break; }
done
[[ -n $host_agent ]] || die "no host agent for the publisher: cargo build -p edge-agent" 69

missing=()
for tool in qemu-system-aarch64:qemu-system-arm mcopy:mtools sfdisk:fdisk mosquitto_sub:mosquitto-clients \
    ssh:openssh-client; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null ||
        die "could not install ${missing[*]}" 69
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/image-check.XXXXXX")
qemu_pid=""
cleanup() {
    [[ -z $qemu_pid ]] || kill "$qemu_pid" 2>/dev/null || true
    jobs -p | xargs -r kill 2>/dev/null || true
    if [[ -n $keep ]]; then echo "$me: kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# --- the disk: a copy, 1 GiB larger than the image (a card larger than the image) ---------
disk=$work/disk.img
cp --sparse=always "$image" "$disk"
truncate -s +1G "$disk"
fat_start=$(sfdisk -d "$disk" | awk -F'[=,]' '/^[^ ]*1 :/ { gsub(/ /, "", $2); print $2 }')
[[ -n $fat_start ]] || die "no partition table in '$image'" 66
fat="$disk@@$((fat_start * 512))"
mdir -b -i "$fat" ::/ >"$work/fat.list" 2>/dev/null || die "'$image' has no FAT first partition" 66
kernel=$(grep -o 'vmlinuz-[^ ]*' "$work/fat.list" | sort -V | tail -n 1)
initrd=$(grep -o 'initrd.img-[^ ]*' "$work/fat.list" | sort -V | tail -n 1)
[[ -n $kernel && -n $initrd ]] || die "no vmlinuz-*/initrd.img-* on the FAT partition (not made by cross/image.sh?)" 66
grep -q 'edge-agent-settings' "$work/fat.list" || die "no edge-agent-settings.txt on the FAT partition" 66
mcopy -n -i "$fat" "::$kernel" "::$initrd" ::cmdline.txt "$work/"
# The Pi's consoles (ttyS1, tty0) become virt's PL011 (ttyAMA0); the rest of the image's
# own command line stays.
append="$(tr -d '\r\n' <"$work/cmdline.txt" | sed 's/console=[^ ]*//g') console=ttyAMA0"

ssh-keygen -q -t ed25519 -N '' -C image-check -f "$work/key"
printf '%s\r\n' "hostname=edge-check" "ssh_key=$(cat "$work/key.pub")" "mqtt_lan=yes" >"$work/settings.txt"
mcopy -o -i "$fat" "$work/settings.txt" ::edge-agent-settings.txt

ssh_port=$(free_port) || die "no free port"
mqtt_port=$(free_port) || die "no free port"
[[ $ssh_port != "$mqtt_port" ]] || mqtt_port=$(free_port)
vm() {
    timeout 120 ssh -q -i "$work/key" -p "$ssh_port" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
        -o ConnectTimeout=20 -o BatchMode=yes root@127.0.0.1 "$@"
}
sub() { mosquitto_sub -h 127.0.0.1 -p "$mqtt_port" "$@"; }
pub() { mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -q 1 "$@"; }

boot() { # boot N: starts the VM, waits for `online`, sets boot_secs
    local n=$1 deadline t0
    say "boot $n: qemu-system-aarch64 -M virt -cpu max -m 512 -smp $smp, $kernel"
    # pauth-impdef: -cpu max with a cheaper pointer-authentication algorithm than the
    # architected QARMA, which Debian's arm64 code (built with branch protection) would
    # spend much of the emulation in. It changes no figure but time.
    # A second interface without a carrier (eth1, its link set down before the kernel
    # finds it), as a Pi has: the Wi-Fi when it uses Ethernet, or the other way round.
    qemu-system-aarch64 -M virt -cpu max,pauth-impdef=on -smp "$smp" -m 512 -display none \
        -monitor "unix:$work/monitor-$n,server,nowait" \
        -kernel "$work/$kernel" -initrd "$work/$initrd" -append "$append" \
        -drive "if=none,id=hd,file=$disk,format=raw" -device virtio-blk-pci,drive=hd \
        -netdev "user,id=net0,hostfwd=tcp:127.0.0.1:$ssh_port-:22,hostfwd=tcp:127.0.0.1:$mqtt_port-:1883" \
        -device virtio-net-pci,netdev=net0,romfile= \
        -netdev user,id=net1,restrict=on -device virtio-net-pci,netdev=net1,romfile= \
        -device virtio-rng-pci \
        -serial "file:$work/console-$n.log" </dev/null >"$work/qemu-$n.log" 2>&1 &
    qemu_pid=$!
    t0=$(date +%s.%N)
    for _ in $(seq 1 50); do [[ -S $work/monitor-$n ]] && break; sleep 0.1; done
    python3 - "$work/monitor-$n" <<'PY' || die "could not set eth1's link down through the QEMU monitor"
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"set_link net1 off\n")
time.sleep(0.5)
PY
    deadline=$((SECONDS + boot_timeout))
    while ((SECONDS < deadline)); do
        kill -0 "$qemu_pid" 2>/dev/null || die "qemu exited during boot $n: $(tail -n 5 "$work/qemu-$n.log" "$work/console-$n.log")"
        # Every retained status (an earlier run's agent id may have left an `offline`).
        if { sub -t '+/+/status' -W 3 2>/dev/null || true; } | grep -q '"status":"online"'; then
            boot_secs=$(echo "$(date +%s.%N) - $t0" | bc)
            say "boot $n: the agent's retained online after $(printf %.0f "$boot_secs") s (from starting the emulated kernel)"
            return 0
        fi
        sleep 2
    done
    die "no retained online within $boot_timeout s (boot $n); console: $(tail -n 15 "$work/console-$n.log")"
}

poweroff() { # clean shutdown: the VM must exit by itself
    vm systemctl poweroff || true
    for _ in $(seq 1 120); do
        kill -0 "$qemu_pid" 2>/dev/null || { wait "$qemu_pid" || true; qemu_pid=""; return 0; }
        sleep 1
    done
    die "the VM did not power off within 120 s"
}

expect() { # expect TOPIC-FILTER EXPECTED-LINE PUBLISH-ARGS...: publishes, waits 30 s for the line
    local filter=$1 expected=$2
    shift 2
    sub -t "$filter" -v -C 1 -W 30 >"$work/sub.out" &
    local s=$!
    sleep 1
    pub "$@"
    wait "$s" || die "no message on $filter within 30 s (expected $expected)"
    grep -qxF "$expected" "$work/sub.out" || die "unexpected on $filter: $(cat "$work/sub.out"), expected $expected"
}

# --- 1. first boot -------------------------------------------------------------------------------
boot 1
first_boot_secs=$boot_secs
expect 'alerts/#' 'alerts/kitchen/temperature {"sensor":"kitchen","value":31.5,"threshold":30}' \
    -t sensors/kitchen/temperature -m '{"value": 31.5}'
say "event: sensors/kitchen/temperature {\"value\": 31.5} -> alerts/kitchen/temperature, through the image's config"
for _ in $(seq 1 30); do vm true 2>/dev/null && break; sleep 2; done
[[ $(vm hostname) == edge-check ]] || die "hostname not applied: $(vm hostname)"
vm test -f /boot/firmware/edge-agent-settings.applied || die "settings file not renamed after applying"
vm journalctl -b -u edge-agent-firstboot --no-pager -o cat | sed 's/^/  /'
failed=$(vm systemctl --failed --no-legend --plain | awk '{ print $1 }' | tr '\n' ' ')
[[ -z $failed ]] || die "failed units: $failed"
say "first boot: hostname edge-check, SSH key accepted, no failed unit; $(vm findmnt -no SOURCE,OPTIONS / | cut -d, -f1) root"
# Where the boot's time went (the emulated clock): the kernel and user space, and what the
# agent waited for.
say "boot 1 by systemd: $(vm systemd-analyze time | head -n 1)"
vm systemd-analyze critical-chain edge-agent.service | sed -n '3,$s/^/  /p'
vm lsblk -no NAME,SIZE,MOUNTPOINT | sed 's/^/  /'
say "guest: $(vm uname -r), $(vm free -m | awk '/^Mem:/ { print $2 " MiB total, " $7 " MiB available" }'), agent $(vm edge-agent --version)"
say "allocator: $(vm journalctl -b -u edge-agent --no-pager -o cat | grep -o 'allocator=[A-Za-z]*' | head -n 1)"

# --- 2. memory per model -------------------------------------------------------------------------
for m in threshold-alert echo counter; do
    vm test -f "/usr/lib/edge-agent/modules/$m.cwasm" || die "the image has no /usr/lib/edge-agent/modules/$m.cwasm (image.sh --modules)" 66
done
three() { # three MODE: the config of the three examples in MODE, on the image's broker
    cat <<CONFIG
[agent]
id = "image-check"
data_dir = "/var/lib/edge-agent"
[broker]
url = "mqtt://127.0.0.1:1883"
embedded = false
clean_session = false
[[function]]
name = "threshold"
module = "/usr/lib/edge-agent/modules/threshold-alert.cwasm"
mode = "$1"
topics = ["sensors/+/temperature"]
[function.config]
threshold = "30"
alert_topic = "alerts/{1..}"
[[function]]
name = "echo"
module = "/usr/lib/edge-agent/modules/echo.cwasm"
mode = "$1"
topics = ["echo/#"]
[function.config]
out_topic = "echoed/{topic}"
[[function]]
name = "counter"
module = "/usr/lib/edge-agent/modules/counter.cwasm"
mode = "$1"
topics = ["counter/#"]
[function.config]
out_topic = "counts/{1..}"
CONFIG
}
status_of() { vm "grep -E '^(VmRSS|VmHWM)' /proc/\$(systemctl show -p MainPID --value edge-agent)/status" | awk '{ printf "%s %.1f MiB (%.1f MB)  ", $1, $2 / 1024, $2 * 1.024 / 1000 }'; }
# Where the resident memory is: the largest mappings by RSS (heap, the binary, anonymous).
breakdown() {
    vm "pid=\$(systemctl show -p MainPID --value edge-agent); grep Threads /proc/\$pid/status;
        awk '/^[0-9a-f]+-/ { n = \$6 == \"\" ? \"[anonymous]\" : \$6 } /^Rss:/ { r[n] += \$2 }
             END { for (n in r) if (r[n] >= 256) printf \"%6.1f MiB %s\\n\", r[n] / 1024, n }' /proc/\$pid/smaps | sort -rn | head -n 6" |
        sed 's/^/    /'
}
declare -A idle peak delivered
per=$((load / 3))
for mode in on-demand persistent; do
    # An agent id (and so MQTT client id) per model: no backlog from the last one's load.
    # On a read-only root (image.sh --read-only-root), as an administrator would: remount
    # it writable for the change, then read-only again.
    three "$mode" | sed "s/^id = .*/id = \"image-check-$mode\"/" |
        vm "ro=\$(findmnt -no OPTIONS / | grep -c '^ro'); [ \$ro = 0 ] || mount -o remount,rw /;
            cat >/etc/edge-agent/config.toml; [ \$ro = 0 ] || mount -o remount,ro /"
    vm systemctl restart edge-agent || die "the agent did not start with three $mode functions: $(vm journalctl -u edge-agent -n 5 --no-pager -o cat)"
    sleep 20
    idle[$mode]=$(status_of)
    say "$mode, idle 20 s after start: ${idle[$mode]}"
    breakdown
    sub -t 'alerts/#' -t 'echoed/#' -t 'counts/#' -t 'edge-agent/+/dead-letter' -v >"$work/load-$mode.out" &
    counter_sub=$!
    vm "pid=\$(systemctl show -p MainPID --value edge-agent); for i in \$(seq $((secs + 10))); do awk '/^VmRSS/ { print \$2 }' /proc/\$pid/status; sleep 1; done" >"$work/rss-$mode.txt" &
    sampler=$!
    sleep 1
    pubs=()
    # The load is offered for SECS seconds, then the publishers are stopped: under
    # emulation the agent handles far fewer than LOAD events/s, so it runs saturated (every
    # slot busy, its queues full, the rest waiting in Mosquitto), which bounds from above
    # what it holds at LOAD events/s on a CPU that keeps up.
    for spec in "sensors/load/temperature:{\"value\": 31}" "echo/load:{\"seq\": {seq}}" "counter/load:{\"seq\": {seq}}"; do
        timeout "$secs" "$host_agent" publish --broker "mqtt://127.0.0.1:$mqtt_port" --topic "${spec%%:*}" \
            --payload "${spec#*:}" --count $((per * secs)) --rate "$per" >>"$work/publish-$mode.log" 2>&1 &
        pubs+=($!)
    done
    t0=$SECONDS
    for p in "${pubs[@]}"; do
        rc=0
        wait "$p" || rc=$?
        ((rc == 0 || rc == 124)) || die "a publisher failed ($mode): $(tail -n 3 "$work/publish-$mode.log")"
    done
    sent_secs=$((SECONDS - t0))
    wait "$sampler" || true
    sleep 5
    kill "$counter_sub" 2>/dev/null || true
    wait "$counter_sub" 2>/dev/null || true
    peak[$mode]=$(status_of)
    out=$(grep -cv dead-letter "$work/load-$mode.out" || true)
    dead=$(grep -c dead-letter "$work/load-$mode.out" || true)
    max_rss=$(sort -n "$work/rss-$mode.txt" | tail -n 1)
    delivered[$mode]="$out outputs and $dead dead letters in $((sent_secs + 5)) s, $((per * 3)) events/s offered for $sent_secs s"
    say "$mode, ${per}x3 events/s offered for $secs s: ${delivered[$mode]}; RSS samples max $(awk -v k="${max_rss:-0}" 'BEGIN { printf "%.1f", k / 1024 }') MiB; ${peak[$mode]}"
    breakdown
done
# The persistent config stays for the reboot (step 4 needs counter); the disk is a copy.

# --- 3. compare --quick inside the VM ------------------------------------------------------------
if [[ -z $skip_compare ]]; then
    vm systemctl stop edge-agent
    say "compare --quick inside the VM (the service stopped meanwhile; up to 20 min emulated)"
    t0=$SECONDS
    timeout 1200 ssh -q -i "$work/key" -p "$ssh_port" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
        -o BatchMode=yes root@127.0.0.1 'cd /tmp && edge-agent compare --quick --json /tmp/compare.json' \
        >"$work/compare.txt" 2>&1 || die "compare --quick failed or timed out: $(tail -n 10 "$work/compare.txt")"
    vm cat /tmp/compare.json >"$work/compare.json"
    say "compare --quick: done in $((SECONDS - t0)) s; its memory lines (CPU and latency there are an emulated CPU's, not a Pi's):"
    grep -iE 'rss|memory|MB' "$work/compare.txt" | head -n 20 | sed 's/^/  /'
    vm systemctl start edge-agent
fi

# --- 4. state across a clean reboot --------------------------------------------------------------
topic="counter/reboot-$RANDOM"
before=""
for i in 1 2 3; do
    sub -t "counts/${topic#counter/}" -C 1 -W 30 >"$work/count.out" &
    s=$!
    sleep 1
    pub -t "$topic" -m "{\"n\": $i}"
    wait "$s" || die "no count for $topic"
    before=$(grep -o '"count":[0-9]*' "$work/count.out" | cut -d: -f2)
done
[[ $before == 3 ]] || die "counter counted $before, expected 3"
poweroff
grep -q 'reboot: Power down' "$work/console-1.log" || die "no 'reboot: Power down' on the console: not a clean shutdown"
say "clean shutdown (systemctl poweroff; the console ends with 'reboot: Power down')"
boot 2
sub -t "counts/${topic#counter/}" -C 1 -W 30 >"$work/count.out" &
s=$!
sleep 1
pub -t "$topic" -m '{"n": 4}'
wait "$s" || die "no count after the reboot"
after=$(grep -o '"count":[0-9]*' "$work/count.out" | cut -d: -f2)
[[ $after == 4 ]] || die "the count did not survive the reboot: $after after 3 before"
[[ $(vm hostname) == edge-check ]] || die "hostname lost at the reboot"
say "reboot: counter went on from 3 to 4 (its state survived); boot 2 to online in $(printf %.0f "$boot_secs") s"
poweroff

say "PASS: boot to online $(printf %.0f "$first_boot_secs") s; idle on-demand ${idle[on-demand]}; idle persistent ${idle[persistent]}"
say "  under load: on-demand ${peak[on-demand]} (${delivered[on-demand]}); persistent ${peak[persistent]} (${delivered[persistent]})"
