//! Function projects outside this repository: `edge-agent new` writes one from a template,
//! `edge-agent build` builds it into a component (and, with `--precompile`, a `.cwasm`).
//!
//! The templates are the repository's own examples and the SDK is the repository's own,
//! both built into the binary, so that what `new` writes is what the test suite builds.
//! Until `edge-agent-sdk` is on crates.io the project carries a copy of it
//! (`edge-agent-sdk/`, the WIT inside), named by path and version; then the path goes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use clap::{Args, ValueEnum};

/// The guest target functions are built for.
pub const WASM_TARGET: &str = "wasm32-wasip2";

/// What a new function starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Template {
    /// Republishes every payload unchanged (stateless; on-demand).
    Echo,
    /// Publishes an alert when `{"value": N}` is over a threshold (stateless; on-demand).
    Threshold,
    /// Counts events per topic in the state store (stateful; persistent).
    Counter,
}

impl Template {
    fn source(self) -> &'static str {
        match self {
            Self::Echo => include_str!("../../../modules/examples/echo/src/lib.rs"),
            Self::Threshold => include_str!("../../../modules/examples/threshold-alert/src/lib.rs"),
            Self::Counter => include_str!("../../../modules/examples/counter/src/lib.rs"),
        }
    }

    /// Its dependencies besides the SDK (as the example's Cargo.toml has them).
    fn dependencies(self) -> &'static str {
        match self {
            Self::Echo => "",
            Self::Threshold | Self::Counter => "serde_json = \"1\"\n",
        }
    }

    /// The `[[function]]` lines after `module`: model, topics and config.
    fn function_lines(self, name: &str) -> String {
        match self {
            Self::Echo => format!(
                "mode = \"on-demand\"\ntopics = [\"{name}/in/#\"]\n[function.config]\n\
                 out_topic = \"{name}/out/{{2..}}\"   # {{2..}}: the topic from its third level on\n"
            ),
            Self::Threshold => "mode = \"on-demand\"\ntopics = [\"sensors/+/temperature\"]\n\
                 [function.config]\nthreshold = \"30\"\n\
                 alert_topic = \"alerts/{1..}\"   # {1..}: the topic from its second level on\n"
                .to_string(),
            Self::Counter => format!(
                "mode = \"persistent\"   # counts live in the state store: both models give the same\n\
                 topics = [\"{name}/in/#\"]\n[function.config]\n\
                 out_topic = \"{name}/count/{{2..}}\"\n"
            ),
        }
    }

    fn try_it(self, name: &str) -> String {
        match self {
            Self::Echo => format!(
                "mosquitto_sub -t '{name}/out/#' -v &\nmosquitto_pub -t {name}/in/hello -m 'hi'   # {name}/out/hello hi"
            ),
            Self::Threshold => "mosquitto_sub -t 'alerts/#' -v &\n\
                 mosquitto_pub -t sensors/kitchen/temperature -m '{\"value\": 31.5}'   # an alert on alerts/kitchen/temperature"
                .to_string(),
            Self::Counter => format!(
                "mosquitto_sub -t '{name}/count/#' -v &\nmosquitto_pub -t {name}/in/door -m 'open'   # {name}/count/door {{\"topic\":...,\"count\":1}}"
            ),
        }
    }
}

/// Arguments of `edge-agent new`.
#[derive(Debug, Clone, Args)]
pub struct NewArgs {
    /// The function's name: letters, digits, `-` and `_`, starting with a letter (it names
    /// the crate, the `.wasm` and the `[[function]]`).
    pub name: String,
    /// What it starts from.
    #[arg(short, long, value_enum, default_value_t = Template::Echo)]
    pub template: Template,
    /// Where to write the project (a new or empty directory). Default: `./NAME`.
    #[arg(short, long)]
    pub dir: Option<PathBuf>,
}

/// Arguments of `edge-agent build`.
#[derive(Debug, Clone, Args)]
pub struct BuildArgs {
    /// The function's project (the directory with its Cargo.toml).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Also compile the component ahead of time into a `.cwasm` beside it, for a device
    /// (full build only).
    #[arg(long)]
    pub precompile: bool,
    /// With `--precompile`: the device's target triple, e.g. aarch64-unknown-linux-gnu.
    /// Default: this host.
    #[arg(long, requires = "precompile")]
    pub target: Option<String>,
}

/// What `new` or `build` failed at.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// The project directory cannot be written.
    #[error("{0}")]
    CannotCreate(String),
    /// A tool (cargo, rustup) is missing.
    #[error("{0}")]
    Unavailable(String),
    /// The build failed, or made no component.
    #[error("{0}")]
    Build(String),
}

impl ProjectError {
    /// The process exit code: 64 usage, 73 cannot create, 69 unavailable, 1 build.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 64,
            Self::CannotCreate(_) => 73,
            Self::Unavailable(_) => 69,
            Self::Build(_) => 1,
        }
    }
}

