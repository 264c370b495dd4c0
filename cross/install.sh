#!/usr/bin/env bash
# Installs (or upgrades) the agent on a device over ssh and restarts its service.
#
# Usage: cross/install.sh [options] [user@]HOST
#   --target TRIPLE   device target (default aarch64-unknown-linux-gnu; armv7-unknown-linux-gnueabihf)
#   --binary PATH     agent binary (default: the device build of cross/build.sh,
#                     ${CARGO_TARGET_DIR:-target}/TRIPLE/device/edge-agent)
#   --modules DIR     directory of `.cwasm` files to install (default:
#                     ${CARGO_TARGET_DIR:-target}/TRIPLE/device/cwasm, beside the binary, which
#                     `edge-agent precompile --target TRIPLE --out DIR modules/dist/*.wasm` fills)
#   --config FILE     install FILE as /etc/edge-agent/config.toml, keeping the old one as
#                     config.toml.bak. Without it, configs/device.toml is installed only if
#                     the device has no config yet.
#   --no-restart      install only; do not enable or restart the service
#   --dry-run         print the commands (and the script run on the device) instead
#   -h, --help
# Environment: SSH_OPTS (extra ssh options, e.g. "-p 2222 -i ~/.ssh/pi").
#
# On the device (as root, through sudo unless logged in as root): creates the system user
# `edge-agent`, checks the new binary, config and modules with `edge-agent check` BEFORE
# replacing anything, then installs
#   /usr/bin/edge-agent, /usr/lib/edge-agent/modules/*.cwasm, /etc/edge-agent/config.toml,
#   /etc/systemd/system/edge-agent.service, and, where Mosquitto is installed and has none
#   yet, /etc/mosquitto/conf.d/edge-agent.conf (cross/deb/mosquitto.conf: the queue it
#   keeps for the agent; read at Mosquitto's next start)
# and restarts the service, then shows its status and last log lines.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() { sed -n '2,29s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2; exit 64; }
die() { echo "cross/install.sh: $*" >&2; exit 1; }

triple=aarch64-unknown-linux-gnu binary="" modules="" config="" restart=yes dry_run="" host=""
while (($#)); do
    case $1 in
        --target) triple=${2:?}; shift ;;
        --binary) binary=${2:?}; shift ;;
        --modules) modules=${2:?}; shift ;;
        --config) config=${2:?}; shift ;;
        --no-restart) restart="" ;;
        --dry-run) dry_run=yes ;;
        -h | --help) usage ;;
        -*) echo "cross/install.sh: unknown option $1" >&2; usage ;;
        *) [[ -z $host ]] || usage; host=$1 ;;
    esac
    shift
done
[[ -n $host ]] || usage

case $triple in
    aarch64-*) machines="aarch64 arm64" ;;
    armv7-* | arm-*) machines="armv7l armv8l aarch64" ;; # 32-bit userland on a 64-bit Pi works
    *) die "unsupported target $triple" ;;
esac
target_dir=${CARGO_TARGET_DIR:-$root/target}
binary=${binary:-$target_dir/$triple/device/edge-agent}
modules=${modules:-$target_dir/$triple/device/cwasm}

[[ -f $binary ]] || die "no binary at $binary (build it: cross/build.sh $triple device)"
# A host build passed by mistake would be uploaded and fail on the device only then, with
# "Exec format error": the ELF header's machine field says which it is before anything moves.
case $triple in aarch64-*) want=183 ;; *) want=40 ;; esac
magic=$(od -An -tx1 -N4 "$binary" | tr -d ' ')
[[ $magic == 7f454c46 ]] || die "$binary is not an ELF executable"
got=$(od -An -tu2 -j18 -N2 "$binary" | tr -d ' ')
if [[ $got != "$want" ]]; then
    case $got in 62) what=x86_64 ;; 183) what=aarch64 ;; 40) what="32-bit ARM" ;; *) what="machine $got" ;; esac
    die "$binary is built for $what, not for $triple (build the device's: cross/build.sh $triple device, or pass the --target it was built for)"
