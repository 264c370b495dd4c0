//! A stopped agent's state, read and trimmed from the command line (`edge-agent state`).
//!
//! The store is sled's, and the agent that runs on it holds its lock: the store is opened
//! here only while no agent does ([`StateError::Locked`] otherwise, after the same short
//! wait as a start), so nothing here races a flush or a call. What is shown and deleted
//! are the functions' own keys. Receipts (keys that begin with a NUL byte) are the
//! store's: they answer the broker's resends of messages already handled, so they are
//! never listed or deleted here. A function's namespace goes with its last key.

use std::path::{Path, PathBuf};

use super::{RECEIPT_PREFIX, StateError, StateStore};
use crate::config::StateConfig;

/// Why the store cannot be read as asked.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The data directory has no store: no function has written state there yet, or the
    /// config points at another directory (or what is there lacks sled's files).
    #[error(
        "there is no state store in {}: no function of this agent has written state in this agent.data_dir yet (or the folder lacks the store's `db` and `conf` files)",
        .0.display()
    )]
    NoStore(PathBuf),
    /// An agent runs on the store.
    #[error(
        "the state store in {} is in use: an agent runs on it (or another command reads it). Stop the agent first (`systemctl stop edge-agent` where it runs as a service), then start it again after",
        .0.display()
    )]
    InUse(PathBuf),
    /// The function has no such key.
    #[error("`{function}` has no key `{key}`")]
    NoKey {
        /// The function.
        function: String,
        /// The key asked for.
        key: String,
    },
    /// No namespace of that name.
    #[error("{}", no_such(.function, .have))]
    NoFunction {
        /// The name asked for.
        function: String,
        /// The namespaces there are.
        have: Vec<String>,
    },
    /// The store could not be opened or read.
    #[error(transparent)]
    State(#[from] StateError),
}

impl From<sled::Error> for InspectError {
    fn from(e: sled::Error) -> Self {
        Self::State(e.into())
    }
}

fn no_such(function: &str, have: &[String]) -> String {
    if have.is_empty() {
        format!("`{function}` has no state: no function has state in this store")
    } else {
        format!(
            "`{function}` has no state; the functions with state are: {}",
            have.join(", ")
        )
    }
}

/// One namespace: a function's (or a shadow's, `<function>~<side>`) keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The function's name as the namespace has it.
    pub function: String,
    /// Its keys (receipts not counted).
    pub keys: u64,
    /// Its keys' and values' bytes, as `state.max_bytes_per_function` counts them.
    pub bytes: u64,
}

/// An open store of a stopped agent.
pub struct Inspector {
    db: sled::Db,
}

impl Inspector {
    /// Opens the store in `<data_dir>/state`, which must exist (nothing is created).
    ///
    /// # Errors
    /// [`InspectError::NoStore`] if there is none; [`StateError::Locked`] while an agent
    /// runs on it; [`StateError::Damaged`] or [`StateError::Open`] as at a start.
    pub fn open(data_dir: &Path, limits: &StateConfig) -> Result<Self, InspectError> {
        let dir = data_dir.join("state");
        // Both of sled's files, or sled would make a new store of what is there: a read
        // turned a damaged folder into an empty store (a probe, 2026-12-08).
        if !dir.join("db").exists() || !dir.join("conf").exists() {
            return Err(InspectError::NoStore(dir));
        }
        match StateStore::open_db(&dir, limits) {
            Ok(db) => Ok(Self { db }),
            Err(StateError::Locked { .. }) => Err(InspectError::InUse(dir)),
            Err(e) => Err(e.into()),
        }
    }

