//! The house rules that the compiler does not check, checked on the source itself:
//!
//! - **Layers.** Every module of the agent library (`agent/core/src`) belongs to one layer (the table below, which
//!   `docs/architecture.md` shows); a module may import from its own layer and the layers
//!   below, never from above.
//! - **No import cycles**, neither between the crate's top-level modules nor between the
//!   files of one folder.
//! - **Docs that cannot drift.** Every config key, failure kind and command-line flag in the
//!   code is named in `docs/`.
//!
//! The import reader is small and knows this crate's style: it reads `crate::` paths
//! anywhere (in `use` trees too), and `super::` paths, after stripping comments, strings
//! and character literals. `#[cfg(test)]` modules count like any other code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clap::CommandFactory;

/// Lowest layer first. A top-level module missing here fails the check.
const LAYERS: &[(&str, u8)] = &[
    ("config", 1),
    ("topic", 1),
    ("event", 1),
    ("failure", 1),
    ("clock", 1),
    ("files", 1),
    ("rate", 1),
    ("tasks", 1),
    ("messages", 1),
    ("deployment", 1),
    ("mqtt", 2),
    ("state", 2),
    ("metrics", 3),
    ("runtime", 4),
    ("pipeline", 5),
    ("daemon", 6),
];

/// One source file: its module path (`["pipeline", "router"]`) and its text.
struct Source {
    module: Vec<String>,
    is_mod_rs: bool,
    text: String,
}

fn agent_sources() -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("core/src");
    let mut files = Vec::new();
    walk(&root, &mut files);
    files
        .into_iter()
        .filter_map(|path| {
            let rel = path.strip_prefix(&root).ok()?;
            let mut module: Vec<String> = rel
                .with_extension("")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            let is_mod_rs = module.last().is_some_and(|m| m == "mod");
            if is_mod_rs {
                module.pop();
            }
            // The crate root is not a module of a layer.
            if module == ["lib"] {
                return None;
            }
            let text = std::fs::read_to_string(&path).ok()?;
            Some(Source {
                module,
                is_mod_rs,
                text,
            })
        })
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir)
        .expect("read agent/core/src")
        .flatten()
    {
        let p = entry.path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The text with comments, string literals and character literals blanked out, so that
/// only code is searched for paths.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        let rest = &src[i..];
        if rest.starts_with("//") {
            let end = rest.find('\n').unwrap_or(rest.len());
            i += end;
        } else if rest.starts_with("/*") {
            let end = rest.find("*/").map_or(rest.len(), |e| e + 2);
            i += end;
        } else if let Some(hashes) = raw_string_start(rest) {
            let close = format!("\"{}", "#".repeat(hashes));
            let body = 2 + hashes;
            let end = rest[body..]
                .find(&close)
                .map_or(rest.len(), |e| body + e + close.len());
            out.push_str("\"\"");
            i += end;
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            out.push_str("\"\"");
            i = j + 1;
        } else if b[i] == b'\'' {
            // A character literal ('x', '\n', '\'', '"'), or a lifetime ('a, 'static).
            let len = if rest[1..].starts_with('\\') {
                rest[2..].find('\'').map(|e| e + 3)
            } else {
                rest[1..]
                    .char_indices()
                    .nth(1)
                    .filter(|&(_, c)| c == '\'')
                    .map(|(e, _)| e + 2)
            };
            match len {
                Some(n) => {
                    out.push_str("' '");
                    i += n;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

fn raw_string_start(s: &str) -> Option<usize> {
    let s = s.strip_prefix('r')?;
    let hashes = s.len() - s.trim_start_matches('#').len();
    s[hashes..].starts_with('"').then_some(hashes)
}

/// Every module path the code names with `crate::` or `super::` (resolved against
/// `module`), at full length: `crate::pipeline::router::Router` gives
/// `["pipeline", "router", "Router"]`.
fn imports(source: &Source) -> Vec<Vec<String>> {
    let code = code_only(&source.text);
    let mut found = Vec::new();
    // `super` inside an inline `mod x { ... }` of this file refers to the file's module.
    let mut inline_mod_depths: Vec<usize> = Vec::new();
    let mut depth = 0usize;
    let b = code.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let rest = &code[i..];
        let prev_ident = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        match b[i] {
            b'{' => {
                depth += 1;
                i += 1;
                continue;
            }
            b'}' => {
                if inline_mod_depths.last() == Some(&depth) {
                    inline_mod_depths.pop();
                }
                depth = depth.saturating_sub(1);
                i += 1;
                continue;
            }
            _ => {}
        }
        if !prev_ident && rest.starts_with("mod ") {
            let after = rest[4..].trim_start();
            let name_len = after
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if after[name_len..].trim_start().starts_with('{') {
                inline_mod_depths.push(depth + 1);
            }
        }
        let base: Option<(Vec<String>, usize)> = if !prev_ident && rest.starts_with("crate::") {
            Some((Vec::new(), "crate::".len()))
        } else if !prev_ident && rest.starts_with("super::") {
            let mut m = source.module.clone();
            if inline_mod_depths.is_empty() {
                // A file's `super` is its parent module.
                m.pop();
            }
            Some((m, "super::".len()))
        } else {
            None
        };
        match base {
            Some((prefix, skip)) => {
                let (paths, used) = path_tree(&code[i + skip..]);
                for p in paths {
                    found.push(prefix.iter().cloned().chain(p).collect());
                }
                i += skip + used;
            }
            None => i += rest.chars().next().map_or(1, char::len_utf8),
        }
    }
    found
}

/// Parses `a::b::{c, d::e}` (at the start of `s`) into its leaf paths; returns them and the
/// bytes used.
fn path_tree(s: &str) -> (Vec<Vec<String>>, usize) {
    let mut prefix = Vec::new();
    let mut i = 0;
    loop {
        let rest = &s[i..];
        let trimmed = rest.trim_start();
        i += rest.len() - trimmed.len();
        if trimmed.starts_with('{') {
            i += 1;
            let mut out = Vec::new();
            loop {
                let rest = &s[i..];
                let trimmed = rest.trim_start();
                i += rest.len() - trimmed.len();
                if trimmed.starts_with('}') {
                    i += 1;
                    return (out, i);
                }
                if trimmed.starts_with(',') {
                    i += 1;
                    continue;
                }
                let (inner, used) = path_tree(&s[i..]);
                if used == 0 {
                    return (out, i);
                }
                for p in inner {
                    out.push(prefix.iter().cloned().chain(p).collect());
                }
                i += used;
            }
        }
        let len = trimmed
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '*'))
            .unwrap_or(trimmed.len());
        if len == 0 {
            return (vec![prefix], i);
        }
        prefix.push(trimmed[..len].to_string());
        i += len;
        if s[i..].starts_with("::") {
            i += 2;
        } else {
            return (vec![prefix], i);
        }
    }
}

/// The longest module (a known file or folder) that `path` names.
fn resolve(path: &[String], modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains(p))
}

