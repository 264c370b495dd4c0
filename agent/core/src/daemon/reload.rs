//! Hot reload: on SIGHUP, or (with `agent.watch`, the default) when the config file or a
//! module file changes, the agent reads its config again and puts new versions of its
//! functions in force without a restart and without losing or repeating an event.
//!
//! What reloads:
//! - a function's module (new content at the same path, or another path), its `sha256`
//!   pin and its `[function.config]`, in place: nothing in the pipeline stops; queued
//!   events and the next ones go to the new version, calls in flight finish on the old one,
//!   and a persistent instance finishes its current event and moves to a fresh instance of
//!   the new version (its state is in the store);
//! - a function's `[function.shadow]`, in place: the new shadow (or none) replaces the old
//!   between two events, with a fresh copy of the primary's state; a promotion (the
//!   shadow's module and config made the primary's, `edge-agent promote`) is a reload
//!   that changes both at once;
//! - functions added: loaded, started and subscribed before the reload is reported;
//! - functions removed: unsubscribed, then their queues drain, their acknowledgements go
//!   out and their connections close before the reload is reported. Their state stays in
//!   the store, for a function of the same name added later.
//!
//! Every changed or added function is loaded and checked (linked, started once within its
//! limits) before anything is put in force; if one fails, nothing is, and the running
//! versions stay. Anything else (a function's topics, model or limits, the broker...)
//! needs a restart: the reload is refused, saying which keys, and nothing changes.
//!
//! Each reload is logged and published (QoS 1, not retained) on `<prefix>/<id>/reload`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::MqttOptions;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::lanes::{Lanes, ShadowSides};
use crate::config::{BrokerAddress, Config, FunctionConfig};
use crate::messages::{
    FailedFunction, Message as _, ReloadReport, ReloadedFunction, Status, StatusFunction,
};
use crate::mqtt::publisher::Publisher;
use crate::runtime::function::NextVersion;
use crate::runtime::{LoadedFunction, Runtime};
use crate::state::StateStore;

/// How long to wait for more changes after one (editors and cargo write in steps).
const SETTLE: Duration = Duration::from_millis(300);

/// Keys of a function that a reload can change in place.
const IN_PLACE: [&str; 4] = ["module", "sha256", "config", "shadow"];

/// Longest wait for an added function's subscriptions before the reload is reported.
const SUBSCRIBE_DEADLINE: Duration = Duration::from_secs(10);

/// What the reloader works with.
pub struct Parts {
    /// The engine, which loads added functions.
    pub runtime: Arc<Runtime>,
    /// The running functions.
    pub lanes: Lanes,
    /// The state store (added functions get their namespace in it).
    pub state: Arc<StateStore>,
    /// Where the broker is (the embedded one's real port).
    pub broker: BrokerAddress,
    /// Reload reports go out through it.
    pub publisher: Arc<Publisher>,
    /// The birth message on the status topic, which names each module's hash.
    pub birth: tokio::sync::watch::Sender<Vec<u8>>,
    /// Removed functions drain on it, so that shutdown waits for them.
    pub tracker: TaskTracker,
}

/// Reloads the agent's functions when asked.
pub struct Reloader {
    /// The config file, absolute.
    path: PathBuf,
    /// The config in force.
    config: Config,
    /// The running functions' loaded modules.
    functions: BTreeMap<String, Arc<LoadedFunction>>,
    parts: Parts,
    topic: String,
    rewrites: (mpsc::Sender<Rewrite>, Option<mpsc::Receiver<Rewrite>>),
    /// What the agent itself last wrote into the config file ([`Reloader::rewrite`]), until
    /// the file watcher's notice of it has been let go.
    wrote: Option<String>,
    /// The files whose changes reload, read by the watcher at each event: brought up to
    /// date by a reload before its report goes out, so that a change to a module the
    /// reload named is seen however soon it follows (the watcher itself is made again
    /// after the report, for new directories).
    watching: Arc<std::sync::RwLock<BTreeSet<PathBuf>>>,
}

/// A new text for the config file, to be put in force by a reload (a deployment, or its
/// roll-back); the answer is the reload's report. Refused, the file goes back to what it
/// was, and so does anything the reload had put in force.
pub struct Rewrite {
    /// What asks (`deployment 7`), as the reload report's trigger.
    pub trigger: String,
    /// The whole new file.
    pub text: String,
    /// The reload's report, or why the file could not be read or written (a full disk,
    /// most often; then nothing changed and nothing was reloaded).
    pub reply: tokio::sync::oneshot::Sender<std::io::Result<ReloadReport>>,
}

