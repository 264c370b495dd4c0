//! The config tree read into the typed config: the serde types themselves refuse what does
//! not fit (a fraction where a whole number is expected, an unknown key or value), and each
//! refusal names its key and says what was expected, in the file's words.

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde_json::Value;

/// Why a value does not fit its key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValueError {
    /// A string that names none of the allowed values.
    #[error("unknown value `{value}`; expected {}", one_of(.expected))]
    UnknownValue {
        /// What the file says.
        value: String,
        /// The allowed values.
        expected: &'static [&'static str],
    },
    /// A key the section does not have.
    #[error("unknown key `{name}`; expected {}", one_of(.expected))]
    UnknownKey {
        /// What the file says.
        name: String,
        /// The keys of the section.
        expected: &'static [&'static str],
    },
    /// A required key is not there.
    #[error("is required")]
    Missing,
    /// A fraction (or a float written as one, `1e3`, `30.0`) where a whole number is
    /// expected.
    #[error("{}", not_whole(*.0))]
    NotWhole(f64),
    /// Anything else (a string where a number is expected, a number out of range).
    #[error("{0}")]
    Other(String),
}

/// Why `f` is not taken for a whole number: a fraction, or a whole one written as a float
/// (`1e3` was told "1000 is not a whole number" until 2026-12-08).
fn not_whole(f: f64) -> String {
    if f.fract() == 0.0 && f.is_finite() {
        format!(
            "{f} is written as a floating-point number (`.0` or an exponent): write it as a whole number"
        )
    } else {
        format!("{f} is not a whole number")
    }
}

fn one_of(expected: &[&str]) -> String {
    let quoted: Vec<String> = expected.iter().map(|e| format!("`{e}`")).collect();
    match quoted.as_slice() {
        [] => "nothing here".into(),
        [one] => one.clone(),
        all => format!("one of {}", all.join(", ")),
    }
}

/// A [`ValueError`] and the key it is about.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct DeError {
    /// The key, as the file spells it (`function[0].mode`).
    pub key: Option<String>,
    /// Why.
    #[source]
    pub reason: ValueError,
    /// The missing field, until its section's key is known.
    missing: Option<&'static str>,
}

impl DeError {
    fn new(reason: ValueError) -> Self {
        Self {
            key: None,
            reason,
            missing: None,
        }
    }

    /// Names the key, unless a deeper one already is.
    fn at(mut self, key: &str) -> Self {
        if self.key.is_none() {
            self.key = Some(match self.missing.take() {
                Some(field) => join(key, field),
                None => key.to_string(),
            });
        }
        self
    }
}

impl de::Error for DeError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Self::new(ValueError::Other(msg.to_string()))
    }

    fn invalid_type(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        let expected = exp.to_string();
        let integer = |e: &str| {
            e.strip_prefix(['u', 'i'])
                .is_some_and(|bits| bits.parse::<u8>().is_ok())
        };
        match unexp {
            de::Unexpected::Float(f) if integer(&expected) => Self::new(ValueError::NotWhole(f)),
            _ => Self::custom(format_args!("expected {expected}, not {unexp}")),
        }
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        Self::new(ValueError::UnknownValue {
            value: variant.to_string(),
            expected,
        })
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        Self::new(ValueError::UnknownKey {
            name: field.to_string(),
            expected,
        })
    }

    fn missing_field(field: &'static str) -> Self {
        Self {
            missing: Some(field),
            ..Self::new(ValueError::Missing)
        }
    }
}

/// `key` under `path`, as the file spells it.
pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Reads `tree` (the merged file and environment) as a `T`.
///
/// # Errors
/// [`DeError`] naming the key at fault.
pub(super) fn from_tree<T: de::DeserializeOwned>(tree: &Value) -> Result<T, DeError> {
    T::deserialize(Node {
        value: tree,
        key: String::new(),
    })
}

/// One value of the tree and its key.
struct Node<'a> {
    value: &'a Value,
    key: String,
}

