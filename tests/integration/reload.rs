//! Hot reload under load: modules replaced on disk and config edits (a function changed,
//! added and removed) while numbered QoS 1 events stream in; every event is handled exactly
//! once, and a function's events are handled from its addition to its removal.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use edge_agent::messages::{ReloadReport, ReloadedFunction, Status};

use crate::harness::{Client, Mosquitto, Process, eventually, files_under, guest, session_present};

/// Replaces `dst` with a copy of `src` the way build tools and deploy scripts do: written
/// beside it, then renamed over it.
fn replace(src: &str, dst: &std::path::Path) {
    let tmp = dst.with_extension("tmp");
    std::fs::copy(src, &tmp).expect("copy module");
    std::fs::rename(&tmp, dst).expect("rename module");
}

fn config(broker: &Mosquitto, mods: &std::path::Path, od_extra: &str, tail: &str) -> String {
    format!(
        "[agent]\nid = \"reload\"\n[broker]\nurl = \"{}\"\n\
         [[function]]\nname = \"od\"\nmodule = \"{}\"\nmode = \"on-demand\"\ntopics = [\"od/in\"]\n\
         [function.config]\nout_topic = \"out/od\"\n{od_extra}\n\
         [[function]]\nname = \"p\"\nmodule = \"{}\"\nmode = \"persistent\"\ntopics = [\"p/in\"]\n\
         [function.config]\nout_topic = \"out/p\"\n{tail}",
        broker.url(),
        mods.join("od.wasm").display(),
        mods.join("p.wasm").display(),
    )
}

type Outputs = BTreeMap<(String, u64), Vec<String>>;

/// The functions named in one of a reload report's lists.
fn names(list: &Option<Vec<ReloadedFunction>>) -> Vec<&str> {
    list.iter().flatten().map(|f| f.function.as_str()).collect()
}

