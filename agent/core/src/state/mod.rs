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
//! Exactly once: a call of a QoS 1/2 event that writes state commits, in the same batch, a
//! receipt for the message (its packet id on the function's intake session, a checksum of
//! topic and payload, and the call's outputs). When the broker redelivers the message
//! (DUP=1, same packet id) the receipt says its effects are already in the store: the
//! pipeline publishes the recorded outputs again and acknowledges it, and the function is
//! not called. A new message with that packet id (DUP=0) proves the broker had the old
//! one's acknowledgement and so answers to a new incarnation; a session the broker
//! did not keep voids all of them ([`Namespace::forget_all`]). Receipts live in the
//! function's own tree under keys that begin with a NUL byte, which guests cannot use.
//!
//! Full or failing disk: a commit is refused while the data directory's file system has
//! less than `state.min_free_mb` free ([`StateError::Full`]), and any I/O error of the store
//! ([`StateError::Io`]) is reported the same way: the store is unavailable
//! ([`StateStore::health`]), the pipeline retries the event later, and nothing of the call
//! is kept. sled stops for good after an I/O error (it keeps the first one and returns it
//! from every later call), so the flusher then reopens the store from its files, retrying
//! with a back-off until that works; commits that were in memory only are lost with the old
//! handle, and their events, not yet acknowledged, are run again ([`StateStore::durable`]
//! says `false`). A disk already full at start-up leaves the store without a database
//! until there is room ([`StateStore::open`]), its namespaces waiting for their trees as
//! during a reopen. A flush that waits [`SLOW_FLUSH`] for a stalled disk makes the store
//! unavailable in its health too (nothing fails then; the functions that write state just
//! wait with it). Each function's keys and values together may not exceed
//! `state.max_bytes_per_function` (a limit the guest sees), so that one function cannot
//! fill the disk for the others.
//!
//! Durability: a commit lands in its namespace's memory (the writes not yet applied, which
//! every read sees first); a flusher task applies them to sled and writes them to disk in a
//! group commit, one sled batch per namespace for every commit of the group (sled writes
//! and syncs its log at every batch: one per event was one disk write per event). A
//! flush starts as soon as the previous one has finished (and, if set, at least
//! `state.min_flush_interval_ms` after it started, to spare SD cards), and covers every
//! commit made before it started. Above `state.max_flushes_per_sec` commits a second, a
//! flush waits until enough commits are pending to keep to that rate (or until the first
//! of them has waited a flush period): at 300 commits a second and the default 100, one
//! flush per 3 commits instead of per commit. A committed call's
//! message is acknowledged only after [`StateStore::durable`] says its flush is done, so a
//! crash never loses state of an acknowledged message.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use crate::config::StateConfig;

pub mod inspect;

/// State store failures.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The database could not be opened (missing permissions, a damaged file).
    #[error("cannot open the state store in {dir}")]
    Open {
        /// The data directory.
        dir: String,
        /// What sled said.
        #[source]
        source: sled::Error,
    },
    /// The store's files are damaged: the disk lost writes it had confirmed (a power cut on
    /// an SD card that does not keep its promises, or a failing card). Starting again will
    /// not help; moving the store aside will, at the price of every function's state.
    #[error("{}", damaged(.dir, .snapshot.as_deref()))]
    Damaged {
        /// The store's directory.
        dir: String,
        /// Its newest snapshot, when that file fails its own checksum: an index that sled
        /// can build again from the log, and the one thing to move aside first.
        snapshot: Option<PathBuf>,
        /// What sled said.
        #[source]
        source: Box<sled::Error>,
    },
    /// Another process holds the store's lock: another agent with the same `data_dir`.
    #[error(
        "the state store in {dir} is in use by another process (another edge-agent with the same agent.data_dir?)"
    )]
    Locked {
        /// The store's directory.
        dir: String,
    },
    /// A disk or database error during a call.
    #[error("state store I/O error")]
    Io(#[from] sled::Error),
    /// The data directory's file system has less free space than `state.min_free_mb`.
    #[error(
        "the disk is full: {free_mb} MiB free in the data directory, state.min_free_mb is {reserve_mb}"
    )]
    Full {
        /// Free space, MiB.
        free_mb: u64,
        /// The reserve, MiB.
        reserve_mb: u64,
    },
    /// A limit from `[state]` was exceeded; reported to the guest.
    #[error("{0}")]
    Limit(String),
    /// The call reached its deadline while another call of the function held the state.
    #[error("state busy: another call of this function held it until this call's deadline")]
    Busy,
    /// The data directory's file system met an error after the database was opened: what
    /// a flush wrote may not be on disk even though `fsync` said it was
    /// ([`crate::files::ext4_error_count`]).
    #[error(
        "the file system of {dir} met an error (ext4 errors_count {then} when the store was \
         opened, {now} now; see `dmesg`): what this flush wrote may not be on disk, whatever \
         fsync said"
    )]
    FileSystemError {
        /// The store's directory.
        dir: String,
        /// The count when the database was opened.
        then: u64,
        /// The count after the flush.
        now: u64,
    },
    /// The store is being reopened after an I/O error, or the call began before that, or
    /// it is waiting for room on the disk to open at all.
    #[error(
        "the state store is not open: being reopened after an I/O error, or waiting for room on the disk"
    )]
    Reopening,
}

/// What to do about a store whose file system the kernel made read-only (it does that to
/// ext4 after disk errors, `errors=remount-ro`) or answers with I/O errors (a failing
/// card, or a file system shut down after errors, as XFS does): nothing the agent can, so
/// it says so.
fn disk_hint(e: &StateError) -> &'static str {
    let io = match e {
        StateError::Io(sled::Error::Io(io))
        | StateError::Open {
            source: sled::Error::Io(io),
            ..
        } => io,
        _ => return "",
    };
    if io.kind() == std::io::ErrorKind::ReadOnlyFilesystem {
        " (the data directory's file system is read-only: the kernel makes ext4 read-only \
         after disk errors, see `dmesg`; the card needs a check, `fsck`, and a reboot, or \
         replacing)"
    } else if io.raw_os_error() == Some(EIO) {
        " (the disk answered with an I/O error, see `dmesg`: a failing card or cable, or a \
         file system the kernel shut down after errors. The store is tried again every few \
         seconds, but a file system shut down stays so until it is mounted again: stop the \
         agent, check it (`fsck`, `xfs_repair`) and mount it. The events not yet on disk \
         wait with the broker)"
    } else {
        ""
    }
}

/// `EIO`, the same number on every Linux architecture.
const EIO: i32 = 5;

impl StateError {
    /// Whether the store, not the call, is at fault (full disk, I/O error): the event is
    /// tried again later rather than failed.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::Io(_) | Self::Full { .. } | Self::Reopening | Self::FileSystemError { .. }
        )
    }
}

/// Before a database whose flush failed is dropped. sled's drop syncs its log and panics
/// when that fails (the agent aborted, on a disk turned read-only), unless sled has met an
/// I/O error of its own; a flush that failed outside it (our fdatasync, the file system's
/// error count) or no write since the disk failed leave it unaware. A write through it
/// meets the disk's error as sled's own; on a disk that takes the write it changes nothing.
fn let_sled_meet_the_disk_error(db: &sled::Db) {
    const PROBE: &[u8] = b"\0edge-agent/probe";
    if db.insert(PROBE, &[]).is_ok() && db.remove(PROBE).is_ok() {
        let _ = db.flush();
    }
}

/// How long opening the store waits for its lock. sled lets go of its files when the last
/// of its IO threads drops them, which can be a moment after the last `Db` handle (a
/// reopen after an I/O error, a store opened again in the same process); a second agent on
/// the same `data_dir` holds it for as long as it runs.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// A flush still under way after this long makes the store report itself unavailable
/// (health, status, log) until a flush succeeds: a flush takes about a millisecond on a
/// healthy disk and tens on a slow SD card; seconds are a stall.
const SLOW_FLUSH: Duration = crate::files::SLOW_DISK;