fn valid_name(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The files of a new project, relative to its directory.
fn files(name: &str, template: Template, wasm: &Path) -> Vec<(&'static str, String)> {
    let cargo = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

[lib]
crate-type = ["cdylib"]

[dependencies]
# The SDK, with the WIT inside. `edge-agent new` put a copy here; once edge-agent-sdk is on
# crates.io this line becomes: edge-agent-sdk = "0.1"
edge-agent-sdk = {{ version = "0.1.0", path = "edge-agent-sdk" }}
{deps}
# Small components: the agent compiles them again for the device anyway.
[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = true
panic = "abort"

# A project of its own, wherever it is put.
[workspace]
"#,
        deps = template.dependencies()
    );
    let snippet = format!(
        "# Paste into the agent's config (relative paths there are read from the config's\n\
         # own directory; this one is absolute). On a device: `edge-agent build --precompile\n\
         # --target <triple>` and name the .cwasm instead.\n\
         [[function]]\nname = \"{name}\"\nmodule = \"{}\"\n{}",
        wasm.display(),
        template.function_lines(name)
    );
    let readme = format!(
        "# {name}\n\n\
         An [edge-agent](https://example.invalid/edge-agent) function, made by `edge-agent new \
         {name} --template {template}`.\n\n\
         ```sh\n\
         edge-agent build                 # prints the component's path, size and sha256\n\
         ```\n\n\
         That is `cargo build --release --target {WASM_TARGET}` (the target is added with \
         rustup if missing). Then paste `function.toml` into the agent's config and run \
         it:\n\n\
         ```sh\n\
         edge-agent run --config edge-agent.toml\n\
         {}\n\
         ```\n\n\
         For a device: `edge-agent build --precompile --target aarch64-unknown-linux-gnu` \
         writes a `.cwasm` for it (the device build of the agent runs only those).\n\n\
         `src/lib.rs` is the function; `edge-agent-sdk/` is the SDK it is written with (see \
         its README), kept here until it is on crates.io.\n",
        template.try_it(name),
        template = template
            .to_possible_value()
            .map_or(String::new(), |v| v.get_name().to_string()),
    );
    vec![
        ("Cargo.toml", cargo),
        ("src/lib.rs", template.source().to_string()),
        ("README.md", readme),
        ("function.toml", snippet),
        (".gitignore", "/target\n".to_string()),
        (
            "Cargo.lock",
            include_str!("../../../modules/Cargo.lock").to_string(),
        ),
        (
            "edge-agent-sdk/Cargo.toml",
            include_str!("../../../modules/sdk/Cargo.toml").to_string(),
        ),
        (
            "edge-agent-sdk/README.md",
            include_str!("../../../modules/sdk/README.md").to_string(),
        ),
        (
            "edge-agent-sdk/src/lib.rs",
            include_str!("../../../modules/sdk/src/lib.rs").to_string(),
        ),
        (
            "edge-agent-sdk/wit/agent.wit",
            include_str!("../../../modules/sdk/wit/agent.wit").to_string(),
        ),
    ]
}

/// `edge-agent new`: writes the project; returns its directory.
///
/// # Errors
/// A bad name (usage), or a directory that exists with files in it or cannot be written.
pub fn new(args: &NewArgs) -> Result<PathBuf, ProjectError> {
    if !valid_name(&args.name) {
        return Err(ProjectError::Usage(format!(
            "`{}`: a function name is 1-64 letters, digits, `-` and `_`, starting with a letter",
            args.name
        )));
    }
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    let cannot = |what: &str, e: std::io::Error| {
        ProjectError::CannotCreate(format!("cannot {what} {}: {e}", dir.display()))
    };
    if let Ok(mut entries) = std::fs::read_dir(&dir)
        && entries.next().is_some()
    {
        return Err(ProjectError::CannotCreate(format!(
            "{} exists and is not empty: pick another --dir",
            dir.display()
        )));
    }
    std::fs::create_dir_all(&dir).map_err(|e| cannot("create", e))?;
    let dir = std::path::absolute(&dir).map_err(|e| cannot("find", e))?;
    let wasm = dir
        .join("target")
        .join(WASM_TARGET)
        .join("release")
        .join(format!("{}.wasm", args.name.replace('-', "_")));
    for (path, text) in files(&args.name, args.template, &wasm) {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| cannot("write in", e))?;
        }
        std::fs::write(&path, text).map_err(|e| cannot("write in", e))?;
    }
    Ok(dir)
}

/// A built component (or precompiled artifact).
#[derive(Debug)]
pub struct Built {
    /// Where it is.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Its SHA-256 (hex), for the config's `sha256` key.
    pub sha256: String,
}

impl std::fmt::Display for Built {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}  {} bytes  sha256 {}",
            self.path.display(),
            self.bytes,
            self.sha256
        )
    }
}

fn built(path: PathBuf) -> Result<Built, ProjectError> {
    let bytes = std::fs::read(&path)
        .map_err(|e| ProjectError::Build(format!("cannot read {}: {e}", path.display())))?;
    Ok(Built {
        bytes: bytes.len() as u64,
        sha256: crate::runtime::function::sha256_hex(&bytes),
        path,
    })
}

