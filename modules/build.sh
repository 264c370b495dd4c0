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
    # Replaced only when changed, and whole (a copy beside it, then renamed): the tests'
    # processes each run this script and read dist/ while others do.
    if ! cmp -s "$wasm" "$dist/$name.wasm"; then
        cp "$wasm" "$dist/$name.wasm.tmp.$$"
        mv "$dist/$name.wasm.tmp.$$" "$dist/$name.wasm"
    fi
    built+=("$dist/$name.wasm")
done

# Python and JavaScript functions, built with the pinned toolchains that
# guest-tools/install.sh puts in <repo>/target/guest-tools: examples-py/NAME and
# test-functions-py/NAME -> dist/NAME-py.wasm, examples-js/NAME -> dist/NAME-js.wasm.
# A component is rebuilt only when something it is made of (its source, the SDK, the WIT,
# the toolchain) is newer than it.
tools="${EDGE_AGENT_GUEST_TOOLS:-$here/../target/guest-tools}"
wit="$here/sdk/wit"

stale() { # stale OUTPUT INPUT...: is OUTPUT missing or older than a file under an INPUT?
    [[ ! -f "$1" ]] || [[ -n "$(find "${@:2}" -newer "$1" -print -quit)" ]]
}

# One component from APP into WASM, per language.
componentize_py() {
    "$tools/py/bin/componentize-py" -d "$wit" -w function componentize app \
        -p "$1" -p "$here/sdk-py" -o "$2" >/dev/null
}
componentize_js() {
    # jco reads files relative to its working directory; http and the fetch event are left
    # out because the agent links no wasi:http.
    (cd "$here" && "$tools/js/node_modules/.bin/jco" componentize "${1#"$here/"}app.js" \
        --bundle --bundle-config sdk-js/bundle.config.mjs -w sdk/wit -n function \
        -d http -d fetch-event -o "$2" >/dev/null)
}

# guests LANG TOOL LANGUAGE APP...: builds each APP that is stale into dist/NAME-LANG.wasm
# with componentize_LANG, or says in one line that TOOL is missing.
guests() {
    local lang=$1 tool=$2 language=$3 app name wasm
    shift 3
    if [[ ! -x $tool ]]; then
        echo "$language examples skipped: $(basename "$tool") is not installed (modules/guest-tools/install.sh)"
        return
    fi
    for app in "$@"; do
        name="$(basename "$app")"
        wasm="$dist/$name-$lang.wasm"
        if stale "$wasm" "$app" "$here/sdk-$lang" "$wit" "$tools/$lang/.pins"; then
            "componentize_$lang" "$app" "$wasm.tmp.$$"
            mv "$wasm.tmp.$$" "$wasm"
        fi
        built+=("$wasm")
    done
}

guests py "$tools/py/bin/componentize-py" Python "$here"/examples-py/*/ "$here"/test-functions-py/*/
guests js "$tools/js/node_modules/.bin/jco" JavaScript "$here"/examples-js/*/

echo "Built components:"
for wasm in "${built[@]}"; do
    printf '%10d bytes  %s\n' "$(wc -c <"$wasm")" "$wasm"
done
