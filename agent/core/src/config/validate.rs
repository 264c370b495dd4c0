//! Semantic checks that serde cannot express. Each error names the key at fault.

use std::collections::HashSet;
use std::path::Path;

use super::{Config, ConfigError};
use crate::topic;

/// Why a broker URL is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// No `scheme://`.
    #[error("`{0}` is not a URL like mqtt://host:1883")]
    NotUrl(String),
    /// A scheme other than MQTT's.
    #[error("unsupported scheme `{0}://` (use mqtt:// or mqtts://)")]
    Scheme(String),
    /// A path, query or credentials.
    #[error("`{0}` must be scheme://host:port only (credentials go in broker.username/password)")]
    NotHostPort(String),
    /// `[` with no `]`.
    #[error("`{0}`: unclosed `[` in IPv6 address")]
    UnclosedBracket(String),
    /// Text after `[address]` that is not a port.
    #[error("`{url}`: unexpected `{after}` after the address")]
    AfterAddress {
        /// The URL.
        url: String,
        /// What follows the address.
        after: String,
    },
    /// A port that is not a number from 0 to 65535.
    #[error("`{url}`: port `{port}` is not a number from 0 to 65535")]
    Port {
        /// The URL.
        url: String,
        /// The port as written.
        port: String,
        /// Why it does not parse.
        #[source]
        source: std::num::ParseIntError,
    },
    /// No host.
    #[error("`{0}` has no host")]
    NoHost(String),
}

/// The parsed `broker.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    /// `mqtts://`.
    pub tls: bool,
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// `host:port`, an IPv6 address in brackets (`[::1]:1883`), as in a URL.
impl std::fmt::Display for BrokerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl BrokerAddress {
    /// Parses `mqtt://host[:port]` or `mqtts://host[:port]` (also `tcp://`, `ssl://`).
    ///
    /// Port 0 stands for "any free port" and is only meaningful for the embedded broker,
    /// which reports the port it got; `validate` refuses it otherwise.
    ///
    /// # Errors
    /// [`UrlError`] saying what is wrong with the URL.
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| UrlError::NotUrl(url.into()))?;
        let tls = match scheme {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            other => return Err(UrlError::Scheme(other.into())),
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains(['/', '?', '@']) {
            return Err(UrlError::NotHostPort(url.into()));
        }
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| UrlError::UnclosedBracket(url.into()))?;
            let port = match after.strip_prefix(':') {
                Some(p) => parse_port(p, url)?,
                None if after.is_empty() => default_port,
                None => {
                    return Err(UrlError::AfterAddress {
                        url: url.into(),
                        after: after.into(),
                    });
                }
            };
            (h.to_string(), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), parse_port(p, url)?),
                None => (rest.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(UrlError::NoHost(url.into()));
        }
        Ok(Self { tls, host, port })
    }
}

