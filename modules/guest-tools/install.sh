#!/usr/bin/env bash
# Installs the pinned guest toolchains for Python and JavaScript functions into
# <repo>/target/guest-tools, where modules/build.sh and `edge-agent build` look for them:
#
#   py/  a virtualenv with componentize-py (requirements.txt)
#   js/  jco with ComponentizeJS (package.json, package-lock.json), installed with `npm ci`
#
# Usage: modules/guest-tools/install.sh [python] [js]   (both when none is named)
#
# Needs python3 with venv (Debian: python3-venv) and Node.js >= 20.19 with npm. A language
# whose prerequisites are missing is skipped with one line saying why; the exit status is
# non-zero only if an install that was attempted failed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="${EDGE_AGENT_GUEST_TOOLS:-$here/../../target/guest-tools}"
mkdir -p "$dest"
dest="$(cd "$dest" && pwd)"
langs=("$@")
((${#langs[@]})) || langs=(python js)

# Reinstalls only when the pins changed: the stamp records what the last install used.
fresh() { [[ -f "$1/.pins" ]] && cmp -s "$1/.pins" <(cat "${@:2}"); }

install_python() {
    local venv="$dest/py"
    if fresh "$venv" "$here/requirements.txt"; then
        echo "python: $("$venv/bin/componentize-py" --version) already installed in $venv"
        return
    fi
    if ! command -v python3 >/dev/null || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        echo "python: skipped, needs python3 with venv (Debian: apt install python3-venv)"
        return
    fi
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    cp "$here/requirements.txt" "$venv/.pins"
    echo "python: $("$venv/bin/componentize-py" --version) installed in $venv"
}

install_js() {
    local js="$dest/js"
    if fresh "$js" "$here/package.json" "$here/package-lock.json"; then
        echo "js: jco $("$js/node_modules/.bin/jco" --version) already installed in $js"
        return
    fi
    local node
    node="$(node --version 2>/dev/null || true)"
    if [[ ! "$node" =~ ^v([0-9]+)\.([0-9]+) ]] || ! command -v npm >/dev/null ||
        ((BASH_REMATCH[1] < 20 || (BASH_REMATCH[1] == 20 && BASH_REMATCH[2] < 19))); then
        echo "js: skipped, needs Node.js >= 20.19 with npm (found: ${node:-none})"
        return
    fi
    rm -rf "$js"
    mkdir -p "$js"
    cp "$here/package.json" "$here/package-lock.json" "$js/"
    (cd "$js" && npm ci --silent --no-audit --no-fund)
    cat "$here/package.json" "$here/package-lock.json" >"$js/.pins"
    echo "js: jco $("$js/node_modules/.bin/jco" --version) installed in $js"
}

for lang in "${langs[@]}"; do
    case "$lang" in
        python | py) install_python ;;
        js | javascript) install_js ;;
        *)
            echo "unknown language: $lang (expected python or js)" >&2
            exit 64
            ;;
    esac
done
