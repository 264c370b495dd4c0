//! Links the component with a 40 MiB initial linear memory (like a 40 MB data segment,
//! without a 40 MB file): the agent must refuse it at `check` under a 32 MiB limit. Only
//! for WebAssembly: the workspace's host tests build it with the host's linker too.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("TARGET").is_ok_and(|t| t.starts_with("wasm32")) {
        println!("cargo:rustc-link-arg=--initial-memory=41943040");
    }
}
