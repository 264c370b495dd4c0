//! `edge-agent promote FUNCTION`: the function's shadow becomes its primary and the
//! primary its shadow, by an edit of the config file that keeps its comments and layout
//! (then a reload puts it in force; promoting again rolls back). What swaps: `module` and
//! `[function.config]`; a `[function.shadow.canary]` is removed (it is done). A shadow of another model cannot be promoted by a reload: the
//! model is fixed until a restart.

use std::path::Path;

use toml_edit::{DocumentMut, Item, Table, TableLike};

/// Why a function cannot be promoted.
#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    /// The file is not TOML (YAML and JSON configs are edited by hand).
    #[error("{0}: promote edits TOML config files; edit this one by hand")]
    NotToml(String),
    /// The file could not be read or parsed.
    #[error("{0}")]
    Parse(String),
    /// No such function.
    #[error("no [[function]] named `{0}` in the config")]
    NoFunction(String),
    /// It has no shadow.
    #[error("function `{0}` has no [function.shadow] to promote")]
    NoShadow(String),
    /// The shadow is the same version (same module and config).
    #[error(
        "function `{0}`: its shadow runs the same module and config; nothing to promote \
         (give the shadow a `module` or a `config`)"
    )]
    Same(String),
    /// The shadow runs another model.
    #[error(
        "function `{function}`: its shadow runs {shadow} and the function {primary}; \
         promoting it would change the model, which needs a restart (set mode and restart)"
    )]
    Model {
        /// The function.
        function: String,
        /// Its mode.
        primary: String,
        /// The shadow's.
        shadow: String,
    },
    /// The shadow's module could not be hashed for the primary's `sha256` pin.
    #[error("cannot read the shadow's module {0} to pin its sha256: {1}")]
    Pin(String, std::io::Error),
}

fn str_of(t: &dyn TableLike, key: &str) -> Option<String> {
    t.get(key).and_then(Item::as_str).map(str::to_string)
}

/// `text` (the config file at `path`) with function `function`'s shadow and primary
/// swapped: `module` and `config`. A `sha256` pin on the primary is moved to the promoted
/// module's hash (read relative to the working directory, as the agent reads modules).
///
/// # Errors
/// [`PromoteError`]: not TOML, no such function or shadow, nothing to swap, or a shadow of
/// another model.
pub fn promote(path: &Path, text: &str, function: &str) -> Result<String, PromoteError> {
    if path
        .extension()
        .is_some_and(|e| !e.eq_ignore_ascii_case("toml"))
    {
        return Err(PromoteError::NotToml(path.display().to_string()));
    }
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| PromoteError::Parse(e.to_string()))?;
    let functions = doc
        .get_mut("function")
        .and_then(Item::as_array_of_tables_mut)
        .ok_or_else(|| PromoteError::NoFunction(function.into()))?;
    let f: &mut Table = functions
        .iter_mut()
        .find(|t| t.get("name").and_then(Item::as_str) == Some(function))
        .ok_or_else(|| PromoteError::NoFunction(function.into()))?;
    let primary_mode = str_of(f, "mode").unwrap_or_else(|| "on-demand".into());
    let primary_module = str_of(f, "module");
    let primary_config = f.remove("config");
    let pinned = f.contains_key("sha256");
    let Some(shadow) = f.get_mut("shadow").and_then(Item::as_table_like_mut) else {
        if let Some(c) = primary_config {
            f.insert("config", c);
        }
        return Err(PromoteError::NoShadow(function.into()));
    };
    if let Some(mode) = str_of(shadow, "mode")
        && mode != primary_mode
    {
        return Err(PromoteError::Model {
            function: function.into(),
            primary: primary_mode,
            shadow: mode,
        });
    }
    let shadow_module = str_of(shadow, "module");
    let shadow_config = shadow.remove("config");
    if shadow_module.is_none() && shadow_config.is_none() {
        return Err(PromoteError::Same(function.into()));
    }
    // A canary is done once its version is the primary.
    shadow.remove("canary");
    // The shadow gets the primary's parts for the ones it had of its own.
    if shadow_module.is_some()
        && let Some(m) = &primary_module
    {
        shadow.insert("module", toml_edit::value(m.as_str()));
    }
    if shadow_config.is_some() {
        let old = primary_config
            .clone()
            .map_or_else(|| Item::Value(toml_edit::InlineTable::new().into()), inline);
        shadow.insert("config", old);
    }
    if let Some(m) = &shadow_module {
        f.insert("module", toml_edit::value(m.as_str()));
        if pinned {
            let bytes = std::fs::read(m).map_err(|e| PromoteError::Pin(m.clone(), e))?;
            let sha = crate::deployment::sha256_hex(&bytes);
            f.insert("sha256", toml_edit::value(sha));
        }
    }
    // `[function.config]` stays where it was in the file's layout when it was a table.
    let config = match (shadow_config, primary_config) {
        (Some(new), Some(Item::Table(_))) => Some(as_table(new)),
        (Some(new), _) => Some(new),
        (None, old) => old,
    };
    if let Some(c) = config {
        // Before the shadow's table, so that `[function.config]` keeps its place.
        f.insert("config", c);
    }
    Ok(doc.to_string())
}

