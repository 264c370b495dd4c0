//! A TOML config file, parsed once (with the `toml` version the `config` crate uses) and
//! handed to `config` as a [`config::Source`], so that a syntax error or a number out of
//! range keeps its line and key.

use toml::de::{DeTable, DeValue};

use super::{ParseError, ParseFailure};

/// The values of one TOML file, for `config` to merge with the environment.
#[derive(Debug, Clone)]
pub(super) struct TomlFile(config::Map<String, config::Value>);

impl TomlFile {
    /// Parses `text`.
    ///
    /// # Errors
    /// A [`ParseFailure`] with the line and, where known, the key at fault.
    pub(super) fn parse(text: &str) -> Result<Self, ParseFailure> {
        let table = DeTable::parse(text).map_err(|e| {
            let at = e.span().map(|s| s.start.min(text.len()));
            let line = at.map(|at| line_of(text, at));
            // A syntax error names no key: take the one written on its line, if any.
            let key = line
                .and_then(|n| text.lines().nth(n - 1))
                .and_then(|l| l.split_once('='))
                .map(|(k, _)| k.trim().to_string())
                .filter(|k| !k.is_empty());
            ParseFailure {
                key,
                line,
                source: ParseError::Toml(Box::new(e)),
            }
        })?;
        table_of(text, table.into_inner(), "").map(Self)
    }
}

impl config::Source for TomlFile {
    fn clone_into_box(&self) -> Box<dyn config::Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<config::Map<String, config::Value>, config::ConfigError> {
        Ok(self.0.clone())
    }
}

fn line_of(text: &str, at: usize) -> usize {
    text[..at].matches('\n').count() + 1
}

fn table_of(
    text: &str,
    table: DeTable<'_>,
    path: &str,
) -> Result<config::Map<String, config::Value>, ParseFailure> {
    let mut out = config::Map::new();
    for (key, value) in table {
        let key = key.into_inner().into_owned();
        let path = super::de::join(path, &key);
        out.insert(key, value_of(text, value, path)?);
    }
    Ok(out)
}

fn value_of(
    text: &str,
    value: toml::Spanned<DeValue<'_>>,
    path: String,
) -> Result<config::Value, ParseFailure> {
    let line = line_of(text, value.span().start.min(text.len()));
    let bad = |path: String, source| ParseFailure {
        key: Some(path),
        line: Some(line),
        source,
    };
    let kind: config::ValueKind = match value.into_inner() {
        DeValue::String(s) => s.into_owned().into(),
        DeValue::Integer(n) => i64::from_str_radix(n.as_str(), n.radix())
            .map_err(|e| bad(path.clone(), ParseError::Integer(e)))?
            .into(),
        DeValue::Float(f) => f
            .as_str()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .ok_or_else(|| bad(path.clone(), ParseError::Float))?
            .into(),
        DeValue::Boolean(b) => b.into(),
        DeValue::Datetime(d) => d.to_string().into(),
        DeValue::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| value_of(text, v, format!("{path}[{i}]")))
            .collect::<Result<Vec<_>, _>>()?
            .into(),
        DeValue::Table(t) => table_of(text, t, &path)?.into(),
    };
    Ok(config::Value::new(None, kind))
}
