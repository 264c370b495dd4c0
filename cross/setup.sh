#!/usr/bin/env bash
# Installs what cross-building and running the agent for ARM needs on a Debian/Ubuntu host,
# and only what is missing (safe to run again):
#   - the cross C toolchains and libcs (linkers, and C compilers for ring's and wasmtime's
#     build scripts): gcc-aarch64-linux-gnu + libc6-dev-arm64-cross,
#     gcc-arm-linux-gnueabihf + libc6-dev-armhf-cross;
#   - qemu-user (qemu-aarch64, qemu-arm) to run the ARM binaries here;
#   - the Rust standard libraries for the targets (rustup).
#
# Usage: cross/setup.sh [aarch64] [armv7]      (no argument: both)
set -euo pipefail
# From the repository root, so that rustup adds the targets to the pinned toolchain.
cd "$(dirname "${BASH_SOURCE[0]}")/.."

arches=("$@")
((${#arches[@]})) || arches=(aarch64 armv7)

packages=()
targets=()
need() { # need COMMAND-OR-EMPTY PACKAGE: queue PACKAGE unless it (or COMMAND) is there
    local cmd=$1 pkg=$2
    if [[ -n $cmd ]] && command -v "$cmd" >/dev/null; then return; fi
    if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then return; fi
    packages+=("$pkg")
}

for arch in "${arches[@]}"; do
    case $arch in
        aarch64 | aarch64-unknown-linux-gnu)
            need aarch64-linux-gnu-gcc gcc-aarch64-linux-gnu
            need "" libc6-dev-arm64-cross
            need qemu-aarch64 qemu-user
            targets+=(aarch64-unknown-linux-gnu)
            ;;
        armv7 | armv7-unknown-linux-gnueabihf)
            need arm-linux-gnueabihf-gcc gcc-arm-linux-gnueabihf
            need "" libc6-dev-armhf-cross
            need qemu-arm qemu-user
            targets+=(armv7-unknown-linux-gnueabihf)
            ;;
        *)
            echo "cross/setup.sh: unknown architecture '$arch' (aarch64 or armv7)" >&2
            exit 64
            ;;
    esac
done

if ((${#packages[@]})); then
    # qemu-user may be queued twice (aarch64 and armv7): de-duplicate.
    mapfile -t packages < <(printf '%s\n' "${packages[@]}" | sort -u)
    echo "cross/setup.sh: installing ${packages[*]}"
    sudo_cmd=()
    [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}"
fi

installed=$(rustup target list --installed)
for t in "${targets[@]}"; do
    if ! grep -qx "$t" <<<"$installed"; then
        echo "cross/setup.sh: adding Rust target $t"
        rustup target add "$t"
    fi
done
echo "cross/setup.sh: ready for ${targets[*]}"