    /// Every namespace with keys or receipts, by name.
    ///
    /// # Errors
    /// The store could not be read.
    pub fn functions(&self) -> Result<Vec<Summary>, InspectError> {
        let mut all = Vec::new();
        for (name, function) in super::function_trees(&self.db) {
            let tree = self.db.open_tree(&name)?;
            if tree.is_empty() {
                continue;
            }
            let (mut keys, mut bytes) = (0, 0);
            for entry in tree.iter() {
                let (k, v) = entry?;
                if !k.starts_with(RECEIPT_PREFIX) {
                    keys += 1;
                    bytes += (k.len() + v.len()) as u64;
                }
            }
            all.push(Summary {
                function,
                keys,
                bytes,
            });
        }
        all.sort_by(|a, b| a.function.cmp(&b.function));
        Ok(all)
    }

    /// `function`'s keys that begin with `prefix`, in order, with their values.
    ///
    /// # Errors
    /// [`InspectError::NoFunction`] if it has no namespace; the store could not be read.
    pub fn entries(
        &self,
        function: &str,
        prefix: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, InspectError> {
        let tree = self.tree(function)?;
        let mut out = Vec::new();
        for entry in tree.scan_prefix(prefix.as_bytes()) {
            let (k, v) = entry?;
            if !k.starts_with(RECEIPT_PREFIX) {
                out.push((String::from_utf8_lossy(&k).into_owned(), v.to_vec()));
            }
        }
        Ok(out)
    }

    /// The value of `function`'s `key`.
    ///
    /// # Errors
    /// [`InspectError::NoFunction`] if it has no namespace, [`InspectError::NoKey`] if it
    /// has no such key; the store could not be read.
    pub fn get(&self, function: &str, key: &str) -> Result<Vec<u8>, InspectError> {
        let tree = self.tree(function)?;
        match tree.get(key)? {
            Some(v) => Ok(v.to_vec()),
            None => Err(InspectError::NoKey {
                function: function.to_string(),
                key: key.to_string(),
            }),
        }
    }

    /// Deletes `keys` of `function` (all of its keys when `keys` is `None`), on disk when
    /// this returns, and its namespace if nothing is left in it. Returns the keys deleted.
    ///
    /// # Errors
    /// [`InspectError::NoFunction`] if it has no namespace; the store could not be
    /// written.
    pub fn delete(&self, function: &str, keys: Option<&[String]>) -> Result<u64, InspectError> {
        let tree = self.tree(function)?;
        let mut batch = sled::Batch::default();
        let mut deleted = 0;
        match keys {
            Some(keys) => {
                for key in keys {
                    if tree.contains_key(key)? {
                        batch.remove(key.as_bytes());
                        deleted += 1;
                    }
                }
            }
            None => {
                for entry in tree.iter() {
                    let (k, _) = entry?;
                    if !k.starts_with(RECEIPT_PREFIX) {
                        batch.remove(k);
                        deleted += 1;
                    }
                }
            }
        }
        tree.apply_batch(batch)?;
        if tree.is_empty() {
            self.db.drop_tree(tree.name())?;
        }
        self.db.flush()?;
        Ok(deleted)
    }

    /// `function`'s tree, if it has one (none is made for a name that has none).
    fn tree(&self, function: &str) -> Result<sled::Tree, InspectError> {
        let trees = super::function_trees(&self.db);
        let Some((name, _)) = trees.into_iter().find(|(_, f)| f == function) else {
            let have = self.functions()?.into_iter().map(|s| s.function).collect();
            return Err(InspectError::NoFunction {
                function: function.to_string(),
                have,
            });
        };
        Ok(self.db.open_tree(name)?)
    }
}

/// `value` for a terminal: as text when it is UTF-8 without control characters, else as
/// `0x` and hex.
pub fn shown(value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(text) if !text.chars().any(char::is_control) => text.to_string(),
        _ => {
            let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
            format!("0x{hex}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store with `counter`'s two keys and a receipt, as an agent leaves it.
    async fn store_with_keys(dir: &Path) {
        let store = StateStore::open(dir, &StateConfig::default()).unwrap();
        let ns = store.namespace("counter").unwrap();
        let mut txn = ns.begin();
        txn.set("a", b"1".to_vec()).unwrap();
        txn.set("b", vec![0, 255]).unwrap();
        let tree = ns.tree().unwrap();
        tree.insert(b"\0receipt/7", b"r".to_vec()).unwrap();
        txn.commit(None).unwrap();
        store.flush_once().await.unwrap();
    }

    #[tokio::test]
    async fn lists_and_deletes_a_functions_keys_but_never_its_receipts() {
        let dir = tempfile::tempdir().unwrap();
        store_with_keys(dir.path()).await;
        let limits = StateConfig::default();
        let state = Inspector::open(dir.path(), &limits).unwrap();
        let all = state.functions().unwrap();
        assert_eq!(
            all,
            vec![Summary {
                function: "counter".into(),
                keys: 2,
                bytes: 5
            }]
        );
        let keys: Vec<String> = state
            .entries("counter", "")
            .unwrap()
            .into_iter()
            .map(|(k, v)| format!("{k}={}", shown(&v)))
            .collect();
        assert_eq!(keys, ["a=1", "b=0x00ff"]);
        assert_eq!(state.get("counter", "a").unwrap(), b"1");
        let err = state.get("counter", "zz").unwrap_err();
        assert!(matches!(err, InspectError::NoKey { .. }), "{err}");
        let err = state.get("countr", "a").unwrap_err().to_string();
        assert!(err.contains("are: counter"), "{err}");

        assert_eq!(state.delete("counter", Some(&["a".into()])).unwrap(), 1);
        assert_eq!(state.delete("counter", None).unwrap(), 1);
        // The receipt stays, and with it the namespace; the start counts no keys.
        assert!(state.entries("counter", "").unwrap().is_empty());
        drop(state);
        let store = StateStore::open(dir.path(), &limits).unwrap();
        let ns = store.namespace("counter").unwrap();
        assert_eq!(ns.keys(), 0);
        assert!(ns.tree().unwrap().contains_key(b"\0receipt/7").unwrap());
    }

    /// The start names a renamed or removed function's state while it has keys.
    #[tokio::test]
    async fn functions_no_longer_configured_are_named_while_they_have_keys() {
        let dir = tempfile::tempdir().unwrap();
        store_with_keys(dir.path()).await;
        let store = StateStore::open(dir.path(), &StateConfig::default()).unwrap();
        assert!(store.unconfigured(|n| n == "counter").unwrap().is_empty());
        assert_eq!(store.unconfigured(|_| false).unwrap(), ["counter"]);
        let ns = store.namespace("counter").unwrap();
        let mut txn = ns.begin();
        txn.delete("a").unwrap();
        txn.delete("b").unwrap();
        txn.commit(None).unwrap();
        store.flush_once().await.unwrap();
        // Its receipt is left: not state of the function's.
        assert!(store.unconfigured(|_| false).unwrap().is_empty());
    }

    #[test]
    fn refuses_a_store_that_is_not_there_or_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let limits = StateConfig::default();
        let err = Inspector::open(dir.path(), &limits).err().unwrap();
        assert!(matches!(err, InspectError::NoStore(_)), "{err}");
        assert!(!dir.path().join("state").exists(), "made a store");
        // A folder with a `db` that sled did not write is left as it is.
        std::fs::create_dir(dir.path().join("state")).unwrap();
        std::fs::write(dir.path().join("state/db"), "junk").unwrap();
        let err = Inspector::open(dir.path(), &limits).err().unwrap();
        assert!(matches!(err, InspectError::NoStore(_)), "{err}");
        assert_eq!(std::fs::read(dir.path().join("state/db")).unwrap(), b"junk");
        std::fs::remove_dir_all(dir.path().join("state")).unwrap();
        let _running = StateStore::open(dir.path(), &limits).unwrap();
        let err = Inspector::open(dir.path(), &limits).err().unwrap();
        assert!(matches!(err, InspectError::InUse(_)), "{err}");
    }
}