impl BrokerAddress {
    /// Whether the host is a loopback address (`localhost`, 127.0.0.0/8, `::1`): only this
    /// machine can reach it.
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

fn parse_port(p: &str, url: &str) -> Result<u16, UrlError> {
    p.parse::<u16>().map_err(|source| UrlError::Port {
        url: url.into(),
        port: p.into(),
        source,
    })
}

/// Whether topic filter `filter` matches some topic under `prefix/`.
fn reaches_under(filter: &str, prefix: &str) -> bool {
    let mut levels = filter.split('/');
    for p in prefix.split('/') {
        match levels.next() {
            Some("#") => return true,
            Some(l) if l == "+" || l == p => {}
            _ => return false,
        }
    }
    levels.next().is_some()
}

/// Whether `s` may name an agent, a function or a fleet group: 1-64 letters, digits, `-`,
/// `_` or `.` (each is a level of the topics it is used in).
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// What the agent writes in its data directory: the state store, the broker sessions'
/// filters, the compile cache, a deployment under way.
const DATA_DIR_PARTS: [&str; 4] = ["state", "sessions", "compiled", "deployment"];

/// Whether the agent can write what an earlier run left in the data directory `real`:
/// each part ([`DATA_DIR_PARTS`]) that exists is a folder it can write in, and the state
/// store's files (the only ones written in place; the others are replaced by a rename)
/// open for writing. One run as root leaves `state/` root's, and `run` as the service's
/// user then failed where `check` had said ok (until 2026-12-07).
fn writable_within(real: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    // SAFETY: geteuid cannot fail and touches no memory.
    #[allow(unsafe_code)]
    let me = unsafe { libc::geteuid() };
    let owned = |path: &Path| match std::fs::metadata(path) {
        Ok(m) if m.uid() != me => format!(
            " (owned by uid {}, the agent runs as uid {me}: `chown -R` the data directory to \
             the agent's user)",
            m.uid()
        ),
        _ => String::new(),
    };
    for part in DATA_DIR_PARTS {
        let dir = real.join(part);
        // Followed: `compare` links its agents' `compiled` to one cache.
        match std::fs::metadata(&dir) {
            Err(_) => continue,
            Ok(m) if !m.is_dir() => {
                return Err(format!("{} is not a directory", dir.display()));
            }
            Ok(_) => {}
        }
        let probe = dir.join(format!(".edge-agent-probe-{}", std::process::id()));
        if let Err(e) = std::fs::File::create(&probe) {
            return Err(format!(
                "cannot write in {}: {e}{}",
                dir.display(),
                owned(&dir)
            ));
        }
        let _ = std::fs::remove_file(&probe);
        if part != "state" {
            continue;
        }
        let files = std::fs::read_dir(&dir).into_iter().flatten().flatten();
        for path in files.map(|entry| entry.path()).filter(|p| p.is_file()) {
            if let Err(e) = std::fs::OpenOptions::new().write(true).open(&path) {
                return Err(format!(
                    "cannot write {}: {e}{}",
                    path.display(),
                    owned(&path)
                ));
            }
        }
    }
    Ok(())
}

/// One line per mistake: the first error of each key, and none that only follows from
/// another key being wrong (`max_concurrency` must be at most `runtime.max_instances`, when
/// `runtime.max_instances` is itself rejected).
fn consequences_dropped(errs: Vec<ConfigError>) -> Vec<ConfigError> {
    let key = |e: &ConfigError| match e {
        ConfigError::Invalid { key, .. } => Some(key.clone()),
        _ => None,
    };
    let wrong: HashSet<String> = errs.iter().filter_map(key).collect();
    let mut seen = HashSet::new();
    errs.into_iter()
        .filter(|e| match e {
            ConfigError::Invalid { key, message, .. } => {
                seen.insert(key.clone())
                    && !wrong
                        .iter()
                        .any(|other| other != key && message.contains(other.as_str()))
            }
            _ => true,
        })
        .collect()
}

impl Config {
    /// Checks everything that does not need the modules compiled.
    ///
    /// # Errors
    /// Every problem found, each naming its key ([`ConfigError::Several`] if more than one).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_with(false)
    }

    /// [`Config::validate`]; with `data_dir_in_use` the data directory, which the running
    /// agent already uses, is not probed ([`Config::load_for_reload`]).
    pub(super) fn validate_with(&self, data_dir_in_use: bool) -> Result<(), ConfigError> {
        let mut errs = Vec::new();
        self.validate_agent(&mut errs);
        if !data_dir_in_use {
            errs.extend(self.validate_data_dir().err());
        }
        self.validate_broker(&mut errs);
        self.validate_runtime(&mut errs);
        self.validate_state(&mut errs);
        self.validate_fleet(&mut errs);
        // A member of a deployment group may start empty and take its functions from the
        // group's deployment.
        if self.functions.is_empty() && self.fleet.group.is_none() {
            errs.push(self.invalid("function", "no [[function]] is configured"));
        }
        let mut names = HashSet::new();
        for (i, f) in self.functions.iter().enumerate() {
            self.validate_function(i, f, &mut errs);
            if !names.insert(f.name.as_str()) {
                errs.push(self.invalid(
                    format!("function[{}].name", f.name),
                    "duplicate function name",
                ));
            }
            errs.extend(
                self.validate_module(&f.module, format!("function[{}].module", f.name))
                    .err(),
            );
            if let Some(m) = f.shadow.as_ref().and_then(|s| s.module.as_ref()) {
                errs.extend(
                    self.validate_module(m, format!("function[{}].shadow.module", f.name))
                        .err(),
                );
            }
        }
        ConfigError::all(consequences_dropped(errs))
    }