/// A reload checked and ready to be put in force.
struct Plan {
    config: Config,
    changed: Vec<(Arc<LoadedFunction>, NextVersion)>,
    added: Vec<(
        FunctionConfig,
        Arc<LoadedFunction>,
        Option<ShadowSides>,
        MqttOptions,
    )>,
    removed: Vec<String>,
    /// Running functions whose `[function.shadow]` changed: the new one's sides (none if
    /// it was taken out).
    reshadowed: Vec<(FunctionConfig, Option<ShadowSides>)>,
}

/// Why a reload was refused (the running versions stay).
#[derive(Debug, thiserror::Error)]
enum Refused {
    /// The new config is invalid: each problem, joined.
    #[error("{}", .0.each().iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Config(#[from] crate::config::ConfigError),
    /// A change that only a restart can put in force (the sections and keys it names).
    #[error("{0}")]
    NeedsRestart(String),
    /// Changed or added modules that cannot be loaded, each with its cause.
    #[error("{}", .0.iter().map(|e| crate::failure::chain(e)).collect::<Vec<_>>().join("; "))]
    Load(Vec<crate::runtime::RuntimeError>),
    /// The agent began to stop while the modules loaded.
    #[error("the agent is stopping")]
    Stopping,
}

/// What a reload did: functions changed in place and added (with their modules' hashes),
/// and removed.
#[derive(Default)]
struct Done {
    changed: Vec<(String, Arc<str>)>,
    added: Vec<(String, Arc<str>)>,
    removed: Vec<String>,
    /// Added functions that could not be started, and why.
    failed: Vec<(String, String)>,
}

/// Top-level keys of `v` (a serialised section) whose values differ from `w`'s.
fn changed_keys(v: &serde_json::Value, w: &serde_json::Value, skip: &[&str]) -> Vec<String> {
    let (Some(a), Some(b)) = (v.as_object(), w.as_object()) else {
        return if v == w {
            Vec::new()
        } else {
            vec!["(all)".into()]
        };
    };
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| !skip.contains(&k.as_str()) && a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

fn json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_default()
}

/// Why `new` cannot be put in force without a restart, if it cannot.
fn needs_restart(old: &Config, new: &Config) -> Option<String> {
    let sections = [
        ("agent", json(&old.agent), json(&new.agent)),
        ("broker", json(&old.broker), json(&new.broker)),
        ("runtime", json(&old.runtime), json(&new.runtime)),
        ("state", json(&old.state), json(&new.state)),
        ("metrics", json(&old.metrics), json(&new.metrics)),
        ("fleet", json(&old.fleet), json(&new.fleet)),
    ];
    for (name, a, b) in sections {
        let keys = changed_keys(&a, &b, &[]);
        if !keys.is_empty() {
            return Some(format!(
                "[{name}] {} changed: that needs a restart",
                keys.join(", ")
            ));
        }
    }
    for f in &new.functions {
        // Added functions are new, not changed.
        let Some(before) = old.functions.iter().find(|o| o.name == f.name) else {
            continue;
        };
        let keys = changed_keys(&json(before), &json(f), &IN_PLACE);
        if !keys.is_empty() {
            return Some(format!(
                "function `{}`: {} changed: that needs a restart (a reload changes module, \
                 sha256, [function.config] and [function.shadow], and adds or removes functions)",
                f.name,
                keys.join(", ")
            ));
        }
    }
    None
}

/// The birth message: `online`, with each function's name, model, module file and the
/// SHA-256 of the module version in force (`loaded` finds it).
pub(super) fn birth(
    config: &Config,
    loaded: impl Fn(&str) -> Option<Arc<crate::runtime::LoadedFunction>>,
) -> Vec<u8> {
    let functions = config
        .functions
        .iter()
        .map(|f| StatusFunction {
            name: f.name.clone(),
            mode: f.mode.as_str().to_string(),
            module: f
                .module
                .file_name()
                .map(|n| n.to_string_lossy().into_owned()),
            sha256: loaded(&f.name).map(|l| l.sha256().to_string()),
        })
        .collect();
    Status::birth(functions).to_bytes()
}