/// `item` as an inline table (`config = { ... }` inside `[function.shadow]`).
fn inline(item: Item) -> Item {
    match item {
        Item::Table(t) => Item::Value(t.into_inline_table().into()),
        other => other,
    }
}

/// `item` as a standard table (`[function.config]`).
fn as_table(item: Item) -> Item {
    match item {
        Item::Value(toml_edit::Value::InlineTable(t)) => Item::Table(t.into_table()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"# the kitchen
[[function]]
name = "alert"
module = "v1.wasm"
topics = ["s/+/t"]
[function.config]
threshold = "30"   # degrees
[function.shadow]
module = "v2.wasm"
config = { threshold = "25" }
[function.shadow.canary]
weight = 0.5
"#;

    fn promoted(text: &str) -> crate::config::Config {
        // The file's `[agent]` and `[broker]` default.
        let p = promote(Path::new("a.toml"), text, "alert").expect("promoted");
        crate::config::from_toml(Path::new("a.toml"), &p).expect("still a config")
    }

    #[test]
    fn the_shadow_and_the_primary_swap_module_and_config() {
        let c = promoted(CONFIG);
        let f = &c.functions[0];
        assert_eq!(f.module, Path::new("v2.wasm"));
        assert_eq!(f.config.get("threshold").map(String::as_str), Some("25"));
        let s = f
            .shadow
            .as_ref()
            .expect("the old primary is the shadow now");
        assert_eq!(s.module.as_deref(), Some(Path::new("v1.wasm")));
        let old = s.config.as_ref().and_then(|c| c.get("threshold"));
        assert_eq!(old.map(String::as_str), Some("30"));
        assert_eq!(s.canary, None, "the canary is done");
        // Twice is a roll-back, to the same config.
        let text = promote(Path::new("a.toml"), CONFIG, "alert").expect("once");
        let back = promote(Path::new("a.toml"), &text, "alert").expect("twice");
        let c = crate::config::from_toml::<crate::config::Config>(Path::new("a.toml"), &back)
            .expect("a config");
        assert_eq!(c.functions[0].module, Path::new("v1.wasm"));
        assert!(back.starts_with("# the kitchen"), "{back}");
    }

    #[test]
    fn what_cannot_be_promoted_says_why() {
        let p = |t: &str| {
            promote(Path::new("a.toml"), t, "alert")
                .map(|_| ())
                .unwrap_err()
                .to_string()
        };
        assert!(p(&CONFIG.replace("alert", "x")).contains("no [[function]] named `alert`"));
        let same = "[[function]]\nname = \"alert\"\nmodule = \"a\"\ntopics = [\"t\"]\n[function.shadow]\nfraction = 0.5\n";
        assert!(
            p(same).contains("runs the same module and config"),
            "{}",
            p(same)
        );
        let model = CONFIG.replace(
            "[function.shadow]\n",
            "[function.shadow]\nmode = \"persistent\"\n",
        );
        assert!(p(&model).contains("its shadow runs persistent and the function on-demand"));
        let none = "[[function]]\nname = \"alert\"\nmodule = \"a\"\ntopics = [\"t\"]\n";
        assert!(p(none).contains("has no [function.shadow]"));
        let e = promote(Path::new("a.yaml"), "", "alert")
            .unwrap_err()
            .to_string();
        assert!(e.contains("promote edits TOML config files"), "{e}");
    }
}