fi
shopt -s nullglob
cwasm=("$modules"/*.cwasm)
shopt -u nullglob
((${#cwasm[@]})) || die "no .cwasm in $modules (make them: cargo run -p edge-agent -- precompile --target $triple --out $modules modules/dist/*.wasm)"
[[ -z $config || -f $config ]] || die "no config file $config"

# Everything goes over one ssh connection (ControlMaster), authenticated once.
read -ra ssh_opts <<<"${SSH_OPTS:-}"
control="${TMPDIR:-/tmp}/edge-agent-install-ssh-%C"
ssh_cmd=(ssh -o ControlMaster=auto -o "ControlPath=$control" -o ControlPersist=60 "${ssh_opts[@]}")

# Staging directory: exactly what lands on the device.
stage=$(mktemp -d "${TMPDIR:-/tmp}/edge-agent-stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/modules"
cp "$binary" "$stage/edge-agent"
cp "$root/cross/edge-agent.service" "$stage/edge-agent.service"
cp "$root/cross/deb/mosquitto.conf" "$stage/mosquitto.conf"
cp "${cwasm[@]}" "$stage/modules/"
if [[ -n $config ]]; then
    cp "$config" "$stage/config.toml"
    replace_config=yes
else
    cp "$root/configs/device.toml" "$stage/config.toml"
    replace_config=""
fi

# The remote side: POSIX sh, run as root. Parameters are substituted here, quoted.
remote_dir="/tmp/edge-agent-install.$$.$RANDOM"
remote_script=$(
    cat <<EOF
set -eu
stage=$(printf %q "$remote_dir")
replace_config=$(printf %q "$replace_config")
restart=$(printf %q "$restart")
machines=$(printf %q "$machines")
trap 'rm -rf "\$stage"' EXIT
EOF
    cat <<'EOF'
machine=$(uname -m)
case " $machines " in
    *" $machine "*) ;;
    *) echo "install: this device is $machine, the binary is for $machines" >&2; exit 1 ;;
esac
if ! getent passwd edge-agent >/dev/null; then
    echo "install: creating system user edge-agent"
    useradd --system --user-group --home-dir /var/lib/edge-agent --no-create-home \
        --shell /usr/sbin/nologin --comment "edge-agent" edge-agent
fi
# Check the new binary against the modules and config that will be in force (installed
# modules plus the new ones) before replacing anything: a failure leaves all as it was.
mkdir -p "$stage/check/modules"
if [ -d /usr/lib/edge-agent/modules ]; then
    cp -pR /usr/lib/edge-agent/modules/. "$stage/check/modules/"
fi
cp "$stage"/modules/*.cwasm "$stage/check/modules/"
if [ -n "$replace_config" ] || [ ! -f /etc/edge-agent/config.toml ]; then
    checked="$stage/config.toml"
else
    checked=/etc/edge-agent/config.toml
fi
"$stage/edge-agent" --version
# The config names modules by full path under /usr/lib/edge-agent/modules (or relative to
# its own directory): check a copy that points at the staged set instead.
sed "s|/usr/lib/edge-agent/modules/|$stage/check/modules/|g" "$checked" >"$stage/check/config.toml"
(cd "$stage/check" && "$stage/edge-agent" check --config "$stage/check/config.toml") || {
    echo "install: edge-agent check failed: nothing was changed" >&2
    exit 1
}
install -m 0755 "$stage/edge-agent" /usr/bin/edge-agent.new
mv -f /usr/bin/edge-agent.new /usr/bin/edge-agent
install -d -m 0755 /usr/lib/edge-agent /usr/lib/edge-agent/modules
install -m 0644 "$stage"/modules/*.cwasm /usr/lib/edge-agent/modules/
install -d -m 0750 -o root -g edge-agent /etc/edge-agent
if [ ! -f /etc/edge-agent/config.toml ]; then
    install -m 0640 -o root -g edge-agent "$stage/config.toml" /etc/edge-agent/config.toml
elif [ -n "$replace_config" ]; then
    cp -p /etc/edge-agent/config.toml /etc/edge-agent/config.toml.bak
    install -m 0640 -o root -g edge-agent "$stage/config.toml" /etc/edge-agent/config.toml
fi
install -m 0644 "$stage/edge-agent.service" /etc/systemd/system/edge-agent.service
# Mosquitto keeps 1000 messages for a client that is away or behind and drops the rest
# (see the file). Installed once, as the package does; an existing file is the owner's.
dropin=/etc/mosquitto/conf.d/edge-agent.conf
if [ -e "$dropin" ]; then
    :
elif [ -d /etc/mosquitto/conf.d ]; then
    install -m 0644 "$stage/mosquitto.conf" "$dropin"
    echo "install: $dropin installed; Mosquitto reads it at its next start (systemctl restart mosquitto)"
else
    echo "install: no /etc/mosquitto/conf.d here: if the agent's broker is a Mosquitto elsewhere, copy cross/deb/mosquitto.conf to its conf.d"
fi
systemctl daemon-reload
if [ -n "$restart" ]; then
    systemctl enable edge-agent.service
    systemctl restart edge-agent.service
    # Up means: still active a few seconds after the restart (`run` checks the config first).
    i=0
    while [ $i -lt 10 ]; do
        sleep 1
        systemctl is-active --quiet edge-agent.service || break
        i=$((i + 1))
    done
    systemctl --no-pager status edge-agent.service || true
    journalctl -u edge-agent.service -n 20 --no-pager || true
    systemctl is-active --quiet edge-agent.service || {
        echo "install: edge-agent is not running (journalctl -u edge-agent)" >&2
        exit 1
    }
    echo "install: edge-agent is running"
fi
EOF
)

run() {
    if [[ -n $dry_run ]]; then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

if [[ $host == root@* ]]; then
    as_root=(sh -s)
elif [[ -n $dry_run ]]; then
    as_root=(sudo sh -s)
elif [[ $("${ssh_cmd[@]}" "$host" id -u) == 0 ]]; then
    as_root=(sh -s)
else
    # The script is fed to `sudo sh -s` over ssh with no terminal: sudo cannot ask for a
    # password. Say so now rather than fail half-way.
    "${ssh_cmd[@]}" "$host" sudo -n true 2>/dev/null || {
        echo "cross/install.sh: $host needs passwordless sudo for this user (or log in as root):" >&2
        echo "  on the device: echo \"\$USER ALL=(ALL) NOPASSWD: ALL\" | sudo tee /etc/sudoers.d/edge-agent-install" >&2
        exit 77
    }
    as_root=(sudo sh -s)
fi

echo "cross/install.sh: $host <- $(basename "$binary") ($triple), ${#cwasm[@]} module(s)," \
    "config: $([[ -n $replace_config ]] && echo "$config" || echo "configs/device.toml if none")"
# 1. Upload the staging directory (tar over ssh: one connection, no scp needed).
if [[ -n $dry_run ]]; then
    echo "+ tar -C $stage -cf - . | ${ssh_cmd[*]} $host 'mkdir -m 700 $remote_dir && tar -C $remote_dir -xf -'"
    (cd "$stage" && find . -type f -printf '    %P  %s bytes\n' | sort)
else
    tar -C "$stage" -cf - . | "${ssh_cmd[@]}" "$host" "mkdir -m 700 '$remote_dir' && tar -C '$remote_dir' -xf -"
fi
# 2. Check, install, restart, as root on the device.
if [[ -n $dry_run ]]; then
    echo "+ ${ssh_cmd[*]} $host ${as_root[*]} <<'SCRIPT'"
    echo "$remote_script"
    echo "SCRIPT"
else
    "${ssh_cmd[@]}" "$host" "${as_root[@]}" <<<"$remote_script"
fi
run "${ssh_cmd[@]}" -O exit "$host" 2>/dev/null || true