/// Files an output under its function and sequence number, or a reload report.
fn take(m: crate::harness::Msg, outputs: &mut Outputs, reloads: &mut Vec<ReloadReport>) {
    if m.topic.ends_with("/reload") {
        reloads.push(m.message());
        return;
    }
    let text = m.text();
    let seq = text
        .rsplit(':')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("seq");
    let function = m.topic.trim_start_matches("out/").to_string();
    outputs.entry((function, seq)).or_default().push(text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_swapped_and_config_edited_under_load_lose_and_repeat_nothing() {
    let broker = Mosquitto::start();
    let mods = tempfile::tempdir().expect("tempdir");
    let (echo, misbehave) = (guest("echo"), guest("misbehave"));
    for f in ["od.wasm", "p.wasm"] {
        replace(&echo, &mods.path().join(f));
    }
    let agent = Process::start(
        &config(&broker, mods.path(), "", ""),
        broker.port,
        "reload",
        &[],
    )
    .await;
    let mut c = Client::connect(broker.port, &["out/#", "edge-agent/reload/reload"]).await;
    // Numbered events to `x/in` all along, for a function that a reload adds and another
    // removes. `x_next` is the number of the next one, counted before it is published.
    // They take 10 ms each, at 200/s, and x's queue holds 16: its queue is full and the
    // broker holds the rest (backpressure) when it is removed, all of which must be handled.
    let (x_next, x_stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let x_stream = {
        let (next, stop) = (x_next.clone(), x_stop.clone());
        let publisher = Client::connect(broker.port, &[]).await;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                let seq = next.fetch_add(1, Ordering::SeqCst);
                publisher
                    .publish("x/in", format!("slow-echo:10:{seq}"))
                    .await;
            }
            publisher
        })
    };
    // Numbered events to both functions, 200/s each for 15 s, while modules and config change.
    // `slow-echo:0:N`: misbehave answers `N`, echo answers the payload itself.
    let publisher = Client::connect(broker.port, &[]).await;
    let events = 3_000u64;
    let stream = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        for seq in 0..events {
            tick.tick().await;
            for f in ["od", "p"] {
                publisher
                    .publish(&format!("{f}/in"), format!("slow-echo:0:{seq}"))
                    .await;
            }
        }
        publisher
    });
    let mut reloads = Vec::new();
    let mut outputs = Outputs::new();
    // Each change waits for the agent's report of its reload, so that every one is seen
    // (changes closer together than a reload takes are read as one, the last winning).
    async fn next_report(
        c: &mut Client,
        outputs: &mut Outputs,
        reloads: &mut Vec<ReloadReport>,
        agent: &Process,
    ) -> ReloadReport {
        let before = reloads.len();
        // Generous: under a loaded 2-core runner (the Python and JavaScript tests compiling
        // beside it) the first report once took over 20 s; a missed change fails anyway.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while reloads.len() == before {
            assert!(
                std::time::Instant::now() < deadline,
                "no reload report within 60 s (after {before} reports: {reloads:?})\n{}",
                agent.log_text()
            );
            for m in c.drain(Duration::from_millis(100)).await {
                take(m, outputs, reloads);
            }
        }
        reloads[before].clone()
    }
    // Ten swaps: misbehave and echo in turn, both functions at once.
    for i in 0..10 {
        let src = if i % 2 == 0 { &misbehave } else { &echo };
        replace(src, &mods.path().join("od.wasm"));
        replace(src, &mods.path().join("p.wasm"));
        // Usually one reload of both; two when the runner is so loaded that the second
        // file lands after the reloader's settle time (each a whole swap of its own).
        let mut swapped = BTreeSet::new();
        let mut report = None;
        while swapped.len() < 2 {
            let r = next_report(&mut c, &mut outputs, &mut reloads, &agent).await;
            assert!(r.ok, "swap {i}: {r:?}");
            // (A change seen by a reload that had read the file already is one that
            // changes nothing: a report without functions.)
            swapped.extend(names(&r.reloaded).into_iter().map(str::to_string));
            if r.reloaded.as_ref().is_some_and(|f| !f.is_empty()) {
                report = Some(r);
            }
        }
        let report = report.expect("a report");
        if i == 0 {
            // The retained birth message follows: it names the version now in force.
            let mut presence = Client::connect(broker.port, &["edge-agent/reload/status"]).await;
            let want = report.reloaded.as_ref().map(|r| r[0].sha256.clone());
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                // The retained message, then (if that was older) the new one.
                let birth: Status = presence.recv().await.message();
                if birth.functions.as_ref().and_then(|f| f[0].sha256.clone()) == want {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{birth:?} never named {want:?}"
                );
            }
        }
    }
    // Config edits: a [function.config] value (in place); a function added (persistent,
    // two instances); its topics changed (needs a restart: refused, the running version
    // stays); the function removed and the value back.
    let path = agent.config_path();
    let x = format!(
        "[[function]]\nname = \"x\"\nmodule = \"{misbehave}\"\nmode = \"persistent\"\n\
         instances = 2\nqueue_capacity = 16\ntopics = [\"x/in\"]\n[function.config]\nout_topic = \"out/x\"\n"
    );
    let edit = |od_extra: &str, tail: &str| {
        std::fs::write(&path, config(&broker, mods.path(), od_extra, tail)).expect("edit config")
    };
    edit("note = \"b\"", "");
    let report = next_report(&mut c, &mut outputs, &mut reloads, &agent).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(names(&report.reloaded), ["od"], "{report:?}");
    edit("note = \"b\"", &x);
    let report = next_report(&mut c, &mut outputs, &mut reloads, &agent).await;
    // Reported once subscribed: every event from here on is x's.
    let added_at = x_next.load(Ordering::SeqCst);
    assert!(report.ok, "{report:?}");
    assert_eq!(names(&report.added), ["x"], "{report:?}");
    assert_eq!(report.reloaded, Some(Vec::new()), "{report:?}");
    edit("note = \"b\"", &x.replace("x/in", "x/other"));
    let report = next_report(&mut c, &mut outputs, &mut reloads, &agent).await;
    assert!(!report.ok, "{report:?}");
    let why = report.error.as_deref().unwrap_or_default();
    assert!(why.contains("function `x`: topics changed"), "{why}");
    // x's stream goes on while it is subscribed, enough events to count.
    eventually("50 more events for x while it runs", || {
        x_next.load(Ordering::SeqCst) > added_at + 50
    })
    .await;
    // Every event before this one reaches the broker before the reload unsubscribes x.
    let removed_at = x_next.load(Ordering::SeqCst);
    edit("", "");
    let report = next_report(&mut c, &mut outputs, &mut reloads, &agent).await;
    // Reported once drained and unsubscribed: no event from here on is x's.
    let gone_at = x_next.load(Ordering::SeqCst);
    assert!(report.ok, "{report:?}");
    assert_eq!(report.removed, Some(vec!["x".to_string()]), "{report:?}");
    // Its broker session ends too, once its intake has disconnected (its receipts with it).
    eventually("x's broker session ended", || {
        agent
            .log_text()
            .lines()
            .any(|l| l.contains("no longer configured ended") && l.contains("function=x"))
    })
    .await;
    let sessions = path
        .parent()
        .expect("the agent's folder")
        .join("data/sessions");
    // Removed once the receipts' removal is on disk, after that line.
    eventually("x's session file removed with its session", || {
        !files_under(&sessions).iter().any(|f| f.ends_with(".x"))
    })
    .await;
    assert!(
        !session_present(broker.port, "edge-agent-reload.x").await,
        "the broker kept x's session"
    );
    // And after its removal: none of these may reach it.
    eventually("50 more events for x after its removal", || {
        x_next.load(Ordering::SeqCst) > gone_at + 50
    })
    .await;
    x_stop.store(true, Ordering::SeqCst);
    let _x_publisher = x_stream.await.expect("x publisher");
    let x_last = x_next.load(Ordering::SeqCst);
    assert!(
        removed_at > added_at + 50 && x_last > gone_at + 50,
        "{added_at} {removed_at} {gone_at} {x_last}"
    );
    let _publisher = stream.await.expect("publisher");
    // SIGHUP reloads too (and does not end the agent): nothing changed since.
    agent.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let main = |o: &Outputs| o.keys().filter(|(f, _)| f != "x").count();
    while main(&outputs) < 2 * events as usize || !reloads.iter().any(|r| r.trigger == "SIGHUP") {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {} outputs, reloads {reloads:?}\n{}",
            main(&outputs),
            2 * events,
            agent.log_text()
        );
        for m in c.drain(Duration::from_millis(200)).await {
            take(m, &mut outputs, &mut reloads);
        }
    }
    // x: each event at most once; every one between its addition and its removal exactly
    // once (whatever was queued when it was removed was handled); none after.
    let x_out = |seq: u64| outputs.get(&("x".to_string(), seq)).map_or(0, Vec::len);
    for seq in 0..x_last {
        let want = if (added_at..removed_at).contains(&seq) {
            1..=1
        } else if seq >= gone_at {
            0..=0
        } else {
            0..=1
        };
        assert!(
            want.contains(&x_out(seq)),
            "x event {seq}: {} outputs (added at {added_at}, removed at {removed_at}, gone at {gone_at})\n{}",
            x_out(seq),
            agent.log_text()
        );
    }
    // Exactly once each, and both versions did part of the work in both models.
    for f in ["od", "p"] {
        for seq in 0..events {
            let got = outputs.get(&(f.to_string(), seq)).map_or(0, Vec::len);
            assert_eq!(got, 1, "{f} event {seq}: {got} outputs");
        }
        let by_echo = (0..events)
            .filter(|s| outputs[&(f.to_string(), *s)][0].starts_with("slow-echo"))
            .count();
        assert!(
            by_echo > 0 && by_echo < events as usize,
            "{f}: {by_echo} of {events} by echo; reloads {reloads:?}\n{}",
            agent.log_text()
        );
    }
    // Each swap reloaded both functions once; the config value edit `od`; the topics change
    // was refused; the revert reloaded `od`; SIGHUP nothing. No reload twice.
    let reloaded: usize = reloads
        .iter()
        .filter(|r| r.ok)
        .map(|r| r.reloaded.as_ref().map_or(0, Vec::len))
        .sum();
    assert_eq!(reloaded, 10 * 2 + 2, "{reloads:#?}");
    let refused: Vec<_> = reloads.iter().filter(|r| !r.ok).collect();
    assert_eq!(refused.len(), 1, "{reloads:#?}");
    let hup = reloads
        .iter()
        .find(|r| r.trigger == "SIGHUP")
        .expect("SIGHUP");
    assert_eq!(hup.reloaded, Some(Vec::new()), "{hup:?}");
    let (status, log) = agent.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("persistent instance moved to the reloaded version"),
        "{log}"
    );
    assert!(
        log.contains("function removed: queue drained, intake disconnected"),
        "{log}"
    );
}

