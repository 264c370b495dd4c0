//! Function projects outside this repository: `edge-agent new` writes one from a template,
//! `edge-agent build` builds it into a component (and, with `--precompile`, a `.cwasm`).
//!
//! A function is written in Rust (the default), Python (`--lang python`, built with
//! componentize-py) or JavaScript (`--lang js`, built with jco). The templates are the
//! repository's own examples and the SDKs are the repository's own, all built into the
//! binary, so that what `new` writes is what the test suite builds. A Rust project carries
//! a copy of `edge-agent-sdk` (the WIT inside) until it is on crates.io; a Python or
//! JavaScript project carries its SDK layer (`edge_agent/`, `edge-agent.js`) and the WIT.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use clap::{Args, ValueEnum};
use edge_agent::failure::Exit;

/// The guest target functions are built for.
pub const WASM_TARGET: &str = "wasm32-wasip2";

/// The guest toolchains' versions, as pinned in modules/guest-tools (checked by a test).
pub const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";
/// See [`COMPONENTIZE_PY`].
pub const JCO: &str = "1.34.0";

/// The language a function is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    /// Rust, with the `edge-agent-sdk` crate (cargo, the wasm32-wasip2 target).
    Rust,
    /// Python, with the `edge_agent` package (componentize-py; needs python3).
    #[value(alias = "py")]
    Python,
    /// JavaScript, with `edge-agent.js` (jco with ComponentizeJS; needs Node.js >= 20.19).
    #[value(alias = "javascript")]
    Js,
}

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
    fn source(self, lang: Lang) -> &'static str {
        match (lang, self) {
            (Lang::Rust, Self::Echo) => {
                include_str!("../../../../modules/examples/echo/src/lib.rs")
            }
            (Lang::Rust, Self::Threshold) => {
                include_str!("../../../../modules/examples/threshold-alert/src/lib.rs")
            }
            (Lang::Rust, Self::Counter) => {
                include_str!("../../../../modules/examples/counter/src/lib.rs")
            }
            (Lang::Python, Self::Echo) => {
                include_str!("../../../../modules/examples-py/echo/app.py")
            }
            (Lang::Python, Self::Threshold) => {
                include_str!("../../../../modules/examples-py/threshold-alert/app.py")
            }
            (Lang::Python, Self::Counter) => {
                include_str!("../../../../modules/examples-py/counter/app.py")
            }
            (Lang::Js, Self::Echo) => include_str!("../../../../modules/examples-js/echo/app.js"),
            (Lang::Js, Self::Threshold) => {
                include_str!("../../../../modules/examples-js/threshold-alert/app.js")
            }
            (Lang::Js, Self::Counter) => {
                include_str!("../../../../modules/examples-js/counter/app.js")
            }
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
    /// The language it is written in.
    #[arg(short, long, value_enum, default_value_t = Lang::Rust)]
    pub lang: Lang,
    /// Where to write the project (a new or empty directory). Default: `./NAME`.
    #[arg(short, long)]
    pub dir: Option<PathBuf>,
}