impl Reloader {
    /// A reloader for the agent running `config`, whose lanes run `functions`.
    pub fn new(
        config: &Config,
        functions: BTreeMap<String, Arc<LoadedFunction>>,
        parts: Parts,
    ) -> Self {
        // The configured functions only: the start loads shadows, controls and canaries
        // (`<name>~shadow`, ...) as functions of their own, which the lanes hold. Kept here
        // too, until 2026-12-08, their first versions stayed in memory and in the compile
        // cache through every reload that replaced them (a probe).
        let functions = functions
            .into_iter()
            .filter(|(name, _)| config.functions.iter().any(|f| f.name == *name))
            .collect();
        Self {
            path: std::path::absolute(&config.source).unwrap_or_else(|_| config.source.clone()),
            config: config.clone(),
            functions,
            parts,
            topic: format!("{}/{}/reload", config.agent.topic_prefix, config.agent.id),
            rewrites: {
                let (tx, rx) = mpsc::channel(1);
                (tx, Some(rx))
            },
            wrote: None,
            watching: Arc::default(),
        }
    }

    /// Where to send rewrites of the config file ([`Rewrite`]).
    pub fn rewriter(&self) -> mpsc::Sender<Rewrite> {
        self.rewrites.0.clone()
    }

    /// Reads the config again, and loads and checks every changed or added function
    /// (blocking: compiling takes a while).
    ///
    /// # Errors
    /// [`Refused`]: why nothing will be reloaded: the config is invalid, a change needs a
    /// restart, or a module cannot be loaded.
    fn plan(&self) -> Result<Plan, Refused> {
        let new = Config::load_for_reload(&self.path, &self.config)?;
        // The modules it names are watched from now: one changed while this reload
        // compiles it (seconds for Python or JavaScript) was never taken until
        // 2026-12-08, the agent running what the file no longer held (a probe). Its
        // change now asks for the next reload.
        self.watching
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .extend(watched_files(&self.path, &new));
        if let Some(why) = needs_restart(&self.config, &new) {
            return Err(Refused::NeedsRestart(why));
        }
        let mut plan = Plan {
            changed: Vec::new(),
            added: Vec::new(),
            reshadowed: Vec::new(),
            removed: self
                .config
                .functions
                .iter()
                .filter(|f| !new.functions.iter().any(|n| n.name == f.name))
                .map(|f| f.name.clone())
                .collect(),
            config: new,
        };
        let mut compiled = crate::runtime::function::Compiled::with_cache(
            plan.config
                .runtime
                .compile_cache
                .then(|| crate::runtime::function::CompileCache::of(&plan.config)),
            Some(self.parts.runtime.module_changes().clone()),
        );
        let mut errors = Vec::new();
        for f in &plan.config.functions {
            let before = self.config.functions.iter().find(|o| o.name == f.name);
            let mut new_version = false;
            let outcome = match self.functions.get(&f.name) {
                Some(loaded) => loaded.prepare(f, &mut compiled).map(|next| {
                    if let Some(next) = next {
                        new_version = true;
                        plan.changed.push((loaded.clone(), next));
                    }
                }),
                None => {
                    self.load(&plan.config, f, &mut compiled)
                        .map(|(loaded, shadow, intake)| {
                            plan.added.push((f.clone(), loaded, shadow, intake));
                        })
                }
            };
            if let Err(e) = outcome {
                errors.push(e);
            }
            // The shadow changes with its section, and with the function's own version
            // when it takes the function's module or config (and its control always does).
            if let (Some(loaded), Some(before)) = (self.functions.get(&f.name), before)
                && (before.shadow != f.shadow
                    || new_version && f.shadow.is_some()
                    || self.shadow_module_replaced(f))
            {
                match self.load_shadow(&plan.config, f, loaded, &mut compiled) {
                    Ok(sides) => plan.reshadowed.push((f.clone(), sides)),
                    Err(e) => errors.push(e),
                }
            }
        }
        if errors.is_empty() {
            Ok(plan)
        } else {
            Err(Refused::Load(errors))
        }
    }

    /// Whether the file of `f`'s shadow module (`[function.shadow] module`) holds another
    /// version than its running shadow: replaced in place, it was neither watched nor
    /// read again by a reload until 2026-12-08.
    fn shadow_module_replaced(&self, f: &FunctionConfig) -> bool {
        let Some(path) = f.shadow.as_ref().and_then(|s| s.module.as_ref()) else {
            return false;
        };
        match (
            std::fs::read(path),
            self.parts.lanes.shadow_version(&f.name),
        ) {
            (Ok(bytes), Some(running)) => *running != crate::deployment::sha256_hex(&bytes),
            _ => false,
        }
    }