/// A config that is a symbolic link into another directory (`/etc/edge-agent/config.toml`
/// leading to a checkout, or a Kubernetes ConfigMap): an edit in place of the file it
/// leads to reloads, as an edit of the config itself does (a probe, 2026-12-07: never seen;
/// events kept the old config until a SIGHUP).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_behind_a_symbolic_link_reloads() {
    let id = crate::harness::unique("symlink");
    let config = |out: &str| {
        crate::harness::embedded(&id)
            + &format!(
                "\n[[function]]\nname = \"e\"\nmodule = \"{}\"\ntopics = [\"in\"]\n\
                 [function.config]\nout_topic = \"{out}\"\n",
                guest("echo")
            )
    };
    let agent = crate::harness::Agent::start(&config("out/a")).await;
    let reloads = format!("edge-agent/{id}/reload");
    let mut c = Client::connect(agent.port, &["out/#", &reloads]).await;
    let reloaded = |m: crate::harness::Msg| {
        assert!(m.text().contains("\"ok\":true"), "{}", m.text());
    };
    // The config becomes a link to a file elsewhere (renamed over it, as tools do).
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let target = elsewhere.path().join("agent.toml");
    std::fs::write(&target, config("out/b")).expect("write the target");
    let link = agent.dir().join("agent.toml");
    let beside = agent.dir().join("agent.toml.new");
    std::os::unix::fs::symlink(&target, &beside).expect("symlink");
    std::fs::rename(&beside, &link).expect("rename the link over the config");
    reloaded(c.recv_on(&reloads).await);
    c.publish("in", "1").await;
    assert_eq!(c.recv_on("out/b").await.text(), "1");
    // The file it leads to, edited in place.
    std::fs::write(&target, config("out/c")).expect("edit the target");
    reloaded(c.recv_on(&reloads).await);
    c.publish("in", "2").await;
    assert_eq!(c.recv_on("out/c").await.text(), "2");
}

