//! The functions' key-value state, on local disk in sled.
//!
//! Each function has its own sled tree (its namespace). A call works on a [`Txn`]: reads
//! see the tree plus the call's own writes; the writes are applied as one atomic batch
//! when the call returns `ok` ([`Txn::commit`]) and dropped otherwise.
//!
//! Isolation: serializable. A call takes its namespace's gate at its first state access
//! and holds it until it commits or fails (strict two-phase locking at the grain of the
//! namespace), so concurrent calls of one function (on-demand, or `instances > 1`) behave
//! as if they ran one at a time and `increment` never loses an update. Calls that never
//! touch state never wait, and a call waits for the gate at most until its own deadline.
//!
//! Durability: commits land in sled's memory; a flusher task writes them to disk in a group
//! commit: a flush starts as soon as the previous one has finished (and, if set, at least
//! `state.min_flush_interval_ms` after it started, to spare SD cards), and covers every
//! commit made before it started. A committed call's
//! message is acknowledged only after [`StateStore::durable`] says its flush is done, so a
//! crash never loses state of an acknowledged message.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use crate::config::StateConfig;

/// State store failures.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The database could not be opened (missing permissions, used by another agent).
    #[error("cannot open the state store in {dir}")]
    Open {
        /// The data directory.
        dir: String,
        /// What sled said.
        #[source]
        source: sled::Error,
    },
    /// A disk or database error during a call.
    #[error("state store I/O error")]
    Io(#[from] sled::Error),
    /// A limit from `[state]` was exceeded; reported to the guest.
    #[error("{0}")]
    Limit(String),
    /// The call reached its deadline while another call of the function held the state.
    #[error("state busy: another call of this function held it until this call's deadline")]
    Busy,
}

/// The database and its flusher bookkeeping.
pub struct StateStore {
    db: sled::Db,
    limits: StateConfig,
    /// Generation the next flush will cover.
    next_flush: AtomicU64,
    /// Last generation flushed to disk.
    flushed: watch::Sender<u64>,
    dirty: Notify,
}

impl StateStore {
    /// Opens (or creates) the store in `<data_dir>/state`.
    ///
    /// # Errors
    /// [`StateError::Open`] if sled cannot open it.
    pub fn open(data_dir: &Path, limits: &StateConfig) -> Result<Arc<Self>, StateError> {
        let dir = data_dir.join("state");
        let db = sled::Config::new()
            .path(&dir)
            .cache_capacity(limits.cache_mb * 1024 * 1024)
            .mode(sled::Mode::LowSpace)
            // We flush ourselves, on our interval, and track which commits it covered.
            .flush_every_ms(None)
            .open()
            .map_err(|source| StateError::Open {
                dir: dir.display().to_string(),
                source,
            })?;
        Ok(Arc::new(Self {
            db,
            limits: limits.clone(),
            next_flush: AtomicU64::new(1),
            flushed: watch::channel(0).0,
            dirty: Notify::new(),
        }))
    }

    /// The namespace of `function`.
    ///
    /// # Errors
    /// [`StateError::Io`] if its tree cannot be opened.
    pub fn namespace(self: &Arc<Self>, function: &str) -> Result<Arc<Namespace>, StateError> {
        let tree = self.db.open_tree(format!("function/{function}"))?;
        let keys = AtomicU64::new(tree.len() as u64);
        Ok(Arc::new(Namespace {
            store: self.clone(),
            tree,
            keys,
            gate: Gate::default(),
        }))
    }

