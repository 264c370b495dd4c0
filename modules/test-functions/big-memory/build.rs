//! Links the component with a 40 MiB initial linear memory (like a 40 MB data segment,
//! without a 40 MB file): the agent must refuse it at `check` under a 32 MiB limit.
fn main() {
    println!("cargo:rustc-link-arg=--initial-memory=41943040");
}