/// A module replaced by a reload leaves no compiled version behind in the compile cache
/// (until 2026-12-08 each stayed until the next start, and a probe's 40 versions filled a
/// small data disk).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_removes_the_compiled_versions_no_function_uses() {
    let id = crate::harness::unique("prune");
    let dir = tempfile::tempdir().expect("tempdir");
    let module = dir.path().join("m.wasm");
    std::fs::copy(guest("echo"), &module).expect("copy module");
    let shadow = dir.path().join("s.wasm");
    std::fs::copy(guest("counter"), &shadow).expect("copy shadow");
    let config = |shadow: &std::path::Path| {
        crate::harness::embedded(&id)
            + &format!(
                "\n[[function]]\nname = \"e\"\nmodule = \"{}\"\ntopics = [\"in\"]\n\
                 [function.config]\nout_topic = \"out\"\n[function.shadow]\nmodule = \"{}\"\n",
                module.display(),
                shadow.display()
            )
    };
    let second = dir.path().join("s2.wasm");
    std::fs::copy(guest("rolling-average"), &second).expect("copy shadow");
    let agent = crate::harness::Agent::start_in(dir, &config(&shadow)).await;
    let compiled = agent.dir().join("data/compiled");
    let entries = || files_under(&compiled).len();
    assert_eq!(entries(), 2, "the first versions, compiled");
    let reloads = format!("edge-agent/{id}/reload");
    let mut c = Client::connect(agent.port, &["out", &reloads]).await;
    // The function's module twice, then its shadow's (whose first version, loaded at the
    // start, stayed until 2026-12-08), by the config.
    // Then the shadow's file replaced in place, which no reload read until 2026-12-08.
    for version in [
        "rolling-average",
        "echo",
        "the shadow's",
        "the shadow's file",
    ] {
        match version {
            "the shadow's" => std::fs::write(agent.dir().join("agent.toml"), config(&second))
                .expect("edit the config"),
            "the shadow's file" => replace(&guest("counter"), &second),
            _ => replace(&guest(version), &module),
        }
        let report = c.recv_on(&reloads).await.text();
        assert!(report.contains("\"ok\":true"), "{report}");
        if version == "the shadow's file" {
            assert!(
                report.contains("\"reloaded\":[{\"function\":\"e\""),
                "{report}"
            );
        }
        assert_eq!(
            entries(),
            2,
            "after the reload to {version}: {:?}",
            files_under(&compiled)
        );
    }
    // A wrong pin on the module in force: refused, as a start would refuse it (a reload
    // that kept the module in memory took it for a moment, 2026-12-08).
    // (Without the shadow, which would inherit the pin and be refused on its own.)
    let pinned = config(&second)
        .replace(
            "topics = [\"in\"]",
            &format!("sha256 = \"{}\"\ntopics = [\"in\"]", "0".repeat(64)),
        )
        .replace(
            &format!("[function.shadow]\nmodule = \"{}\"\n", second.display()),
            "",
        );
    assert!(!pinned.contains("shadow"), "{pinned}");
    std::fs::write(agent.dir().join("agent.toml"), &pinned).expect("edit the config");
    let report = c.recv_on(&reloads).await.text();
    assert!(
        report.contains("\"ok\":false") && report.contains("but the config pins"),
        "{report}"
    );
    // A function added meanwhile is compiled, and refused with the rest: what it compiled
    // goes too (until 2026-12-08 it stayed until a reload succeeded).
    let third = agent.dir().join("r.wasm");
    std::fs::copy(guest("rolling-average"), &third).expect("copy module");
    let added = format!(
        "{pinned}\n[[function]]\nname = \"g\"\nmodule = \"{}\"\ntopics = [\"g\"]\n",
        third.display()
    );
    std::fs::write(agent.dir().join("agent.toml"), added).expect("edit the config");
    let report = c.recv_on(&reloads).await.text();
    assert!(report.contains("\"ok\":false"), "{report}");
    assert_eq!(entries(), 2, "{:?}", files_under(&compiled));
    c.publish("in", "still echoed").await;
    assert_eq!(c.recv_on("out").await.text(), "still echoed");
}