    /// Flushes committed state to disk while there is any (a group commit: one flush at a
    /// time, each taking every commit made before it started, no two starting closer than
    /// `min_flush_interval_ms`), until `stop` is cancelled; then flushes once more.
    pub async fn run_flusher(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let spacing = Duration::from_millis(self.limits.min_flush_interval_ms);
        let mut last: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                () = self.dirty.notified() => {}
                () = stop.cancelled() => break,
            }
            if let Some(next) = last.map(|t| t + spacing) {
                tokio::select! {
                    () = tokio::time::sleep_until(next) => {}
                    () = stop.cancelled() => {}
                }
            }
            last = Some(tokio::time::Instant::now());
            self.flush().await;
        }
        self.flush().await;
        tracing::info!(flushes = self.flushes(), "state store closed");
    }

    /// Bytes the store takes on disk (sled's own count of its files).
    pub fn disk_bytes(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Flushes done so far (successful or not).
    pub fn flushes(&self) -> u64 {
        self.next_flush.load(Ordering::Acquire) - 1
    }

    async fn flush(&self) {
        let generation = self.next_flush.fetch_add(1, Ordering::AcqRel);
        match self.db.flush_async().await {
            Ok(_) => {
                self.flushed.send_replace(generation);
            }
            Err(e) => tracing::error!(error = %e, "state flush failed; acknowledgements held back"),
        }
    }

    /// Waits until the commit that returned `generation` is on disk.
    pub async fn durable(&self, generation: u64) {
        let mut rx = self.flushed.subscribe();
        let _ = rx.wait_for(|g| *g >= generation).await;
    }
}

/// One function's keys.
pub struct Namespace {
    store: Arc<StateStore>,
    tree: sled::Tree,
    keys: AtomicU64,
    gate: Gate,
}

/// One call at a time in a namespace's state, from its first access to its end.
#[derive(Default)]
struct Gate {
    held: Mutex<bool>,
    freed: Condvar,
}

impl Gate {
    /// Waits until the gate is free (or `deadline`) and takes it.
    fn enter(&self, deadline: Option<Instant>) -> Result<(), StateError> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        while *held {
            held = match deadline {
                None => self.freed.wait(held).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(StateError::Busy);
                    }
                    self.freed
                        .wait_timeout(held, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
        *held = true;
        Ok(())
    }

    fn leave(&self) {
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.freed.notify_one();
    }
}

impl Namespace {
    /// A transaction for one call with no deadline (tools and tests).
    pub fn begin(self: &Arc<Self>) -> Txn {
        self.begin_until(None)
    }

    /// A transaction for one call that waits for the namespace's gate at most until
    /// `deadline` (the call's own deadline).
    pub fn begin_until(self: &Arc<Self>, deadline: Option<Instant>) -> Txn {
        Txn {
            ns: self.clone(),
            writes: BTreeMap::new(),
            pending_bytes: 0,
            deadline,
            holds_gate: false,
        }
    }

    /// Keys stored in the namespace (committed).
    pub fn keys(&self) -> u64 {
        self.keys.load(Ordering::Acquire)
    }

    /// The store this namespace lives in.
    pub fn store(&self) -> &Arc<StateStore> {
        &self.store
    }
}

/// The state view of one call: the tree plus this call's uncommitted writes. It holds
/// its namespace's gate from its first access until it is committed or dropped.
pub struct Txn {
    ns: Arc<Namespace>,
    writes: BTreeMap<String, Option<Vec<u8>>>,
    /// Bytes of keys and values in `writes`.
    pending_bytes: usize,
    deadline: Option<Instant>,
    holds_gate: bool,
}

impl Drop for Txn {
    fn drop(&mut self) {
        if self.holds_gate {
            self.ns.gate.leave();
        }
    }
}

impl Txn {
    /// Takes the namespace's gate on the first access of the call.
    fn enter(&mut self) -> Result<(), StateError> {
        if !self.holds_gate {
            self.ns.gate.enter(self.deadline)?;
            self.holds_gate = true;
        }
        Ok(())
    }

    fn limits(&self) -> &StateConfig {
        &self.ns.store.limits
    }

    fn check_key(&self, key: &str) -> Result<(), StateError> {
        let max = self.limits().max_key_bytes;
        if key.is_empty() || key.len() > max {
            return Err(StateError::Limit(format!(
                "key of {} bytes: keys must be 1 to {max} bytes",
                key.len()
            )));
        }
        Ok(())
    }

    /// The value of `key` as this call sees it.
    ///
    /// # Errors
    /// [`StateError::Io`] on a database error; [`StateError::Busy`] past the deadline.
    pub fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.enter()?;
        if let Some(w) = self.writes.get(key) {
            return Ok(w.clone());
        }
        Ok(self.ns.tree.get(key)?.map(|v| v.to_vec()))
    }

