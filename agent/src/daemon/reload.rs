//! Hot reload: on SIGHUP, or (with `agent.watch`, the default) when the config file or a
//! module file changes, the agent reads its config again and puts new versions of its
//! functions in force without a restart and without losing or repeating an event.
//!
//! What reloads: a function's module (new content at the same path, or another path), its
//! `sha256` pin and its `[function.config]`. Every changed function is loaded and checked
//! (linked, started once within its limits) before any is put in force; if one fails,
//! none is, and the old versions keep running. Nothing in the pipeline stops: queued events
//! and the next ones go to the new version, calls in flight finish on the old one, and a
//! persistent instance finishes its current event and moves to a fresh instance of the new
//! version (its state is in the store). Anything else (functions added or removed, topics,
//! models, limits, the broker...) needs a restart: the reload is refused, saying which
//! keys, and nothing changes.
//!
//! Each reload is logged and published (QoS 1, not retained) on `<prefix>/<id>/reload`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, FunctionConfig};
use crate::publisher::Publisher;
use crate::runtime::LoadedFunction;

/// How long to wait for more changes after one (editors and cargo write in steps).
const SETTLE: Duration = Duration::from_millis(300);

/// Keys of a function that a reload can change in place.
const IN_PLACE: [&str; 3] = ["module", "sha256", "config"];