    /// Loads function `f`, which the running agent does not have, with its state
    /// namespace and its intake connection's options.
    fn load(
        &self,
        config: &Config,
        f: &FunctionConfig,
        compiled: &mut crate::runtime::function::Compiled,
    ) -> Result<(Arc<LoadedFunction>, Option<ShadowSides>, MqttOptions), crate::runtime::RuntimeError>
    {
        let err = |source| crate::runtime::RuntimeError::Load {
            function: f.name.clone(),
            source,
        };
        let loaded = self.parts.runtime.load(config, f, compiled)?;
        let ns = self
            .parts
            .state
            .namespace(&f.name)
            .map_err(|e| err(crate::runtime::LoadError::State(e)))?;
        loaded.attach_state(ns);
        let shadow = self.load_shadow(config, f, &loaded, compiled)?;
        let intake = crate::mqtt::options::intake(config, &self.parts.broker, &f.name)
            .map_err(|e| err(crate::runtime::LoadError::Intake(e)))?;
        Ok((loaded, shadow, intake))
    }

    /// Loads function `f`'s shadow and control (`[function.shadow]`), each with a copy of
    /// the primary's state; `None` without a shadow.
    fn load_shadow(
        &self,
        config: &Config,
        f: &FunctionConfig,
        primary: &LoadedFunction,
        compiled: &mut crate::runtime::function::Compiled,
    ) -> Result<Option<ShadowSides>, crate::runtime::RuntimeError> {
        let mut sides = BTreeMap::new();
        for side in [
            f.shadow_function(),
            f.control_function(),
            f.canary_function(),
        ]
        .into_iter()
        .flatten()
        {
            sides.insert(
                side.name.clone(),
                self.parts.runtime.load(config, &side, compiled)?,
            );
        }
        super::lanes::shadow_sides(&self.parts.state, f, primary, |n| sides.get(n).cloned())
            .map_err(|e| crate::runtime::RuntimeError::Load {
                function: f.name.clone(),
                source: crate::runtime::LoadError::State(e),
            })
    }

    /// Puts `plan` in force: changed functions first, then added ones (reported once they
    /// are subscribed), then removed ones (reported once drained and disconnected).
    async fn apply(&mut self, plan: Plan, stop: &CancellationToken) -> Done {
        let mut done = Done::default();
        for (loaded, version) in plan.changed {
            let sha: Arc<str> = version.sha256().into();
            loaded.commit(version);
            done.changed.push((loaded.name().to_string(), sha));
        }
        // After the primary's new version: a promotion (the shadow's version made primary,
        // the primary's made shadow) compares the new pair from its first event.
        for (f, sides) in plan.reshadowed {
            match self.parts.lanes.reshadow(&plan.config, &f, sides) {
                Ok(()) => {
                    tracing::info!(function = %f.name, shadow = f.shadow.is_some(), "reload: shadow changed");
                    if !done.changed.iter().any(|(n, _)| *n == f.name)
                        && let Some(l) = self.functions.get(&f.name)
                    {
                        done.changed.push((f.name.clone(), l.sha256()));
                    }
                }
                Err(e) => {
                    let why = crate::failure::chain(&e);
                    tracing::error!(function = %f.name, "reload: shadow not started: {why}");
                    done.failed.push((f.name.clone(), why));
                }
            }
        }
        for (f, loaded, shadow, intake) in plan.added {
            if let Err(e) = self
                .parts
                .lanes
                .start(&plan.config, &f, loaded.clone(), shadow, intake)
            {
                let why = crate::failure::chain(&e);
                tracing::error!(function = %f.name, "reload: function not added: {why}");
                done.failed.push((f.name.clone(), why));
                continue;
            }
            done.added.push((f.name.clone(), loaded.sha256()));
            self.functions.insert(f.name, loaded);
        }
        for (name, _) in &done.added {
            let subscribed = tokio::select! {
                () = stop.cancelled() => true,
                s = self.parts.lanes.subscribed(name, SUBSCRIBE_DEADLINE) => s,
            };
            if !subscribed {
                tracing::warn!(function = %name, "added function not subscribed yet; its events flow once it is");
            }
        }
        for name in plan.removed {
            self.functions.remove(&name);
            if let Some(retirement) = self.parts.lanes.retire(&name) {
                let drained = self.parts.tracker.spawn(retirement);
                tokio::select! {
                    () = stop.cancelled() => {}
                    _ = drained => {}
                }
            }
            done.removed.push(name);
        }
        self.config = plan.config;
        let names: Vec<&str> = self
            .config
            .functions
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        self.parts.lanes.stats().order(&names);
        drop_stale_shadows(&self.parts.state, &self.config);
        // The removed functions' intakes have disconnected: their sessions can end.
        self.parts
            .lanes
            .end_stale_sessions(&self.config, &self.parts.broker, &self.parts.state);
        let functions = &self.functions;
        let body = birth(&self.config, |name| functions.get(name).cloned());
        self.parts.birth.send_if_modified(|b| {
            let changed = *b != body;
            *b = body;
            changed
        });
        // What the old versions and the removed functions freed (their threads' arenas
        // hold it): a probe's reloads between 40 and 10 functions took RSS from 32 to
        // 73 MB in 6 rounds and 132 MB in 20, never given back (2026-12-08); a
        // malloc_trim after the sixth gave 35 MB back.
        crate::runtime::release_freed_memory();
        self.prune_compile_cache();
        *self.watching.write().unwrap_or_else(|p| p.into_inner()) = self.watched_files();
        done
    }

