#!/usr/bin/env bash
# Installs what cross-building and running the agent for ARM needs on a Debian/Ubuntu host,
# and only what is missing (safe to run again):
#   - the cross C toolchains and libcs (linkers, and C compilers for ring's and wasmtime's
#     build scripts): gcc-aarch64-linux-gnu + libc6-dev-arm64-cross,
#     gcc-arm-linux-gnueabihf + libc6-dev-armhf-cross;
#   - qemu-user (qemu-aarch64, qemu-arm) to run the ARM binaries here;
#   - the Rust standard libraries for the targets (rustup); for a musl target whose
#     prebuilt one rustup cannot download (armv7-unknown-linux-musleabihf from the mirror
#     this project is built behind answers 404), the standard library's source (rust-src),
#     from which cross/build.sh builds it;
#   - for the static musl builds (aarch64-musl, armv7-musl): zig as the C compiler and linker
#     (the `ziglang` package from PyPI, pinned, in a venv under target/zig) and
#     cargo-zigbuild (pinned, cargo install), which drives cargo with it.
#
# Usage: cross/setup.sh [aarch64] [armv7] [aarch64-musl] [armv7-musl]   (no argument: aarch64 armv7)
set -euo pipefail
# From the repository root, so that rustup adds the targets to the pinned toolchain.
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Pinned tools of the musl builds.
ZIGLANG_VERSION=0.14.1
CARGO_ZIGBUILD_VERSION=0.24.1

arches=("$@")
((${#arches[@]})) || arches=(aarch64 armv7)

packages=()
targets=()
musl=""

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
        aarch64-musl | aarch64-unknown-linux-musl)
            need qemu-aarch64 qemu-user
            need "" python3-venv
            targets+=(aarch64-unknown-linux-musl)
            musl=yes
            ;;
        armv7-musl | armv7-unknown-linux-musleabihf)
            need qemu-arm qemu-user
            need "" python3-venv
            targets+=(armv7-unknown-linux-musleabihf)
            musl=yes
            ;;
        *)
            echo "cross/setup.sh: unknown architecture '$arch' (aarch64, armv7, aarch64-musl or armv7-musl)" >&2
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
        if ! why=$(RUST_BACKTRACE=0 rustup target add "$t" 2>&1); then
            [[ $t == *-musl* ]] || { echo "$why" >&2; exit 1; }
            # cross/build.sh then builds the standard library from rust-src (added below).
            echo "cross/setup.sh: rustup cannot download the standard library for $t" \
                "($(grep -m 1 -o 'status code: [0-9]*\|error: .*' <<<"$why")); it is built from source (rust-src)"
        fi
    fi
done
# Device builds compile the standard library from its source (cross/build.sh): listed in
# rust-toolchain.toml, added here in case the toolchain was installed before it was.
rustup component list --installed | grep -q '^rust-src' || rustup component add rust-src
if [[ -n $musl ]]; then
    zig_venv=target/zig
    if ! "$zig_venv/bin/python" -c 'import ziglang' 2>/dev/null; then
        echo "cross/setup.sh: installing zig ($ZIGLANG_VERSION, PyPI ziglang) in $zig_venv"
        python3 -m venv "$zig_venv"
        "$zig_venv/bin/pip" install --quiet "ziglang==$ZIGLANG_VERSION"
    fi
    if [[ $(cargo-zigbuild --version 2>/dev/null) != *" $CARGO_ZIGBUILD_VERSION" ]]; then
        echo "cross/setup.sh: installing cargo-zigbuild $CARGO_ZIGBUILD_VERSION"
        cargo install --quiet --locked cargo-zigbuild --version "$CARGO_ZIGBUILD_VERSION"
    fi
fi
echo "cross/setup.sh: ready for ${targets[*]}"