/// Waits up to `wait` until nobody holds the lock sled takes on `<dir>/db` (an exclusive
/// `flock`; sled itself only tries once), and says who holds it if that never happens.
/// Returns the file, holding the lock until it is dropped; `None` where there is no store
/// yet, or on any other failure, which is left to sled's own open to report.
fn wait_for_lock(dir: &Path, wait: Duration) -> Result<Option<std::fs::File>, StateError> {
    use fs2::FileExt;
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join("db"))
    else {
        return Ok(None);
    };
    let deadline = Instant::now() + wait;
    loop {
        match file.try_lock_exclusive() {
            // Closing the file gives the lock back, for sled to take.
            Ok(()) => return Ok(Some(file)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(StateError::Locked {
                        dir: dir.display().to_string(),
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => return Ok(None),
        }
    }
}

/// The functions' namespaces in `db`: each tree's name and its function's
/// ([`StateStore::namespace`]: `function/<name>`; a shadow's is `<name>~<side>`).
fn function_trees(db: &sled::Db) -> Vec<(String, String)> {
    db.tree_names()
        .into_iter()
        .filter_map(|n| {
            let name = String::from_utf8_lossy(&n).into_owned();
            let function = name.strip_prefix("function/")?.to_string();
            Some((name, function))
        })
        .collect()
}

/// Keys of receipts begin with this byte, which guest keys may not.
const RECEIPT_PREFIX: &[u8] = b"\0receipt/";

/// How long a free-space reading with more than [`FREE_SPACE_MARGIN`] above the reserve is
/// trusted; nearer the reserve, every commit reads it again.
const FREE_SPACE_TTL: Duration = Duration::from_secs(1);
/// See [`FREE_SPACE_TTL`]: no SD card fills a GiB in a second.
const FREE_SPACE_MARGIN: u64 = 1024 * 1024 * 1024;

/// Flush generations as the flusher left them.
#[derive(Debug, Default)]
struct Flushed {
    /// The last generation on disk.
    upto: u64,
    /// Ranges of generations (first, last) lost with a store that was reopened: their
    /// commits were in memory only.
    lost: Vec<(u64, u64)>,
}

/// The database and its flusher bookkeeping.
pub struct StateStore {
    /// `None` while it is being reopened.
    db: RwLock<Option<sled::Db>>,
    dir: std::path::PathBuf,
    /// Every namespace handed out, for a reopen to give them their new trees.
    namespaces: Mutex<Vec<std::sync::Weak<Namespace>>>,
    /// Bumped by each reopen: a call that began before it may not commit after it.
    epoch: AtomicU64,
    /// No incarnation of this run of the agent is smaller ([`crate::event::this_run`]).
    life: u64,
    limits: StateConfig,
    /// Free bytes in the data directory at `free_at`.
    free: Mutex<(u64, Option<Instant>)>,
    /// Why the store is unavailable (full disk, I/O error), or `None` if it is not.
    health: watch::Sender<Option<String>>,
    /// Generation the next flush will cover.
    next_flush: AtomicU64,
    /// What is on disk, and what was lost.
    flushed: watch::Sender<Flushed>,
    dirty: Notify,
    /// Commits since the store opened (for the flusher's rate).
    commits: AtomicU64,
    /// Namespaces with commits not yet applied to sled, kept alive until they are.
    unapplied: Mutex<Vec<Arc<Namespace>>>,
    /// After how many ms a flush still under way is reported ([`SLOW_FLUSH`]; 0: never).
    slow_flush_ms: AtomicU64,
    /// Whether a database was ever opened: `false` while a store that met a full disk at
    /// start-up waits for room ([`StateStore::open`]).
    opened: std::sync::atomic::AtomicBool,
    /// Whether this start made the store: it had no database before.
    new: bool,
    /// The errors its file system had counted when the database was last opened, and
    /// where to count them again (ext4 only): see [`StateStore::flush_once`].
    fs_errors: Option<(crate::files::ErrorCount, AtomicU64)>,
}

impl StateStore {
    /// Opens (or creates) the store in `<data_dir>/state`.
    ///
    /// # Errors
    /// [`StateError::Open`] if sled cannot open it.
    pub fn open(data_dir: &Path, limits: &StateConfig) -> Result<Arc<Self>, StateError> {
        let dir = data_dir.join("state");
        let new = !dir.join("db").exists();
        // A full disk at start-up (sled writes as it opens) is the disk's fault, as it is
        // later: the agent starts without a database, the functions that write no state
        // run, the others wait as on a full disk, and the flusher opens it once there is
        // room. Any other failure stops the start.
        let fs_errors = crate::files::ext4_error_count(&dir).map(|count| {
            let then = AtomicU64::new(count.read().unwrap_or(0));
            (count, then)
        });
        let opening = || Self::open_db(&dir, limits);
        let (db, health) = match crate::files::said_if_slow(
            "opening the state store",
            &dir,
            opening,
        ) {
            Ok(db) => (Some(db), None),
            Err(StateError::Open {
                dir: shown,
                source: sled::Error::Io(e),
            }) if e.kind() == std::io::ErrorKind::StorageFull => {
                let why = format!(
                    "the disk is full: the state store in {shown} cannot be opened ({e}); it is \
                     opened once there is room"
                );
                (None, Some(why))
            }
            Err(e) => return Err(e),
        };
        let opened = db.is_some();
        let store = Arc::new(Self {
            db: RwLock::new(db),
            dir,
            namespaces: Mutex::default(),
            epoch: AtomicU64::new(0),
            life: crate::event::this_run(),
            limits: limits.clone(),
            free: Mutex::new((u64::MAX, None)),
            health: watch::channel(None).0,
            next_flush: AtomicU64::new(1),
            flushed: watch::channel(Flushed::default()).0,
            dirty: Notify::new(),
            commits: AtomicU64::new(0),
            slow_flush_ms: AtomicU64::new(SLOW_FLUSH.as_millis() as u64),
            opened: std::sync::atomic::AtomicBool::new(opened),
            new,
            unapplied: Mutex::default(),
            fs_errors,
        });
        store.set_health(health);
        Ok(store)
    }

    /// Whether this start made the store (there was none in the data directory).
    pub fn is_new(&self) -> bool {
        self.new
    }

    fn open_db(dir: &Path, limits: &StateConfig) -> Result<sled::Db, StateError> {
        // Made here for the disk's own error: on a file system the kernel shut down (XFS
        // after an error) sled's `create_dir_all` says "File exists" instead.
        crate::files::create_dir_all(dir).map_err(|e| StateError::Open {
            dir: dir.display().to_string(),
            source: sled::Error::Io(e),
        })?;
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            // Under the lock (a store with no `db` yet has no snapshot): nobody else's
            // snapshot is being written.
            if let Some(_held) =
                wait_for_lock(dir, deadline.saturating_duration_since(Instant::now()))?
            {
                remove_unfinished_snapshots(dir).map_err(|e| StateError::Open {
                    dir: dir.display().to_string(),
                    source: sled::Error::Io(e),
                })?;
            }
            match Self::open_sled(dir, limits) {
                // Two agents started at the same moment: both found the lock free (or no
                // store yet), and sled's own lock turned one away with a raw error, in
                // half of a probe's races (2026-12-08). Waited for like any holder.
                Err(StateError::Open {
                    source: sled::Error::Io(e),
                    ..
                }) if e.to_string().contains("could not acquire lock") => {
                    if Instant::now() >= deadline {
                        return Err(StateError::Locked {
                            dir: dir.display().to_string(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                opened => return opened,
            }
        }
    }

    fn open_sled(dir: &Path, limits: &StateConfig) -> Result<sled::Db, StateError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(limits.cache_mb * 1024 * 1024)
            .mode(sled::Mode::LowSpace)
            // We flush ourselves, on our interval, and track which commits it covered.
            .flush_every_ms(None)
            .open()
            .map_err(|source| {
                let shown = dir.display().to_string();
                match source {
                    sled::Error::Corruption { .. } => StateError::Damaged {
                        dir: shown,
                        snapshot: damaged_snapshot(dir),
                        source: Box::new(source),
                    },
                    source => StateError::Open { dir: shown, source },
                }
            })?;
        if let Err(e) = sync_store_files(dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "could not sync the state store's files after opening it: a power cut soon may cost sled its `conf`, which it then writes again");
        }
        Ok(db)
    }

    /// A namespace's life, given the largest incarnation among its receipts: after the
    /// receipts of earlier runs even when the clock has gone back since (a device without
    /// a real-time clock, restarted before it has the time again), they must stay "before
    /// this life", and no new delivery may take their numbers.
    fn life_after(&self, last_receipt: u64) -> u64 {
        let life = self.life.max(last_receipt.saturating_add(1));
        crate::event::no_incarnation_below(life);
        life
    }

    fn db(&self) -> Result<sled::Db, StateError> {
        let db = self.db.read().unwrap_or_else(|p| p.into_inner());
        db.clone().ok_or(StateError::Reopening)
    }

    /// The namespace of `function`.
    ///
    /// # Errors
    /// [`StateError::Io`] if its tree cannot be opened.
    pub fn namespace(self: &Arc<Self>, function: &str) -> Result<Arc<Namespace>, StateError> {
        let name = format!("function/{function}");
        let mut all = self.namespaces.lock().unwrap_or_else(|p| p.into_inner());
        // One namespace per function while any is alive (a function reloaded while the old
        // one drains): one gate, and commits not yet applied seen by both.
        if let Some(ns) = all
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .find(|ns| ns.name == name)
        {
            return Ok(ns);
        }
        // Without a database (the disk was full at start-up, or the store is closed after
        // a disk error) the namespace waits for its tree like the others: its calls are
        // told the store is unavailable, and `reopen` (which holds `namespaces`
        // throughout, so it cannot miss this one) gives it its tree, counts and life. A
        // function added by a reload during a disk fault thus pauses like the rest.
        let opened = match self.db() {
            Ok(db) => Some(db.open_tree(&name)?),
            Err(StateError::Reopening) => None,
            Err(e) => return Err(e),
        };
        let (keys, bytes, life, replay_floor) = match &opened {
            Some(tree) => {
                let c = Namespace::count(tree, u64::MAX)?;
                (c.keys, c.bytes, self.life_after(c.last), c.replay_floor)
            }
            None => (0, 0, self.life, 0),
        };
        let ns = Arc::new(Namespace {
            store: self.clone(),
            name,
            life: AtomicU64::new(life),
            replay_floor: AtomicU64::new(replay_floor),
            tree: RwLock::new(opened),
            keys: AtomicU64::new(keys),
            bytes: AtomicU64::new(bytes),
            commits: AtomicU64::new(0),
            gate: Gate::default(),
            overlay: Mutex::default(),
        });
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&ns));
        Ok(ns)
    }

    /// The functions that have keys in the store but are not `configured`: renamed or
    /// removed, their state kept (a function added back finds it) and unused.
    ///
    /// # Errors
    /// [`StateError`] if the store cannot be read.
    pub fn unconfigured(
        &self,
        configured: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>, StateError> {
        let db = self.db()?;
        let mut out = Vec::new();
        for (name, function) in function_trees(&db) {
            if function.contains('~') || configured(&function) {
                continue;
            }
            // The functions' own keys: after the receipts, which begin with a NUL byte.
            let first: &[u8] = &[1];
            if db.open_tree(&name)?.range(first..).next().is_some() {
                out.push(function);
            }
        }
        Ok(out)
    }

    /// Drops the namespaces of shadows (`<function>~<side>`) that `wanted` no longer names:
    /// a shadow's state is a copy of its primary's, made again whenever it starts, so once
    /// the shadow is gone its copy is only disk. A namespace still in use is kept. Returns
    /// the names dropped.
    ///
    /// # Errors
    /// [`StateError`] if the store cannot be read or a tree cannot be dropped.
    pub fn drop_shadow_namespaces(
        &self,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>, StateError> {
        let live: Vec<String> = {
            let all = self.namespaces.lock().unwrap_or_else(|p| p.into_inner());
            all.iter()
                .filter_map(std::sync::Weak::upgrade)
                .map(|ns| ns.name.clone())
                .collect()
        };
        let db = self.db()?;
        let mut dropped = Vec::new();
        for (name, function) in function_trees(&db) {
            if function.contains('~') && !wanted(&function) && !live.contains(&name) {
                db.drop_tree(name.as_bytes())?;
                dropped.push(function);
            }
        }
        Ok(dropped)
    }

    /// Reopens the store from its files after sled stopped on an I/O error: every handle
    /// on the old one is dropped (sled holds a lock on its files until then), the commits
    /// not yet flushed are marked lost, and every namespace gets its tree again.
    ///
    /// # Errors
    /// The store could not be opened again (the disk still fails): it stays closed, and
    /// every state access says [`StateError::Reopening`] until a later try works.
    fn reopen(&self) -> Result<(), StateError> {
        // Held to the end: a namespace asked for meanwhile is either in this list or made
        // after the new database is in place (the same order as `namespace`: this lock,
        // then the database's).
        let all = self.namespaces.lock().unwrap_or_else(|p| p.into_inner());
        let namespaces: Vec<Arc<Namespace>> =
            all.iter().filter_map(std::sync::Weak::upgrade).collect();
        if let Some(db) = self.db.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let_sled_meet_the_disk_error(db);
        }
        if self.db.read().unwrap_or_else(|p| p.into_inner()).is_some() {
            // Calls that began on the old handle may not commit on the new one: what they
            // read may be among the lost commits.
            self.epoch.fetch_add(1, Ordering::AcqRel);
            for ns in &namespaces {
                *ns.tree.write().unwrap_or_else(|p| p.into_inner()) = None;
                // Lost with the old handle: their events run again (marked lost below,
                // after this, so that a commit that got in first is among them).
                *ns.overlay() = Overlay::default();
            }
            self.unapplied
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            *self.db.write().unwrap_or_else(|p| p.into_inner()) = None;
            let last = self.next_flush.fetch_add(1, Ordering::AcqRel);
            self.flushed.send_modify(|f| {
                if f.upto < last {
                    f.lost.push((f.upto + 1, last));
                }
            });
        }
        if let Some((count, then)) = &self.fs_errors
            && let Some(now) = count.read()
        {
            then.store(now, Ordering::Release);
        }
        let db = Self::open_db(&self.dir, &self.limits)?;
        for ns in &namespaces {
            let tree = db.open_tree(&ns.name)?;
            // The window among the receipts of earlier runs: this run's answer to no
            // resend of incarnation 0.
            let c = Namespace::count(&tree, ns.life.load(Ordering::Acquire))?;
            ns.keys.store(c.keys, Ordering::Release);
            ns.bytes.store(c.bytes, Ordering::Release);
            ns.life.fetch_max(self.life_after(c.last), Ordering::AcqRel);
            ns.replay_floor.store(c.replay_floor, Ordering::Release);
            *ns.tree.write().unwrap_or_else(|p| p.into_inner()) = Some(tree);
        }
        *self.db.write().unwrap_or_else(|p| p.into_inner()) = Some(db);
        let first = !self.opened.swap(true, Ordering::AcqRel);
        drop(all);
        if first {
            tracing::info!("state store opened: there is room on the disk now");
        } else {
            tracing::warn!(
                "state store reopened after an I/O error; the events of commits that were not on disk run again"
            );
        }
        Ok(())
    }

    /// Bumped each time the store is reopened after an I/O error: commits made before may
    /// be lost, so whatever a persistent instance remembers of its state is stale.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Why the store is unavailable now (`None`: it is available). Watch it to see it
    /// change.
    pub fn health(&self) -> watch::Receiver<Option<String>> {
        self.health.subscribe()
    }

    /// Records that the store failed (`Some(reason)`) or works again (`None`); logs the
    /// change between the two (a new reason while unavailable, such as the free space
    /// falling further as a disk fills, only at debug: it made three errors within 25 ms).
    fn set_health(&self, reason: Option<String>) {
        self.health.send_if_modified(|h| {
            if *h == reason {
                return false;
            }
            match (&*h, &reason) {
                (None, Some(r)) => tracing::error!(reason = %r, "state store unavailable: functions that write state pause, their events stay with the broker"),
                (Some(_), Some(r)) => tracing::debug!(reason = %r, "state store still unavailable"),
                (_, None) => tracing::info!("state store available again: paused functions resume"),
            }
            *h = reason;
            true
        });
    }

    /// Refuses a commit while the file system has less than `state.min_free_mb` free (read
    /// at most every [`FREE_SPACE_TTL`]).
    fn check_free_space(&self) -> Result<(), StateError> {
        let reserve = self.limits.min_free_mb.saturating_mul(1024 * 1024);
        if reserve == 0 {
            return Ok(());
        }
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        let trusted = free.0 >= reserve.saturating_add(FREE_SPACE_MARGIN)
            && free.1.is_some_and(|t| t.elapsed() < FREE_SPACE_TTL);
        if !trusted {
            // A file system that cannot say is not taken to be full.
            *free = (
                fs2::available_space(&self.dir).unwrap_or(u64::MAX),
                Some(Instant::now()),
            );
        }
        if free.0 < reserve {
            let err = StateError::Full {
                free_mb: free.0 / (1024 * 1024),
                reserve_mb: self.limits.min_free_mb,
            };
            // Read again at the next commit: space may come back any time.
            free.1 = None;
            drop(free);
            self.set_health(Some(err.to_string()));
            return Err(err);
        }
        Ok(())
    }

    /// Flushes committed state to disk while there is any (a group commit: one flush at a
    /// time, each taking every commit made before it started, no two starting closer than
    /// `min_flush_interval_ms`), until `stop` is cancelled; then flushes once more.
    ///
    /// Above `max_flushes_per_sec` commits a second, a flush waits for `k` pending commits,
    /// `k` the commit rate over the cap rounded up ([`flush_group`]), or until the first pending commit has
    /// waited one period of the cap, and draws on an allowance of `cap` flushes a second
    /// (which holds the cap in bursts). Below it (`k` = 1) every commit is flushed at once, as
    /// a plain group commit. Counting commits, rather than spacing flushes in time, starts
    /// a flush right after a commit: at twice the cap, one commit of each pair waits for
    /// the next and the other not at all.
    pub async fn run_flusher(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let spacing = Duration::from_millis(self.limits.min_flush_interval_ms);
        let cap = self.limits.max_flushes_per_sec;
        let period = (cap > 0).then(|| Duration::from_secs_f64(1.0 / cap as f64));
        let mut last: Option<(tokio::time::Instant, u64)> = None;
        let mut rate = 0.0f64;
        let mut allowance = flush_allowance(cap);
        self.open_when_there_is_room(&stop).await;
        loop {
            tokio::select! {
                () = self.dirty.notified() => {}
                () = stop.cancelled() => break,
            }
            if let Some(period) = period {
                let first = tokio::time::Instant::now();
                let since = last.map_or(0, |(_, c)| c);
                // The smoothed rate, unless the commits since the last flush started say
                // it has dropped (after a pause, a lone commit is flushed at once).
                let pending = self.commits.load(Ordering::Acquire).saturating_sub(since);
                let recent = last.map_or(0.0, |(t, _)| {
                    pending as f64 / first.duration_since(t).as_secs_f64().max(1e-6)
                });
                let over = rate > cap as f64 * 1.05;
                let rate = rate.min(recent);
                let wanted = flush_group(rate, cap);
                while self.commits.load(Ordering::Acquire).saturating_sub(since) < wanted {
                    tokio::select! {
                        () = self.dirty.notified() => {}
                        () = tokio::time::sleep_until(first + period) => break,
                        () = stop.cancelled() => break,
                    }
                }
                // Over the cap, flushes also draw on an allowance of `cap` a second. In a
                // burst the commits come in a rush after each flush (its acknowledgements
                // let more events in), so counting alone followed the flushes it caused:
                // 135-190 a second under a cap of 100. Paced over the cap, counting
                // already keeps to it, and what the allowance saves up absorbs the jitter.
                // (At the cap or under it, every commit is still flushed at once: an
                // allowance there would hold commits for the jitter.)
                if over {
                    let wait = allowance.wait(tokio::time::Instant::now().into_std());
                    pause(wait, &stop).await;
                    allowance.take(tokio::time::Instant::now().into_std());
                }
            }
            if let Some(next) = last.map(|(t, _)| t + spacing) {
                pause(
                    next.saturating_duration_since(tokio::time::Instant::now()),
                    &stop,
                )
                .await;
            }
            let now = tokio::time::Instant::now();
            let commits = self.commits.load(Ordering::Acquire);
            if let Some((t, c)) = last {
                // Commits per second between flush starts, smoothed over a few flushes.
                let secs = now.duration_since(t).as_secs_f64().max(1e-6);
                let seen = commits.saturating_sub(c) as f64 / secs;
                rate = if rate == 0.0 {
                    seen
                } else {
                    0.5 * rate + 0.5 * seen
                };
            }
            last = Some((now, commits));
            self.flush(&stop).await;
        }
        // On the way out, once: a store that fails now is left as it is on disk.
        match self.flush_once().await {
            Ok(()) => tracing::info!(flushes = self.flushes(), "state store closed"),
            Err(e) => {
                tracing::warn!(
                    "the state store's last flush failed: {}; the events of what it had not \
                     written stay with the broker, unacknowledged",
                    self.why_flush_failed(&e, "")
                );
                if let Ok(db) = self.db() {
                    let _ = tokio::task::spawn_blocking(move || let_sled_meet_the_disk_error(&db))
                        .await;
                }
            }
        }
    }

    /// For a store that met a full disk at start-up ([`StateStore::open`]): tries to open
    /// it, every 0.1 s doubling to 1 s (as a paused call is retried), until it opens (or
    /// `stop`); then it is available.
    async fn open_when_there_is_room(self: &Arc<Self>, stop: &tokio_util::sync::CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while !self.opened.load(Ordering::Acquire) {
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = stop.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(1));
            if self.reopen_off_thread().await.is_ok() && self.check_free_space().is_ok() {
                self.set_health(None);
            }
        }
    }

    /// [`StateStore::reopen`] on a blocking thread: why it did not work, if it did not
    /// (logged at debug level only: the callers try again, and say why in the health).
    async fn reopen_off_thread(self: &Arc<Self>) -> Result<(), String> {
        let store = self.clone();
        match tokio::task::spawn_blocking(move || store.reopen()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::debug!(error = %crate::failure::chain(&e), "state store not opened yet");
                Err(format!("{}{}", crate::failure::chain(&e), disk_hint(&e)))
            }
            Err(e) => {
                tracing::error!(error = %e, "opening the state store panicked");
                Err(format!("opening the state store panicked: {e}"))
            }
        }
    }

    /// Bytes the store takes on disk (sled's own count of its files).
    pub fn disk_bytes(&self) -> u64 {
        self.db()
            .ok()
            .and_then(|db| db.size_on_disk().ok())
            .unwrap_or(0)
    }

    /// A generation whose flush covers every commit made so far, and the flusher woken so
    /// that it comes (a flush that starts after this read takes every overlay as it is
    /// then, and one already under way finishes first).
    fn covering_flush(&self) -> u64 {
        let generation = self.next_flush.load(Ordering::Acquire);
        self.dirty.notify_one();
        generation
    }

    /// Waits for a flush that covers everything written so far, writes outside commits
    /// included (such as [`Namespace::forget_all`]'s); `true` once it is on disk.
    pub async fn flushed(&self) -> bool {
        self.durable(self.covering_flush()).await
    }

    /// Flushes done so far (successful or not).
    pub fn flushes(&self) -> u64 {
        self.next_flush.load(Ordering::Acquire) - 1
    }

    async fn flush_once(self: &Arc<Self>) -> Result<(), StateError> {
        // Taken before the commits are: a commit reads the generation after it is in its
        // namespace's overlay, so this flush covers every commit that read `generation`.
        let generation = self.next_flush.fetch_add(1, Ordering::AcqRel);
        let store = self.clone();
        let applied = tokio::task::spawn_blocking(move || store.apply_unapplied())
            .await
            .map_err(|e| StateError::Io(sled::Error::Io(std::io::Error::other(e))))??;
        self.db()?.flush_async().await?;
        // sled 0.34 makes its log durable with sync_file_range alone on Linux: the data
        // reaches the device, but not the file's size and extents (nor past the drive's
        // cache), so after a power cut the end of a grown log can be gone, with events
        // already acknowledged. fdatasync covers both.
        let log = self.dir.join("db");
        tokio::task::spawn_blocking(move || {
            let log = std::fs::OpenOptions::new().write(true).open(log)?;
            log.sync_data()?;
            // ext4 and XFS can answer a sync under way at their fault with success: a
            // change begun after it fails if the fault had come by then.
            crate::files::takes_writes_after_sync(&log).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "the file system refused a write after the flush ({e}): what the \
                         flush wrote may not be on disk, whatever fsync said"
                    ),
                )
            })
        })
        .await
        .map_err(|e| StateError::Io(sled::Error::Io(std::io::Error::other(e))))?
        .map_err(|e| StateError::Io(sled::Error::Io(e)))?;
        // ext4 meets an error by aborting its journal and only then turning read-only; an
        // fdatasync in between returns success for writes the aborted journal never
        // committed (measured: the state of acknowledged events gone after the error). A
        // file system that refuses a change after the fdatasync (above), or an ext4 error
        // counted since the database was opened (a disk mounted `errors=continue` keeps
        // its journal), fails the flush instead: the store reopens, and the commits run
        // again from their unacknowledged events.
        if let Some((count, then)) = &self.fs_errors {
            let then = then.load(Ordering::Acquire);
            if let Some(now) = count.read().filter(|now| *now > then) {
                return Err(StateError::FileSystemError {
                    dir: self.dir.display().to_string(),
                    then,
                    now,
                });
            }
        }
        applied.on_disk();
        self.flushed
            .send_modify(|f| f.upto = f.upto.max(generation));
        Ok(())
    }

    /// Applies every namespace's committed writes to sled, one batch per namespace (the
    /// group's commits in the order they were made). They stay in memory as well until
    /// [`Applied::on_disk`]: sled has them now, but only the flush's sync makes them
    /// durable, and a receipt must not look settled before ([`Namespace::receipt_pending`]).
    fn apply_unapplied(&self) -> Result<Applied, StateError> {
        let mut dirty =
            std::mem::take(&mut *self.unapplied.lock().unwrap_or_else(|p| p.into_inner()));
        let mut applied = Vec::with_capacity(dirty.len());
        while let Some(ns) = dirty.pop() {
            if let Err(e) = ns.apply_overlay() {
                // Still to be applied: keep them listed (a reopen clears them all).
                dirty.push(ns);
                self.unapplied
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .append(&mut dirty);
                return Err(e);
            }
            applied.push(ns);
        }
        Ok(Applied(applied))
    }

    /// Flushes until a flush succeeds (or `stop`). After a failure the store is reported
    /// unavailable, and reopened after a back-off (sled stops for good on an I/O error);
    /// the acknowledgements of the commits the flush should cover are held meanwhile.
    async fn flush(self: &Arc<Self>, stop: &tokio_util::sync::CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        // Why the store is closed, once a reopen failed: a flush then only finds it closed.
        let mut closed: Option<String> = None;
        loop {
            match self.flush_once_or_say_it_waits().await {
                Ok(()) => {
                    if self.health.borrow().is_some() && self.check_free_space().is_ok() {
                        self.set_health(None);
                    }
                    return;
                }
                Err(e) => {
                    let why = match (&e, &closed) {
                        (StateError::Reopening, Some(why)) => why.clone(),
                        _ => self.why_flush_failed(&e, "state flush failed: "),
                    };
                    self.set_health(Some(why));
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    closed = self
                        .reopen_off_thread()
                        .await
                        .err()
                        .map(|why| format!("the state store cannot be opened again: {why}"));
                }
            }
        }
    }

    /// Why a flush failed with `e`, to say (after `prefix`): for a store that is
    /// closed, the reason said already (a failed reopen's, a full disk's), which "not open"
    /// would only hide.
    fn why_flush_failed(&self, e: &StateError, prefix: &str) -> String {
        match (e, self.health.borrow().clone()) {
            (StateError::Reopening, Some(said)) => said,
            _ => format!("{prefix}{}{}", crate::failure::chain(e), disk_hint(e)),
        }
    }

    /// [`Self::flush_once`]; a flush the disk keeps waiting for [`SLOW_FLUSH`] or more
    /// (a stalled or failing SD card) makes the store unavailable in the health it reports
    /// until a flush succeeds: nothing fails then, so nothing else would say why the
    /// functions that write state stopped.
    async fn flush_once_or_say_it_waits(self: &Arc<Self>) -> Result<(), StateError> {
        let slow = Duration::from_millis(self.slow_flush_ms.load(Ordering::Relaxed));
        if slow.is_zero() {
            return self.flush_once().await;
        }
        let flush = self.flush_once();
        tokio::pin!(flush);
        let started = Instant::now();
        let mut asked = started;
        loop {
            tokio::select! {
                done = &mut flush => return done,
                () = tokio::time::sleep(slow) => {}
            }
            // A timer that woke a second or more late found the process itself stopped
            // (SIGSTOP, a paused VM, a suspend), not the disk: the flush gets another
            // period from now. A probe's 40 s SIGSTOP read as a stalled disk (2026-12-08).
            if asked.elapsed() < slow + Duration::from_secs(1) {
                break;
            }
            asked = Instant::now();
        }
        self.set_health(Some(format!(
            "a flush has waited {} s for the disk of {} (stalled or failing?)",
            slow.as_secs(),
            self.dir.display()
        )));
        let done = flush.await;
        tracing::info!(
            took_ms = started.elapsed().as_millis() as u64,
            ok = done.is_ok(),
            "the slow flush is over"
        );
        done
    }

    /// For tests on tokio's paused clock: its time jumps to the next timer whenever every
    /// task waits, also while sled writes on a blocking thread, so the slow-flush timer
    /// would fire at once and move the clock they measure by 5 s.
    #[cfg(test)]
    fn without_slow_flush_reports(&self) {
        self.slow_flush_ms.store(0, Ordering::Relaxed);
    }

    /// Waits until the commit that returned `generation` is on disk: `true`; `false` if it
    /// was lost with a store that had to be reopened (its event must run again).
    pub async fn durable(&self, generation: u64) -> bool {
        let mut rx = self.flushed.subscribe();
        let settled = rx
            .wait_for(|f| {
                f.upto >= generation || f.lost.iter().any(|(a, b)| (*a..=*b).contains(&generation))
            })
            .await;
        match settled {
            Ok(f) => !f.lost.iter().any(|(a, b)| (*a..=*b).contains(&generation)),
            // The store is gone (shutting down): not durable as far as anyone knows.
            Err(_) => false,
        }
    }
}