    /// Removes the compiled versions no function, shadow or canary uses any more, as a
    /// start does: until 2026-12-08 each version a reload replaced stayed in the cache
    /// until the next start (a probe: 40 versions of a Rust module on a 72 MiB data disk
    /// took the room kept for the state store, and state writes paused; four of a Python
    /// one, 152 MB).
    fn prune_compile_cache(&self) {
        if !self.config.runtime.compile_cache {
            return;
        }
        // The versions in force: the functions' and their shadows' (a canary runs its
        // shadow's version, a control its function's). Read from what runs, not from the
        // module files again, which the plan has read already.
        let keep: Vec<Arc<str>> = self
            .functions
            .values()
            .map(|f| f.sha256())
            .chain(
                self.config
                    .functions
                    .iter()
                    .filter_map(|f| self.parts.lanes.shadow_version(&f.name)),
            )
            .collect();
        let cache = crate::runtime::function::CompileCache::of(&self.config);
        let freed = blocking(|| cache.prune(&keep.iter().map(|k| &**k).collect::<Vec<_>>(), false));
        if freed > 0 {
            tracing::info!(
                bytes = freed,
                "compiled modules of versions no longer used removed"
            );
        }
    }

    /// The files whose changes reload, with the config in force ([`watched_files`]).
    fn watched_files(&self) -> BTreeSet<PathBuf> {
        watched_files(&self.path, &self.config)
    }

