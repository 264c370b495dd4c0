#!/usr/bin/env bash
# Builds the Debian package of the device build for an ARM target with cargo-deb:
# binary (cross/build.sh ARCH device), systemd unit, example config, and every function
# in target/<triple>/device/cwasm/: yours (precompiled there as in docs/raspberry-pi.md) and
# the two examples, which it precompiles for ARCH with the host agent (its `precompile`
# build). Metadata: [package.metadata.deb] in agent/Cargo.toml; maintainer scripts in
# cross/deb/.
#
# Usage: cross/deb.sh [aarch64|armv7]     (default aarch64)
# Needs cargo-deb (`cargo install cargo-deb`) and cross/setup.sh. Honours CARGO_TARGET_DIR.
# The last line printed is the .deb's path.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=lib.sh
source "$root/cross/lib.sh"

arch=${1:-aarch64}
case $arch in
    aarch64 | aarch64-unknown-linux-gnu) triple=aarch64-unknown-linux-gnu features=() ;;
    armv7 | armv7-unknown-linux-gnueabihf) triple=armv7-unknown-linux-gnueabihf features=(--features pulley) ;;
    *) echo "cross/deb.sh: unknown architecture '$arch' (aarch64 or armv7)" >&2; exit 64 ;;
esac
command -v cargo-deb >/dev/null || { echo "cross/deb.sh: cargo-deb not found: cargo install cargo-deb" >&2; exit 69; }

target_dir=${CARGO_TARGET_DIR:-$root/target}
"$root/cross/build.sh" "$triple" device >/dev/null
out="$target_dir/$triple/device"

# The example functions of configs/device.toml, precompiled by this version's host agent
# (a .cwasm only loads into the agent version and settings that made it).
[[ -f modules/dist/threshold-alert.wasm ]] || modules/build.sh >/dev/null
host=$(precompiler)
# Into the same folder as the user's own functions (docs/raspberry-pi.md step 3), which are
# packaged with them: nothing there is deleted.
"$host" precompile --target "$triple" --out "$out/cwasm" \
    modules/dist/threshold-alert.wasm modules/dist/echo.wasm

# Already built and stripped (profile `device`): package as is.
deb=$(cargo deb -p edge-agent --target "$triple" --profile device --no-build --no-strip \
    "${features[@]}" --output "$target_dir/debian/" | tail -n 1)
echo "$(basename "$deb"): $(stat -c %s "$deb") bytes"
dpkg-deb --contents "$deb" | awk '{ print "  " $3 "  " $6 }'
echo "$deb"