/// Where a number or a boolean is expected, text that spells one is read as it. Every
/// environment override arrives as text and is kept so (until 2026-12-08 the variables
/// were parsed as numbers wherever they looked like them, so that
/// `EDGE_AGENT__BROKER__PASSWORD=007123` reached the broker as `7123` and
/// `EDGE_AGENT__AGENT__ID=007` ran the agent as `7`, with other topics and sessions).
macro_rules! from_text {
    ($($method:ident => $parse:ident),*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            match self.value {
                Value::String(s) => match $parse(s) {
                    Some(value) => Node {
                        value: &value,
                        key: self.key,
                    }
                    .deserialize_any(visitor),
                    None => self.deserialize_any(visitor),
                },
                _ => self.deserialize_any(visitor),
            }
        }
    )*};
}

/// `true` or `false`, in any case.
fn bool_from_text(s: &str) -> Option<Value> {
    s.trim().to_ascii_lowercase().parse().ok().map(Value::Bool)
}

/// A whole number, or else a number with a fraction (which an integer key then refuses as
/// not whole).
fn number_from_text(s: &str) -> Option<Value> {
    let s = s.trim();
    s.parse::<u64>()
        .map(Value::from)
        .or_else(|_| s.parse::<i64>().map(Value::from))
        .ok()
        .or_else(|| {
            s.parse::<f64>()
                .ok()
                .and_then(|f| serde_json::Number::from_f64(f).map(Value::Number))
        })
}

impl<'de> de::Deserializer<'de> for Node<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let Node { value, key } = self;
        let got = match value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => visitor.visit_u64(u),
                (_, Some(i), _) => visitor.visit_i64(i),
                (_, _, f) => visitor.visit_f64(f.unwrap_or(f64::NAN)),
            },
            Value::String(s) => visitor.visit_str(s),
            Value::Array(items) => visitor.visit_seq(Seq {
                items: items.iter().enumerate(),
                key: &key,
            }),
            Value::Object(map) => visitor.visit_map(Map {
                entries: map.iter(),
                key: &key,
                next: None,
            }),
        };
        got.map_err(|e| e.at(&key))
    }

    /// Numbers and booleans are read as their text where a string is expected (as the
    /// environment gives every value, and as `[function.config]` documents).
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.value {
            Value::Number(_) | Value::Bool(_) => visitor
                .visit_string(self.value.to_string())
                .map_err(|e: DeError| e.at(&self.key)),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_string(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match self.value {
            Value::String(s) => visitor
                .visit_enum(IntoDeserializer::<DeError>::into_deserializer(s.as_str()))
                .map_err(|e: DeError| e.at(&self.key)),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    from_text! {
        deserialize_bool => bool_from_text,
        deserialize_u8 => number_from_text,
        deserialize_u16 => number_from_text,
        deserialize_u32 => number_from_text,
        deserialize_u64 => number_from_text,
        deserialize_i8 => number_from_text,
        deserialize_i16 => number_from_text,
        deserialize_i32 => number_from_text,
        deserialize_i64 => number_from_text,
        deserialize_f32 => number_from_text,
        deserialize_f64 => number_from_text
    }

    serde::forward_to_deserialize_any! {
        i128 u128 char bytes byte_buf unit
        unit_struct seq tuple tuple_struct map struct identifier
    }
}

struct Seq<'a, 'k> {
    items: std::iter::Enumerate<std::slice::Iter<'a, Value>>,
    key: &'k str,
}

impl<'de> de::SeqAccess<'de> for Seq<'_, '_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some((i, value)) = self.items.next() else {
            return Ok(None);
        };
        let key = format!("{}[{i}]", self.key);
        seed.deserialize(Node { value, key }).map(Some)
    }
}

struct Map<'a, 'k> {
    entries: serde_json::map::Iter<'a>,
    key: &'k str,
    next: Option<(&'a String, &'a Value)>,
}

impl<'de> de::MapAccess<'de> for Map<'_, '_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some((name, value)) = self.entries.next() else {
            return Ok(None);
        };
        self.next = Some((name, value));
        seed.deserialize(IntoDeserializer::<DeError>::into_deserializer(
            name.as_str(),
        ))
        .map(Some)
        .map_err(|e| e.at(&join(self.key, name)))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let (name, value) = self
            .next
            .take()
            .ok_or_else(|| de::Error::custom("a value without its key"))?;
        seed.deserialize(Node {
            value,
            key: join(self.key, name),
        })
    }
}