    /// Watches the directories of the config and the modules (files are often replaced,
    /// not written in place) and sends on `tx` when one of those files changes.
    fn watch(&self, tx: mpsc::Sender<&'static str>) -> Option<notify::RecommendedWatcher> {
        use notify::{EventKind, RecursiveMode, Watcher};
        let files = self.watched_files();
        *self.watching.write().unwrap_or_else(|p| p.into_inner()) = files.clone();
        let interesting = self.watching.clone();
        let changes = self.parts.runtime.module_changes().clone();
        changes.watching();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res
                && matches!(
                    ev.kind,
                    EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
                )
                && ev.paths.iter().any(|p| {
                    interesting
                        .read()
                        .unwrap_or_else(|p| p.into_inner())
                        .contains(p)
                })
            {
                changes.seen();
                let _ = tx.try_send("file change");
            }
        });
        let mut watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch files for changes; SIGHUP still reloads");
                return None;
            }
        };
        let dirs: BTreeSet<&Path> = files.iter().filter_map(|f| f.parent()).collect();
        for dir in dirs {
            if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch for changes");
            }
        }
        Some(watcher)
    }

    /// Reloads on SIGHUP (`hangups`, if made earlier: see [`super::Prepared::hangups`])
    /// and (with `agent.watch`) on file changes, until `stop`. The SIGHUP handler, the
    /// file watcher and the control socket are in place when this returns, before the
    /// agent can say it is online: an edit or a `systemctl reload` right after that is not
    /// missed (and a SIGHUP before a handler would end the process).
    pub fn spawn(
        self,
        stop: CancellationToken,
        hangups: Option<tokio::signal::unix::Signal>,
    ) -> tokio::task::JoinHandle<()> {
        let (tx, rx) = mpsc::channel(16);
        let hangups = hangups.map_or_else(
            || tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()),
            Ok,
        );
        let hangups = match hangups {
            Ok(mut signals) => {
                let hup = tx.clone();
                Some(tokio::spawn(async move {
                    while signals.recv().await.is_some() {
                        if hup.send("SIGHUP").await.is_err() {
                            return;
                        }
                    }
                }))
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot handle SIGHUP; file changes still reload");
                None
            }
        };
        let (ask, asked) = mpsc::channel(4);
        let control = super::control::listen(&self.config.agent.data_dir, ask);
        let watcher = self.config.agent.watch.then(|| self.watch(tx.clone()));
        tokio::spawn(async move {
            self.run(stop, (tx, rx), asked, watcher).await;
            if let Some(h) = hangups {
                h.abort();
            }
            if let Some(c) = control {
                c.abort();
            }
        })
    }

    async fn run(
        mut self,
        stop: CancellationToken,
        (tx, mut rx): (mpsc::Sender<&'static str>, mpsc::Receiver<&'static str>),
        mut asked: mpsc::Receiver<super::control::Request>,
        mut watcher: Option<Option<notify::RecommendedWatcher>>,
    ) {
        let mut rewrites = self.rewrites.1.take();
        let changes = self.parts.runtime.module_changes().clone();
        loop {
            // A file change to reload, or a request that edits the file and reloads.
            let asked = tokio::select! {
                () = stop.cancelled() => break,
                t = rx.recv() => match t { Some(t) => Err(t), None => break },
                r = asked.recv() => {
                    let Some(super::control::Request { function, force, reply }) = r else { continue };
                    let _ = reply.send(self.promote(&function, force, &stop).await);
                    Ok(())
                }
                Some(w) = async { match rewrites.as_mut() { Some(r) => r.recv().await, None => None } } => {
                    let answer = self.rewrite(&w.trigger, w.text, &stop).await;
                    let _ = w.reply.send(answer);
                    Ok(())
                }
            };
            let trigger = match asked {
                Err(trigger) => trigger,
                Ok(()) => {
                    if watcher.is_some() {
                        watcher = Some(self.watch(tx.clone()));
                    }
                    // The file watcher saw the agent's own edit: that reload is this one.
                    // Not an edit someone made since (until 2026-12-07 one made within
                    // half a second of a `promote` waited for the next change, the file
                    // saying what the agent did not run): the file is not what the agent
                    // wrote.
                    tokio::time::sleep(SETTLE).await;
                    let reading = changes.reading();
                    while rx.try_recv().is_ok() {}
                    let wrote = self.wrote.take();
                    let now = std::fs::read_to_string(&self.path).ok();
                    if wrote.is_none() || now == wrote {
                        changes.read(reading);
                        continue;
                    }
                    "file change"
                }
            };
            tracing::debug!(%trigger, "reload asked; waiting for the writes to settle");
            // Let a burst of writes finish, and take them as one.
            tokio::time::sleep(SETTLE).await;
            let reading = changes.reading();
            let mut trigger = trigger;
            while let Ok(t) = rx.try_recv() {
                if t == "SIGHUP" {
                    trigger = t;
                }
            }
            let ok = self.reload(trigger, &stop).await.ok;
            // Functions scaled to zero whose file holds another version waited for this.
            changes.read(reading);
            if ok && watcher.is_some() {
                // Module paths may have changed: watch what is in force now.
                watcher = Some(self.watch(tx.clone()));
            }
        }
        drop(watcher);
    }

    /// `edge-agent promote FUNCTION`: the config file rewritten with the function's shadow
    /// made primary and its primary made shadow, then reloaded; the reload's report (or why
    /// nothing was done).
    async fn promote(
        &mut self,
        function: &str,
        force: bool,
        stop: &CancellationToken,
    ) -> ReloadReport {
        let trigger = "promote";
        // A shadow that failed every event it was given would fail every event as the
        // primary (until 2026-12-07 it was promoted all the same, without a word).
        let failed_all = self
            .parts
            .lanes
            .stats()
            .get(function)
            .and_then(|s| s.shadow_report())
            .filter(|r| r.shadow_failed > 0 && r.matches + r.mismatches == 0);
        if let (Some(r), false) = (failed_all, force) {
            let why = format!(
                "its shadow failed all {} events it was given and compared none: as the \
                 primary it would fail every event (see its shadow report; --force promotes \
                 it anyway)",
                r.shadow_failed
            );
            tracing::warn!(%function, "promote refused: {why}");
            return ReloadReport::refused(trigger, why);
        }
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("cannot read {}: {e}", self.path.display()))
            .and_then(|text| {
                crate::config::promote::promote(&self.path, &text, function)
                    .map_err(|e| e.to_string())
            });
        let text = match text {
            Ok(t) => t,
            Err(why) => {
                tracing::warn!(%function, "promote refused: {why}");
                return ReloadReport::refused(trigger, why);
            }
        };
        let report = match self.rewrite(trigger, text, stop).await {
            Ok(r) => r,
            Err(e) => {
                let why = format!("cannot write {}: {e}", self.path.display());
                tracing::warn!(%function, "promote refused: {why}");
                return ReloadReport::refused(trigger, why);
            }
        };
        if report.ok {
            tracing::info!(%function, file = %self.path.display(), "promoted: the shadow's version is the primary now, the old one its shadow");
        }
        report
    }

    /// The config file replaced by `text` (atomically, with its permissions) and reloaded;
    /// if the reload is refused, or puts the new config in force only in part (an added
    /// function could not start), the file goes back to what it was and so do the running
    /// functions. The reload's report, or why the file could not be read or written
    /// (nothing changed).
    async fn rewrite(
        &mut self,
        trigger: &str,
        text: String,
        stop: &CancellationToken,
    ) -> std::io::Result<ReloadReport> {
        let before = std::fs::read_to_string(&self.path)?;
        if let Err(e) = blocking(|| crate::files::replace(&self.path, text.as_bytes())) {
            tracing::warn!(%trigger, file = %self.path.display(), "cannot write the config file: {e}");
            return Err(e);
        }
        self.wrote = Some(text);
        let report = self.reload(trigger, stop).await;
        if !report.ok {
            let _ = blocking(|| crate::files::replace(&self.path, before.as_bytes()));
            self.wrote = Some(before);
            // Some of it was put in force: take it back too.
            if report.error.is_none() {
                tracing::warn!(%trigger, "the new config did not come up in full; going back to the one before");
                self.reload(&format!("{trigger} roll-back"), stop).await;
            }
        }
        Ok(report)
    }

    /// Reads the config again and puts what changed in force; publishes the report and
    /// returns it.
    async fn reload(&mut self, trigger: &str, stop: &CancellationToken) -> ReloadReport {
        let outcome = match blocking(|| self.plan()) {
            // The agent began to stop while the modules were loading: nothing goes in force.
            Ok(_) if stop.is_cancelled() => Err(Refused::Stopping),
            Ok(plan) => Ok(self.apply(plan, stop).await),
            Err(why) => Err(why),
        };
        let body = match &outcome {
            Ok(done) => {
                for (function, sha) in &done.changed {
                    tracing::info!(%function, sha256 = %sha, %trigger, "reloaded");
                }
                for (function, sha) in &done.added {
                    tracing::info!(%function, sha256 = %sha, %trigger, "function added");
                }
                if done.changed.is_empty() && done.added.is_empty() && done.removed.is_empty() {
                    tracing::info!(%trigger, "reload: nothing changed");
                }
                let list = |l: &[(String, Arc<str>)]| -> Vec<ReloadedFunction> {
                    l.iter()
                        .map(|(f, s)| ReloadedFunction {
                            function: f.clone(),
                            sha256: s.to_string(),
                        })
                        .collect()
                };
                let (changed, added) = (list(&done.changed), list(&done.added));
                let failed = done
                    .failed
                    .iter()
                    .map(|(function, error)| FailedFunction {
                        function: function.clone(),
                        error: error.clone(),
                    })
                    .collect();
                ReloadReport::done(trigger, changed, added, done.removed.clone(), failed)
            }
            Err(refused) => {
                let why = refused.to_string();
                tracing::warn!(%trigger, "reload refused, the running version stays: {why}");
                // What the refused plan compiled into the cache is in force nowhere: until
                // 2026-12-08 it stayed until the next reload that succeeded, one entry (40
                // MB for Python or JavaScript) per change while a pin kept failing (a probe).
                self.prune_compile_cache();
                ReloadReport::refused(trigger, why)
            }
        };
        let qos = rumqttc::QoS::AtLeastOnce;
        let sent = self.parts.publisher.publish(
            self.topic.clone(),
            qos,
            false,
            body.to_bytes(),
            None,
            None,
        );
        match tokio::time::timeout(Duration::from_secs(5), sent).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(%trigger, "reload report not published: {e}"),
            Err(_) => {
                tracing::warn!(%trigger, "reload report not sent: the output connection took no request for 5 s")
            }
        }
        body
    }
}