/// Makes what sled wrote as it opened the store durable: its `conf` (the storage
/// parameters, written at every open without an fsync) and the folders that hold its
/// files. Without it a power cut within half a minute of a start (before the kernel wrote
/// the file back) left `conf` empty, measured in every run of the power-cut test; sled
/// then warns `empty/corrupt configuration file found` and writes it again. Once per open.
/// [`StateError::Damaged`]'s text: what to move aside to start again. A damaged snapshot
/// alone was told as the whole store (a probe, 2026-12-08), and moving the store aside
/// throws every function's state away where moving the snapshot aside loses nothing.
fn damaged(dir: &str, snapshot: Option<&Path>) -> String {
    let why = "the disk lost writes it had confirmed (a power cut on a card that does not \
               keep its promises, or a failing card)";
    let whole = format!(
        "move it aside: `mv {dir} {dir}.damaged` (every function's state and receipts are \
         then gone; the broker still holds the events not yet acknowledged)"
    );
    match snapshot {
        Some(snap) => {
            let name = snap.file_name().unwrap_or_default().to_string_lossy();
            format!(
                "the state store in {dir} did not open: its snapshot {} is damaged: {why}. \
                 The snapshot is an index that the store builds again from its log: move only \
                 it aside, `mv {} {dir}.{name}.damaged`, and start again. If the store is then \
                 still damaged, its log is too: to start again with empty state, {whole}",
                snap.display(),
                snap.display(),
            )
        }
        None => format!(
            "the state store in {dir} is damaged, so its data cannot be trusted: {why}. To start \
             again with empty state, {whole}"
        ),
    }
}

