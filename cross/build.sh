#!/usr/bin/env bash
# Builds the agent for a target and prints the binary's stripped size.
#
# Usage: cross/build.sh TARGET [device|full] [--profile PROFILE]
#   TARGET   aarch64 | armv7 | aarch64-musl | armv7-musl | host, or a Rust target triple
#            (aarch64-unknown-linux-gnu, armv7-unknown-linux-gnueabihf, x86_64-unknown-linux-gnu,
#            aarch64-unknown-linux-musl, armv7-unknown-linux-musleabihf: static binaries, no
#            glibc needed on the device, built with cargo-zigbuild; cross/setup.sh
#            aarch64-musl armv7-musl installs it)
#   device   (default) no compiler: runs only `.cwasm` made by `edge-agent precompile`
#            (with `edge-agent top`);
#            armv7 gets the `pulley` feature (wasmtime's interpreter: Cranelift has no
#            32-bit ARM back end) and is compiled to Thumb-2
#   full     default features: Cranelift included, compiles `.wasm` and precompiles
#   --profile  Cargo profile: default `device` for device builds and `device-full` (the
#              same settings, another folder) for full builds; `release` also works
#   --tarball  also write a release tarball beside the binary:
#              edge-agent-<version>-<triple>.tar.gz with the binary, the systemd unit, the
#              example config, the example functions precompiled for the target (by
#              the host's `precompile` build of the same version), a README, and
#              SHA256SUMS; its path is then the last line printed
#
# The binary lands in ${CARGO_TARGET_DIR:-target}/<triple>/<profile>/edge-agent and that
# path is the last line printed. Run cross/setup.sh once first for ARM targets.
# Extra cargo flags can be given in CARGO_FLAGS (e.g. CARGO_FLAGS=--locked).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=lib.sh
source "$root/cross/lib.sh"

usage() { sed -n '2,24s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2; exit 64; }

target="" kind=device profile="" tarball=""
while (($#)); do
    case $1 in
        device | full) kind=$1 ;;
        --profile) [[ $# -ge 2 ]] || usage; profile=$2; shift ;;
        --profile=*) profile=${1#--profile=} ;;
        --tarball) tarball=yes ;;
        -h | --help) usage ;;
        -*) echo "cross/build.sh: unknown option $1" >&2; usage ;;
        *) [[ -z $target ]] || usage; target=$1 ;;
    esac
    shift
done
[[ -n $target ]] || usage
if [[ -z $profile ]]; then
    profile=device
    [[ $kind == full ]] && profile=device-full
fi

host=$(rustc -vV | sed -n 's/^host: //p')
case $target in
    aarch64 | arm64) triple=aarch64-unknown-linux-gnu ;;
    armv7 | armhf) triple=armv7-unknown-linux-gnueabihf ;;
    aarch64-musl) triple=aarch64-unknown-linux-musl ;;
    armv7-musl) triple=armv7-unknown-linux-musleabihf ;;
    host | x86_64) triple=$host ;;
    *) triple=$target ;;
esac

features=()
if [[ $kind == device ]]; then
    # No compiler, no `new`/`build` (and their templates), no embedded broker (devices run
    # Mosquitto; CARGO_FLAGS='--features broker' puts it back, 1 MiB); `top`, `publish` and
    # `compare` (measuring on the device is the point) stay in. docs/device-build.md has
    # the sizes.
    features+=(--no-default-features --features top,publish,compare)
    [[ $triple == armv7* || $triple == arm-* || $triple == thumbv7* ]] && features+=(--features pulley)
fi