    /// Stores `value` under `key` when the call commits.
    ///
    /// # Errors
    /// [`StateError::Limit`] for an oversized key or value, or too many keys.
    pub fn set(&mut self, key: &str, value: Vec<u8>) -> Result<(), StateError> {
        self.check_key(key)?;
        self.enter()?;
        let max = self.limits().max_value_bytes;
        if value.len() > max {
            return Err(StateError::Limit(format!(
                "value of {} bytes is over the limit of {max} bytes",
                value.len()
            )));
        }
        if self.get(key)?.is_none() {
            // Keys after commit: stored ones, plus this call's new keys, minus its deletes.
            let mut pending: i64 = 0;
            for (k, v) in &self.writes {
                let stored = self.ns.tree.contains_key(k.as_str())?;
                pending += match (v.is_some(), stored) {
                    (true, false) => 1,
                    (false, true) => -1,
                    _ => 0,
                };
            }
            let max_keys = self.limits().max_keys_per_function;
            let after = self.ns.keys.load(Ordering::Acquire) as i64 + pending + 1;
            if after > max_keys as i64 {
                return Err(StateError::Limit(format!(
                    "the function already has the most keys allowed ({max_keys})"
                )));
            }
        }
        self.pend(key, Some(value))
    }

    /// Records a write, within the call's budget of pending keys and bytes.
    fn pend(&mut self, key: &str, value: Option<Vec<u8>>) -> Result<(), StateError> {
        let size = |v: &Option<Vec<u8>>| key.len() + v.as_ref().map_or(0, Vec::len);
        let before = self.writes.get(key).map_or(0, size);
        let after = self.pending_bytes - before + size(&value);
        let limits = self.limits();
        if after > limits.max_pending_bytes_per_call {
            return Err(StateError::Limit(format!(
                "this call's uncommitted writes would reach {after} bytes, over \
                 state.max_pending_bytes_per_call ({})",
                limits.max_pending_bytes_per_call
            )));
        }
        if before == 0 && self.writes.len() >= limits.max_pending_keys_per_call {
            return Err(StateError::Limit(format!(
                "this call already wrote {} keys, state.max_pending_keys_per_call",
                self.writes.len()
            )));
        }
        self.pending_bytes = after;
        self.writes.insert(key.to_string(), value);
        Ok(())
    }

    /// Removes `key` when the call commits.
    ///
    /// # Errors
    /// [`StateError::Limit`] for an invalid key.
    pub fn delete(&mut self, key: &str) -> Result<(), StateError> {
        self.check_key(key)?;
        self.enter()?;
        self.pend(key, None)
    }

    /// Adds `delta` to the decimal integer under `key` (absent = 0) and returns the sum.
    ///
    /// # Errors
    /// [`StateError::Limit`] if the value is not an integer or the sum overflows.
    pub fn increment(&mut self, key: &str, delta: i64) -> Result<i64, StateError> {
        let current = match self.get(key)? {
            None => 0,
            Some(v) => std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .ok_or_else(|| StateError::Limit(format!("value of `{key}` is not an integer")))?,
        };
        let sum = current
            .checked_add(delta)
            .ok_or_else(|| StateError::Limit(format!("`{key}` would overflow a 64-bit integer")))?;
        self.set(key, sum.to_string().into_bytes())?;
        Ok(sum)
    }

