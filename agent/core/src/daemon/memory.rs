//! The memory the functions may take at once, against the memory the process has.
//!
//! Each function's limits are fine on their own, and every call stays within its
//! `memory_limit_mb`; but nothing bounds their sum. On a device, or under a cgroup limit
//! (a systemd `MemoryMax`, a container), guests that use what their limits allow can get
//! the whole agent killed by the kernel. The events in hand then come back after the
//! restart, and get it killed again: a probe (2026-12-08) saw 25 kills in a minute under a
//! 96 MiB limit with the default limits (an on-demand function may hold four calls of
//! 32 MiB), no dead letter, and healthy functions' events waiting 11 s. The start says so.

use crate::config::{Config, FunctionConfig, Mode};

/// What the agent itself takes besides its guests' memories (idle RSS 30-40 MB measured,
/// with buffers and the engine's code).
const AGENT_OWN_MB: u64 = 48;

/// How many instances `f` may have at once.
fn instances(f: &FunctionConfig) -> u32 {
    match f.mode {
        Mode::OnDemand => f.max_concurrency,
        Mode::Persistent => f.instances,
        Mode::Auto => f.max_concurrency.max(f.instances),
    }
}

/// The most linear memory `f`'s instances may hold at once, in MiB.
fn most_at_once(f: &FunctionConfig) -> u64 {
    f.memory_limit_mb * u64::from(instances(f))
}

/// The functions' (and their shadows' and controls') most memory at once, in MiB, and
/// the three that may take the most, in words. At most `runtime.max_instances` instances
/// are alive at once, all functions together: the largest that many count.
fn guests_at_once(config: &Config) -> (u64, Vec<String>) {
    let mut all: Vec<(u64, FunctionConfig)> = config
        .functions
        .iter()
        .flat_map(|f| [Some(f.clone()), f.shadow_function(), f.control_function()])
        .flatten()
        .map(|f| (most_at_once(&f), f))
        .collect();
    all.sort_by_key(|b| std::cmp::Reverse(b.0));
    // Persistent instances hold their slots for good; the other calls share the rest (a
    // probe found the four largest counted where three slots were persistent ones).
    let slots = |persistent: bool| -> Vec<u64> {
        let mut v: Vec<u64> = all
            .iter()
            .filter(|(_, f)| (f.mode == Mode::Persistent) == persistent)
            .flat_map(|(_, f)| std::iter::repeat_n(f.memory_limit_mb, instances(f) as usize))
            .collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v
    };
    let held = slots(true);
    let rest = (config.runtime.max_instances as usize).saturating_sub(held.len());
    let total = held.iter().sum::<u64>() + slots(false).iter().take(rest).sum::<u64>();
    let top = all
        .iter()
        .take(3)
        .map(|(mb, f)| {
            let n = if f.mode == Mode::Persistent {
                format!("{} instances", f.instances)
            } else {
                format!("max_concurrency {}", f.max_concurrency)
            };
            format!(
                "{} {mb} MiB ({n} x memory_limit_mb {})",
                f.name, f.memory_limit_mb
            )
        })
        .collect();
    (total, top)
}

/// The memory limit of this process's cgroup in bytes, its ancestors' included (a
/// limit set on a parent, a systemd slice, bounds it as well: a probe's was missed), if
/// there is one: v2 `memory.max` of each, v1 the kernel's `hierarchical_memory_limit`.
fn cgroup_limit() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    own.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        match controllers {
            "" => std::path::Path::new(path)
                .ancestors()
                .filter_map(|p| {
                    let file = format!("/sys/fs/cgroup{}/memory.max", p.display());
                    std::fs::read_to_string(file).ok().and_then(|v| limit(&v))
                })
                .min(),
            c if c.split(',').any(|c| c == "memory") => {
                let stat = format!("/sys/fs/cgroup/memory{path}/memory.stat");
                let stat = std::fs::read_to_string(stat).ok()?;
                stat.lines()
                    .find_map(|l| l.strip_prefix("hierarchical_memory_limit "))
                    .and_then(limit)
            }
            _ => None,
        }
    })
}

