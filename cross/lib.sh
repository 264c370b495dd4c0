# shellcheck shell=bash
# Shared helpers for the scripts in cross/ (sourced, not run).

# Prints a TCP port on 127.0.0.1 that nothing answers on: a random one below the
# ephemeral range, so the kernel does not hand it to an outgoing connection meanwhile.
free_port() {
    local p
    for _ in $(seq 50); do
        p=$((20000 + RANDOM % 12000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

# Builds the host agent whose only use here is `precompile` (Cranelift and nothing else:
# profile `precompile` in Cargo.toml, target/precompile/) and prints its path. A .cwasm
# loads only into the agent version that made it, so it is built from this checkout.
# Needs the caller in the repository's root; honours CARGO_TARGET_DIR.
precompiler() {
    cargo build -q -p edge-agent --profile precompile --no-default-features --features compiler >&2 || return 1
    echo "${CARGO_TARGET_DIR:-$PWD/target}/precompile/edge-agent"
}