    /// Up to `limit` keys with `prefix`, in order, as this call sees them.
    ///
    /// # Errors
    /// [`StateError::Io`] on a database error.
    pub fn list(&mut self, prefix: &str, limit: u32) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        self.enter()?;
        let mut merged: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let limit = limit as usize;
        for item in self.ns.tree.scan_prefix(prefix) {
            let (k, v) = item?;
            let k = String::from_utf8_lossy(&k).into_owned();
            if !self.writes.contains_key(&k) {
                merged.insert(k, v.to_vec());
            }
            // Our own writes may remove entries; read a little past the limit.
            if merged.len() > limit + self.writes.len() {
                break;
            }
        }
        for (k, v) in self.writes.range(prefix.to_string()..) {
            if !k.starts_with(prefix) {
                break;
            }
            if let Some(v) = v {
                merged.insert(k.clone(), v.clone());
            }
        }
        Ok(merged.into_iter().take(limit).collect())
    }

    /// Whether the call wrote anything.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Applies the writes atomically. Returns the flush generation to wait for with
    /// [`StateStore::durable`], or `None` if there was nothing to write.
    ///
    /// # Errors
    /// [`StateError::Io`] if sled refuses the batch (nothing is applied then).
    pub fn commit(self) -> Result<Option<u64>, StateError> {
        if self.writes.is_empty() {
            return Ok(None);
        }
        let mut batch = sled::Batch::default();
        let mut added: i64 = 0;
        for (k, v) in &self.writes {
            let existed = self.ns.tree.contains_key(k.as_str())?;
            match v {
                Some(v) => {
                    batch.insert(k.as_bytes(), v.as_slice());
                    added += i64::from(!existed);
                }
                None => {
                    batch.remove(k.as_bytes());
                    added -= i64::from(existed);
                }
            }
        }
        self.ns.tree.apply_batch(batch)?;
        if added >= 0 {
            self.ns
                .keys
                .fetch_add(added.unsigned_abs(), Ordering::AcqRel);
        } else {
            self.ns
                .keys
                .fetch_sub(added.unsigned_abs(), Ordering::AcqRel);
        }
        let store = &self.ns.store;
        // Read after applying: a flush that starts later covers this batch.
        let generation = store.next_flush.load(Ordering::Acquire);
        store.dirty.notify_one();
        Ok(Some(generation))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> Arc<StateStore> {
        let limits = StateConfig {
            max_keys_per_function: 3,
            max_value_bytes: 32,
            ..StateConfig::default()
        };
        StateStore::open(dir, &limits).unwrap()
    }

    #[test]
    fn writes_are_visible_in_the_call_and_applied_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let ns = s.namespace("f").unwrap();
        let mut t = ns.begin();
        assert_eq!(t.increment("n", 2).ok(), Some(2));
        assert_eq!(t.increment("n", 3).ok(), Some(5));
        assert_eq!(t.get("n").ok().flatten(), Some(b"5".to_vec()));
        // Another call waits for this one: it never sees uncommitted writes.
        let soon = Some(Instant::now() + Duration::from_millis(20));
        assert!(
            matches!(ns.begin_until(soon).get("n"), Err(StateError::Busy)),
            "another call must wait for the gate"
        );
        assert!(t.commit().ok().flatten().is_some());
        assert_eq!(ns.begin().get("n").ok().flatten(), Some(b"5".to_vec()));
    }

    #[test]
    fn dropped_transactions_leave_no_trace() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let ns = s.namespace("f").unwrap();
        let mut t = ns.begin();
        t.set("k", b"v".to_vec()).unwrap();
        drop(t);
        assert_eq!(ns.begin().get("k").ok().flatten(), None);
    }

    #[test]
    fn namespaces_are_isolated() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let a = s.namespace("a").unwrap();
        let b = s.namespace("b").unwrap();
        let mut t = a.begin();
        t.set("secret", b"1".to_vec()).unwrap();
        t.commit().unwrap();
        assert_eq!(b.begin().get("secret").ok().flatten(), None);
        assert!(b.begin().list("", 10).unwrap_or_default().is_empty());
    }

    #[test]
    fn limits_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let ns = s.namespace("f").unwrap();
        let mut t = ns.begin();
        assert!(matches!(
            t.set("big", vec![0; 33]),
            Err(StateError::Limit(_))
        ));
        assert!(matches!(
            t.set(&"k".repeat(300), vec![]),
            Err(StateError::Limit(_))
        ));
        assert!(matches!(t.set("", vec![]), Err(StateError::Limit(_))));
        for k in ["a", "b", "c"] {
            t.set(k, vec![1]).unwrap();
        }
        assert!(
            matches!(t.set("d", vec![1]), Err(StateError::Limit(_))),
            "4th key"
        );
        t.set("a", vec![2]).expect("overwrite is fine");
        t.commit().unwrap();

        let mut t = ns.begin();
        assert!(
            matches!(t.set("d", vec![1]), Err(StateError::Limit(_))),
            "after commit"
        );
        t.delete("a").unwrap();
        t.set("d", vec![1]).expect("room after a delete");
        t.commit().unwrap();

        let mut t = ns.begin();
        t.set("b", b"0".to_vec()).unwrap();
        assert!(matches!(t.increment("b", i64::MAX), Ok(i64::MAX)));
        assert!(
            matches!(t.increment("b", 1), Err(StateError::Limit(_))),
            "overflow"
        );
        t.set("d", b"abc".to_vec()).unwrap();
        assert!(
            matches!(t.increment("d", 1), Err(StateError::Limit(_))),
            "not an integer"
        );
    }

    #[test]
    fn list_merges_own_writes() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let ns = s.namespace("f").unwrap();
        let mut t = ns.begin();
        t.set("p/1", b"1".to_vec()).unwrap();
        t.set("p/2", b"2".to_vec()).unwrap();
        t.commit().unwrap();
        let mut t = ns.begin();
        t.delete("p/1").unwrap();
        t.set("p/0", b"0".to_vec()).unwrap();
        let keys: Vec<String> = t
            .list("p/", 10)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["p/0", "p/2"]);
        assert_eq!(t.list("p/", 1).unwrap_or_default().len(), 1);
    }

    #[test]
    fn the_gate_is_released_by_commit_drop_and_failure() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let ns = s.namespace("f").unwrap();
        let soon = || Some(Instant::now() + Duration::from_millis(200));
        let mut t = ns.begin_until(soon());
        t.set("k", b"1".to_vec()).unwrap();
        t.commit().unwrap();
        let mut t = ns.begin_until(soon());
        assert!(t.set("", vec![]).is_err(), "a refused write takes no gate");
        t.get("k").unwrap();
        drop(t);
        // A writer in another thread waits until this reader is done, then goes on.
        let mut reader = ns.begin_until(soon());
        reader.get("k").unwrap();
        let ns2 = ns.clone();
        let writer = std::thread::spawn(move || {
            let mut w = ns2.begin_until(Some(Instant::now() + Duration::from_secs(5)));
            w.increment("k", 1).map(|_| w.commit())
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!writer.is_finished(), "the writer waits for the reader");
        drop(reader);
        assert!(matches!(writer.join().ok(), Some(Ok(Ok(_)))));
        assert_eq!(ns.begin().get("k").ok().flatten(), Some(b"2".to_vec()));
    }

    #[tokio::test]
    async fn commits_become_durable_after_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let stop = tokio_util::sync::CancellationToken::new();
        let flusher = tokio::spawn(s.clone().run_flusher(stop.clone()));
        let ns = s.namespace("f").unwrap();
        let mut t = ns.begin();
        t.increment("n", 1).unwrap();
        let generation = t
            .commit()
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("a generation"));
        tokio::time::timeout(Duration::from_secs(5), s.durable(generation))
            .await
            .unwrap_or_else(|_| panic!("never flushed"));
        stop.cancel();
        let _ = flusher.await;
    }

    /// With a spacing, a commit made just after a flush waits for the next one, which
    /// starts the spacing after the first started, not sooner and not much later; each
    /// flush is counted. On tokio's paused clock, which moves only when every task waits
    /// for a timer: no timeout around `durable` here, it would fire while sled writes.
    #[tokio::test(start_paused = true)]
    async fn flushes_keep_the_minimum_spacing() {
        let dir = tempfile::tempdir().unwrap();
        let spacing = Duration::from_secs(5);
        let limits = StateConfig {
            min_flush_interval_ms: 5000,
            ..StateConfig::default()
        };
        let s = StateStore::open(dir.path(), &limits).unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let flusher = tokio::spawn(s.clone().run_flusher(stop.clone()));
        let ns = s.namespace("f").unwrap();
        let commit = || {
            let mut t = ns.begin();
            t.increment("n", 1).unwrap();
            t.commit().unwrap().expect("a generation")
        };
        let start = tokio::time::Instant::now();
        s.durable(commit()).await;
        assert!(
            start.elapsed() < Duration::from_millis(1),
            "the first flush waits for nothing"
        );
        assert_eq!(s.flushes(), 1);
        s.durable(commit()).await;
        let second = start.elapsed();
        assert!(
            second >= spacing && second <= spacing + Duration::from_millis(1),
            "second flush after {second:?}"
        );
        assert_eq!(s.flushes(), 2);
        stop.cancel();
        flusher.await.unwrap();
        assert_eq!(s.flushes(), 3, "one more flush on the way out");
    }
}