/// Arguments of `edge-agent build`.
#[derive(Debug, Clone, Args)]
pub struct BuildArgs {
    /// The function's project: the directory with its Cargo.toml (Rust), app.py (Python)
    /// or app.js (JavaScript).
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
    /// How the command ends.
    pub fn exit(&self) -> Exit {
        match self {
            Self::Usage(_) => Exit::Usage,
            Self::CannotCreate(_) => Exit::CantCreate,
            Self::Unavailable(_) => Exit::Unavailable,
            Self::Build(_) => Exit::Failure,
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

/// Whether `name` is the SDK's (the Rust crate `edge-agent-sdk`, the Python package
/// `edge_agent`): a project of that name built with `two packages named
/// \`edge-agent-sdk\``, after `new` had taken it (a probe, 2026-12-08).
fn is_the_sdks_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase().replace('-', "_");
    name == "edge_agent_sdk" || name == "edge_agent"
}

/// Where `build` puts a project's component.
fn component_path(dir: &Path, name: &str, lang: Lang) -> PathBuf {
    match lang {
        Lang::Rust => dir
            .join("target")
            .join(WASM_TARGET)
            .join("release")
            .join(format!("{}.wasm", name.replace('-', "_"))),
        Lang::Python | Lang::Js => dir.join("dist").join(format!("{name}.wasm")),
    }
}

/// The `[[function]]` snippet to paste into the agent's config.
fn snippet(name: &str, template: Template, wasm: &Path) -> String {
    format!(
        "# Paste into the agent's config (relative paths there are read from the config's\n\
         # own directory; this one is absolute). On a device: `edge-agent build --precompile\n\
         # --target <triple>` and name the .cwasm instead.\n\
         [[function]]\nname = \"{name}\"\nmodule = \"{}\"\n{}",
        wasm.display(),
        template.function_lines(name)
    )
}

fn template_name(template: Template) -> String {
    template
        .to_possible_value()
        .map_or(String::new(), |v| v.get_name().to_string())
}

/// The files of a new project, relative to its directory.
fn files(name: &str, template: Template, lang: Lang, wasm: &Path) -> Vec<(&'static str, String)> {
    match lang {
        Lang::Rust => rust_files(name, template, wasm),
        Lang::Python => python_files(name, template, wasm),
        Lang::Js => js_files(name, template, wasm),
    }
}

fn rust_files(name: &str, template: Template, wasm: &Path) -> Vec<(&'static str, String)> {
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
    let snippet = snippet(name, template, wasm);
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
        template = template_name(template),
    );
    vec![
        ("Cargo.toml", cargo),
        ("src/lib.rs", template.source(Lang::Rust).to_string()),
        ("README.md", readme),
        ("function.toml", snippet),
        (".gitignore", "/target\n".to_string()),
    ]
    .into_iter()
    .chain(embedded(RUST_SDK))
    .collect()
}

/// Files of `modules/` that a project carries, as (path in the project, text).
type Embedded = &'static [(&'static str, &'static str)];

/// (path in the project, path under `modules/`) pairs, read at compile time.
macro_rules! embed {
    ($($to:literal <= $from:literal),* $(,)?) => {
        &[$(($to, include_str!(concat!("../../../../modules/", $from)))),*]
    };
}

/// A Rust project: the SDK crate beside it, and the lock file the repository's examples
/// are tested with.
const RUST_SDK: Embedded = embed![
    "Cargo.lock" <= "Cargo.lock",
    "edge-agent-sdk/Cargo.toml" <= "sdk/Cargo.toml",
    "edge-agent-sdk/README.md" <= "sdk/README.md",
    "edge-agent-sdk/src/lib.rs" <= "sdk/src/lib.rs",
    "edge-agent-sdk/wit/agent.wit" <= "sdk/wit/agent.wit",
];

/// A Python project: the `edge_agent` package and the WIT.
const PYTHON_SDK: Embedded = embed![
    "edge_agent/__init__.py" <= "sdk-py/edge_agent/__init__.py",
    "edge_agent/clock.py" <= "sdk-py/edge_agent/clock.py",
    "edge_agent/config.py" <= "sdk-py/edge_agent/config.py",
    "edge_agent/errors.py" <= "sdk-py/edge_agent/errors.py",
    "edge_agent/log.py" <= "sdk-py/edge_agent/log.py",
    "edge_agent/state.py" <= "sdk-py/edge_agent/state.py",
    "edge_agent/topic.py" <= "sdk-py/edge_agent/topic.py",
    "wit/agent.wit" <= "sdk/wit/agent.wit",
];

/// A JavaScript project: the SDK module, its bundler settings and the WIT.
const JS_SDK: Embedded = embed![
    "edge-agent.js" <= "sdk-js/edge-agent.js",
    "bundle.config.mjs" <= "sdk-js/bundle.config.mjs",
    "wit/agent.wit" <= "sdk/wit/agent.wit",
];

fn embedded(files: Embedded) -> impl Iterator<Item = (&'static str, String)> {
    files.iter().map(|(to, text)| (*to, (*text).to_string()))
}

/// The README of a Python or JavaScript project: how to build and run it.
fn guest_readme(name: &str, template: Template, lang: Lang) -> String {
    let (flag, source, sdk, toolchain) = match lang {
        Lang::Python => (
            "python",
            "app.py",
            "`edge_agent/` is the SDK layer it is written with (a handler is a plain \
             function; raising rejects the event)",
            format!(
                "`edge-agent build` runs componentize-py: from `$EDGE_AGENT_GUEST_TOOLS/py`, \
                 `.venv/` here or the PATH; if there is none it makes `.venv/` with python3 \
                 and installs `requirements.txt` ({COMPONENTIZE_PY}) into it."
            ),
        ),
        _ => (
            "js",
            "app.js",
            "`edge-agent.js` is the SDK layer it is written with (a handler is a plain \
             function; throwing rejects the event)",
            format!(
                "`edge-agent build` runs jco (`jco componentize --bundle`, ComponentizeJS): \
                 from `$EDGE_AGENT_GUEST_TOOLS/js` or `node_modules/` here; if there is none it \
                 runs `npm install` (package.json pins @bytecodealliance/jco {JCO}; Node.js \
                 >= 20.19)."
            ),
        ),
    };
    format!(
        "# {name}\n\n\
         An [edge-agent](https://example.invalid/edge-agent) function in {lang}, made by \
         `edge-agent new {name} --lang {flag} --template {template}`.\n\n\
         ```sh\n\
         edge-agent build                 # prints the component's path, size and sha256\n\
         ```\n\n\
         {toolchain} The component lands in `dist/{name}.wasm`. Then paste `function.toml` \
         into the agent's config and run it:\n\n\
         ```sh\n\
         edge-agent run --config edge-agent.toml\n\
         {try_it}\n\
         ```\n\n\
         The component carries an interpreter: about 12 (JavaScript) to 18 MB (Python), and \
         tens of MB of native code once compiled. Compile it once, ahead of time, for a \
         device: `edge-agent build --precompile --target aarch64-unknown-linux-gnu` writes \
         a `.cwasm` beside it (the device build of the agent runs only those).\n\n\
         `{source}` is the function; {sdk}; `wit/` is the contract with the agent.\n",
        lang = if lang == Lang::Python {
            "Python"
        } else {
            "JavaScript"
        },
        template = template_name(template),
        try_it = template.try_it(name),
    )
}

fn python_files(name: &str, template: Template, wasm: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("app.py", template.source(Lang::Python).to_string()),
        ("README.md", guest_readme(name, template, Lang::Python)),
        ("function.toml", snippet(name, template, wasm)),
        (
            "requirements.txt",
            format!("# The toolchain `edge-agent build` uses.\n{COMPONENTIZE_PY}\n"),
        ),
        (".gitignore", "/dist\n/.venv\n__pycache__/\n".to_string()),
    ]
    .into_iter()
    .chain(embedded(PYTHON_SDK))
    .collect()
}

