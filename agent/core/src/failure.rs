//! Why an event was not handled: the closed set of failure kinds. Their names are stable,
//! since they appear in dead letters, logs and the stats topic, so every layer uses this one
//! type and [`FailureKind::ALL`] rather than repeating the list. [`Exit`] is the other
//! closed set of outcomes: how a command ends, for every command of the binary.

/// Why an event was not handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The handler returned `err(..)`.
    GuestError,
    /// The call ran past `timeout_ms`.
    Timeout,
    /// The instance tried to grow its memory past `memory_limit_mb`.
    MemoryLimit,
    /// The guest's stack overflowed.
    StackOverflow,
    /// Any other trap (panic, unreachable, out-of-bounds access, ...).
    Trap,
    /// The instance could not be created.
    Instantiate,
    /// The payload was larger than `max_payload_bytes`.
    PayloadTooLarge,
    /// The function's inbox was full.
    QueueFull,
    /// The state store was unavailable (full disk, disk or database error). Never a dead
    /// letter: the pipeline tries the event again until the store takes it.
    State,
    /// A persistent function's instance is stopped (restart policy exhausted).
    FunctionStopped,
    /// The call failed after publishing faster than `publish_rate` allowed.
    RateLimit,
    /// The call failed after a state limit (key/value size, key count) refused a write.
    StateQuota,
    /// The call used up its instruction budget (`fuel`).
    FuelExhausted,
    /// The event came from a chain of functions longer than `agent.max_hops` (a loop).
    HopLimit,
}

impl FailureKind {
    /// Every kind, in the order reports list them.
    pub const ALL: [Self; 14] = [
        Self::GuestError,
        Self::Timeout,
        Self::MemoryLimit,
        Self::StackOverflow,
        Self::Trap,
        Self::Instantiate,
        Self::PayloadTooLarge,
        Self::QueueFull,
        Self::State,
        Self::FunctionStopped,
        Self::RateLimit,
        Self::StateQuota,
        Self::FuelExhausted,
        Self::HopLimit,
    ];

    /// Whether the instance must be thrown away after this failure (it trapped).
    pub fn kills_instance(self) -> bool {
        matches!(
            self,
            Self::Timeout
                | Self::MemoryLimit
                | Self::StackOverflow
                | Self::Trap
                | Self::State
                | Self::FuelExhausted
        )
    }

    /// The kebab-case name used in dead letters and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GuestError => "guest-error",
            Self::Timeout => "timeout",
            Self::MemoryLimit => "memory-limit",
            Self::StackOverflow => "stack-overflow",
            Self::Trap => "trap",
            Self::Instantiate => "instantiate",
            Self::PayloadTooLarge => "payload-too-large",
            Self::QueueFull => "queue-full",
            Self::State => "state-error",
            Self::FunctionStopped => "function-stopped",
            Self::RateLimit => "rate-limit",
            Self::StateQuota => "state-quota",
            Self::FuelExhausted => "fuel-exhausted",
            Self::HopLimit => "hop-limit",
        }
    }

    /// This kind's place in [`FailureKind::ALL`] (for per-kind counters).
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error and its causes on one line (`outer: inner: innermost`), for logs and for the
/// one-line messages of `check` and `run`.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    // Some messages run over lines (wasmtime's byte dumps): keep one.
    let one_line = |e: &dyn std::error::Error| {
        e.to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut out = one_line(e);
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = one_line(c);
        // Some errors repeat their cause in their own message: say it once.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::FailureKind;

    #[test]
    fn all_lists_each_kind_once_at_its_index() {
        for (i, k) in FailureKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i, "{k}");
        }
        let mut names: Vec<_> = FailureKind::ALL.iter().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FailureKind::ALL.len());
    }
}

/// How a command ends: the process exit status, from BSD's `sysexits.h`. Every command of
/// the binary, and every tool, picks one of these, so that scripts and systemd can tell a
/// bad config (restart will not help) from a broker that is away (restart will).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 1: anything else (a build that failed, a file that could not be written).
    Failure,
    /// 64 (`EX_USAGE`): bad arguments.
    Usage,
    /// 66 (`EX_NOINPUT`): an input file cannot be read.
    NoInput,
    /// 69 (`EX_UNAVAILABLE`): a broker or tool that is needed is not there.
    Unavailable,
    /// 73 (`EX_CANTCREAT`): an output cannot be created.
    CantCreate,
    /// 78 (`EX_CONFIG`): the configuration, or what it points at (a damaged state store), is
    /// wrong; fix it, then start again.
    Config,
}

impl Exit {
    /// The numeric status.
    pub fn code(self) -> u8 {
        match self {
            Self::Failure => 1,
            Self::Usage => 64,
            Self::NoInput => 66,
            Self::Unavailable => 69,
            Self::CantCreate => 73,
            Self::Config => 78,
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        Self::from(e.code())
    }
}