/// Reloads the agent's functions when asked.
pub struct Reloader {
    /// The config file, absolute.
    path: PathBuf,
    /// The config in force.
    config: Config,
    functions: BTreeMap<String, Arc<LoadedFunction>>,
    publisher: Arc<Publisher>,
    topic: String,
    /// The birth message on the status topic, which names each module's hash.
    birth: tokio::sync::watch::Sender<Vec<u8>>,
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
    let names =
        |c: &Config| -> BTreeSet<String> { c.functions.iter().map(|f| f.name.clone()).collect() };
    let (was, now) = (names(old), names(new));
    if was != now {
        let list = |what: &str, names: Vec<String>| {
            (!names.is_empty()).then(|| format!("functions {what} ({})", names.join(", ")))
        };
        let said: Vec<String> = [
            list("added", now.difference(&was).cloned().collect()),
            list("removed", was.difference(&now).cloned().collect()),
        ]
        .into_iter()
        .flatten()
        .collect();
        return Some(format!("{}: that needs a restart", said.join(" and ")));
    }
    for f in &new.functions {
        let before = old.functions.iter().find(|o| o.name == f.name)?;
        let keys = changed_keys(&json(before), &json(f), &IN_PLACE);
        if !keys.is_empty() {
            return Some(format!(
                "function `{}`: {} changed: that needs a restart (a reload changes module, \
                 sha256 and [function.config])",
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
    let functions: Vec<serde_json::Value> = config
        .functions
        .iter()
        .map(|f| {
            serde_json::json!({
                "name": f.name,
                "mode": f.mode.as_str(),
                "module": f.module.file_name().map(|n| n.to_string_lossy()),
                "sha256": loaded(&f.name).map(|l| l.sha256().to_string()),
            })
        })
        .collect();
    crate::mqtt::options::birth(&serde_json::Value::from(functions))
}

impl Reloader {
    /// A reloader for the agent running `config` with `functions`.
    pub fn new(
        config: &Config,
        functions: BTreeMap<String, Arc<LoadedFunction>>,
        publisher: Arc<Publisher>,
        birth: tokio::sync::watch::Sender<Vec<u8>>,
    ) -> Self {
        Self {
            path: std::path::absolute(&config.source).unwrap_or_else(|_| config.source.clone()),
            config: config.clone(),
            functions,
            publisher,
            topic: format!("{}/{}/reload", config.agent.topic_prefix, config.agent.id),
            birth,
        }
    }

    /// Reads the config again and puts every changed function in force, or none. Returns
    /// the functions that changed, with their new modules' hashes.
    ///
    /// # Errors
    /// Why nothing was reloaded: the config is invalid, a change needs a restart, or a
    /// changed module cannot be loaded.
    pub fn reload(&mut self) -> Result<Vec<(String, Arc<str>)>, String> {
        let new = Config::load(&self.path).map_err(|e| {
            e.each()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        if let Some(why) = needs_restart(&self.config, &new) {
            return Err(why);
        }
        let mut next = Vec::new();
        for f in &new.functions {
            let Some(loaded) = self.functions.get(&f.name) else {
                continue;
            };
            if let Some(version) = loaded.prepare(f).map_err(|e| e.to_string())? {
                next.push((loaded.clone(), version));
            }
        }
        let mut changed = Vec::new();
        for (loaded, version) in next {
            let sha: Arc<str> = version.sha256().into();
            loaded.commit(version);
            changed.push((loaded.name().to_string(), sha));
        }
        self.config = new;
        if !changed.is_empty() {
            let functions = &self.functions;
            let body = birth(&self.config, |name| functions.get(name).cloned());
            self.birth.send_replace(body);
        }
        Ok(changed)
    }

    /// The files whose changes reload: the config and every module.
    fn watched_files(&self) -> BTreeSet<PathBuf> {
        std::iter::once(self.path.clone())
            .chain(self.config.functions.iter().map(|f: &FunctionConfig| {
                std::path::absolute(&f.module).unwrap_or_else(|_| f.module.clone())
            }))
            .collect()
    }

    /// Watches the directories of the config and the modules (files are often replaced,
    /// not written in place) and sends on `tx` when one of those files changes.
    fn watch(&self, tx: mpsc::Sender<&'static str>) -> Option<notify::RecommendedWatcher> {
        use notify::{EventKind, RecursiveMode, Watcher};
        let files = self.watched_files();
        let interesting = files.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res
                && matches!(
                    ev.kind,
                    EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
                )
                && ev.paths.iter().any(|p| interesting.contains(p))
            {
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

    /// Reloads on SIGHUP and (with `agent.watch`) on file changes, until `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        let (tx, mut rx) = mpsc::channel(16);
        let hup = tx.clone();
        let hangups = tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut signals) = signal(SignalKind::hangup()) else {
                return;
            };
            while signals.recv().await.is_some() {
                if hup.send("SIGHUP").await.is_err() {
                    return;
                }
            }
        });
        let mut watcher = self.config.agent.watch.then(|| self.watch(tx.clone()));
        loop {
            let trigger = tokio::select! {
                () = stop.cancelled() => break,
                t = rx.recv() => match t { Some(t) => t, None => break },
            };
            // Let a burst of writes finish, and take them as one.
            tokio::time::sleep(SETTLE).await;
            let mut trigger = trigger;
            while let Ok(t) = rx.try_recv() {
                if t == "SIGHUP" {
                    trigger = t;
                }
            }
            // Compiling can take a while: off the async workers' hands.
            let outcome = tokio::task::block_in_place(|| self.reload());
            let body = match &outcome {
                Ok(changed) => {
                    for (function, sha) in changed {
                        tracing::info!(%function, sha256 = %sha, %trigger, "reloaded");
                    }
                    if changed.is_empty() {
                        tracing::info!(%trigger, "reload: nothing changed");
                    }
                    let reloaded: Vec<_> = changed
                        .iter()
                        .map(|(f, s)| serde_json::json!({ "function": f, "sha256": &**s }))
                        .collect();
                    serde_json::json!({ "ok": true, "trigger": trigger, "reloaded": reloaded })
                }
                Err(why) => {
                    tracing::warn!(%trigger, "reload refused, the running version stays: {why}");
                    serde_json::json!({ "ok": false, "trigger": trigger, "error": why })
                }
            };
            let mut body = body;
            body["ts_ms"] = crate::clock::now_ms().into();
            let qos = rumqttc::QoS::AtLeastOnce;
            let sent = self.publisher.publish(
                self.topic.clone(),
                qos,
                false,
                body.to_string().into_bytes(),
                None,
            );
            let _ = tokio::time::timeout(Duration::from_secs(5), sent).await;
            if outcome.is_ok() && watcher.is_some() {
                // Module paths may have changed: watch what is in force now.
                watcher = Some(self.watch(tx.clone()));
            }
        }
        hangups.abort();
        drop(watcher);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        crate::config::from_toml(std::path::Path::new("t.toml"), text)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn only_module_pin_and_function_config_reload_in_place() {
        let base = "[broker]\nurl = \"mqtt://127.0.0.1:1\"\n[[function]]\nname = \"f\"\n\
                    module = \"a.wasm\"\ntopics = [\"a/#\"]\n";
        let old = config(base);
        let in_place = config(&format!(
            "{}sha256 = \"{}\"\n[function.config]\nk = \"v\"\n",
            base.replace("a.wasm", "b.wasm"),
            "0".repeat(64)
        ));
        assert_eq!(needs_restart(&old, &in_place), None);
        let topics = config(&base.replace("a/#", "b/#"));
        let why = needs_restart(&old, &topics).unwrap_or_default();
        assert!(why.contains("function `f`: topics changed"), "{why}");
        let broker = config(&base.replace(":1\"", ":2\""));
        let why = needs_restart(&old, &broker).unwrap_or_default();
        assert!(why.contains("[broker] url changed"), "{why}");
        let added = config(&format!(
            "{base}[[function]]\nname = \"g\"\nmodule = \"a.wasm\"\ntopics = [\"g/#\"]\n"
        ));
        let why = needs_restart(&old, &added).unwrap_or_default();
        assert!(why.contains("functions added (g)"), "{why}");
    }
}