/// The store's newest snapshot (the one sled reads) if it fails its own checksum: sled
/// writes a snapshot's bytes, their length (8 bytes) and their CRC-32 (4 bytes, little
/// endian).
fn damaged_snapshot(dir: &Path) -> Option<PathBuf> {
    let newest = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("snap."))
        })
        .max()?;
    let bytes = std::fs::read(&newest).ok()?;
    let whole = bytes.len() > 12 && {
        let (body, tail) = bytes.split_at(bytes.len() - 12);
        crc32fast::hash(body).to_le_bytes() == tail[8..]
    };
    (!whole).then_some(newest)
}

/// Removes the snapshot files sled did not finish. sled writes a snapshot to
/// `snap.<lsn>.generating` and renames it to `snap.<lsn>` once it is whole, but at an open
/// it takes the last name in order among both kinds as the snapshot to read: one left by a
/// write that failed (a disk full as the agent started, in a probe, 2026-12-08) sorts after
/// its finished kin, reads as corrupt, and every open after it failed, the store called
/// damaged, and the user told to move it aside. Such a file is never a whole snapshot (the
/// rename makes it one), and the snapshot before it stays until a newer one is whole: the
/// store loses nothing without it.
fn remove_unfinished_snapshots(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            tracing::info!(
                file = %entry.path().display(),
                "removing a state store snapshot that was never finished (a full disk, or a crash, while it was written)"
            );
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

fn sync_store_files(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir.join("conf"))?.sync_all()?;
    std::fs::File::open(dir)?.sync_all()?;
    if let Some(parent) = dir.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Waits `wait` (or until `stop`), and not at all for none. A tokio timer fires at a tick of
/// its clock's millisecond wheel, so even `sleep(Duration::ZERO)`, or a `sleep_until` of a
/// time already past, waits for the next tick: 1.1 ms before every flush, measured, in
/// every commit's latency, where the allowance or the spacing had nothing to wait for.
async fn pause(wait: Duration, stop: &tokio_util::sync::CancellationToken) {
    if !wait.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => {}
        }
    }
}

/// How many pending commits a flush waits for at `rate` commits a second under a cap of
/// `cap` flushes a second: the rate over the cap, less a tenth, rounded up (a group of `k`
/// until the rate passes `k / 0.9` times the cap: 6 up to 333 commits a second under a cap
/// of 50). The estimate of a paced rate jitters by a few percent from flush to
/// flush; rounded up at once (less an absolute 0.05, as it was), 300 commits a second
/// under a cap of 50 made a group of 7 at every upward jitter instead of 6, and a median
/// commit wait of 10 ms instead of 8.3. Up to a tenth over the cap, the allowance holds
/// the flushes to it. At the cap or under it, every commit is flushed at once.
fn flush_group(rate: f64, cap: u64) -> u64 {
    ((rate / cap as f64 * 0.9).ceil() as u64).max(1)
}

/// Flushes over the cap (`state.max_flushes_per_sec`): `cap` a second, with a tenth of a
/// second's worth saved up.
fn flush_allowance(cap: u64) -> crate::rate::TokenBucket {
    crate::rate::TokenBucket::with_burst(u32::try_from(cap).unwrap_or(u32::MAX), cap as f64 / 10.0)
}

/// Keys and their values, in key order.
pub type Entries = Vec<(String, Vec<u8>)>;

/// How many of the newest receipts of earlier runs may answer a resend whose first copy
/// came before this run (incarnation 0). Such a resend can only be of a message the last
/// run had not had acknowledged, and an intake holds at most
/// [`crate::mqtt::ack::MAX_UNACKED`] of those: the window allows for that many in each of
/// four runs in a row that stopped before their resends were acknowledged. An older
/// receipt is of a packet id the broker has used again since, for a newer message: a
/// broker marks DUP=1 on far more than it had in flight (Mosquitto 2.0.11 on thousands of
/// queued messages after a reconnect), and with any receipt of the id answering, a stream
/// of one payload (a button) was counted up to the packet ids' wrap and then never again:
/// 65,536 of 135,001 (a probe, 2026-12-08).
pub const REPLAY_WINDOW: usize = 4 * crate::mqtt::ack::MAX_UNACKED;

/// What [`Namespace::count`] finds in a tree.
struct Counted {
    keys: u64,
    bytes: u64,
    last: u64,
    replay_floor: u64,
}

/// One function's keys.
pub struct Namespace {
    store: Arc<StateStore>,
    /// Its tree's name.
    name: String,
    /// No incarnation of this run of the agent is smaller, and every receipt it had when
    /// it was opened is ([`Receipt::answers`]). Raised when its tree comes later (a store
    /// opened only once the disk had room).
    life: AtomicU64,
    /// The oldest incarnation among the [`REPLAY_WINDOW`] newest receipts of earlier runs
    /// (0 while there are fewer): only those answer a resend whose first copy came
    /// before this run ([`Receipt::answers`]).
    replay_floor: AtomicU64,
    /// `None` while the store is being reopened.
    tree: RwLock<Option<sled::Tree>>,
    /// The guest's keys, committed.
    keys: AtomicU64,
    /// The guest's keys' and values' bytes, committed.
    bytes: AtomicU64,
    /// Commits into it since it was opened, counted under its gate: a copy of its keys
    /// knows which commits it holds ([`Namespace::snapshot`]).
    commits: AtomicU64,
    gate: Gate,
    overlay: Mutex<Overlay>,
}

/// The namespaces whose commits a flush has applied to sled, still held in their
/// overlays' `applying` until the flush has synced them.
#[must_use = "applied commits stay in memory until `on_disk`"]
struct Applied(Vec<Arc<Namespace>>);

impl Applied {
    /// The flush that applied them has synced them: drop them from memory.
    fn on_disk(self) {
        for ns in self.0 {
            ns.overlay().applying.clear();
        }
    }
}

/// A namespace's commits not durable yet. Reads look here first: `new`, then `applying`,
/// then the tree. The flusher moves `new` to `applying` and applies that to sled, and
/// clears it only once its sync is done: a read never misses a commit, and a commit
/// still here is not on disk.
#[derive(Default)]
struct Overlay {
    /// Committed since the flusher last took them (`None`: removed).
    new: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Being applied by the flusher.
    applying: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Overlay {
    /// The committed value of `key` if the overlay has it: `Some(None)` if removed.
    fn get(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        self.new
            .get(key)
            .or_else(|| self.applying.get(key))
            .cloned()
    }

    /// The entries with `prefix`, `new` over `applying`.
    fn scan(&self, prefix: &[u8]) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        let mut out = BTreeMap::new();
        for map in [&self.applying, &self.new] {
            for (k, v) in map.range(prefix.to_vec()..) {
                if !k.starts_with(prefix) {
                    break;
                }
                out.insert(k.clone(), v.clone());
            }
        }
        out
    }
}

/// Most bytes of outputs a receipt keeps once its message is finished. A receipt lives
/// until its packet id is used again (up to 65,535 messages later on Mosquitto); larger
/// outputs are kept only until the broker has confirmed them and the message is
/// acknowledged ([`Namespace::settled`]), which is as long as a resend could need them.
pub const RECEIPT_MAX_OUTPUT_BYTES: usize = 4096;

/// Whether `outputs` are more than a finished message's receipt keeps
/// ([`RECEIPT_MAX_OUTPUT_BYTES`]).
pub fn large_outputs(outputs: &[crate::event::Outbound]) -> bool {
    let size: usize = outputs
        .iter()
        .map(|o| o.topic.len() + o.payload.len())
        .sum();
    size > RECEIPT_MAX_OUTPUT_BYTES
}

/// What the agent keeps of a QoS 1/2 message whose call wrote state: enough to know a
/// redelivery of it, and the outputs to publish again then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The packet id on the function's intake session.
    pub pkid: u16,
    /// Which delivery of the packet id it is ([`crate::event::next_incarnation`]): a
    /// message and its resends share one; another message on the same id has another.
    pub incarnation: u64,
    /// Checksum of the topic and payload ([`crate::event::checksum`]).
    pub checksum: u32,
    /// The call's outputs.
    pub outputs: Vec<crate::event::Outbound>,
}

/// How a commit went.
#[derive(Debug, PartialEq, Eq)]
pub enum Committed {
    /// Nothing to write.
    Nothing,
    /// Written.
    Pending {
        /// The flush that makes it durable ([`StateStore::durable`]).
        generation: u64,
        /// Its number among the namespace's commits since it was opened.
        seq: u64,
    },
    /// The store already had a receipt for the message: another copy of it committed
    /// first, and this call's writes were dropped. With the flush generation that makes
    /// that other copy's commit durable, if it is not on disk yet.
    Duplicate(Option<u64>),
}