rustflags=()
if [[ $kind == device ]]; then
    # No unwind tables for the agent's own code (-192 KiB on aarch64): with
    # panic = "abort" nothing unwinds, and wasmtime walks and leaves guest frames by frame
    # pointers, not by them. A panic still prints its message and location. The smoke test
    # (cross/ci-smoke.sh) checks that a trapping, looping and memory-grabbing guest still
    # becomes dead letters on the device build.
    rustflags+=(-C force-unwind-tables=no)
    # 32-bit ARM in Thumb-2, as Debian's and Raspberry Pi OS's own armhf packages are
    # compiled (their GCC is built --with-mode=thumb): the same instructions in 16- and
    # 32-bit encodings, -1.9 MB (-29 %) against the ARM encoding rustc's armv7 target
    # uses by default. rustc calls the feature unstable and warns once per crate; the
    # build already needs RUSTC_BOOTSTRAP for the standard library (below), and the
    # thumbv7neon target, which is this plus NEON, is the stable form of the same thing.
    if [[ $triple == armv7* ]]; then
        rustflags+=(-C target-feature=+thumb-mode)
    fi
fi

# The device build's standard library is built from source (rust-src) with the build's
# own flags: no unwind tables, no backtrace symbolisation (a stripped binary has no
# symbols to show), and std, core and alloc still at opt-level 3 rather than the device
# profile's "s" (at "s" the per-event CPU looked a few percent higher). -657,856 bytes on aarch64,
# the same CPU per event (docs/device-build.md). CI's `smoke` profile keeps its own level.
std_from_source=()
if [[ $kind == device ]]; then
    std_from_source=(-Zbuild-std=std,panic_abort -Zbuild-std-features=)
    if [[ $profile != smoke ]]; then
        for krate in std core alloc; do
            std_from_source+=(--config "profile.$profile.package.$krate.opt-level=3")
        done
    fi
fi

