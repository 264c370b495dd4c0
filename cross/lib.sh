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
