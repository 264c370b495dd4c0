//! A deployment's functions written into the agent's config file: every `[[function]]`
//! table replaced by the deployment's, with each `module` pointing at the staged copy and
//! pinned by its `sha256`. The rest of the file (`[agent]`, `[broker]`, `[fleet]`, comments
//! and layout) stays as it was; a reload then puts the file in force.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, Item};

/// A staged module: where it is on disk and its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    /// The staged file.
    pub path: PathBuf,
    /// Its SHA-256, hex.
    pub sha256: String,
}

/// Why a deployment's functions cannot be written into the config file.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The file is not TOML (YAML and JSON configs are not edited).
    #[error("{}: deployments edit TOML config files; this one is not", .0.display())]
    NotToml(PathBuf),
    /// The file is not valid TOML.
    #[error("{}", file.display())]
    Parse {
        /// The config file.
        file: PathBuf,
        /// What the parser found.
        #[source]
        source: toml_edit::TomlError,
    },
    /// A function of the deployment is not a table.
    #[error("function `{0}` is not a table")]
    NotTable(String),
    /// A function names a module that is not staged.
    #[error("function `{function}`: module {module} is not staged")]
    NotStaged {
        /// The function.
        function: String,
        /// The module it names.
        module: String,
    },
    /// A function's shadow names a module that is not staged.
    #[error("function `{function}`: shadow module {module} is not staged")]
    ShadowNotStaged {
        /// The function.
        function: String,
        /// The module its shadow names.
        module: String,
    },
    /// The deployment's functions cannot be written as TOML.
    #[error("the deployment's functions as TOML")]
    Toml(#[source] toml_edit::ser::Error),
}

/// `text` (the config file at `path`) with its `[[function]]` tables replaced by
/// `functions` (the deployment's tables, as JSON), whose module names are resolved
/// through `modules`.
///
/// # Errors
/// [`DeployError`]: the file is not TOML, a function's module is not staged, or a function
/// table cannot be written as TOML.
pub fn with_functions(
    path: &Path,
    text: &str,
    functions: &[serde_json::Value],
    modules: &BTreeMap<String, Staged>,
) -> Result<String, DeployError> {
    if path
        .extension()
        .is_some_and(|e| !e.eq_ignore_ascii_case("toml"))
    {
        return Err(DeployError::NotToml(path.to_path_buf()));
    }
    let mut doc: DocumentMut = text.parse().map_err(|source| DeployError::Parse {
        file: path.to_path_buf(),
        source,
    })?;
    let mut resolved = functions.to_vec();
    for f in &mut resolved {
        let name = f
            .get("name")
            .and_then(|n| n.as_str())
            .unwrap_or("?")
            .to_string();
        let Some(table) = f.as_object_mut() else {
            return Err(DeployError::NotTable(name));
        };
        if let Some(m) = table.get("module").and_then(|m| m.as_str()) {
            let s = modules.get(m).ok_or_else(|| DeployError::NotStaged {
                function: name.clone(),
                module: m.to_string(),
            })?;
            table.insert("module".into(), s.path.display().to_string().into());
            table.insert("sha256".into(), s.sha256.clone().into());
        }
        if let Some(shadow) = table.get_mut("shadow").and_then(|s| s.as_object_mut())
            && let Some(m) = shadow.get("module").and_then(|m| m.as_str())
        {
            let s = modules.get(m).ok_or_else(|| DeployError::ShadowNotStaged {
                function: name.clone(),
                module: m.to_string(),
            })?;
            shadow.insert("module".into(), s.path.display().to_string().into());
        }
    }
    let tables = toml_edit::ser::to_document(&serde_json::json!({ "function": resolved }))
        .map_err(DeployError::Toml)?;
    doc.remove("function");
    // The serializer writes an array of inline tables; a config file has `[[function]]`
    // tables, with `[function.config]` and `[function.shadow]` under them.
    let mut out = toml_edit::ArrayOfTables::new();
    if let Some(functions) = tables.as_table().get("function").and_then(Item::as_array) {
        for f in functions
            .iter()
            .filter_map(toml_edit::Value::as_inline_table)
        {
            let mut table = f.clone().into_table();
            for (_, item) in table.iter_mut() {
                if let Some(t) = item.as_inline_table() {
                    *item = Item::Table(t.clone().into_table());
                }
            }
            out.push(table);
        }
    }
    if !out.is_empty() {
        doc.insert("function", Item::ArrayOfTables(out));
    }
    Ok(doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_functions_are_replaced_and_the_rest_stays() {
        let text = "# the kitchen\n[agent]\nid = \"a\" # me\n\n[[function]]\nname = \"old\"\n\
                    module = \"old.wasm\"\ntopics = [\"o\"]\n\n[fleet]\ngroup = \"g\"\n";
        let staged = [(
            "new.wasm".to_string(),
            Staged {
                path: "/d/abc/new.wasm".into(),
                sha256: "a".repeat(64),
            },
        )]
        .into();
        let f = serde_json::json!({
            "name": "new", "module": "new.wasm", "topics": ["n/+"], "mode": "persistent",
            "config": {"out_topic": "x"},
            "shadow": {"module": "new.wasm", "fraction": 0.5},
        });
        let out = with_functions(Path::new("a.toml"), text, &[f], &staged).expect("written");
        assert!(
            out.starts_with("# the kitchen\n[agent]\nid = \"a\" # me\n"),
            "{out}"
        );
        let c: crate::config::Config =
            crate::config::from_toml(Path::new("a.toml"), &out).expect("a config");
        assert_eq!(c.functions.len(), 1);
        let f = &c.functions[0];
        assert_eq!(
            (f.name.as_str(), f.module.as_path()),
            ("new", Path::new("/d/abc/new.wasm"))
        );
        assert_eq!(f.sha256.as_deref(), Some("a".repeat(64).as_str()));
        assert_eq!(f.config.get("out_topic").map(String::as_str), Some("x"));
        let s = f.shadow.as_ref().expect("its shadow");
        assert_eq!(s.module.as_deref(), Some(Path::new("/d/abc/new.wasm")));
        assert_eq!(c.fleet.group.as_deref(), Some("g"));
        let e = with_functions(Path::new("a.yaml"), "", &[], &staged).unwrap_err();
        assert!(
            e.to_string().contains("deployments edit TOML config files"),
            "{e}"
        );
    }
}