impl Receipt {
    fn key(pkid: u16) -> Vec<u8> {
        let mut k = RECEIPT_PREFIX.to_vec();
        k.extend_from_slice(&pkid.to_be_bytes());
        k
    }

    /// checksum, incarnation (8 bytes), then per output: topic length, topic, payload length, payload, qos, retain
    /// (lengths as 4-byte big-endian).
    fn encode(&self) -> Vec<u8> {
        let mut v = self.checksum.to_be_bytes().to_vec();
        v.extend_from_slice(&self.incarnation.to_be_bytes());
        for o in &self.outputs {
            for part in [o.topic.as_bytes(), &o.payload] {
                v.extend_from_slice(&(part.len() as u32).to_be_bytes());
                v.extend_from_slice(part);
            }
            v.extend_from_slice(&[o.qos, u8::from(o.retain)]);
        }
        v
    }

    /// The incarnation of an encoded receipt, without decoding the rest.
    fn incarnation_in(v: &[u8]) -> Option<u64> {
        Some(u64::from_be_bytes(v.get(4..12)?.try_into().ok()?))
    }

    fn decode(pkid: u16, mut v: &[u8]) -> Option<Self> {
        fn take<'a>(v: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            let (head, rest) = (v.get(..n)?, v.get(n..)?);
            *v = rest;
            Some(head)
        }
        fn len(v: &mut &[u8]) -> Option<usize> {
            Some(u32::from_be_bytes(take(v, 4)?.try_into().ok()?) as usize)
        }
        let checksum = u32::from_be_bytes(take(&mut v, 4)?.try_into().ok()?);
        let incarnation = u64::from_be_bytes(take(&mut v, 8)?.try_into().ok()?);
        let mut outputs = Vec::new();
        while !v.is_empty() {
            let n = len(&mut v)?;
            let topic = String::from_utf8(take(&mut v, n)?.to_vec()).ok()?;
            let n = len(&mut v)?;
            let payload = take(&mut v, n)?.to_vec();
            let flags = take(&mut v, 2)?;
            outputs.push(crate::event::Outbound {
                topic,
                payload,
                qos: flags[0],
                retain: flags[1] != 0,
            });
        }
        Some(Self {
            pkid,
            incarnation,
            checksum,
            outputs,
        })
    }

    /// Whether this receipt answers for the message with `checksum` delivered as
    /// `incarnation`: the same delivery (a resend shares its first copy's incarnation),
    /// or, for a resend whose first copy may have come before this life (`from_before`:
    /// the agent restarted since), a delivery of an earlier life that is among its newest
    /// (`earlier`: [`Namespace::replay_floor`] up to this life).
    fn answers(
        &self,
        checksum: u32,
        incarnation: u64,
        from_before: bool,
        earlier: &std::ops::Range<u64>,
    ) -> bool {
        self.checksum == checksum
            && (self.incarnation == incarnation
                || (from_before && earlier.contains(&self.incarnation)))
    }
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
    fn tree(&self) -> Result<sled::Tree, StateError> {
        let tree = self.tree.read().unwrap_or_else(|p| p.into_inner());
        tree.clone().ok_or(StateError::Reopening)
    }

    fn overlay(&self) -> std::sync::MutexGuard<'_, Overlay> {
        self.overlay.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lists this namespace for the next flush if `overlay` (its own, locked) has no
    /// writes yet; call before adding some.
    fn to_be_applied(self: &Arc<Self>, overlay: &Overlay) {
        if overlay.new.is_empty() {
            self.store
                .unapplied
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(self.clone());
        }
    }

    /// The committed value of `key` (applied to sled or not).
    fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        if let Some(v) = self.overlay().get(key) {
            return Ok(v);
        }
        Ok(self.tree()?.get(key)?.map(|v| v.to_vec()))
    }

    /// At least `want` of the guest's committed entries with `prefix` (all of them if there
    /// are fewer), in order: what sled has, with the overlay over it. Receipts are left out.
    fn scan(&self, prefix: &[u8], want: usize) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, StateError> {
        let mut overlay = self.overlay().scan(prefix);
        overlay.retain(|k, _| !k.starts_with(RECEIPT_PREFIX));
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let tree = self.tree()?;
        // Guest keys never begin with NUL; receipts (up to 65,535) all do.
        let entries = if prefix.is_empty() {
            tree.range::<&[u8], _>(&[1u8][..]..)
        } else {
            tree.scan_prefix(prefix)
        };
        for item in entries {
            let (k, v) = item?;
            if !overlay.contains_key(k.as_ref()) {
                merged.insert(k.to_vec(), v.to_vec());
            }
            // The overlay may remove entries: read a little past what is wanted.
            if merged.len() > want.saturating_add(overlay.len()) {
                break;
            }
        }
        merged.extend(overlay.into_iter().filter_map(|(k, v)| Some((k, v?))));
        Ok(merged)
    }

    /// Applies the commits in the overlay's `new` to sled in one batch (they stay in
    /// `applying` until the flush has synced them: [`Applied::on_disk`]).
    fn apply_overlay(&self) -> Result<(), StateError> {
        let tree = self.tree()?;
        let batch = {
            let mut o = self.overlay();
            if o.new.is_empty() {
                return Ok(());
            }
            let new = std::mem::take(&mut o.new);
            // Empty after the last flush's sync; a failed apply left it in place (the
            // reopen that follows clears it): apply it again, under the new.
            o.applying.extend(new);
            let mut batch = sled::Batch::default();
            for (k, v) in &o.applying {
                match v {
                    Some(v) => batch.insert(k.as_slice(), v.as_slice()),
                    None => batch.remove(k.as_slice()),
                }
            }
            batch
        };
        tree.apply_batch(batch)?;
        Ok(())
    }

    /// Keys and bytes of the guest's own entries in `tree` (receipts are the agent's), the
    /// largest incarnation of its receipts (0 if none), and the floor of the replay window
    /// among the receipts below `before` ([`REPLAY_WINDOW`]).
    fn count(tree: &sled::Tree, before: u64) -> Result<Counted, StateError> {
        use std::cmp::Reverse;
        let (mut keys, mut bytes, mut last) = (0, 0, 0);
        let mut newest = std::collections::BinaryHeap::with_capacity(REPLAY_WINDOW + 1);
        for item in tree {
            let (k, v) = item?;
            if k.starts_with(RECEIPT_PREFIX) {
                let incarnation = Receipt::incarnation_in(&v).unwrap_or(0);
                last = last.max(incarnation);
                if incarnation < before {
                    newest.push(Reverse(incarnation));
                    if newest.len() > REPLAY_WINDOW {
                        newest.pop();
                    }
                }
            } else {
                keys += 1;
                bytes += (k.len() + v.len()) as u64;
            }
        }
        let replay_floor = match newest.peek() {
            Some(Reverse(oldest)) if newest.len() == REPLAY_WINDOW => *oldest,
            _ => 0,
        };
        Ok(Counted {
            keys,
            bytes,
            last,
            replay_floor,
        })
    }

    /// A transaction for one call with no deadline (tools and tests).
    pub fn begin(self: &Arc<Self>) -> Txn {
        self.begin_until(None)
    }

    /// [`Namespace::begin_until`] for a call on an instance made in the store's `epoch`
    /// ([`StateStore::epoch`]): if the store has been reopened since, the commit fails
    /// with [`StateError::Reopening`] (the instance's memory may run ahead of the store).
    pub fn begin_in(self: &Arc<Self>, deadline: Option<Instant>, epoch: u64) -> Txn {
        let mut txn = self.begin_until(deadline);
        txn.epoch = Some(epoch);
        txn
    }

    /// A transaction for one call that waits for the namespace's gate at most until
    /// `deadline` (the call's own deadline).
    pub fn begin_until(self: &Arc<Self>, deadline: Option<Instant>) -> Txn {
        Txn {
            ns: self.clone(),
            writes: BTreeMap::new(),
            pending_bytes: 0,
            bytes_change: 0,
            deadline,
            holds_gate: false,
            waited: Duration::ZERO,
            epoch: None,
        }
    }

    /// Keys stored in the namespace (committed).
    pub fn keys(&self) -> u64 {
        self.keys.load(Ordering::Acquire)
    }

    /// Bytes of the keys and values stored in the namespace (committed).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    /// The receipt of the message with `pkid` if the store has one for the same topic and
    /// payload (`checksum`) and the same delivery (`incarnation`, or with `from_before` one
    /// of an earlier run: see [`Receipt::answers`]): its effects are already committed.
    ///
    /// # Errors
    /// [`StateError::Io`] on a database error.
    pub fn receipt(
        &self,
        pkid: u16,
        checksum: u32,
        incarnation: u64,
        from_before: bool,
    ) -> Result<Option<Receipt>, StateError> {
        let Some(v) = self.read(&Receipt::key(pkid))? else {
            return Ok(None);
        };
        let earlier = self.life.load(Ordering::Acquire);
        let earlier = self.replay_floor.load(Ordering::Acquire)..earlier;
        Ok(Receipt::decode(pkid, &v)
            .filter(|r| r.answers(checksum, incarnation, from_before, &earlier)))
    }

    /// For a receipt of `pkid` that is committed but not flushed yet: a flush generation
    /// that makes it durable ([`StateStore::durable`]), with the flusher woken so that the
    /// flush comes. `None` once it is on disk (or if there is none): read it after
    /// [`Namespace::receipt`] found it, so that a flush in between only makes it `None`.
    /// A resend must not be acknowledged on a receipt that a power cut could still undo.
    pub fn receipt_pending(&self, pkid: u16) -> Option<u64> {
        let pending = matches!(self.overlay().get(&Receipt::key(pkid)), Some(Some(_)));
        pending.then(|| self.store.covering_flush())
    }

    /// The message of `pkid`, delivery `incarnation`, is finished: its outputs confirmed
    /// by the broker, its acknowledgement released. A receipt of it that kept outputs over
    /// [`RECEIPT_MAX_OUTPUT_BYTES`] is rewritten without them, with the next flush (no
    /// flush of its own: one lost to a crash only leaves them until the packet id is used
    /// again); it still answers the message's resends, which a lost acknowledgement can
    /// still bring. A receipt of another delivery (the id used again) is left alone.
    pub fn settled(self: &Arc<Self>, pkid: u16, incarnation: u64) {
        let key = Receipt::key(pkid);
        let mut o = self.overlay();
        let current = match o.get(&key) {
            Some(v) => v,
            None => match self.tree().map(|t| t.get(&key)) {
                Ok(Ok(v)) => v.map(|v| v.to_vec()),
                // Not readable now (the store is being reopened): the outputs stay.
                _ => return,
            },
        };
        let Some(v) = current else { return };
        if v.len() <= 12 || Receipt::incarnation_in(&v) != Some(incarnation) {
            return;
        }
        self.to_be_applied(&o);
        o.new.insert(key, Some(v[..12].to_vec()));
    }

    /// The broker did not keep the session: every receipt is void (packet ids start over).
    ///
    /// # Errors
    /// [`StateError::Io`] on a database error.
    pub fn forget_all(self: &Arc<Self>) -> Result<(), StateError> {
        {
            // Receipts being applied are removed by the next batch, after them.
            let mut o = self.overlay();
            let receipts: Vec<Vec<u8>> = o.scan(RECEIPT_PREFIX).into_keys().collect();
            if !receipts.is_empty() {
                self.to_be_applied(&o);
            }
            for k in receipts {
                o.new.insert(k, None);
            }
        }
        let tree = self.tree()?;
        for key in tree.scan_prefix(RECEIPT_PREFIX).keys() {
            tree.remove(key?)?;
        }
        Ok(())
    }

    /// The namespace's keys (receipts aside) and how many commits they hold (the
    /// [`Committed::Pending`] `seq` of the last), read under its gate: one consistent
    /// state, placed exactly among its commits.
    ///
    /// # Errors
    /// [`StateError`] if it cannot be read.
    pub fn snapshot(self: &Arc<Self>) -> Result<(Entries, u64), StateError> {
        let mut txn = self.begin();
        let keys = txn.list("", u32::MAX)?;
        // The gate is still held: no commit comes between the keys and the count.
        Ok((keys, self.commits.load(Ordering::Acquire)))
    }

    /// Makes this namespace's keys `keys` (receipts aside): a shadow starts from a
    /// [snapshot](Namespace::snapshot) of the primary's state, and its writes never reach
    /// it. In transactions of a hundred keys (a call's limits apply to each), so not
    /// atomic: done while no call runs on it.
    ///
    /// # Errors
    /// [`StateError`] if it cannot be read or a part cannot be committed.
    pub fn replace(self: &Arc<Self>, keys: &[(String, Vec<u8>)]) -> Result<(), StateError> {
        const PART: usize = 100;
        let stale = self.begin().list("", u32::MAX)?;
        for part in stale.chunks(PART) {
            let mut txn = self.begin();
            for (k, _) in part {
                txn.delete(k)?;
            }
            txn.commit(None)?;
        }
        for part in keys.chunks(PART) {
            let mut txn = self.begin();
            for (k, v) in part {
                txn.set(k, v.clone())?;
            }
            txn.commit(None)?;
        }
        Ok(())
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
    /// How much the namespace's stored bytes change if the call commits.
    bytes_change: i64,
    deadline: Option<Instant>,
    holds_gate: bool,
    /// How long the call waited for the gate.
    waited: Duration,
    /// The store's epoch when the instance was made, or at the call's first access: it
    /// may not commit into a store reopened since (what it read or remembers may be lost).
    epoch: Option<u64>,
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
            let asked = Instant::now();
            self.ns.gate.enter(self.deadline)?;
            self.waited = asked.elapsed();
            self.holds_gate = true;
            if self.epoch.is_none() {
                self.epoch = Some(self.ns.store.epoch.load(Ordering::Acquire));
            }
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
        if key.starts_with('\0') {
            return Err(StateError::Limit(
                "keys may not begin with a NUL character (the agent's own keys do)".into(),
            ));
        }
        Ok(())
    }

    /// What `key` takes in the store as this call sees it (key plus value; 0 if absent).
    fn size_now(&self, key: &str) -> Result<i64, StateError> {
        let value_len = match self.writes.get(key) {
            Some(w) => w.as_ref().map(Vec::len),
            None => self.ns.read(key.as_bytes())?.map(|v| v.len()),
        };
        Ok(value_len.map_or(0, |n| (key.len() + n) as i64))
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
        self.ns.read(key.as_bytes())
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
                let stored = self.ns.read(k.as_bytes())?.is_some();
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
        let (before, size) = (self.size_now(key)?, (key.len() + value.len()) as i64);
        let budget = self.limits().max_bytes_per_function;
        let after =
            self.ns.bytes.load(Ordering::Acquire) as i64 + self.bytes_change - before + size;
        if after > budget as i64 {
            // The write is refused; the call may go on.
            return Err(StateError::Limit(format!(
                "the function's state would reach {after} bytes, over \
                 state.max_bytes_per_function ({budget})"
            )));
        }
        self.pend(key, Some(value))?;
        self.bytes_change += size - before;
        Ok(())
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
        let before = self.size_now(key)?;
        self.pend(key, None)?;
        self.bytes_change -= before;
        Ok(())
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
    pub fn list(&mut self, prefix: &str, limit: u32) -> Result<Entries, StateError> {
        self.enter()?;
        let mut merged: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let limit = limit as usize;
        // Our own writes may remove entries; read a little past the limit.
        for (k, v) in self.ns.scan(prefix.as_bytes(), limit + self.writes.len())? {
            if k.starts_with(RECEIPT_PREFIX) {
                continue;
            }
            let k = String::from_utf8_lossy(&k).into_owned();
            if !self.writes.contains_key(&k) {
                merged.insert(k, v);
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

    /// How long the call waited for the namespace's gate (for the other calls of the
    /// function ahead of it).
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Whether the call wrote anything.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Applies the writes atomically, with `receipt` (for a QoS 1/2 message) when there
    /// are any. Nothing is applied when the store is unavailable, or when the store already
    /// has a receipt for the same message ([`Committed::Duplicate`]).
    ///
    /// # Errors
    /// [`StateError::Full`] below the free-space reserve, [`StateError::Io`] if sled
    /// refuses the batch; nothing is applied then.
    pub fn commit(mut self, receipt: Option<&Receipt>) -> Result<Committed, StateError> {
        if self.writes.is_empty() {
            return Ok(Committed::Nothing);
        }
        let store = self.ns.store.clone();
        store.check_free_space()?;
        let result = self.apply(receipt);
        if let Err(e) = &result
            && e.is_unavailable()
        {
            store.set_health(Some(format!("state commit failed: {e}")));
            // The flusher finds the store failed and reopens it.
            store.dirty.notify_one();
        }
        result
    }

    fn apply(&mut self, receipt: Option<&Receipt>) -> Result<Committed, StateError> {
        // A writing call holds the gate: no other copy of the message commits meanwhile.
        self.enter()?;
        if let Some(r) = receipt
            && self
                .ns
                .receipt(r.pkid, r.checksum, r.incarnation, false)?
                .is_some()
        {
            return Ok(Committed::Duplicate(self.ns.receipt_pending(r.pkid)));
        }
        // A store being reopened takes no commit (and says so now, not at the flush).
        self.ns.tree()?;
        let bytes_after = self.ns.bytes.load(Ordering::Acquire) as i64 + self.bytes_change;
        let mut added: i64 = 0;
        for (k, v) in &self.writes {
            let existed = self.ns.read(k.as_bytes())?.is_some();
            added += match v {
                Some(_) => i64::from(!existed),
                None => -i64::from(existed),
            };
        }
        let store = self.ns.store.clone();
        let generation = {
            let mut overlay = self.ns.overlay();
            // Under the overlay's lock, which a reopen takes to clear it after bumping the
            // epoch: a commit either lands before (and is marked lost with it) or is refused.
            if self.epoch != Some(store.epoch.load(Ordering::Acquire)) {
                return Err(StateError::Reopening);
            }
            self.ns.to_be_applied(&overlay);
            for (k, v) in std::mem::take(&mut self.writes) {
                overlay.new.insert(k.into_bytes(), v);
            }
            if let Some(r) = receipt {
                overlay.new.insert(Receipt::key(r.pkid), Some(r.encode()));
            }
            // Read once the writes are in: the flush that takes this generation starts
            // (and takes the overlays) later, so it covers them.
            store.next_flush.load(Ordering::Acquire)
        };
        if added >= 0 {
            self.ns
                .keys
                .fetch_add(added.unsigned_abs(), Ordering::AcqRel);
        } else {
            self.ns
                .keys
                .fetch_sub(added.unsigned_abs(), Ordering::AcqRel);
        }
        self.ns
            .bytes
            .store(bytes_after.max(0) as u64, Ordering::Release);
        // Still under the gate: a snapshot sees the writes and their number together.
        let seq = self.ns.commits.fetch_add(1, Ordering::AcqRel) + 1;
        store.commits.fetch_add(1, Ordering::Release);
        store.dirty.notify_one();
        Ok(Committed::Pending { generation, seq })
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

    /// A snapshot sled did not finish (a full disk as it opened) made every later open fail
    /// as damaged; it is removed first, and the store opens with everything in it.
    #[test]
    fn an_unfinished_snapshot_does_not_make_the_store_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateStore::open_db(&dir.path().join("state"), &StateConfig::default()).unwrap();
        db.insert("k", "v").unwrap();
        db.flush().unwrap();
        drop(db);
        // Empty, and named after any finished one: what the failed write left.
        let state = dir.path().join("state");
        std::fs::write(state.join("snap.FFFFFFFFFFFFFFFF.generating"), b"").unwrap();
        let reopened = StateStore::open_db(&state, &StateConfig::default())
            .expect("opens, without the unfinished snapshot");
        assert_eq!(reopened.get("k").unwrap().as_deref(), Some(&b"v"[..]));
        assert!(!state.join("snap.FFFFFFFFFFFFFFFF.generating").exists());
    }

    /// sled lets go of its lock a moment after the last handle (its IO threads drop the
    /// files), so a store opened again in the same process found it still held now and
    /// then; and a second agent on the same data directory holds it for good. Opening
    /// waits for a lock that is given back, and names one that is not.
    #[test]
    fn opening_waits_for_the_lock_and_names_a_holder_that_keeps_it() {
        use fs2::FileExt;
        let dir = tempfile::tempdir().unwrap();
        drop(store(dir.path()));
        // Held throughout: named after the wait.
        let held = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.path().join("state").join("db"))
            .unwrap();
        held.lock_exclusive().unwrap();
        let started = Instant::now();
        let err = wait_for_lock(&dir.path().join("state"), Duration::from_millis(100))
            .expect_err("the lock is held");
        assert!(started.elapsed() >= Duration::from_millis(100));
        let said = err.to_string();
        assert!(
            said.contains("in use by another process") && said.contains("state"),
            "{said}"
        );
        // Given back during the wait: the store opens.
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            drop(held);
        });
        let s = store(dir.path());
        release.join().unwrap();
        assert!(s.namespace("f").is_ok());
        // No store yet: nothing to wait for.
        let fresh = tempfile::tempdir().unwrap();
        wait_for_lock(&fresh.path().join("state"), Duration::ZERO).unwrap();
    }

    /// sled builds about 40 metrics histograms of 512 KiB when a store opens, for metrics
    /// its default `no_metrics` never records; filled element by element they were 21 MB of
    /// the agent's 35 MB idle RSS in a 512 MB arm64 VM. The workspace turns on sled's
    /// `miri_optimizations`, which allocates them zeroed, so that nothing of them is
    /// resident. Measured in a child process running only this test, because sled's
    /// metrics are a process-wide global that another test may have built already.
    #[cfg(target_os = "linux")]
    #[test]
    fn opening_the_store_leaves_sleds_unused_metrics_unresident() {
        const CHILD: &str = "EDGE_AGENT_TEST_SLED_RSS_CHILD";
        fn rss_kib() -> u64 {
            std::fs::read_to_string("/proc/self/status")
                .unwrap()
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap()
        }
        if std::env::var_os(CHILD).is_some() {
            let dir = tempfile::tempdir().unwrap();
            let before = rss_kib();
            let _store = store(dir.path());
            println!("sled-rss-delta-kib={}", rss_kib().saturating_sub(before));
            return;
        }
        let name = concat!(
            module_path!(),
            "::opening_the_store_leaves_sleds_unused_metrics_unresident"
        );
        // Test names leave out the crate's name.
        let name = name.split_once("::").map_or(name, |(_, rest)| rest);
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let delta: u64 = text
            .lines()
            // libtest prints "test NAME ... " on the same line, before the measurement.
            .find_map(|l| l.split("sled-rss-delta-kib=").nth(1))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("the child test printed no measurement: {text}"));
        assert!(
            delta < 8 * 1024,
            "opening a state store made {delta} KiB resident (1.4 MB expected): sled fills its \
             metrics histograms again (21 MB); is sled's `miri_optimizations` feature still on \
             in the workspace Cargo.toml?"
        );
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
        assert!(matches!(t.commit(None), Ok(Committed::Pending { .. })));
        assert_eq!(ns.begin().get("n").ok().flatten(), Some(b"5".to_vec()));
    }

    /// A function added while the store is closed after a disk error (a reload during the
    /// fault) waits like the others, and gets its tree when the store opens again: the
    /// reload used to be refused ("cannot open its state").
    #[test]
    fn a_namespace_asked_for_while_the_store_is_closed_waits_for_its_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        s.namespace("old").unwrap();
        // The store's folder turns into something sled cannot open: the reopen fails and
        // the store stays closed.
        let (state, aside) = (dir.path().join("state"), dir.path().join("aside"));
        std::fs::rename(&state, &aside).unwrap();
        std::fs::write(&state, b"not a folder").unwrap();
        assert!(s.reopen().is_err());
        let added = s
            .namespace("added")
            .expect("a namespace while the store is closed");
        assert!(matches!(added.begin().get("n"), Err(StateError::Reopening)));
        std::fs::remove_file(&state).unwrap();
        std::fs::rename(&aside, &state).unwrap();
        s.reopen().unwrap();
        let mut t = added.begin();
        assert_eq!(t.increment("n", 1).ok(), Some(1));
        assert!(matches!(t.commit(None), Ok(Committed::Pending { .. })));
        assert_eq!(added.begin().get("n").ok().flatten(), Some(b"1".to_vec()));
    }

    /// A shadow's copy of the state must know which commits it holds: taken while calls
    /// commit, each snapshot's count is exactly the commits its keys show.
    #[test]
    fn a_snapshot_knows_which_commits_it_holds() {
        const COMMITS: u64 = 1000;
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let ns = s.namespace("f").unwrap();
        let start = Arc::new(std::sync::Barrier::new(2));
        let writer = {
            let (ns, start) = (ns.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                for i in 1..=COMMITS {
                    let mut t = ns.begin();
                    t.increment("n", 1).unwrap();
                    let Ok(Committed::Pending { seq, .. }) = t.commit(None) else {
                        panic!("commit {i} failed")
                    };
                    assert_eq!(seq, i, "commits are numbered in order");
                }
            })
        };
        start.wait();
        for _ in 0..200 {
            let (keys, seq) = ns.snapshot().unwrap();
            let n = keys.iter().find(|(k, _)| k == "n").map_or(0, |(_, v)| {
                String::from_utf8_lossy(v).parse::<u64>().unwrap()
            });
            assert_eq!(n, seq, "the snapshot's keys hold exactly its commits");
        }
        writer.join().unwrap();
        assert_eq!(ns.snapshot().unwrap().1, COMMITS);
    }

    #[tokio::test]
    async fn the_state_of_a_shadow_no_longer_configured_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        for name in ["f", "f~shadow", "f~control", "g~shadow"] {
            let mut t = s.namespace(name).unwrap().begin();
            t.set("k", b"v".to_vec()).unwrap();
            t.commit(None).unwrap();
        }
        s.flush_once().await.unwrap();
        // g's shadow is still configured, f's is not; f~control is still in use.
        let in_use = s.namespace("f~control").unwrap();
        let dropped = s.drop_shadow_namespaces(|n| n == "g~shadow").unwrap();
        assert_eq!(dropped, ["f~shadow"]);
        drop(in_use);
        let dropped = s.drop_shadow_namespaces(|n| n == "g~shadow").unwrap();
        assert_eq!(dropped, ["f~control"]);
        assert!(
            s.namespace("f").unwrap().keys() == 1,
            "a function's own state stays"
        );
        assert!(
            s.namespace("f~shadow").unwrap().keys() == 0,
            "a new shadow starts empty"
        );
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
        t.commit(None).unwrap();
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
        t.commit(None).unwrap();

        let mut t = ns.begin();
        assert!(
            matches!(t.set("d", vec![1]), Err(StateError::Limit(_))),
            "after commit"
        );
        t.delete("a").unwrap();
        t.set("d", vec![1]).expect("room after a delete");
        t.commit(None).unwrap();

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
        t.commit(None).unwrap();
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
        t.commit(None).unwrap();
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
            w.increment("k", 1).map(|_| w.commit(None))
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!writer.is_finished(), "the writer waits for the reader");
        drop(reader);
        assert!(matches!(writer.join().ok(), Some(Ok(Ok(_)))));
        assert_eq!(ns.begin().get("k").ok().flatten(), Some(b"2".to_vec()));
    }

    #[test]
    fn a_receipt_answers_for_its_delivery_only_and_is_invisible_to_the_guest() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let ns = s.namespace("f").unwrap();
        let out = crate::event::Outbound {
            topic: "out/f".into(),
            payload: b"1".to_vec(),
            qos: 1,
            retain: true,
        };
        let first = crate::event::next_incarnation();
        let receipt = Receipt {
            pkid: 7,
            incarnation: first,
            checksum: crate::event::checksum("in", b"x"),
            outputs: vec![out.clone(), out],
        };
        let c = receipt.checksum;
        let mut t = ns.begin();
        t.increment("n", 1).unwrap();
        assert!(matches!(
            t.commit(Some(&receipt)),
            Ok(Committed::Pending { .. })
        ));
        assert_eq!(
            ns.receipt(7, c, first, false).unwrap(),
            Some(receipt.clone()),
            "a resend"
        );
        let y = crate::event::checksum("in", b"y");
        assert_eq!(
            ns.receipt(7, y, first, false).unwrap(),
            None,
            "another payload"
        );
        assert_eq!(
            ns.receipt(8, c, first, false).unwrap(),
            None,
            "another packet id"
        );
        // Another message on the same id, with the same topic and payload: not the same.
        let second = crate::event::next_incarnation();
        assert_eq!(
            ns.receipt(7, c, second, false).unwrap(),
            None,
            "another delivery"
        );
        // A resend whose first copy came before this run answers only to older receipts.
        assert_eq!(ns.receipt(7, c, 0, true).unwrap(), None, "made in this run");
        // A second copy of the same delivery commits nothing.
        let mut t = ns.begin();
        t.increment("n", 1).unwrap();
        assert!(matches!(
            t.commit(Some(&receipt)).unwrap(),
            Committed::Duplicate(_)
        ));
        assert_eq!(ns.begin().get("n").unwrap(), Some(b"1".to_vec()));
        // The guest sees neither the receipt nor its count, and cannot write one.
        assert_eq!(ns.keys(), 1);
        assert_eq!(ns.begin().list("", 10).unwrap().len(), 1);
        assert!(matches!(
            ns.begin().set("\0receipt/x", vec![]),
            Err(StateError::Limit(_))
        ));
        // Counted again from the tree after the commits are applied: receipts are not the
        // guest's keys.
        s.apply_unapplied().unwrap().on_disk();
        drop(ns);
        assert_eq!(s.namespace("f").unwrap().keys(), 1);
        // The next run of the agent (its runs start later): a resend whose first copy it
        // never saw (0) finds the receipt of the run before.
        let next_run = first + (1 << 40);
        assert!(
            receipt.answers(c, 0, true, &(0..next_run)),
            "from the last run"
        );
        assert!(
            !receipt.answers(y, 0, true, &(0..next_run)),
            "another payload"
        );
        assert!(
            !receipt.answers(c, 0, true, &(first + 1..next_run)),
            "older than the newest receipts of the runs before"
        );
        let ns = s.namespace("f").unwrap();
        ns.forget_all().unwrap();
        assert_eq!(
            ns.receipt(7, c, first, false).unwrap(),
            None,
            "all forgotten"
        );
    }

    /// A resend whose first copy came before this run (incarnation 0) is answered only by
    /// the [`REPLAY_WINDOW`] newest receipts of the runs before: an older receipt is of a
    /// packet id the broker has used again since (the probe's stream of one payload
    /// was counted up to the ids' wrap after a restart, then never again).
    #[test]
    fn only_the_newest_receipts_of_earlier_runs_answer_a_resend_from_before() {
        let dir = tempfile::tempdir().unwrap();
        let c = crate::event::checksum("in", b"1");
        let n = u16::try_from(REPLAY_WINDOW + 2).unwrap();
        {
            let s = store(dir.path());
            let ns = s.namespace("f").unwrap();
            // Incarnations 1..=n: an earlier run's deliveries, oldest first.
            for pkid in 1..=n {
                let receipt = Receipt {
                    pkid,
                    incarnation: u64::from(pkid),
                    checksum: c,
                    outputs: Vec::new(),
                };
                let mut t = ns.begin();
                t.increment("n", 1).unwrap();
                t.commit(Some(&receipt)).unwrap();
            }
            s.apply_unapplied().unwrap().on_disk();
        }
        let s = store(dir.path());
        let ns = s.namespace("f").unwrap();
        assert_eq!(ns.receipt(1, c, 0, true).unwrap(), None, "the oldest");
        assert_eq!(ns.receipt(2, c, 0, true).unwrap(), None, "just outside");
        assert!(
            ns.receipt(3, c, 0, true).unwrap().is_some(),
            "the oldest inside"
        );
        assert!(ns.receipt(n, c, 0, true).unwrap().is_some(), "the newest");
    }

    /// Outputs over [`RECEIPT_MAX_OUTPUT_BYTES`] stay in the receipt until the message is
    /// finished (a resend after a crash before then publishes them again: until
    /// 2026-12-06 it was acknowledged without them), then only the receipt's identity
    /// stays, and it still answers the resends. A later delivery on the id is left alone.
    #[tokio::test]
    async fn large_outputs_stay_in_the_receipt_until_the_message_is_finished() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let ns = s.namespace("f").unwrap();
        let big = crate::event::Outbound {
            topic: "out/f".into(),
            payload: vec![7; RECEIPT_MAX_OUTPUT_BYTES],
            qos: 1,
            retain: false,
        };
        assert!(large_outputs(std::slice::from_ref(&big)));
        let first = crate::event::next_incarnation();
        let c = crate::event::checksum("in", b"x");
        let receipt = |incarnation| Receipt {
            pkid: 9,
            incarnation,
            checksum: c,
            outputs: vec![big.clone()],
        };
        let commit = |r: &Receipt| {
            let mut t = ns.begin();
            t.increment("n", 1).unwrap();
            assert!(matches!(t.commit(Some(r)), Ok(Committed::Pending { .. })));
        };
        commit(&receipt(first));
        s.flush_once().await.unwrap();
        assert_eq!(
            ns.receipt(9, c, first, false).unwrap(),
            Some(receipt(first)),
            "kept"
        );
        // Another delivery's settling changes nothing.
        ns.settled(9, first + 1);
        assert_eq!(
            ns.receipt(9, c, first, false).unwrap(),
            Some(receipt(first))
        );
        ns.settled(9, first);
        let bare = Receipt {
            outputs: vec![],
            ..receipt(first)
        };
        assert_eq!(
            ns.receipt(9, c, first, false).unwrap(),
            Some(bare.clone()),
            "trimmed"
        );
        s.flush_once().await.unwrap();
        drop(ns);
        let ns = s.namespace("f").unwrap();
        assert_eq!(
            ns.receipt(9, c, first, false).unwrap(),
            Some(bare),
            "on disk"
        );
        // The id used again: the new message's receipt keeps its outputs, and the old
        // message's settling (late) leaves them.
        let second = crate::event::next_incarnation();
        let mut t = ns.begin();
        t.increment("n", 1).unwrap();
        t.commit(Some(&receipt(second))).unwrap();
        ns.settled(9, first);
        assert_eq!(
            ns.receipt(9, c, second, false).unwrap(),
            Some(receipt(second))
        );
    }

    /// A run whose clock was ahead of this one's (a device without a real-time clock,
    /// restarted before it has the time again): its receipts must still answer for
    /// resends from before this run, and no new delivery may take their numbers.
    #[test]
    fn receipts_of_a_run_whose_clock_was_ahead_stay_before_this_one() {
        let dir = tempfile::tempdir().unwrap();
        let ahead = crate::event::this_run() + (1 << 40);
        let receipt = Receipt {
            pkid: 3,
            incarnation: ahead,
            checksum: crate::event::checksum("in", b"x"),
            outputs: vec![],
        };
        {
            let s = store(dir.path());
            let ns = s.namespace("f").unwrap();
            let mut t = ns.begin();
            t.increment("n", 1).unwrap();
            t.commit(Some(&receipt)).unwrap();
            s.apply_unapplied().unwrap().on_disk();
        }
        let s = store(dir.path());
        let ns = s.namespace("f").unwrap();
        let c = receipt.checksum;
        assert_eq!(
            ns.receipt(3, c, 0, true).unwrap(),
            Some(receipt),
            "a resend whose first copy came before this run"
        );
        let next = crate::event::next_incarnation();
        assert!(next > ahead, "a new delivery took an old receipt's number");
        assert_eq!(
            ns.receipt(3, c, next, false).unwrap(),
            None,
            "a new message"
        );
    }

    #[test]
    fn a_damaged_store_says_so_and_how_to_start_again() {
        let dir = tempfile::tempdir().unwrap();
        drop(store(dir.path()));
        // What a card that lost confirmed writes leaves: a settings file whose checksum fails.
        let conf = dir.path().join("state").join("conf");
        let mut bytes = std::fs::read(&conf).unwrap();
        bytes[..7].copy_from_slice(b"garbage");
        std::fs::write(&conf, bytes).unwrap();
        let limits = StateConfig::default();
        let Err(e) = StateStore::open(dir.path(), &limits) else {
            panic!("a damaged store opened");
        };
        assert!(matches!(e, StateError::Damaged { .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.contains("is damaged") && text.contains("mv ") && !text.contains("snapshot"),
            "{text}"
        );
    }

    /// A damaged snapshot is named, with the cheap way out first: moved aside alone, the
    /// store opens with all its data (a probe had been told to move the whole store aside).
    #[test]
    fn a_damaged_snapshot_is_named_and_moving_it_aside_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let db = StateStore::open_db(&state, &StateConfig::default()).unwrap();
        for i in 0..100u32 {
            db.insert(i.to_be_bytes(), &[7u8; 100][..]).unwrap();
        }
        db.flush().unwrap();
        drop(db);
        // sled writes its snapshot as it opens a store with a log.
        drop(StateStore::open_db(&state, &StateConfig::default()).unwrap());
        let snaps: Vec<_> = std::fs::read_dir(&state)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("snap.")
            })
            .collect();
        let [snap] = &snaps[..] else {
            panic!("one snapshot: {snaps:?}")
        };
        let mut bytes = std::fs::read(snap).unwrap();
        bytes[0] ^= 0xff;
        std::fs::write(snap, &bytes).unwrap();
        let Err(e) = StateStore::open_db(&state, &StateConfig::default()) else {
            panic!("a store with a damaged snapshot opened");
        };
        let text = e.to_string();
        assert!(
            text.contains(&format!("its snapshot {} is damaged", snap.display())),
            "{text}"
        );
        std::fs::rename(snap, dir.path().join("aside")).unwrap();
        let db = StateStore::open_db(&state, &StateConfig::default()).unwrap();
        assert_eq!(db.len(), 100);
    }

    #[test]
    fn the_byte_budget_refuses_a_write_and_the_call_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let limits = StateConfig {
            max_bytes_per_function: 100,
            ..StateConfig::default()
        };
        let s = StateStore::open(dir.path(), &limits).unwrap();
        let ns = s.namespace("f").unwrap();
        let mut t = ns.begin();
        t.set("a", vec![0; 60]).unwrap();
        assert!(
            matches!(t.set("b", vec![0; 60]), Err(StateError::Limit(_))),
            "over 100 bytes"
        );
        t.set("b", vec![0; 30]).expect("what fits still goes");
        t.commit(None).unwrap();
        assert_eq!(ns.bytes(), 61 + 31);
        let mut t = ns.begin();
        t.set("a", vec![0; 10]).unwrap();
        t.set("c", vec![0; 40])
            .expect("room made by the smaller value");
        t.commit(None).unwrap();
        assert_eq!(ns.bytes(), 11 + 31 + 41);
    }

    /// A resend found by a receipt that is not on disk yet waits for that receipt's flush:
    /// acknowledged before it, a power cut would lose the message.
    #[tokio::test]
    async fn a_receipt_not_flushed_yet_says_which_flush_makes_it_durable() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let ns = s.namespace("f").unwrap();
        let receipt = Receipt {
            pkid: 9,
            incarnation: crate::event::next_incarnation(),
            checksum: crate::event::checksum("in", b"x"),
            outputs: vec![],
        };
        let copy = |ns: &Arc<Namespace>| {
            let mut t = ns.begin();
            t.increment("n", 1).unwrap();
            t.commit(Some(&receipt)).unwrap()
        };
        assert!(matches!(copy(&ns), Committed::Pending { .. }));
        let Some(generation) = ns.receipt_pending(9) else {
            panic!("pending before any flush")
        };
        assert_eq!(copy(&ns), Committed::Duplicate(Some(generation)));
        // A flush under way has applied it to sled but not synced it yet: sled has it, the
        // disk may not (this said `None` here, and a resend was acknowledged at once).
        let applied = s.apply_unapplied().unwrap();
        assert!(ns.tree().unwrap().get(Receipt::key(9)).unwrap().is_some());
        assert!(ns.receipt_pending(9).is_some(), "applied, not synced");
        assert!(matches!(copy(&ns), Committed::Duplicate(Some(_))));
        // The flush of that generation makes the first copy, and so the resend, durable.
        let stop = tokio_util::sync::CancellationToken::new();
        let flusher = tokio::spawn(s.clone().run_flusher(stop.clone()));
        let durable = tokio::time::timeout(Duration::from_secs(5), s.durable(generation)).await;
        assert_eq!(durable.ok(), Some(true), "flushed");
        // What the flush that applied them does once it has synced (applied by hand here).
        applied.on_disk();
        assert_eq!(ns.receipt_pending(9), None, "on disk");
        assert_eq!(copy(&ns), Committed::Duplicate(None));
        assert_eq!(ns.begin().get("n").unwrap(), Some(b"1".to_vec()));
        stop.cancel();
        let _ = flusher.await;
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
        let Ok(Committed::Pending { generation, .. }) = t.commit(None) else {
            panic!("a generation")
        };
        tokio::time::timeout(Duration::from_secs(5), s.durable(generation))
            .await
            .unwrap_or_else(|_| panic!("never flushed"));
        stop.cancel();
        let _ = flusher.await;
        // On disk: a store opened again from the files has it.
        drop((ns, s));
        let s = store(dir.path());
        let ns = s.namespace("f").unwrap();
        assert_eq!(ns.begin().get("n").unwrap(), Some(b"1".to_vec()));
    }

    /// A group commit: the commits between two flushes reach sled as one batch (sled writes
    /// its log at every batch), and until then every read sees them.
    #[test]
    fn commits_reach_sled_at_the_flush_and_every_read_sees_them_before() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let ns = s.namespace("f").unwrap();
        for _ in 0..50 {
            increment_n(&ns);
        }
        let mut t = ns.begin();
        t.set("p/a", b"a".to_vec()).unwrap();
        t.set("p/b", b"b".to_vec()).unwrap();
        t.commit(None).unwrap();
        let in_sled = |k: &str| ns.tree().unwrap().get(k).unwrap().map(|v| v.to_vec());
        assert_eq!(in_sled("n"), None, "not applied before the flush");
        assert_eq!(ns.begin().get("n").unwrap(), Some(b"50".to_vec()));
        assert_eq!(ns.keys(), 3);
        // Deleting a key that sled has not seen yet, and listing over both.
        let mut t = ns.begin();
        t.delete("p/a").unwrap();
        t.commit(None).unwrap();
        let listed = |ns: &Arc<Namespace>| -> Vec<String> {
            let mut t = ns.begin();
            t.list("", 10)
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        assert_eq!(listed(&ns), ["n", "p/b"]);
        assert_eq!(ns.keys(), 2);
        // The same function loaded again (a reload while the old one drains) shares them.
        assert!(Arc::ptr_eq(&ns, &s.namespace("f").unwrap()));
        let applied = s.apply_unapplied().unwrap();
        assert_eq!(in_sled("n"), Some(b"50".to_vec()));
        assert_eq!(in_sled("p/a"), None);
        assert_eq!(listed(&ns), ["n", "p/b"]);
        // Kept until the flush has synced them, then dropped: the next commit starts a
        // new group.
        assert!(ns.overlay().new.is_empty() && !ns.overlay().applying.is_empty());
        applied.on_disk();
        assert!(ns.overlay().applying.is_empty());
        increment_n(&ns);
        assert_eq!(in_sled("n"), Some(b"50".to_vec()));
        assert_eq!(ns.begin().get("n").unwrap(), Some(b"51".to_vec()));
    }

    /// Increments `n` in `ns` and commits: the generation whose flush makes it durable.
    fn increment_n(ns: &Arc<Namespace>) -> u64 {
        let mut t = ns.begin();
        t.increment("n", 1).unwrap();
        match t.commit(None) {
            Ok(Committed::Pending { generation, .. }) => generation,
            other => panic!("a generation, not {other:?}"),
        }
    }

    /// Above the cap, flushes wait for a share of the commits: 200 commits a second for a
    /// second under a cap of 20 make about 20 flushes, not one per commit; after a pause a
    /// lone commit is flushed at once again. Real time (sled writes for real).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_flush_rate_is_capped_above_max_flushes_per_sec() {
        let dir = tempfile::tempdir().unwrap();
        let limits = StateConfig {
            max_flushes_per_sec: 20,
            ..StateConfig::default()
        };
        let s = StateStore::open(dir.path(), &limits).unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let flusher = tokio::spawn(s.clone().run_flusher(stop.clone()));
        let ns = s.namespace("f").unwrap();
        let commit = || increment_n(&ns);
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        let mut last = 0;
        for _ in 0..200 {
            tick.tick().await;
            last = commit();
        }
        assert!(s.durable(last).await);
        let flushes = s.flushes();
        // Uncapped, a flush per commit or two (100-200); capped, about 20, and the first
        // few before the rate is known.
        assert!(
            flushes <= 45,
            "{flushes} flushes for 200 commits in a second"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let start = std::time::Instant::now();
        assert!(s.durable(commit()).await);
        let waited = start.elapsed();
        assert!(
            waited < Duration::from_millis(45),
            "a lone commit waited {waited:?} (the cap's period is 50 ms)"
        );
        stop.cancel();
        flusher.await.unwrap();
    }

    /// A paced rate's estimate jitters by a few percent: the group a flush waits for does
    /// not follow it across a whole number, and at the cap or under it there is no group.
    #[test]
    fn the_flush_group_holds_through_the_rate_estimates_jitter() {
        for rate in [285.0, 300.0, 315.0, 330.0] {
            assert_eq!(
                flush_group(rate, 50),
                6,
                "{rate} commits/s under a cap of 50"
            );
        }
        assert_eq!(flush_group(345.0, 50), 7);
        for rate in [0.0, 20.0, 50.0, 55.0] {
            assert_eq!(
                flush_group(rate, 50),
                1,
                "{rate} commits/s under a cap of 50"
            );
        }
        assert_eq!(flush_group(100.0, 50), 2);
        assert_eq!(flush_group(300.0, 100), 3);
    }

    /// Over the cap, flushes as fast as they come are held to the cap: a second of them
    /// under a cap of 50 starts at most 50, plus the tenth of a second's worth saved up.
    /// On tokio's paused clock.
    #[tokio::test(start_paused = true)]
    async fn the_flush_allowance_holds_flushes_over_the_cap_to_it() {
        let now = || tokio::time::Instant::now().into_std();
        let mut a = flush_allowance(50);
        let start = tokio::time::Instant::now();
        let mut flushes = 0;
        while start.elapsed() < Duration::from_secs(1) {
            tokio::time::sleep(a.wait(now())).await;
            assert!(a.take(now()));
            flushes += 1;
            // A flush takes a millisecond, and the next comes at once.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(
            (50..=56).contains(&flushes),
            "{flushes} flushes in a second over a cap of 50"
        );
        // After a quiet spell, what was saved up lets the next ones start at once.
        tokio::time::sleep(Duration::from_secs(1)).await;
        for _ in 0..5 {
            assert_eq!(a.wait(now()), Duration::ZERO);
            assert!(a.take(now()));
        }
        assert!(a.wait(now()) > Duration::ZERO);
    }

    /// A pause of nothing is over at its first poll, where tokio's own sleep of nothing
    /// waits for the next tick of its timer wheel (a millisecond: measured, one before
    /// every flush over the cap put 1.1 ms into every commit's latency).
    #[tokio::test]
    async fn a_pause_of_nothing_waits_for_no_timer_tick() {
        use std::future::Future;
        let stop = tokio_util::sync::CancellationToken::new();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut none = std::pin::pin!(pause(Duration::ZERO, &stop));
        assert!(none.as_mut().poll(&mut cx).is_ready());
        let mut zero = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
        assert!(
            zero.as_mut().poll(&mut cx).is_pending(),
            "tokio's sleep(0) is over at once now: pause() is no longer needed"
        );
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
        s.without_slow_flush_reports();
        let stop = tokio_util::sync::CancellationToken::new();
        let flusher = tokio::spawn(s.clone().run_flusher(stop.clone()));
        let ns = s.namespace("f").unwrap();
        let commit = || increment_n(&ns);
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