/// The house's violations: upward imports, unknown top-level modules, and cycles.
fn violations(sources: &[Source]) -> Vec<String> {
    let layer: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let modules: BTreeSet<Vec<String>> = sources.iter().map(|s| s.module.clone()).collect();
    let mut problems = Vec::new();
    let mut top_edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut file_edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for s in sources {
        let from_top = &s.module[0];
        let Some(&from_layer) = layer.get(from_top.as_str()) else {
            problems.push(format!(
                "module `{from_top}` is in no layer (add it to LAYERS)"
            ));
            continue;
        };
        for path in imports(s) {
            let Some(target) = resolve(&path, &modules) else {
                continue;
            };
            let to_top = &target[0];
            if to_top == from_top {
                // Within a folder: sibling files must not import each other in a loop.
                if !s.is_mod_rs && target.len() > 1 && target != s.module {
                    let sibling = target[..s.module.len().min(target.len())].to_vec();
                    if sibling != s.module && sibling.len() == s.module.len() {
                        file_edges
                            .entry(s.module.clone())
                            .or_default()
                            .insert(sibling);
                    }
                }
                continue;
            }
            let to_layer = layer.get(to_top.as_str()).copied().unwrap_or(u8::MAX);
            if to_layer > from_layer {
                problems.push(format!(
                    "{} (layer {from_layer}) imports {} (layer {to_layer}): layers import downwards only",
                    s.module.join("::"),
                    path.join("::"),
                ));
            }
            top_edges
                .entry(from_top.clone())
                .or_default()
                .insert(to_top.clone());
        }
    }
    if let Some(cycle) = find_cycle(&top_edges) {
        problems.push(format!(
            "import cycle between modules: {}",
            cycle.join(" -> ")
        ));
    }
    if let Some(cycle) = find_cycle(&file_edges) {
        let names: Vec<String> = cycle.iter().map(|m| m.join("::")).collect();
        problems.push(format!(
            "import cycle between files: {}",
            names.join(" -> ")
        ));
    }
    problems
}

fn find_cycle<N: Ord + Clone>(edges: &BTreeMap<N, BTreeSet<N>>) -> Option<Vec<N>> {
    fn visit<N: Ord + Clone>(
        n: &N,
        edges: &BTreeMap<N, BTreeSet<N>>,
        stack: &mut Vec<N>,
        done: &mut BTreeSet<N>,
    ) -> Option<Vec<N>> {
        if let Some(pos) = stack.iter().position(|s| s == n) {
            let mut cycle = stack[pos..].to_vec();
            cycle.push(n.clone());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.clone());
        for next in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(next, edges, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.clone());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|n| visit(n, edges, &mut Vec::new(), &mut done))
}