fn js_files(name: &str, template: Template, wasm: &Path) -> Vec<(&'static str, String)> {
    let package = format!(
        r#"{{
  "name": "{name}",
  "private": true,
  "type": "module",
  "description": "An edge-agent function; `edge-agent build` makes dist/{name}.wasm",
  "devDependencies": {{
    "@bytecodealliance/jco": "{JCO}"
  }}
}}
"#
    );
    vec![
        (
            "app.js",
            template
                .source(Lang::Js)
                .replace("\"../../sdk-js/edge-agent.js\"", "\"./edge-agent.js\""),
        ),
        ("README.md", guest_readme(name, template, Lang::Js)),
        ("function.toml", snippet(name, template, wasm)),
        ("package.json", package),
        (".gitignore", "/dist\n/node_modules\n".to_string()),
    ]
    .into_iter()
    .chain(embedded(JS_SDK))
    .collect()
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
    if is_the_sdks_name(&args.name) {
        return Err(ProjectError::Usage(format!(
            "`{}` is the name of the SDK the project is built with (its copy in the project \
             would clash with it): pick another name",
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
    // Canonical, as `build` takes it: `--dir ../x` left `..` in function.toml's path.
    let dir = std::fs::canonicalize(&dir).map_err(|e| cannot("find", e))?;
    let wasm = component_path(&dir, &args.name, args.lang);
    for (path, text) in files(&args.name, args.template, args.lang, &wasm) {
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
        sha256: edge_agent::runtime::function::sha256_hex(&bytes),
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

/// Builds a Rust project with cargo (release, wasm32-wasip2); returns the component.
fn build_rust(dir: &Path) -> Result<PathBuf, ProjectError> {
    let manifest = dir.join("Cargo.toml");
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
    wasm.ok_or_else(|| {
        ProjectError::Build(format!(
            "{} built no cdylib: a function's Cargo.toml needs [lib] crate-type = [\"cdylib\"]",
            manifest.display()
        ))
    })
}

/// The function's name in the project's function.toml, else the directory's name.
fn project_name(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("function.toml"))
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let value = l.trim().strip_prefix("name")?.trim().strip_prefix('=')?;
                Some(value.trim().trim_matches('"').to_string())
            })
        })
        .filter(|name| valid_name(name))
        .or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "function".into())
}

/// Runs `cmd` (a build step, all its output to stderr: stdout is for what was built);
/// `what` names it in errors.
fn run(what: &str, mut cmd: Command) -> Result<(), ProjectError> {
    let status = cmd
        .stdout(Stdio::from(std::io::stderr()))
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| ProjectError::Unavailable(format!("cannot run {what}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(ProjectError::Build(format!(
            "{what} failed ({status}); its messages are above"
        )))
    }
}

