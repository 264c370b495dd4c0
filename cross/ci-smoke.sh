#!/usr/bin/env bash
# Smoke test of the ARM device build, run by CI (.ci/run): for each architecture
#   1. installs the cross toolchain and qemu-user if missing (cross/setup.sh);
#   2. builds the device binary (no Cranelift) for it (cross/build.sh ARCH device);
#   3. precompiles modules/dist/threshold-alert.wasm for it with the host agent
#      (`cargo build -p edge-agent`, the dev build the tests use anyway);
#   4. starts a Mosquitto on the host on a free port (the device build has no embedded
#      broker: devices run Mosquitto), runs that binary under qemu-user with a config that
#      loads the `.cwasm` (pinned by sha256) from a device-like working dir:
#      `check` must exit 0, `run` must log `subscribed`;
#   5. publishes {"value": 31.5} to sensors/kitchen/temperature from the host and expects
#      exactly {"sensor":"kitchen","value":31.5,"threshold":30} on alerts/kitchen/temperature;
#   6. sends a hostile guest (misbehave, persistent) a panic, an endless loop and a memory
#      grab, then "ok": three dead letters (trap, timeout, memory-limit), then its reply;
#   7. sends SIGTERM and expects exit status 0;
#   (aarch64: steps 3-5 also with the Python threshold-alert beside it, precompiled; its
#   alert is expected too;)
#   (aarch64-musl, armv7-musl: the static builds, run with an empty sysroot, and first
#   checked to have no dynamic section: they need no glibc on the device;)
#   8. (aarch64) runs `compare --quick` with the device build and precompiled echo and
#      counter, each model's agent under qemu, and checks its JSON: every model, nothing
#      lost, a verdict per function (issue 11).
# Every wait has a timeout; the last line is `qemu-smoke: N passed, N failed`.
#
# Usage: cross/ci-smoke.sh [aarch64] [armv7] [aarch64-musl] [armv7-musl]   (default: $CROSS_SMOKE_ARCHES, else aarch64)
# Needs mosquitto and mosquitto-clients (mosquitto_sub). Honours CARGO_TARGET_DIR, CROSS_HOST_AGENT (a
# host build of the agent to precompile with, instead of building one), and CROSS_PROFILE (the
# Cargo profile of the device builds; default `device`; CI uses `smoke`, which builds
# faster).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
self="$root/cross/$(basename "${BASH_SOURCE[0]}")"
cd "$root"

# Seconds allowed for each wait.
START_TIMEOUT=${START_TIMEOUT:-90} # agent under qemu: load, subscribe
ALERT_TIMEOUT=${ALERT_TIMEOUT:-30} # from publish to alert
STOP_TIMEOUT=${STOP_TIMEOUT:-30}   # SIGTERM to exit
COMPARE_TIMEOUT=${COMPARE_TIMEOUT:-300} # compare --quick under qemu (about 75 s here, four models)
BUILD_TIMEOUT=${BUILD_TIMEOUT:-1800}

now() { date +%s; }
elapsed() { echo "$(($(now) - $1))s"; }

