//! `edge-agent precompile`: compiles components ahead of time into `.cwasm` artifacts for a
//! device, so that the device needs no compiler (the small device build) and starts
//! functions in milliseconds.

use std::path::{Path, PathBuf};

use wasmtime::Engine;

use super::engine::base_config;
use super::function::sha256_hex;
use super::{LoadError, RuntimeError};

/// One written artifact.
#[derive(Debug)]
pub struct Artifact {
    /// Where it was written.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: usize,
    /// Its SHA-256, for the config's `sha256` key.
    pub sha256: String,
}

/// The wasmtime target for a Rust target triple: 32-bit ARM has no Cranelift back end, so
/// functions run there through the Pulley interpreter (`pulley32`).
pub fn wasmtime_target(triple: &str) -> &str {
    if triple.starts_with("armv7") || triple.starts_with("arm-") || triple.starts_with("thumbv7") {
        "pulley32"
    } else {
        triple
    }
}

/// Compiles each of `modules` for `target` (default: this host) into `out/<stem>.cwasm`,
/// with fuel counting if `fuel` (needed when the device's config sets any `fuel`).
///
/// # Errors
/// [`RuntimeError::Load`] naming the module that failed; [`RuntimeError::Engine`] for an
/// unknown target.
pub fn precompile(
    target: Option<&str>,
    fuel: bool,
    out: &Path,
    modules: &[PathBuf],
) -> Result<Vec<Artifact>, RuntimeError> {
    let engine = Engine::new(&base_config(target.map(wasmtime_target), fuel)?)
        .map_err(|e| RuntimeError::engine("cannot create the compiling engine", e))?;
    // Two modules of one file name (`a/m.wasm`, `b/m.wasm`) would be one artifact: the
    // second silently replaced the first, whose printed hash then named nothing (a probe,
    // 2026-12-07). Refused before anything is compiled.
    let artifact = |module: &PathBuf| {
        let stem = module.file_stem().ok_or(LoadError::NoFileName);
        stem.map(|stem| out.join(stem).with_extension("cwasm"))
    };
    let err = |module: &PathBuf, source: LoadError| RuntimeError::Load {
        function: module.display().to_string(),
        source,
    };
    let mut seen = std::collections::HashMap::new();
    for module in modules {
        let path = artifact(module).map_err(|e| err(module, e))?;
        if let Some(other) = seen.insert(path.clone(), module) {
            let other = other.display().to_string();
            return Err(err(module, LoadError::SameArtifact { path, other }));
        }
    }
    std::fs::create_dir_all(out)
        .map_err(|e| RuntimeError::engine(format!("cannot create {}", out.display()), e))?;
    let mut artifacts = Vec::new();
    for module in modules {
        let err = |source: LoadError| err(module, source);
        let bytes = std::fs::read(module).map_err(|source| {
            err(LoadError::Read {
                path: module.clone(),
                source,
            })
        })?;
        let compiled = engine.precompile_component(&bytes).map_err(|e| {
            err(LoadError::Compile {
                path: module.clone(),
                source: e.into(),
            })
        })?;
        // Sealed with its CRC-32, which the agent checks before it runs the code.
        let compiled = super::artifact::seal(compiled);
        let path = artifact(module).map_err(err)?;
        // Whole or not at all: an agent watching this folder never loads part of it.
        crate::files::replace(&path, &compiled).map_err(|source| {
            err(LoadError::Write {
                path: path.clone(),
                source,
            })
        })?;
        artifacts.push(Artifact {
            sha256: sha256_hex(&compiled),
            bytes: compiled.len(),
            path,
        });
    }
    Ok(artifacts)
}

#[cfg(test)]
mod tests {
    #[test]
    fn two_modules_of_one_file_name_are_refused_before_compiling() {
        let out = tempfile::tempdir().expect("tempdir");
        let modules = ["x1/m.wasm".into(), "x2/m.wasm".into()];
        let e = super::precompile(None, false, out.path(), &modules).expect_err("refused");
        let e = crate::failure::chain(&e);
        assert!(
            e.contains("x2/m.wasm") && e.contains("as x1/m.wasm is"),
            "{e}"
        );
    }

    #[test]
    fn armv7_goes_through_pulley() {
        assert_eq!(
            super::wasmtime_target("armv7-unknown-linux-gnueabihf"),
            "pulley32"
        );
        assert_eq!(
            super::wasmtime_target("aarch64-unknown-linux-gnu"),
            "aarch64-unknown-linux-gnu"
        );
    }
}