#[test]
fn modules_import_only_downwards_and_never_in_a_cycle() {
    let sources = agent_sources();
    assert!(sources.len() > 20, "read {} files", sources.len());
    let problems = violations(&sources);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn fake(module: &str, text: &str) -> Source {
    let module: Vec<String> = module.split("::").map(String::from).collect();
    Source {
        module,
        is_mod_rs: false,
        text: text.to_string(),
    }
}

/// The check itself can fail: an upward import, a cycle between files, a module in no
/// layer; and it is not fooled by paths in comments and strings.
#[test]
fn the_layer_check_catches_what_it_should() {
    let upward = [
        fake("config", "use crate::pipeline::router::Router;"),
        fake("pipeline::router", "pub struct Router;"),
    ];
    let p = violations(&upward);
    assert!(
        p.iter().any(|m| m.contains("layers import downwards only")),
        "{p:?}"
    );

    let grouped = [
        fake("state", "use crate::{clock, runtime::{self, GuestEvent}};"),
        fake("clock", ""),
        fake("runtime", ""),
    ];
    let p = violations(&grouped);
    assert!(p.iter().any(|m| m.contains("imports runtime")), "{p:?}");

    let cycle = [
        fake("runtime::function", "use super::host::StoreData;"),
        fake("runtime::host", "fn f() { super::function::call(); }"),
    ];
    let p = violations(&cycle);
    assert!(p.iter().any(|m| m.contains("cycle between files")), "{p:?}");

    let p = violations(&[fake("sink", "")]);
    assert!(p.iter().any(|m| m.contains("in no layer")), "{p:?}");

    let quiet = [
        fake(
            "config",
            "// use crate::daemon::Startup;\nconst S: &str = \"crate::daemon::x\";\n\
             const C: char = '\"'; fn f<'a>(x: &'a str) -> &'a str { x }",
        ),
        fake("daemon", ""),
    ];
    assert_eq!(violations(&quiet), Vec::<String>::new());

    let tests_module = [fake(
        "pipeline::inbox",
        "mod tests { use super::*; use super::Inbox; }",
    )];
    assert_eq!(violations(&tests_module), Vec::<String>::new());
}

fn doc(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every key of every config section, as `section.key` (functions as `function.key`).
fn config_keys() -> Vec<String> {
    let mut cfg = edge_agent::config::Config::default();
    cfg.broker.tls = Some(Default::default());
    let function: edge_agent::config::FunctionConfig =
        serde_json::from_str(r#"{"name": "f", "module": "f.wasm", "topics": ["t"]}"#)
            .expect("a minimal function");
    cfg.functions.push(function);
    let value = serde_json::to_value(&cfg).expect("config serialises");
    let mut keys = Vec::new();
    collect_keys("", &value, &mut keys);
    keys
}

fn collect_keys(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                // `[function.config]` holds the user's own keys.
                if v.is_object() && key != "function.config" {
                    collect_keys(&key, v, out);
                } else if let serde_json::Value::Array(items) = v {
                    for item in items {
                        collect_keys(&key, item, out);
                    }
                } else {
                    out.push(key);
                }
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

#[test]
fn every_config_key_is_documented() {
    let text = doc("configuration.md");
    let keys = config_keys();
    assert!(keys.len() > 40, "{keys:?}");
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| {
            let leaf = k.rsplit('.').next().unwrap_or(k);
            !text.contains(&format!("`{leaf}`"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "config keys missing from docs/configuration.md: {missing:?}"
    );
}

#[test]
fn every_failure_kind_is_documented() {
    let text = doc("architecture.md");
    let missing: Vec<&str> = edge_agent::failure::FailureKind::ALL
        .iter()
        .map(|k| k.as_str())
        .filter(|k| !text.contains(&format!("| `{k}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "failure kinds missing from the table in docs/architecture.md: {missing:?}"
    );
}

#[test]
fn every_command_line_flag_is_documented() {
    let text = doc("cli.md");
    let cli = edge_agent_cli::cli::Cli::command();
    let mut missing = Vec::new();
    for sub in cli.get_subcommands() {
        if !text.contains(&format!("edge-agent {}", sub.get_name())) {
            missing.push(format!("edge-agent {}", sub.get_name()));
        }
        for arg in sub.get_arguments().chain(cli.get_arguments()) {
            if let Some(long) = arg.get_long()
                && !text.contains(&format!("--{long}"))
            {
                missing.push(format!("{} --{long}", sub.get_name()));
            }
        }
    }
    assert!(missing.is_empty(), "missing from docs/cli.md: {missing:?}");
}