# --- one architecture, in its own process (so that `set -e` and the trap apply) ---------
if [[ ${1:-} == --one ]]; then
    arch=$2 host_agent=$3
    tag="qemu-smoke [$arch]"
    say() { echo "$tag: $*"; }
    work=$(mktemp -d "${TMPDIR:-/tmp}/edge-agent-smoke.XXXXXX")
    agent_pid="" sub_pid="" broker_pid=""
    # shellcheck disable=SC2317 # called by the trap
    cleanup() {
        local rc=$?
        for p in $sub_pid $agent_pid $broker_pid; do kill -KILL "$p" 2>/dev/null || true; done
        wait 2>/dev/null || true
        if ((rc != 0)) && [[ -f $work/agent.log ]]; then
            echo "--- $tag: last lines of the agent's log ---"
            tail -n 30 "$work/agent.log"
            echo "---"
        fi
        rm -rf "$work"
    }
    trap cleanup EXIT
    die() {
        echo "$tag: FAIL: $*" >&2
        exit 1
    }

    case $arch in
        aarch64)
            triple=aarch64-unknown-linux-gnu
            qemu=(qemu-aarch64 -L /usr/aarch64-linux-gnu)
            ;;
        armv7)
            triple=armv7-unknown-linux-gnueabihf
            qemu=(qemu-arm -L /usr/arm-linux-gnueabihf)
            ;;
        aarch64-musl)
            # Static: no sysroot at all (-L to an empty directory), as on a system whose
            # glibc is too old (or absent) for the glibc build.
            triple=aarch64-unknown-linux-musl
            mkdir -p "$work/empty-root"
            qemu=(qemu-aarch64 -L "$work/empty-root")
            ;;
        armv7-musl)
            triple=armv7-unknown-linux-musleabihf
            mkdir -p "$work/empty-root"
            qemu=(qemu-arm -L "$work/empty-root")
            ;;
        *) die "unknown architecture '$arch' (aarch64, armv7, aarch64-musl or armv7-musl)" ;;
    esac

    t=$(now)
    "$root/cross/setup.sh" "$arch" || die "cross/setup.sh $arch failed"
    say "setup $(elapsed "$t")"

    t=$(now)
    build_out=$(timeout "$BUILD_TIMEOUT" "$root/cross/build.sh" "$arch" device ${CROSS_PROFILE:+--profile "$CROSS_PROFILE"} 2>&1) ||
        { echo "$build_out" | tail -n 40; die "device build failed (or took over ${BUILD_TIMEOUT}s)"; }
    device_agent=$(tail -n 1 <<<"$build_out")
    say "$(tail -n 2 <<<"$build_out" | head -n 1), built in $(elapsed "$t")"
    [[ -x $device_agent ]] || die "no binary at $device_agent"
    if [[ $triple == *-musl* ]]; then
        readelf -d "$device_agent" 2>&1 | grep -q 'no dynamic section' ||
            die "$device_agent is not static: $(readelf -d "$device_agent" | grep NEEDED)"
        say "static: no dynamic section (no glibc needed)"
    fi

    # A device-like working directory: relative module paths, as under the systemd unit.
    mkdir -p "$work/modules" "$work/data"
    pre=$("$host_agent" precompile --target "$triple" --out "$work/modules" \
        modules/dist/threshold-alert.wasm modules/dist/misbehave.wasm 2>&1) || die "precompile for $triple failed: $pre"
    sha=$(sed -n 's/.*threshold-alert.cwasm.*sha256 \([0-9a-f]\{64\}\)$/\1/p' <<<"$pre")
    [[ -n $sha ]] || die "precompile printed no sha256: $pre"
    say "precompiled: $pre"

    # aarch64: a Python function beside it (issue 14): a precompiled interpreter, on demand.
    python=""
    if [[ $arch == aarch64 ]]; then
        if [[ -f modules/dist/threshold-alert-py.wasm ]]; then
            t=$(now)
            pre=$("$host_agent" precompile --target "$triple" --out "$work/modules" \
                modules/dist/threshold-alert-py.wasm 2>&1) || die "precompile of the Python function failed: $pre"
            say "precompiled in $(elapsed "$t"): $pre"
            python=yes
        elif [[ -n ${EDGE_AGENT_REQUIRE_GUEST_LANGS:-} ]]; then
            die "modules/dist/threshold-alert-py.wasm is not built (modules/guest-tools/install.sh)"
        else
            say "Python function skipped: not built (modules/guest-tools/install.sh)"
        fi
    fi

    # free_port (cross/lib.sh), for the broker.
    # shellcheck source=cross/lib.sh
    source "$root/cross/lib.sh"

    write_config() {
        cat >"$work/config.toml" <<CONFIG
[agent]
id = "qemu-smoke-$arch"
data_dir = "data"

[broker]
url = "mqtt://127.0.0.1:$1"

[[function]]
name = "threshold"
module = "modules/threshold-alert.cwasm"
sha256 = "$sha"
mode = "on-demand"
topics = ["sensors/+/temperature"]
qos = 1
timeout_ms = 5000   # emulation is slow; this is not a speed test
memory_limit_mb = 8 # the default (32) is over armv7's 16 MiB reservation
[function.config]
threshold = "30"
alert_topic = "alerts/{1..}"

# A hostile guest: its trap, runaway loop and memory grab must become dead letters while
# the agent goes on (the device build has no unwind tables; wasmtime must not need them).
[[function]]
name = "hostile"
module = "modules/misbehave.cwasm"
mode = "persistent"
topics = ["hostile/in"]
qos = 1
timeout_ms = 3000
memory_limit_mb = 8
[function.config]
out_topic = "hostile/out"
CONFIG
        [[ -z $python ]] || cat >>"$work/config.toml" <<CONFIG

[[function]]
name = "threshold-py"
module = "modules/threshold-alert-py.cwasm"
mode = "on-demand"
topics = ["sensors/+/temperature"]
qos = 1
timeout_ms = 10000
[function.config]
threshold = "30"
alert_topic = "alerts/py/{1..}"
CONFIG
    }

    write_config 1883 # `check` opens no socket
    t=$(now)
    check_out=$(cd "$work" && timeout "$START_TIMEOUT" "${qemu[@]}" "$device_agent" check --config config.toml 2>&1) ||
        die "\`edge-agent check\` under ${qemu[0]} failed: $check_out"
    say "check: $check_out ($(elapsed "$t"))"

    # The device's broker: a Mosquitto of its own on a free port (retried if it loses
    # the race for it).
    for attempt in 1 2 3; do
        port=$(free_port) || die "no free port found"
        printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" >"$work/mosquitto.conf"
        mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
        broker_pid=$!
        t=$(now)
        until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
            kill -0 "$broker_pid" 2>/dev/null || break
            (($(now) - t < 10)) || die "mosquitto did not listen on port $port within 10s"
            sleep 0.1
        done
        kill -0 "$broker_pid" 2>/dev/null && break
        wait "$broker_pid" || true
        broker_pid=""
        say "mosquitto could not listen on port $port (attempt $attempt): $(tail -n 1 "$work/mosquitto.log")"
    done
    [[ -n $broker_pid ]] || die "mosquitto could not listen on a free port in 3 attempts"

    write_config "$port"
    (cd "$work" && exec "${qemu[@]}" "$device_agent" run --config config.toml) >"$work/agent.log" 2>&1 &
    agent_pid=$!
    t=$(now)
    until grep -q 'subscribed' "$work/agent.log"; do
        kill -0 "$agent_pid" 2>/dev/null || die "agent exited during start-up"
        (($(now) - t < START_TIMEOUT)) || die "agent did not log 'subscribed' within ${START_TIMEOUT}s"
        sleep 0.2
    done
    say "agent up on port $port in $(elapsed "$t")"

    # Subscribe first and wait for the broker's SUBACK, so the alert cannot be missed.
    # stdbuf: mosquitto_sub block-buffers a file, which would hide the SUBACK until it exits.
    alerts=1
    [[ -z $python ]] || alerts=2
    stdbuf -oL mosquitto_sub -h 127.0.0.1 -p "$port" -t 'alerts/#' -v -d -C "$alerts" -W "$ALERT_TIMEOUT" \
        -i "qemu-smoke-sub-$$" >"$work/sub.out" 2>&1 &
    sub_pid=$!
    t=$(now)
    until grep -q 'received SUBACK' "$work/sub.out"; do
        (($(now) - t < ALERT_TIMEOUT)) || die "mosquitto_sub got no SUBACK within ${ALERT_TIMEOUT}s"
        kill -0 "$sub_pid" 2>/dev/null || die "mosquitto_sub exited: $(cat "$work/sub.out")"
        sleep 0.1
    done

    t=$(now)
    "$host_agent" publish --broker "mqtt://127.0.0.1:$port" --topic sensors/kitchen/temperature \
        --payload '{"value": 31.5}' --qos 1 >"$work/pub.out" 2>&1 ||
        die "publish failed: $(cat "$work/pub.out")"
    # mosquitto_sub -C 1 -W exits after one message or the timeout.
    sub_rc=0
    wait "$sub_pid" || sub_rc=$?
    sub_pid=""
    alert='{"sensor":"kitchen","value":31.5,"threshold":30}'
    for expected in "alerts/kitchen/temperature $alert" ${python:+"alerts/py/kitchen/temperature $alert"}; do
        if ! grep -qxF "$expected" "$work/sub.out"; then
            echo "--- mosquitto_sub output (exit $sub_rc) ---"
            grep -v '^Client ' "$work/sub.out" || true
            die "expected the alert '$expected' within ${ALERT_TIMEOUT}s"
        fi
        say "alert received in $(elapsed "$t"): $expected"
    done

    # The hostile guest, in order (persistent: one instance, restarted after each fault).
    stdbuf -oL mosquitto_sub -h 127.0.0.1 -p "$port" -t hostile/out -t "edge-agent/qemu-smoke-$arch/dead-letter" \
        -v -d -C 4 -W "$ALERT_TIMEOUT" -i "qemu-smoke-hostile-$$" >"$work/hostile.out" 2>&1 &
    sub_pid=$!
    t=$(now)
    until grep -q 'received SUBACK' "$work/hostile.out"; do
        (($(now) - t < ALERT_TIMEOUT)) || die "mosquitto_sub got no SUBACK within ${ALERT_TIMEOUT}s"
        sleep 0.1
    done
    for command in panic loop alloc:64 ok; do
        "$host_agent" publish --broker "mqtt://127.0.0.1:$port" --topic hostile/in \
            --payload "$command" --qos 1 >"$work/pub.out" 2>&1 || die "publish failed: $(cat "$work/pub.out")"
    done
    sub_rc=0
    wait "$sub_pid" || sub_rc=$?
    sub_pid=""
    for expected in '"kind":"trap"' '"kind":"timeout"' '"kind":"memory-limit"' 'hostile/out ok'; do
        grep -qF "$expected" "$work/hostile.out" || {
            grep -v '^Client ' "$work/hostile.out" || true
            die "the hostile guest: expected $expected (mosquitto_sub exit $sub_rc)"
        }
    done
    kill -0 "$agent_pid" 2>/dev/null || die "the agent died of a hostile guest"
    say "hostile guest: trap, timeout and memory limit dead-lettered, then ok, in $(elapsed "$t")"

    t=$(now)
    kill -TERM "$agent_pid"
    while kill -0 "$agent_pid" 2>/dev/null; do
        (($(now) - t < STOP_TIMEOUT)) || die "agent still running ${STOP_TIMEOUT}s after SIGTERM"
        sleep 0.1
    done
    rc=0
    wait "$agent_pid" || rc=$?
    agent_pid=""
    ((rc == 0)) || die "agent exited with status $rc after SIGTERM (expected 0)"
    say "SIGTERM: exit 0 in $(elapsed "$t")"

    # 8. aarch64: `compare --quick` with the device build (no compiler: precompiled echo
    #    and counter), each model's agent under qemu too; nothing may be lost, and the
    #    report must have every model and a verdict per function.
    if [[ $arch == aarch64 ]]; then
        mkdir -p "$work/compare"
        pre=$("$host_agent" precompile --target "$triple" --out "$work/compare" \
            modules/dist/echo.wasm modules/dist/counter.wasm 2>&1) ||
            die "precompile of echo and counter failed: $pre"
        t=$(now)
        (cd "$work" && timeout "$COMPARE_TIMEOUT" "${qemu[@]}" "$device_agent" compare --quick \
            --modules compare --broker "mqtt://127.0.0.1:$port" --agent-wrapper "${qemu[*]}" \
            --json compare.json --html compare.html) \
            >"$work/compare.out" 2>&1 || { cat "$work/compare.out"; die "compare --quick under ${qemu[0]} failed (or took over ${COMPARE_TIMEOUT}s)"; }
        python3 - "$work/compare.json" <<'CHECK' || { cat "$work/compare.out"; die "compare's report is incomplete"; }