/// Drops the state copies of shadows that `config` no longer runs (logged; a failure
/// only leaves them on disk).
pub(super) fn drop_stale_shadows(state: &StateStore, config: &Config) {
    let sides = config.shadow_sides();
    match state.drop_shadow_namespaces(|name| sides.iter().any(|s| s == name)) {
        Ok(dropped) if !dropped.is_empty() => {
            tracing::info!(namespaces = ?dropped, "state of shadows no longer configured dropped");
        }
        Ok(_) => {}
        // Not open yet (a full disk at start-up): the next start drops them.
        Err(crate::state::StateError::Reopening) => {}
        Err(e) => tracing::warn!("cannot drop the state of removed shadows: {e}"),
    }
}

/// Runs `work`, which blocks (compiling takes a while), off the async workers' hands on a
/// multi-threaded runtime; on a current-thread runtime, where `block_in_place` panics,
/// there are no other workers to keep free, so in place.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => work(),
        _ => tokio::task::block_in_place(work),
    }
}

/// The files whose changes reload with `config` (at `path`) in force: the config and every
/// module, and for one that is a symbolic link the file it leads to (edited in place in
/// another directory, it was never seen until 2026-12-07; a Kubernetes ConfigMap's swap of
/// `..data` removes the file the old link led to, which is seen too).
fn watched_files(path: &Path, config: &Config) -> BTreeSet<PathBuf> {
    std::iter::once(path.to_path_buf())
        .chain(
            config
                .functions
                .iter()
                .flat_map(|f: &FunctionConfig| {
                    let shadow = f.shadow.as_ref().and_then(|s| s.module.clone());
                    std::iter::once(f.module.clone()).chain(shadow)
                })
                .map(|m| std::path::absolute(&m).unwrap_or(m)),
        )
        .flat_map(|f| {
            let target = std::fs::canonicalize(&f).ok().filter(|t| *t != f);
            let links = links_on_the_way(&f);
            std::iter::once(f).chain(target).chain(links)
        })
        .collect()
}

