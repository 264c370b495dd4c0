#!/usr/bin/env bash
# Fast check (CI, under a second) of cross/image.sh's usage text and argument
# validation: each wrong call must exit with its status and a one-line message saying
# what is wrong, and a right one with --dry-run must say what it would build. Builds
# nothing, needs no root and no network. (The image itself: cross/image.sh and
# cross/image-check.sh, by hand; docs/raspberry-pi.md.)
#
# Usage: cross/image-args-test.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
image="$root/cross/image.sh"
work=$(mktemp -d "${TMPDIR:-/tmp}/image-args.XXXXXX")
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/modules" "$work/wasm" "$work/empty" "$work/both"
: >"$work/modules/echo.cwasm"
: >"$work/wasm/echo.wasm"
: >"$work/wasm/threshold-alert.wasm"
: >"$work/both/echo.wasm"
: >"$work/both/echo.cwasm"
cp "$root/configs/device.toml" "$work/config.toml"
echo "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC6 test@ci" >"$work/key.pub"
printf '%s\n' "-----BEGIN OPENSSH PRIVATE KEY-----" "b3BlbnNzaC1rZXktdjEAAAAA" >"$work/key"
printf '%s\n' "ssid=lab" "psk=correct horse" "country=GB" >"$work/wifi"
printf '%s\n' "ssid=lab" "psk=short" "country=GB" >"$work/wifi-short"
printf '%s\n' "ssid=lab" "psk=correct horse" >"$work/wifi-nocountry"
sed 's|threshold-alert.cwasm|mine.cwasm|' "$root/configs/device.toml" >"$work/other.toml"

passed=0 failed=0
# case WANT-STATUS WANT-TEXT ARGS...: runs image.sh ARGS, expects the status and the text
# in what it printed.
case_() {
    local want=$1 text=$2 rc=0 out
    shift 2
    out=$("$image" "$@" 2>&1) || rc=$?
    if [[ $rc == "$want" ]] && grep -qF -- "$text" <<<"$out"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAIL: image.sh $* -> status $rc (want $want), output: $(head -c 300 <<<"$out") (want '$text')"
    fi
}
ok=(--board pi4 --config "$work/config.toml" --modules "$work/modules" -o "$work/edge-agent-pi4.img")

case_ 64 "Usage: sudo cross/image.sh --board" --help
case_ 64 "Usage: sudo cross/image.sh --board" -h
if "$image" --help 2>&1 | grep -q 'set -euo'; then
    failed=$((failed + 1))
    echo "FAIL: image.sh --help prints code after its usage text"
else
    passed=$((passed + 1))
fi
case_ 64 "--board is required" --config "$work/config.toml"
case_ 64 "unknown board 'pi5'" --board pi5 --config "$work/config.toml"
case_ 64 "unknown argument '--bored'" --bored pi4
case_ 64 "--config needs a value" --board pi4 --config
case_ 64 "--config FILE is required" --board pi4 --modules "$work/modules" -o x.img
case_ 64 "--modules DIR is required" --board pi4 --config "$work/config.toml" -o x.img
case_ 64 "-o FILE is required" --board pi4 --config "$work/config.toml" --modules "$work/modules"
case_ 64 "must end in .img" --board pi4 --config "$work/config.toml" --modules "$work/modules" -o x.iso
case_ 66 "config '$work/nope.toml' not found" --board pi4 --config "$work/nope.toml" --modules "$work/modules" -o x.img
case_ 66 "modules folder '$work/nope' not found" --board pi4 --config "$work/config.toml" --modules "$work/nope" -o x.img
case_ 66 "no .wasm or .cwasm in" --board pi4 --config "$work/config.toml" --modules "$work/empty" -o x.img
case_ 66 "has both echo.wasm and its .cwasm" --board pi4 --config "$work/config.toml" --modules "$work/both" -o x.img
case_ 66 "has no mine.cwasm (or mine.wasm)" --board pi4 --config "$work/other.toml" --modules "$work/modules" -o x.img
case_ 66 "has no mine.cwasm (or mine.wasm)" --board pi4 --config "$work/other.toml" --modules "$work/wasm" -o x.img
case_ 66 "is a private key" "${ok[@]}" --ssh-key "$work/key"
case_ 66 "SSH key '$work/nope.pub' not found" "${ok[@]}" --ssh-key "$work/nope.pub"
case_ 66 "psk must be 8 to 63 characters" "${ok[@]}" --wifi "$work/wifi-short"
case_ 66 "needs country=XX" "${ok[@]}" --wifi "$work/wifi-nocountry"
case_ 64 "hostname 'bad_name'" "${ok[@]}" --hostname bad_name
case_ 0 "would build $work/edge-agent-pi4.img for pi4" "${ok[@]}" --dry-run
case_ 0 "2 module(s) from $work/wasm (2 to precompile)" --board pi4 --config "$work/config.toml" \
    --modules "$work/wasm" -o x.img --dry-run
case_ 0 "SSH key from $work/key.pub, Wi-Fi 'lab', read-only root" "${ok[@]}" --dry-run \
    --ssh-key "$work/key.pub" --wifi "$work/wifi" --read-only-root --board pi-zero-2w

echo "image-args: $passed passed, $failed failed"
((failed == 0))