/// The first of `candidates` that is a file.
fn first_file(candidates: impl IntoIterator<Item = PathBuf>) -> Option<PathBuf> {
    candidates.into_iter().find(|p| p.is_file())
}

/// `name` on the PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The pinned toolchains installed by modules/guest-tools/install.sh, if pointed at.
fn guest_tools(sub: &str) -> Option<PathBuf> {
    std::env::var_os("EDGE_AGENT_GUEST_TOOLS").map(|d| PathBuf::from(d).join(sub))
}

/// componentize-py: the pinned install, the project's `.venv`, the PATH; or a new
/// `.venv` with requirements.txt installed.
fn componentize_py(dir: &Path) -> Result<PathBuf, ProjectError> {
    let venv = dir.join(".venv");
    let found = first_file(
        guest_tools("py/bin/componentize-py")
            .into_iter()
            .chain([venv.join("bin/componentize-py")]),
    )
    .or_else(|| on_path("componentize-py"));
    if let Some(tool) = found {
        return Ok(tool);
    }
    eprintln!(
        "build: installing {COMPONENTIZE_PY} into {} (python3 -m venv, pip)",
        venv.display()
    );
    let mut make = Command::new("python3");
    make.args(["-m", "venv"]).arg(&venv);
    run("python3 -m venv (Debian: apt install python3-venv)", make)?;
    let mut pip = Command::new(venv.join("bin/pip"));
    pip.args(["install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(dir.join("requirements.txt"));
    run("pip install -r requirements.txt", pip)?;
    Ok(venv.join("bin/componentize-py"))
}

/// jco: the pinned install, the project's `node_modules`; or `npm install` first.
fn jco(dir: &Path) -> Result<PathBuf, ProjectError> {
    let local = dir.join("node_modules/.bin/jco");
    if let Some(tool) = first_file(
        guest_tools("js/node_modules/.bin/jco")
            .into_iter()
            .chain([local.clone()]),
    ) {
        return Ok(tool);
    }
    eprintln!("build: installing @bytecodealliance/jco {JCO} (npm install, Node.js >= 20.19)");
    let mut npm = Command::new("npm");
    npm.args(["install", "--no-audit", "--no-fund"])
        .current_dir(dir);
    run("npm install", npm)?;
    Ok(local)
}

/// Builds a Python or JavaScript project into `dist/NAME.wasm`; returns it.
fn build_guest(dir: &Path, lang: Lang) -> Result<PathBuf, ProjectError> {
    let name = project_name(dir);
    let out = dir.join("dist");
    std::fs::create_dir_all(&out)
        .map_err(|e| ProjectError::CannotCreate(format!("cannot create {}: {e}", out.display())))?;
    let wasm = out.join(format!("{name}.wasm"));
    // The tools read files relative to the project (jco only there).
    let mut cmd = match lang {
        Lang::Python => {
            let mut cmd = Command::new(componentize_py(dir)?);
            cmd.args([
                "-d",
                "wit",
                "-w",
                "function",
                "componentize",
                "app",
                "-p",
                ".",
                "-o",
            ]);
            cmd
        }
        _ => {
            let mut cmd = Command::new(jco(dir)?);
            cmd.args(["componentize", "app.js", "--bundle", "--bundle-config"])
                .args(["bundle.config.mjs", "-w", "wit", "-n", "function"])
                // The agent links no wasi:http.
                .args(["-d", "http", "-d", "fetch-event", "-o"]);
            cmd
        }
    };
    cmd.arg(&wasm).current_dir(dir);
    let what = if lang == Lang::Python {
        "componentize-py"
    } else {
        "jco componentize"
    };
    let started = std::time::Instant::now();
    run(what, cmd)?;
    eprintln!("build: {what} took {:.1?}", started.elapsed());
    Ok(wasm)
}

/// The language of the project in `dir`, from the file its build starts at.
fn project_lang(dir: &Path) -> Result<Lang, ProjectError> {
    [
        ("Cargo.toml", Lang::Rust),
        ("app.py", Lang::Python),
        ("app.js", Lang::Js),
    ]
    .into_iter()
    .find(|(file, _)| dir.join(file).is_file())
    .map(|(_, lang)| lang)
    .ok_or_else(|| {
        ProjectError::Usage(format!(
            "{}: no Cargo.toml, app.py or app.js (make a project with `edge-agent new NAME`)",
            dir.display()
        ))
    })
}

/// `edge-agent build`: builds the project's component (Rust in release, Python with
/// componentize-py, JavaScript with jco); with `--precompile` also its `.cwasm`. The
/// tools' progress and errors go to stderr as they come.
///
/// # Errors
/// No project there, a missing tool, a failed build, or an artifact that is not a
/// component.
pub fn build(args: &BuildArgs) -> Result<Vec<Built>, ProjectError> {
    let lang = project_lang(&args.dir)?;
    let dir = std::fs::canonicalize(&args.dir)
        .map_err(|e| ProjectError::Usage(format!("{}: {e}", args.dir.display())))?;
    let wasm = match lang {
        Lang::Rust => build_rust(&dir)?,
        Lang::Python | Lang::Js => build_guest(&dir, lang)?,
    };
    let head = std::fs::read(&wasm).unwrap_or_default();
    // A component: "\0asm", then version 0x0d and layer 1 (a core module has 1, 0).
    if head.get(..8) != Some(b"\0asm\x0d\x00\x01\x00".as_slice()) {
        return Err(ProjectError::Build(format!(
            "{} is not a WebAssembly component: build for {WASM_TARGET}",
            wasm.display()
        )));
    }
    let mut out = vec![built(wasm.clone())?];
    if args.precompile {
        let dir = wasm.parent().unwrap_or(Path::new("."));
        let artifacts = edge_agent::runtime::precompile::precompile(
            args.target.as_deref(),
            false,
            dir,
            std::slice::from_ref(&wasm),
        )
        .map_err(|e| ProjectError::Build(edge_agent::failure::chain(&e)))?;
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
        for sdk in ["edge-agent-sdk", "Edge_Agent_SDK", "edge_agent"] {
            assert!(is_the_sdks_name(sdk), "{sdk}");
        }
        assert!(!is_the_sdks_name("edge-agent-sdk2"));
    }

    #[test]
    fn a_new_project_has_everything_and_refuses_to_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("door-count");
        let args = NewArgs {
            name: "door-count".into(),
            template: Template::Counter,
            lang: Lang::Rust,
            dir: Some(dir.clone()),
        };
        let made = new(&args).unwrap();
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
        let table: toml::Table = toml::from_str(&snippet).unwrap();
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

    #[test]
    fn a_dir_given_with_dots_is_written_without_them() {
        let tmp = tempfile::tempdir().unwrap();
        let args = NewArgs {
            name: "up".into(),
            template: Template::Echo,
            lang: Lang::Rust,
            dir: Some(tmp.path().join("a/../up")),
        };
        let made = new(&args).unwrap();
        let snippet = std::fs::read_to_string(made.join("function.toml")).unwrap();
        assert!(!snippet.contains("/../"), "{snippet}");
        assert_eq!(made, tmp.path().canonicalize().unwrap().join("up"));
    }

    #[test]
    fn python_and_js_projects_carry_their_sdk_and_the_wit() {
        let tmp = tempfile::tempdir().unwrap();
        for (lang, files) in [
            (
                Lang::Python,
                ["app.py", "edge_agent/__init__.py", "requirements.txt"],
            ),
            (Lang::Js, ["app.js", "edge-agent.js", "package.json"]),
        ] {
            let dir = tmp.path().join(format!("{lang:?}"));
            let args = NewArgs {
                name: "heat".into(),
                template: Template::Threshold,
                lang,
                dir: Some(dir.clone()),
            };
            let made = new(&args).unwrap();
            for f in files
                .into_iter()
                .chain(["wit/agent.wit", "function.toml", "README.md"])
            {
                assert!(made.join(f).is_file(), "{lang:?}: {f}");
            }
            assert_eq!(project_lang(&made).ok(), Some(lang));
            assert_eq!(project_name(&made), "heat");
            let snippet = std::fs::read_to_string(made.join("function.toml")).unwrap_or_default();
            assert!(snippet.contains("dist/heat.wasm"), "{snippet}");
        }
        let app = std::fs::read_to_string(tmp.path().join("Js/app.js")).unwrap_or_default();
        assert!(app.contains("from \"./edge-agent.js\""), "{app}");
    }

    #[test]
    fn the_pinned_guest_toolchains_are_the_repositorys() {
        let requirements = include_str!("../../../../modules/guest-tools/requirements.txt");
        assert!(
            requirements.lines().any(|l| l == COMPONENTIZE_PY),
            "{requirements}"
        );
        let package = include_str!("../../../../modules/guest-tools/package.json");
        assert!(
            package.contains(&format!("\"@bytecodealliance/jco\": \"{JCO}\"")),
            "{package}"
        );
    }
}