# musl: zig compiles the C parts and links, through cargo-zigbuild (cross/setup.sh).
build=(cargo build)
if [[ $triple == *-musl* ]]; then
    zig=$(ls "$root"/target/zig/lib/python3*/site-packages/ziglang/zig 2>/dev/null | head -n 1)
    if [[ -z $zig ]] || ! command -v cargo-zigbuild >/dev/null; then
        echo "cross/build.sh: zig or cargo-zigbuild not found: run cross/setup.sh ${target}" >&2
        exit 69
    fi
    export CARGO_ZIGBUILD_ZIG_PATH=$zig
    build=(cargo zigbuild)
    if ! rustup target list --installed | grep -qx "$triple"; then
        # No prebuilt standard library from rustup (cross/setup.sh said why): build it from
        # rust-src (below), for a full build too. Without rust-std, the start files
        # (crt1.o...) rustc links "self-contained" are missing too: zig's own musl start
        # files are used instead (link-self-contained=no).
        ((${#std_from_source[@]})) || std_from_source=(-Zbuild-std=std,panic_abort)
        rustflags+=(-C link-self-contained=no)
    fi
fi
if ((${#std_from_source[@]})); then
    if ! rustup component list --installed | grep -q '^rust-src'; then
        echo "cross/build.sh: the standard library's source (rust-src) is not installed: run cross/setup.sh ${target}" >&2
        exit 69
    fi
    # -Zbuild-std is unstable: RUSTC_BOOTSTRAP lets the pinned stable compiler take it;
    # nothing else here uses unstable features.
    echo "cross/build.sh: building the standard library for $triple from source (-Zbuild-std)" >&2
    export RUSTC_BOOTSTRAP=1
    build+=("${std_from_source[@]}")
fi

# A missing cross linker fails late and obscurely inside cargo: say what to do instead.
if [[ $triple != "$host" && $triple != *-musl* ]]; then
    linker=$(sed -n "/^\[target\.$triple\]/,/^\[/s/^linker *= *\"\(.*\)\"/\1/p" .cargo/config.toml)
    if [[ -n $linker ]] && ! command -v "$linker" >/dev/null; then
        echo "cross/build.sh: $linker not found: run cross/setup.sh first" >&2
        exit 69
    fi
    if ! rustup target list --installed | grep -qx "$triple"; then
        echo "cross/build.sh: Rust target $triple not installed: run cross/setup.sh first" >&2
        exit 69
    fi
fi

target_dir=${CARGO_TARGET_DIR:-$root/target}
# `release` and `dev` have their own folder names; other profiles are named after themselves.
case $profile in
    dev) out_dir=debug ;;
    *) out_dir=$profile ;;
esac
bin="$target_dir/$triple/$out_dir/edge-agent"

if ((${#rustflags[@]})); then
    export "CARGO_TARGET_$(tr 'a-z-' 'A-Z_' <<<"$triple")_RUSTFLAGS=${rustflags[*]}"
fi
read -ra extra <<<"${CARGO_FLAGS:-}"
set -x
"${build[@]}" -p edge-agent --target "$triple" --profile "$profile" "${features[@]}" "${extra[@]}"
{ set +x; } 2>/dev/null

# Profiles with `strip = true` are already stripped; otherwise measure a stripped copy.
size=$(stat -c %s "$bin")
# (readelf comes with binutils, which linking needs anyway; `file` may not be installed.)
if readelf -S "$bin" | grep -q '\.symtab'; then
    strip_tool="strip"
    case $triple in
        aarch64-*) strip_tool=aarch64-linux-gnu-strip ;;
        armv7-* | arm-* | thumbv7*) strip_tool=arm-linux-gnueabihf-strip ;;
    esac
    tmp=$(mktemp)
    "$strip_tool" -o "$tmp" "$bin"
    size=$(stat -c %s "$tmp")
    rm -f "$tmp"
fi
awk -v t="$triple" -v k="$kind" -v p="$profile" -v s="$size" \
    'BEGIN { printf "edge-agent %s %s (profile %s): %.1f MiB stripped (%d bytes)\n", t, k, p, s / 1048576, s }'
[[ -n $tarball ]] || { echo "$bin"; exit 0; }

# --- the release tarball ------------------------------------------------------------------
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
name="edge-agent-$version-$triple"
stage="$target_dir/$triple/$out_dir/$name"
rm -rf "$stage" && mkdir -p "$stage/modules"
install -m 0755 "$bin" "$stage/edge-agent"
install -m 0644 cross/edge-agent.service "$stage/"
install -m 0644 configs/device.toml "$stage/config.toml"
install -m 0644 LICENSE docs/raspberry-pi.md "$stage/"
# The examples, precompiled for the target by the host's `precompile` build of this
# version (a .cwasm loads only into the agent version that made it).
[[ -f modules/dist/threshold-alert.wasm ]] || modules/build.sh >/dev/null
host=$(precompiler)
"$host" precompile --target "$triple" --out "$stage/modules" \
    modules/dist/threshold-alert.wasm modules/dist/echo.wasm modules/dist/counter.wasm >/dev/null
cat >"$stage/README" <<README
edge-agent $version for $triple$([[ $triple == *-musl* ]] && echo " (static: needs no glibc)")

  edge-agent            the agent (device build: runs .cwasm functions, no compiler)
  edge-agent.service    systemd unit: /etc/systemd/system/ (or /usr/lib/systemd/system/)
  config.toml           example config: /etc/edge-agent/config.toml
  modules/*.cwasm       example functions, precompiled for this target and version:
                        /usr/lib/edge-agent/modules/
  SHA256SUMS            sha256sum -c SHA256SUMS

Install by hand as in raspberry-pi.md (step 4, "over ssh"), or with cross/install.sh from
the source tree. edge-agent --help lists the commands.
README
(cd "$stage" && find . -type f ! -name SHA256SUMS -printf '%P\n' | sort | xargs sha256sum >SHA256SUMS)
tar -C "$(dirname "$stage")" --owner=0 --group=0 -czf "$stage.tar.gz" "$name"
rm -rf "$stage"
echo "$(basename "$stage.tar.gz"): $(stat -c %s "$stage.tar.gz") bytes"
tar -tzf "$stage.tar.gz" | sed 's/^/  /'
echo "$stage.tar.gz"