/// Adds the guest target with rustup if rustup is there and the target is not.
fn ensure_target() {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    if let Ok(out) = installed
        && out.status.success()
        && !String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l == WASM_TARGET)
    {
        eprintln!("build: adding the {WASM_TARGET} target (rustup target add {WASM_TARGET})");
        let _ = Command::new("rustup")
            .args(["target", "add", WASM_TARGET])
            .status();
    }
}

/// `edge-agent build`: builds the project's component in release; with `--precompile`
/// also its `.cwasm`. Cargo's progress and errors go to stderr as they come.
///
/// # Errors
/// No project there, no cargo, a failed build, or an artifact that is not a component.
pub fn build(args: &BuildArgs) -> Result<Vec<Built>, ProjectError> {
    let manifest = args.dir.join("Cargo.toml");
    if !manifest.is_file() {
        return Err(ProjectError::Usage(format!(
            "{}: no Cargo.toml (make a project with `edge-agent new NAME`)",
            args.dir.display()
        )));
    }
    if args.precompile && !cfg!(feature = "compiler") {
        return Err(ProjectError::Unavailable(
            "--precompile needs the full build of edge-agent (this one has no compiler)".into(),
        ));
    }
    let manifest = std::fs::canonicalize(&manifest)
        .map_err(|e| ProjectError::Usage(format!("{}: {e}", manifest.display())))?;
    ensure_target();
    let mut child = Command::new("cargo")
        .args(["build", "--release", "--target", WASM_TARGET])
        .args([
            "--message-format",
            "json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(&manifest)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| ProjectError::Unavailable(format!("cannot run cargo: {e}")))?;
    let mut wasm = None;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let ours = msg["reason"] == "compiler-artifact"
                && msg["manifest_path"].as_str().map(Path::new) == Some(manifest.as_path())
                && msg["target"]["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "cdylib"));
            if ours {
                wasm = msg["filenames"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|f| f.as_str())
                    .find(|f| f.ends_with(".wasm"))
                    .map(PathBuf::from);
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| ProjectError::Build(format!("cargo: {e}")))?;
    if !status.success() {
        return Err(ProjectError::Build(format!(
            "cargo build failed ({status}); its messages are above"
        )));
    }
    let wasm = wasm.ok_or_else(|| {
        ProjectError::Build(format!(
            "{} built no cdylib: a function's Cargo.toml needs [lib] crate-type = [\"cdylib\"]",
            manifest.display()
        ))
    })?;
    let head = std::fs::read(&wasm).unwrap_or_default();
    // A component: "\0asm", then version 0x0d and layer 1 (a core module has 1, 0).
    if head.get(..8) != Some(b"\0asm\x0d\x00\x01\x00".as_slice()) {
        return Err(ProjectError::Build(format!(
            "{} is not a WebAssembly component: build for {WASM_TARGET}",
            wasm.display()
        )));
    }
    #[cfg_attr(not(feature = "compiler"), allow(unused_mut))]
    let mut out = vec![built(wasm.clone())?];
    #[cfg(feature = "compiler")]
    if args.precompile {
        let dir = wasm.parent().unwrap_or(Path::new("."));
        let artifacts = crate::runtime::precompile::precompile(
            args.target.as_deref(),
            false,
            dir,
            std::slice::from_ref(&wasm),
        )
        .map_err(|e| ProjectError::Build(crate::failure::chain(&e)))?;
        for a in artifacts {
            out.push(built(a.path)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_crate_and_function_names() {
        for good in ["f", "my-func", "Sensor_2"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "2fast", "a.b", "a/b", "-x", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_new_project_has_everything_and_refuses_to_overwrite() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = tmp.path().join("door-count");
        let args = NewArgs {
            name: "door-count".into(),
            template: Template::Counter,
            dir: Some(dir.clone()),
        };
        let made = new(&args).unwrap_or_else(|e| panic!("{e}"));
        for f in [
            "Cargo.toml",
            "src/lib.rs",
            "README.md",
            "function.toml",
            "edge-agent-sdk/wit/agent.wit",
        ] {
            assert!(made.join(f).is_file(), "{f}");
        }
        let snippet = std::fs::read_to_string(made.join("function.toml")).unwrap_or_default();
        let wasm = "target/wasm32-wasip2/release/door_count.wasm";
        assert!(
            snippet.contains(wasm) && snippet.contains("persistent"),
            "{snippet}"
        );
        // The snippet is a valid [[function]] table.
        let table: toml::Table = toml::from_str(&snippet).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(table["function"][0]["name"].as_str(), Some("door-count"));
        let again = new(&args);
        assert!(
            matches!(again, Err(ProjectError::CannotCreate(_))),
            "{again:?}"
        );
        let bad = NewArgs {
            name: "2x".into(),
            ..args
        };
        assert!(matches!(new(&bad), Err(ProjectError::Usage(_))));
    }
}