    /// `agent.data_dir`: a directory the agent can write, or one it can create, and not in
    /// a kernel file system. Probed with a file created and removed at once.
    fn validate_data_dir(&self) -> Result<(), ConfigError> {
        let dir = &self.agent.data_dir;
        let err = |m: String| self.invalid("agent.data_dir", m);
        if dir.to_string_lossy().trim().is_empty() {
            return Err(err(
                "is empty: name a directory (the default is \"./data\", beside the config file)"
                    .into(),
            ));
        }
        // The nearest part of the path that exists decides. One that cannot be read (an
        // I/O error: a failing card, a file system the kernel shut down) is not taken for
        // one that does not exist, which sent the check to the folder above it.
        let mut existing = dir.as_path();
        while !existing
            .try_exists()
            .map_err(|e| err(format!("{}: {e} (see `dmesg`)", existing.display())))?
        {
            // A symbolic link to nothing (a card or share not mounted where it leads):
            // the folder above could be written, so `check` passed it, and `run` then
            // failed to make it with a bare ENOENT (a probe, 2026-12-08).
            if let Ok(target) = std::fs::read_link(existing) {
                return Err(err(format!(
                    "{} is a symbolic link to {}, which does not exist (not mounted?)",
                    existing.display(),
                    target.display()
                )));
            }
            existing = match existing.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => std::path::Path::new("."),
            };
        }
        let real = existing
            .canonicalize()
            .map_err(|e| err(format!("{}: {e}", existing.display())))?;
        if ["/proc", "/sys", "/dev"]
            .iter()
            .any(|k| real.starts_with(k))
        {
            return Err(err(format!(
                "{} is in a kernel file system ({}), not storage",
                dir.display(),
                real.display()
            )));
        }
        if !real.is_dir() {
            return Err(err(format!("{} is not a directory", existing.display())));
        }
        let probe = real.join(format!(".edge-agent-probe-{}", std::process::id()));
        let write = || {
            std::fs::File::create(&probe)?;
            let _ = std::fs::remove_file(&probe);
            Ok::<_, std::io::Error>(())
        };
        crate::files::said_if_slow(
            "checking that the data directory can be written",
            &real,
            write,
        )
        .map_err(|e| err(format!("cannot write in {}: {e}", real.display())))?;
        writable_within(&real).map_err(err)
    }

    /// `[agent]`.
    fn validate_agent(&self, errs: &mut Vec<ConfigError>) {
        let a = &self.agent;
        if a.max_hops == 0 {
            errs.push(self.invalid("agent.max_hops", "must be at least 1"));
        }
        if !is_name(&a.id) {
            errs.push(self.invalid(
                "agent.id",
                format!("`{}` must be 1-64 letters, digits, `-`, `_` or `.`", a.id),
            ));
        }
        if let Err(e) = topic::validate_name(&a.topic_prefix) {
            let why = match e {
                crate::topic::TopicError::WildcardInName => {
                    "cannot contain `+` or `#`: it begins the names of the topics the agent \
                     publishes on"
                        .to_string()
                }
                e => e.to_string(),
            };
            errs.push(self.invalid("agent.topic_prefix", why));
        }
    }

    /// `[fleet]`.
    fn validate_fleet(&self, errs: &mut Vec<ConfigError>) {
        let f = &self.fleet;
        if let Some(group) = &f.group {
            if !is_name(group) {
                errs.push(self.invalid(
                    "fleet.group",
                    format!("`{group}` must be 1-64 letters, digits, `-`, `_` or `.`"),
                ));
            }
            if f.trusted_keys.is_empty() {
                errs.push(self.invalid(
                    "fleet.trusted_keys",
                    "a deployment group needs at least one trusted public key \
                     (edge-agent keygen writes one in KEY.pub)",
                ));
            }
        }
        for (i, k) in f.trusted_keys.iter().enumerate() {
            if let Err(e) = crate::deployment::parse_key(k) {
                errs.push(self.invalid(
                    format!("fleet.trusted_keys[{i}]"),
                    format!("not an ed25519 public key: {}", crate::failure::chain(&e)),
                ));
            }
        }
        if !(0.0..=1.0).contains(&f.max_failure_ratio) {
            errs.push(self.invalid("fleet.max_failure_ratio", "must be from 0 to 1"));
        }
        if !(1..=3600).contains(&f.download_timeout_secs) {
            errs.push(self.invalid("fleet.download_timeout_secs", "must be from 1 to 3600"));
        }
        if f.probation_secs > 3600 {
            errs.push(self.invalid("fleet.probation_secs", "must be at most 3600"));
        }
    }

    /// `[broker]`: every mistake, as the other sections are (until 2026-12-08 only the
    /// first was told, and a user fixed and ran `check` again once per key).
    fn validate_broker(&self, errs: &mut Vec<ConfigError>) {
        let b = &self.broker;
        match BrokerAddress::parse(&b.url) {
            Ok(addr) => self.validate_broker_address(&addr, errs),
            Err(e) => errs.push(self.invalid("broker.url", e.to_string())),
        }
        if b.embedded && !cfg!(feature = "broker") {
            errs.push(self.invalid(
                "broker.embedded",
                "this build has no embedded broker (the device build leaves it out): set \
                 embedded = false and point broker.url at the device's broker (Mosquitto)",
            ));
        }
        let client_id = self.client_id();
        if client_id.is_empty() || client_id.len() > 256 {
            errs.push(self.invalid("broker.client_id", "must be 1 to 256 characters"));
        }
        // rumqttd turns such a client away, and then panics at its reconnection, which
        // aborted the agent a second after start (a probe, 2026-12-08; `check` said ok).
        // Only one given: one made of an `agent.id` with such a character is told there.
        if b.embedded && b.client_id.is_some() && client_id.contains(['+', '#', '/', '$']) {
            errs.push(self.invalid(
                "broker.client_id",
                format!(
                    "`{client_id}` cannot contain `+`, `#`, `/` or `$` with the embedded broker, \
                     which refuses such client ids"
                ),
            ));
        }
        if !(5..=65_535).contains(&b.keep_alive_secs) {
            errs.push(self.invalid("broker.keep_alive_secs", "must be from 5 to 65535"));
        }
        if !(1..=600).contains(&b.connect_timeout_secs) {
            errs.push(self.invalid("broker.connect_timeout_secs", "must be from 1 to 600"));
        }
        if b.password.is_some() && b.username.is_none() {
            errs.push(self.invalid("broker.password", "is set but broker.username is not"));
        }
        if !(1024..=256 * 1024 * 1024).contains(&b.max_packet_bytes) {
            errs.push(self.invalid(
                "broker.max_packet_bytes",
                "must be from 1024 to 268435456 (256 MiB, the MQTT maximum)",
            ));
        }
        if b.reconnect_min_ms == 0 || b.reconnect_min_ms > b.reconnect_max_ms {
            errs.push(self.invalid(
                "broker.reconnect_min_ms",
                "must be at least 1 and not more than broker.reconnect_max_ms",
            ));
        }
        if let Some(tls) = &b.tls {
            for (key, file) in [
                ("broker.tls.ca_file", &tls.ca_file),
                ("broker.tls.cert_file", &tls.cert_file),
                ("broker.tls.key_file", &tls.key_file),
            ] {
                if let Some(f) = file
                    && let Err(e) = std::fs::metadata(f)
                {
                    errs.push(self.invalid(key, format!("cannot read {}: {e}", f.display())));
                }
            }
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                errs.push(self.invalid(
                    "broker.tls.cert_file",
                    "cert_file and key_file must be given together",
                ));
            }
        }
    }

    /// The parts of `[broker]` that depend on its URL.
    fn validate_broker_address(&self, addr: &BrokerAddress, errs: &mut Vec<ConfigError>) {
        let b = &self.broker;
        if b.embedded && !addr.is_loopback() && b.username.is_none() && !b.allow_anonymous {
            errs.push(self.invalid(
                "broker.embedded",
                format!(
                    "the embedded broker would listen on {} with no credentials, open to \
                     anyone on the network: set broker.username and broker.password, listen on \
                     127.0.0.1, or write allow_anonymous = true",
                    addr.host
                ),
            ));
        }
        if addr.port == 0 && !b.embedded {
            errs.push(self.invalid(
                "broker.url",
                "port 0 (any free port) only applies to the embedded broker",
            ));
        }
        if b.embedded && addr.tls {
            errs.push(self.invalid(
                "broker.embedded",
                "the embedded broker listens on plain TCP: use an mqtt:// url",
            ));
        }
        if b.tls.is_some() && !addr.tls {
            errs.push(self.invalid("broker.tls", "is set but broker.url is not mqtts://"));
        }
    }

    /// `[runtime]`, including the room persistent functions leave in the pool.
    fn validate_runtime(&self, errs: &mut Vec<ConfigError>) {
        let r = &self.runtime;
        if !(1..=10_000).contains(&r.max_instances) {
            errs.push(self.invalid("runtime.max_instances", "must be from 1 to 10000"));
        }
        if !(1..=1_000).contains(&r.epoch_tick_ms) {
            errs.push(self.invalid("runtime.epoch_tick_ms", "must be from 1 to 1000"));
        }
        if !(1..=1024).contains(&r.max_module_mb) {
            errs.push(self.invalid("runtime.max_module_mb", "must be from 1 to 1024"));
        }
        if r.async_threads > 256 {
            errs.push(self.invalid(
                "runtime.async_threads",
                "must be from 0 (one per processor) to 256",
            ));
        }

        let persistent: u64 = self
            .functions
            .iter()
            .filter(|f| f.mode == super::Mode::Persistent)
            .map(|f| u64::from(f.instances))
            .sum();
        if persistent >= u64::from(r.max_instances) {
            errs.push(self.invalid(
                "runtime.max_instances",
                format!(
                    "persistent functions keep {persistent} instances; max_instances ({}) must be larger to leave room for on-demand calls",
                    r.max_instances
                ),
            ));
        }
    }

    /// `[state]`.
    fn validate_state(&self, errs: &mut Vec<ConfigError>) {
        let st = &self.state;
        if !(1..=4096).contains(&st.cache_mb) {
            errs.push(self.invalid("state.cache_mb", "must be from 1 to 4096"));
        }
        if st.max_flushes_per_sec > 100_000 {
            errs.push(self.invalid(
                "state.max_flushes_per_sec",
                "must be at most 100000 (0: no cap)",
            ));
        }
        if st.min_flush_interval_ms > 60_000 {
            errs.push(self.invalid("state.min_flush_interval_ms", "must be at most 60000"));
        }
        if !(1..=65_536).contains(&st.max_key_bytes) {
            errs.push(self.invalid("state.max_key_bytes", "must be from 1 to 65536"));
        }
        if !(1..=64 * 1024 * 1024).contains(&st.max_value_bytes) {
            errs.push(self.invalid("state.max_value_bytes", "must be from 1 to 67108864"));
        }
        if st.max_pending_bytes_per_call < st.max_value_bytes + st.max_key_bytes {
            errs.push(self.invalid(
                "state.max_pending_bytes_per_call",
                "must hold at least one key and value (max_key_bytes + max_value_bytes)",
            ));
        }
        if st.max_pending_keys_per_call == 0 {
            errs.push(self.invalid("state.max_pending_keys_per_call", "must be at least 1"));
        }
        if st.max_keys_per_function == 0 {
            errs.push(self.invalid("state.max_keys_per_function", "must be at least 1"));
        }
        if st.max_bytes_per_function < (st.max_value_bytes + st.max_key_bytes) as u64 {
            errs.push(self.invalid(
                "state.max_bytes_per_function",
                "must hold at least one key and value (max_key_bytes + max_value_bytes)",
            ));
        }
        // The reserve must leave room to write at all on the data directory's disk (a
        // kernel file system that says 0 is `agent.data_dir`'s error).
        let disk = self
            .agent
            .data_dir
            .ancestors()
            .find_map(|d| fs2::total_space(d).ok());
        if let Some(total) = disk.filter(|t| *t > 0)
            && st.min_free_mb >= total / (1024 * 1024)
        {
            errs.push(self.invalid(
                "state.min_free_mb",
                format!(
                    "is {} MiB, but the data directory's file system holds only {} MiB: no state could ever be written",
                    st.min_free_mb,
                    total / (1024 * 1024)
                ),
            ));
        }
    }

    /// One `[[function]]`, apart from its module file.
    /// `[function.auto]`, keys named by `key`.
    fn check_auto(
        &self,
        a: &super::AutoConfig,
        key: &dyn Fn(&str) -> String,
        errs: &mut Vec<ConfigError>,
    ) {
        let mut within = |k: &str, v: f64, lo: f64, hi: f64| {
            errs.extend(self.within(key(k), v, lo, hi));
        };
        within("tick_secs", a.tick_secs, 0.01, 3600.0);
        within("stable_window_secs", a.stable_window_secs, 0.01, 86_400.0);
        within("panic_window_secs", a.panic_window_secs, 0.01, 86_400.0);
        within("margin", a.margin, 0.0, 10.0);
        within("panic_factor", a.panic_factor, 1.0, 1000.0);
        within("min_secs_in_model", a.min_secs_in_model, 0.0, 86_400.0);
        if let Some(ms) = a.latency_p99_ms {
            within("latency_p99_ms", ms, 0.001, 600_000.0);
        }
        let p = &a.prices;
        for (k, v) in [
            ("prices.per_million_invocations", p.per_million_invocations),
            ("prices.per_gb_second", p.per_gb_second),
            ("prices.per_vcpu_hour", p.per_vcpu_hour),
            ("prices.per_gb_hour", p.per_gb_hour),
        ] {
            within(k, v, 0.0, 1e9);
        }
        if a.stable_window_secs < a.tick_secs || a.panic_window_secs < a.tick_secs {
            errs.push(self.invalid(
                key("tick_secs"),
                "must be at most stable_window_secs and panic_window_secs (a window shorter than a tick sees nothing)",
            ));
        }
        if a.panic_window_secs > a.stable_window_secs {
            errs.push(self.invalid(
                key("panic_window_secs"),
                "must be at most stable_window_secs (the panic window is the short one)",
            ));
        }
    }

    /// `v` at `key` unless it is a finite number from `lo` to `hi`: why not.
    fn within(&self, key: String, v: f64, lo: f64, hi: f64) -> Option<ConfigError> {
        (!(v.is_finite() && (lo..=hi).contains(&v)))
            .then(|| self.invalid(key, format!("must be from {lo} to {hi}")))
    }

    /// `[function.shadow]`, keys named by `key`.
    fn check_shadow(
        &self,
        f: &super::FunctionConfig,
        s: &super::ShadowConfig,
        key: &dyn Fn(&str) -> String,
        errs: &mut Vec<ConfigError>,
    ) {
        if s.mode == Some(super::Mode::Auto) {
            errs.push(self.invalid(
                key("mode"),
                "must be \"on-demand\" or \"persistent\" (a shadow runs one model, to be compared)",
            ));
        }
        if !(s.fraction.is_finite() && s.fraction > 0.0 && s.fraction <= 1.0) {
            errs.push(self.invalid(key("fraction"), "must be above 0 and at most 1"));
        }
        if !(1..=1_000_000).contains(&s.queue_capacity) {
            errs.push(self.invalid(key("queue_capacity"), "must be from 1 to 1000000"));
        }
        if !(s.max_cpu_percent.is_finite() && s.max_cpu_percent > 0.0 && s.max_cpu_percent <= 100.0)
        {
            errs.push(self.invalid(
                key("max_cpu_percent"),
                "must be above 0 and at most 100 (percent of one core)",
            ));
        }
        if s.keep_mismatches > 1000 {
            errs.push(self.invalid(key("keep_mismatches"), "must be at most 1000"));
        }
        if s.calibrate_events > 1_000_000 {
            errs.push(self.invalid(key("calibrate_events"), "must be at most 1000000"));
        }
        if let Some(p) = &s.publish_to {
            let reserved = format!("{}/", self.agent.topic_prefix);
            if let Err(e) = topic::validate_name(p) {
                errs.push(self.invalid(key("publish_to"), format!("`{p}` {e}")));
            } else if p == &self.agent.topic_prefix || p.starts_with(&reserved) {
                errs.push(self.invalid(
                    key("publish_to"),
                    format!("`{p}` is under the agent's own topic prefix `{reserved}`"),
                ));
            } else if let Some(t) = f.topics.iter().find(|t| reaches_under(t, p)) {
                errs.push(self.invalid(
                    key("publish_to"),
                    format!(
                        "`{p}` is under the function's own topic filter `{t}`: the shadow's \
                         outputs would come back in as events"
                    ),
                ));
            }
        }
        if let Some(c) = &s.canary {
            let mut within = |k: &str, v: f64, lo: f64, hi: f64| {
                errs.extend(self.within(key(&format!("canary.{k}")), v, lo, hi));
            };
            within("weight", c.weight, 0.0, 1.0);
            within("step", c.step, 0.0, 1.0);
            within("max_weight", c.max_weight, 0.0, 1.0);
            within("interval_secs", c.interval_secs, 0.01, 86_400.0);
            within("max_failure_ratio", c.max_failure_ratio, 0.0, 1.0);
            if let Some(m) = c.max_mismatch_ratio {
                within("max_mismatch_ratio", m, 0.0, 1.0);
            }
            if c.weight > c.max_weight {
                errs.push(self.invalid(key("canary.weight"), "must be at most max_weight"));
            }
            if s.mode.is_some_and(|m| m != f.mode) {
                errs.push(self.invalid(
                    key("canary"),
                    "needs the shadow in the function's own model (the canary runs the shadow's version as the function)",
                ));
            }
        }
        for path in &s.ignore {
            if path.is_empty() || path.split('.').any(str::is_empty) {
                errs.push(self.invalid(
                    key("ignore"),
                    format!("`{path}` is not a path: keys separated by `.`, `*` for any"),
                ));
            }
        }
    }

    fn validate_function(&self, i: usize, f: &super::FunctionConfig, errs: &mut Vec<ConfigError>) {
        let (b, r) = (&self.broker, &self.runtime);
        if !is_name(&f.name) {
            errs.push(self.invalid(
                format!("function[{i}].name"),
                format!("`{}` must be 1-64 letters, digits, `-`, `_` or `.`", f.name),
            ));
        }
        let key = |k: &str| format!("function[{}].{k}", f.name);
        if f.topics.is_empty() {
            errs.push(self.invalid(key("topics"), "needs at least one topic filter"));
        }
        for t in &f.topics {
            // Quoted by its start, length and end past 200 bytes, as in every message:
            // a 70,000-byte filter made a check line of 70,080 bytes (a probe).
            let shown = topic::shown(t);
            if let Err(e) = topic::validate_filter(t) {
                errs.push(self.invalid(key("topics"), format!("topic filter `{shown}` {e}")));
            }
            if t.starts_with("$share/") || t.starts_with("$queue/") {
                errs.push(self.invalid(
                    key("topics"),
                    format!(
                        "`{shown}`: write the plain filter and share = \"GROUP\" (the agent \
                         subscribes with $share/GROUP/FILTER and routes by the real topic)"
                    ),
                ));
            }
        }
        if f.qos > 2 {
            errs.push(self.invalid(key("qos"), "must be 0, 1 or 2"));
        }
        if !(1..=600_000).contains(&f.timeout_ms) {
            errs.push(self.invalid(key("timeout_ms"), "must be from 1 to 600000 (10 min)"));
        }
        let max_mb = super::host_memory_reservation() / (1024 * 1024);
        if !(1..=max_mb).contains(&f.memory_limit_mb) {
            errs.push(self.invalid(
                key("memory_limit_mb"),
                format!("must be from 1 to {max_mb} on this platform"),
            ));
        }
        if f.max_concurrency == 0 || f.max_concurrency > r.max_instances {
            errs.push(self.invalid(
                key("max_concurrency"),
                format!(
                    "must be from 1 to runtime.max_instances ({})",
                    r.max_instances
                ),
            ));
        }
        if !(1..=256).contains(&f.instances) {
            errs.push(self.invalid(key("instances"), "must be from 1 to 256"));
        }
        if f.instances != 1 && f.mode == super::Mode::OnDemand {
            errs.push(self.invalid(
                key("instances"),
                "only applies to mode = \"persistent\" or \"auto\"",
            ));
        }
        // Keys of one model set on the other did nothing, silently, while `instances` and
        // `keep_warm_secs` were refused (a docs probe, 2026-12-07).
        if f.mode == super::Mode::OnDemand {
            let restarts = [
                ("restart", f.restart != super::RestartPolicy::default()),
                (
                    "max_restarts",
                    f.max_restarts != super::default_max_restarts(),
                ),
                (
                    "restart_window_secs",
                    f.restart_window_secs != super::default_restart_window_secs(),
                ),
            ];
            for (name, _) in restarts.iter().filter(|(_, set)| *set) {
                errs.push(self.invalid(
                    key(name),
                    "only applies to mode = \"persistent\" or \"auto\" (an on-demand \
                     instance lives for one event: a failed one is never restarted)",
                ));
            }
        }
        if f.max_concurrency != super::default_max_concurrency() && f.mode != super::Mode::OnDemand
        {
            errs.push(self.invalid(
                key("max_concurrency"),
                "only applies to mode = \"on-demand\" (persistent and auto functions handle \
                 `instances` events at once, one per instance)",
            ));
        }
        if f.keep_warm_secs.is_some() && f.mode == super::Mode::Persistent {
            errs.push(self.invalid(
                key("keep_warm_secs"),
                "only applies to mode = \"on-demand\" or \"auto\" (a persistent instance is always warm)",
            ));
        }
        if f.mode == super::Mode::Auto {
            self.check_auto(&f.auto, &|k| key(&format!("auto.{k}")), errs);
        } else if f.auto != super::AutoConfig::default() {
            errs.push(self.invalid(key("auto"), "only applies to mode = \"auto\""));
        }
        if f.keep_warm_secs == Some(super::KeepWarm::Secs(0)) {
            errs.push(self.invalid(
                key("keep_warm_secs"),
                "must be at least 1 (or unset: always warm)",
            ));
        }
        if f.restart_window_secs == 0 {
            errs.push(self.invalid(key("restart_window_secs"), "must be at least 1"));
        }
        if !(1..=1_000_000).contains(&f.queue_capacity) {
            errs.push(self.invalid(key("queue_capacity"), "must be from 1 to 1000000"));
        }
        if f.fuel == Some(0) {
            errs.push(self.invalid(
                key("fuel"),
                "must be at least 1 (leave it out for no budget)",
            ));
        }
        if !f.allow_feedback {
            for (k, v) in &f.config {
                // A static output topic (no template) that the function itself listens to.
                let is_topic = !v.contains('{') && topic::validate_name(v).is_ok();
                let fed = f.topics.iter().find(|t| is_topic && topic::matches(t, v));
                if let Some(filter) = fed {
                    errs.push(self.invalid(
                        key(&format!("config.{k}")),
                        format!(
                            "`{v}` matches the function's own topic filter `{filter}`: its \
                             output would call it again, for ever (set allow_feedback = true \
                             if that is the point)"
                        ),
                    ));
                }
            }
        }
        if f.log_rate == 0 {
            errs.push(self.invalid(key("log_rate"), "must be at least 1 line per second"));
        }
        if f.publish_rate == 0 {
            errs.push(self.invalid(key("publish_rate"), "must be at least 1 message per second"));
        }
        if f.max_publish_bytes == 0 || f.max_publish_bytes > b.max_packet_bytes {
            errs.push(self.invalid(
                key("max_publish_bytes"),
                "must be from 1 to broker.max_packet_bytes",
            ));
        }
        if f.max_payload_bytes > b.max_packet_bytes {
            errs.push(self.invalid(
                key("max_payload_bytes"),
                "is larger than broker.max_packet_bytes, which no message can exceed",
            ));
        }
        if let Some(g) = &f.share
            && (g.is_empty() || g.len() > 64 || g.contains(['/', '+', '#']))
        {
            errs.push(self.invalid(
                key("share"),
                format!("`{g}` must be 1-64 characters, none of `/`, `+`, `#`"),
            ));
        }
        if let Some(p) = &f.partition {
            if !(1..=1024).contains(&p.of) || p.index >= p.of {
                errs.push(self.invalid(
                    key("partition"),
                    format!(
                        "of = {}, index = {}: `of` must be from 1 to 1024 and `index` from 0 to of - 1",
                        p.of, p.index
                    ),
                ));
            }
            if f.share.is_some() {
                errs.push(self.invalid(
                    key("partition"),
                    "cannot be used with share: the broker hands each message to one member, \
                     and a member would drop those of another's part (use one or the other)",
                ));
            }
        }
        if let Some(shadow) = &f.shadow {
            self.check_shadow(f, shadow, &|k| key(&format!("shadow.{k}")), errs);
        }
        if let Some(h) = &f.sha256
            && (h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()))
        {
            errs.push(self.invalid(key("sha256"), "must be 64 hexadecimal digits"));
        }
    }

    /// A function's module file: present, a file, not too large.
    fn validate_module(&self, module: &std::path::Path, key: String) -> Result<(), ConfigError> {
        let r = &self.runtime;
        match std::fs::metadata(module) {
            Ok(m) if m.is_file() && m.len() > r.max_module_mb * 1024 * 1024 => {
                return Err(self.invalid(
                    key.clone(),
                    format!(
                        "{} is {} bytes, over runtime.max_module_mb ({} MiB)",
                        module.display(),
                        m.len(),
                        r.max_module_mb
                    ),
                ));
            }
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                return Err(
                    self.invalid(key.clone(), format!("{} is not a file", module.display()))
                );
            }
            Err(e) => {
                return Err(self.invalid(
                    key.clone(),
                    format!("cannot read {}: {e}", module.display()),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::BrokerAddress;

    #[test]
    fn broker_urls() {
        let a = BrokerAddress::parse("mqtt://127.0.0.1:1883").unwrap();
        assert_eq!((a.tls, a.host.as_str(), a.port), (false, "127.0.0.1", 1883));
        let a = BrokerAddress::parse("mqtts://broker.example").unwrap();
        assert_eq!((a.tls, a.port), (true, 8883));
        let a = BrokerAddress::parse("mqtt://[::1]:1999").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 1999));
        assert_eq!(a.to_string(), "[::1]:1999", "shown as in a URL");
        assert!(BrokerAddress::parse("http://x").is_err());
        assert_eq!(BrokerAddress::parse("mqtt://x:0").map(|a| a.port), Ok(0));
        assert!(BrokerAddress::parse("mqtt://x:99999").is_err());
        assert!(BrokerAddress::parse("localhost:1883").is_err());
        assert!(BrokerAddress::parse("mqtt://user:pw@host").is_err());
    }
}