/// A function scaled to zero loads the version in force again, not what its module file
/// holds now: with `watch = false` (no reload) a replaced file ran from the next event
/// until 2026-12-08.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_scaled_to_zero_comes_back_as_the_version_in_force() {
    let id = crate::harness::unique("zero");
    let dir = tempfile::tempdir().expect("tempdir");
    let module = dir.path().join("m.wasm");
    std::fs::copy(guest("echo"), &module).expect("copy module");
    let config = crate::harness::embedded(&id).replace("[broker]", "watch = false\n[broker]")
        + &format!(
            "\n[[function]]\nname = \"e\"\nmodule = \"{}\"\ntopics = [\"in\"]\n\
             keep_warm_secs = 1\n[function.config]\nout_topic = \"out\"\n",
            module.display()
        );
    let agent = crate::harness::Agent::start_in(dir, &config).await;
    let mut c = Client::connect(agent.port, &["out"]).await;
    c.publish("in", "a").await;
    assert_eq!(c.recv_on("out").await.text(), "a");
    replace(&guest("counter"), &module);
    // Past keep_warm_secs and the release's tick: unloaded.
    tokio::time::sleep(std::time::Duration::from_millis(2600)).await;
    c.publish("in", "b").await;
    assert_eq!(c.recv_on("out").await.text(), "b");
}

/// A function scaled to zero whose module file is replaced waits for the reload the file
/// watcher has coming, and the event is handled by the new version: until 2026-12-08
/// every event between the replacement and the reload was a dead letter when the version
/// in force was in no compile cache (a `.cwasm`, or `compile_cache = false`; a probe: 50
/// of 120).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_scaled_to_zero_waits_for_the_reload_of_its_replaced_module() {
    let id = crate::harness::unique("zerowatch");
    let dir = tempfile::tempdir().expect("tempdir");
    let module = dir.path().join("m.wasm");
    std::fs::copy(guest("echo"), &module).expect("copy module");
    let config = crate::harness::embedded(&id)
        + &format!(
            "[runtime]\ncompile_cache = false\n\
             [[function]]\nname = \"e\"\nmodule = \"{}\"\ntopics = [\"in\"]\n\
             keep_warm_secs = 1\n[function.config]\nout_topic = \"out\"\n",
            module.display()
        );
    let agent = crate::harness::Agent::start_in(dir, &config).await;
    let dlq = format!("edge-agent/{id}/dead-letter");
    let mut c = Client::connect(agent.port, &["out", dlq.as_str()]).await;
    c.publish("in", "a").await;
    assert_eq!(c.recv_on("out").await.text(), "a");
    // Past keep_warm_secs and the release's tick: unloaded.
    tokio::time::sleep(std::time::Duration::from_millis(2600)).await;
    replace(&guest("counter"), &module);
    c.publish("in", "b").await;
    let m = c.recv().await;
    assert_eq!(m.topic, "out", "{}", m.text());
    assert!(
        m.text().contains("\"count\":1"),
        "the new version: {}",
        m.text()
    );
    // Written in two steps, 150 ms apart: the event that comes between reads half a file,
    // and waits for the reload as well (until 2026-12-08 a dead letter, a probe).
    tokio::time::sleep(std::time::Duration::from_millis(2600)).await;
    let echo = std::fs::read(guest("echo")).expect("echo");
    std::fs::write(&module, &echo[..echo.len() / 2]).expect("half a module");
    c.publish("in", "c").await;
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    std::fs::write(&module, &echo).expect("the whole module");
    let m = c.recv().await;
    assert_eq!((m.topic.as_str(), m.text().as_str()), ("out", "c"));
}