import json, sys
r = json.load(open(sys.argv[1]))
bad = []
for f in r["functions"]:
    if [m["model"] for m in f["models"]] != ["persistent", "on-demand", "scale-to-zero", "auto"]:
        bad.append(f"{f['function']}: models {[m['model'] for m in f['models']]}")
    for m in f["models"]:
        if m["error"]:
            bad.append(f"{f['function']} {m['model']}: {m['error']}")
        for p in m["phases"]:
            if p["received"] != p["sent"] or p["sent"] == 0:
                bad.append(f"{f['function']} {m['model']} {p['pattern']}: {p['received']} of {p['sent']}")
    if not f["verdict"].startswith(f["function"] + ":"):
        bad.append(f"{f['function']}: no verdict")
print("\n".join(bad))
sys.exit(1 if bad or len(r["functions"]) != 2 else 0)
CHECK
        grep -q '<svg class="chart"' "$work/compare.html" || die "compare wrote no charts"
        say "compare --quick: every model, nothing lost, in $(elapsed "$t"):"
        grep -E '^(echo|counter): ' "$work/compare.out" | sed "s/^/$tag:   /"
    fi
    say "PASS"
    exit 0
fi

# --- driver -------------------------------------------------------------------------------
arches=("$@")
if ((${#arches[@]} == 0)); then
    read -ra arches <<<"${CROSS_SMOKE_ARCHES:-aarch64}"
fi
for tool in mosquitto mosquitto_sub; do
    command -v "$tool" >/dev/null || {
        echo "qemu-smoke: $tool not found (apt-get install mosquitto mosquitto-clients)" >&2
        exit 69
    }
done

t0=$(now)
# Incremental: seconds when they are built already.
echo "qemu-smoke: building the guest components (modules/build.sh)"
timeout "$BUILD_TIMEOUT" modules/build.sh >/dev/null
# The host agent (dev profile, with Cranelift) precompiles for the device. CI builds it
# with the tests first and names it in CROSS_HOST_AGENT: a `cargo build -p edge-agent`
# here would unify features differently from the test build and compile the dependencies
# a second time.
t=$(now)
host_agent=${CROSS_HOST_AGENT:-}
if [[ -z $host_agent ]]; then
    timeout "$BUILD_TIMEOUT" cargo build -p edge-agent
    host_agent="${CARGO_TARGET_DIR:-$root/target}/debug/edge-agent"
fi
echo "qemu-smoke: host agent ready in $(elapsed "$t")"

passed=0 failed=0
for arch in "${arches[@]}"; do
    if "$self" --one "$arch" "$host_agent"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
    fi
done
echo "qemu-smoke: total $(elapsed "$t0") for ${arches[*]}"
echo "qemu-smoke: $passed passed, $failed failed"
((failed == 0))
