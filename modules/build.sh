#!/usr/bin/env bash
# Builds every function in this workspace as a WebAssembly component (wasm32-wasip2,
# release profile) and copies each to dist/<package-name>.wasm.
#
# Usage: modules/build.sh [extra cargo build args, e.g. --locked]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target=wasm32-wasip2
# Run from here so rustup picks the toolchain pinned by the repository's rust-toolchain.toml.
cd "$here"

if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx "$target"; then
    rustup target add "$target"
fi

cargo build --release --target "$target" --manifest-path "$here/Cargo.toml" "$@"

out="${CARGO_TARGET_DIR:-$here/target}/$target/release"
dist="$here/dist"
mkdir -p "$dist"
built=()

# Every cdylib member is a function; cargo names its artifact after the package, with
# dashes turned into underscores.
for manifest in "$here"/examples/*/Cargo.toml "$here"/test-functions/*/Cargo.toml; do
    name="$(sed -n 's/^name = "\(.*\)"$/\1/p' "$manifest" | head -n 1)"
    wasm="$out/${name//-/_}.wasm"
    # A component starts with "\0asm" and version 0x0d, layer 1 (a core module: 1, 0).
    if [[ "$(od -An -tx1 -j4 -N4 "$wasm" | tr -d ' \n')" != 0d000100 ]]; then
        echo "error: $wasm is not a WebAssembly component" >&2
        exit 1
    fi
    cp "$wasm" "$dist/$name.wasm"
    built+=("$dist/$name.wasm")
done

echo "Built components:"
for wasm in "${built[@]}"; do
    printf '%10d bytes  %s\n' "$(wc -c <"$wasm")" "$wasm"
done