/// The symbolic links met on the way from `file` to what it leads to, other than `file`
/// itself: for a ConfigMap's `agent.toml -> ..data/agent.toml`, `..data`, whose swap to
/// a new version (renamed over) is the change, in a directory already watched.
fn links_on_the_way(file: &Path) -> Vec<PathBuf> {
    let mut links = Vec::new();
    let mut at = file.to_path_buf();
    // As many hops as the kernel follows.
    for _ in 0..40 {
        let Ok(to) = std::fs::read_link(&at) else {
            break;
        };
        at = at.parent().map_or_else(|| to.clone(), |dir| dir.join(&to));
        links.extend(
            at.ancestors()
                .skip(1)
                .filter(|a| a.is_symlink())
                .map(Path::to_path_buf),
        );
    }
    links
}
#[cfg(test)]
mod tests {
    use super::*;

    /// A ConfigMap's layout: `agent.toml -> ..data/agent.toml`, `..data -> v1`.
    #[test]
    fn the_links_on_the_way_to_a_config_are_watched_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::create_dir(d.join("v1")).unwrap();
        std::fs::write(d.join("v1/agent.toml"), "").unwrap();
        std::os::unix::fs::symlink("v1", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/agent.toml", d.join("agent.toml")).unwrap();
        assert_eq!(links_on_the_way(&d.join("agent.toml")), [d.join("..data")]);
        assert!(links_on_the_way(&d.join("v1/agent.toml")).is_empty());
    }

    fn config(text: &str) -> Config {
        crate::config::from_toml(std::path::Path::new("t.toml"), text).unwrap()
    }

    #[test]
    fn module_pin_config_and_the_set_of_functions_reload_the_rest_restarts() {
        let base = "[broker]\nurl = \"mqtt://127.0.0.1:1\"\n[[function]]\nname = \"f\"\n\
                    module = \"a.wasm\"\ntopics = [\"a/#\"]\n";
        let old = config(base);
        let in_place = config(&format!(
            "{}sha256 = \"{}\"\n[function.config]\nk = \"v\"\n",
            base.replace("a.wasm", "b.wasm"),
            "0".repeat(64)
        ));
        assert_eq!(needs_restart(&old, &in_place), None);
        let shadowed = config(&format!("{base}[function.shadow]\nfraction = 0.5\n"));
        assert_eq!(needs_restart(&old, &shadowed), None, "a shadow reloads");
        let topics = config(&base.replace("a/#", "b/#"));
        let why = needs_restart(&old, &topics).unwrap_or_default();
        assert!(why.contains("function `f`: topics changed"), "{why}");
        let broker = config(&base.replace(":1\"", ":2\""));
        let why = needs_restart(&old, &broker).unwrap_or_default();
        assert!(why.contains("[broker] url changed"), "{why}");
        let added = config(&format!(
            "{base}[[function]]\nname = \"g\"\nmodule = \"a.wasm\"\ntopics = [\"g/#\"]\n"
        ));
        assert_eq!(needs_restart(&old, &added), None, "adding reloads");
        assert_eq!(needs_restart(&added, &old), None, "removing reloads");
    }
}