/// A cgroup limit as written: `max` (v2) or a number near `i64::MAX` (v1) is none.
fn limit(text: &str) -> Option<u64> {
    text.trim().parse::<u64>().ok().filter(|&b| b < 1 << 60)
}

/// The machine's memory in bytes (`MemTotal`).
fn mem_total() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}

/// The warning for guests that may take `guests` MiB at once in a process that has
/// `available` bytes (`from`: where that figure comes from), if they may not fit.
fn warning(guests: u64, top: &[String], available: u64, from: &str) -> Option<String> {
    let available_mb = available / (1024 * 1024);
    (guests + AGENT_OWN_MB > available_mb).then(|| {
        format!(
            "the functions may take {guests} MiB of memory at once (most: {}), and the agent \
             about {AGENT_OWN_MB} MiB more, but this process has {available_mb} MiB ({from}): \
             guests that use what their limits allow can get the agent killed by the kernel, \
             and the events in hand come back after the restart. Lower memory_limit_mb, \
             max_concurrency or instances (configs/constrained.toml is sized for a small \
             device), or give the process more memory",
            top.join(", ")
        )
    })
}

/// Warns at the start if the functions' memory limits together exceed the memory this
/// process has (its cgroup's limit, else the machine's).
pub(super) fn warn_if_the_guests_may_not_fit(config: &Config) {
    let (guests, top) = guests_at_once(config);
    let available = match (cgroup_limit(), mem_total()) {
        (Some(c), Some(m)) if c < m => Some((c, "its cgroup's memory limit")),
        (Some(c), None) => Some((c, "its cgroup's memory limit")),
        (_, Some(m)) => Some((m, "the machine's memory")),
        (None, None) => None,
    };
    if let Some(w) = available.and_then(|(bytes, from)| warning(guests, &top, bytes, from)) {
        tracing::warn!("{w}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_limits_as_written() {
        assert_eq!(limit("max\n"), None);
        assert_eq!(limit("9223372036854771712\n"), None);
        assert_eq!(limit("100663296\n"), Some(96 << 20));
    }

    #[test]
    fn the_defaults_of_ten_functions_do_not_fit_in_96_mib_and_do_in_a_gib() {
        let f = |name: &str, mode: &str| {
            format!(
                "[[function]]\nname = \"{name}\"\nmodule = \"m.wasm\"\nmode = \"{mode}\"\ntopics = [\"{name}\"]\n"
            )
        };
        let mut text =
            String::from("[agent]\nid = \"a\"\n[broker]\nurl = \"mqtt://127.0.0.1:1\"\n");
        for i in 0..8 {
            text += &f(&format!("p{i}"), "persistent");
        }
        text += &f("od1", "on-demand");
        text += &f("od2", "on-demand");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.wasm"), b"\0asm").unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).unwrap();
        let config = Config::load(&path).unwrap();
        let memory = config.functions[0].memory_limit_mb;
        let (guests, top) = guests_at_once(&config);
        // Eight persistent instances and two on-demand functions of four calls each.
        assert_eq!(guests, memory * (8 + 2 * 4));
        // No more than runtime.max_instances at once, the persistent ones always among them.
        let mut few = config.clone();
        few.runtime.max_instances = 10;
        assert_eq!(guests_at_once(&few).0, memory * 10);
        few.functions[0].memory_limit_mb = 2 * memory;
        few.functions[8].memory_limit_mb = 4 * memory;
        // Eight persistent instances (one twice as large) and two calls of the largest.
        assert_eq!(guests_at_once(&few).0, memory * (9 + 2 * 4));
        assert!(top[0].starts_with("od1"), "{top:?}");
        let w = warning(guests, &top, 96 << 20, "its cgroup's memory limit").unwrap();
        assert!(w.contains("this process has 96 MiB"), "{w}");
        assert_eq!(warning(guests, &top, 1 << 30, "the machine's memory"), None);
    }
}
