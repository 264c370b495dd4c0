//! Clocks: wall time for timestamps that leave the agent, the process's monotonic clock for
//! guests, and the calling thread's CPU clock for the cost of a call.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the system clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Nanoseconds since the process first asked: a monotonic clock that never goes back.
pub fn monotonic_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// CPU time used by the calling thread so far.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we own; CLOCK_THREAD_CPUTIME_ID is
    // supported on every Linux the agent targets. On failure the time reads as zero.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// How often a thread reads its CPU clock for calls when they come faster than this.
///
/// Reading it is a system call (the vDSO has no per-thread CPU clock): two per call were
/// 7% of the agent's CPU at saturation (docs/benchmarks.md, "Sampled call CPU"). At the
/// rates of a device (up to about a thousand calls a second per thread) every call is
/// still read.
pub const CALL_CPU_SPACING: Duration = Duration::from_millis(1);

#[derive(Clone, Copy)]
struct CallCpuReadings {
    /// When this thread last read its CPU clock for a call.
    at: Option<Instant>,
    /// That call's CPU.
    last: Duration,
}

thread_local! {
    static CALL_CPU: Cell<CallCpuReadings> = const {
        Cell::new(CallCpuReadings { at: None, last: Duration::ZERO })
    };
}

/// The CPU time of one call on the calling thread, read at its start and end if at least
/// [`CALL_CPU_SPACING`] has passed since this thread last read it for a call; otherwise
/// the call is counted at the CPU of the last call read (under load calls are alike, and
/// the sample is one call in each spacing, whichever comes first after it).
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct CallCpu(Option<Duration>);

/// What [`CallCpu::stop`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallCpuTime {
    /// The call's CPU time, read or (if `estimated`) the last read on this thread.
    pub cpu: Duration,
    /// Not read: the last reading stands for it.
    pub estimated: bool,
}

impl CallCpu {
    /// At the start of a call.
    pub fn start() -> Self {
        CALL_CPU.with(|c| {
            let mut r = c.get();
            let now = Instant::now();
            if r.at
                .is_some_and(|at| now.duration_since(at) < CALL_CPU_SPACING)
            {
                return Self(None);
            }
            r.at = Some(now);
            c.set(r);
            Self(Some(thread_cpu_time()))
        })
    }

    /// At the end of the call, on the thread that started it.
    pub fn stop(self) -> CallCpuTime {
        CALL_CPU.with(|c| {
            let mut r = c.get();
            match self.0 {
                Some(start) => {
                    r.last = thread_cpu_time().saturating_sub(start);
                    c.set(r);
                    CallCpuTime {
                        cpu: r.last,
                        estimated: false,
                    }
                }
                None => CallCpuTime {
                    cpu: r.last,
                    estimated: true,
                },
            }
        })
    }
}

/// Clock ticks per second of the times in `/proc/<pid>/stat`.
#[allow(unsafe_code)]
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the system; it has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// The numeric fields of `/proc/<pid>/stat` after the command name (which sits in
/// parentheses and may hold spaces): index 0 is the state, 11 and 12 user and system
/// ticks, 19 the start time in ticks since boot. Non-numeric fields read as 0.
pub fn process_stat(pid: u32) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(") ")?.1;
    Some(
        rest.split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// User + system CPU time of process `pid` so far, in seconds (10 ms ticks).
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let f = process_stat(pid)?;
    Some((f.get(11)? + f.get(12)?) as f64 / ticks_per_second())
}

/// A `/proc/<pid>/status` figure in bytes (`VmRSS`, `VmHWM`).
pub fn process_status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn thread_cpu_clock_advances() {
        let before = super::thread_cpu_time();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_add(std::hint::black_box(i));
        }
        std::hint::black_box(x);
        assert!(super::thread_cpu_time() > before);
    }

    #[test]
    fn calls_closer_than_the_spacing_are_counted_at_the_last_reading() {
        use super::{CALL_CPU_SPACING, CallCpu};
        let spin = |d: std::time::Duration| {
            let t = std::time::Instant::now();
            while t.elapsed() < d {
                std::hint::black_box(0);
            }
        };
        std::thread::spawn(move || {
            let first = std::time::Instant::now();
            let read = CallCpu::start();
            spin(std::time::Duration::from_micros(50));
            let read = read.stop();
            assert!(!read.estimated && read.cpu > std::time::Duration::ZERO);
            // Within the spacing of that reading: not read, counted at it (unless this
            // thread was kept off the CPU for the rest of the spacing meanwhile).
            let next = CallCpu::start().stop();
            if first.elapsed() < CALL_CPU_SPACING {
                assert_eq!((next.cpu, next.estimated), (read.cpu, true));
            }
            std::thread::sleep(CALL_CPU_SPACING);
            let later = CallCpu::start().stop();
            assert!(!later.estimated, "a call a spacing later is read again");
        })
        .join()
        .expect("the sampling thread");
    }

    #[test]
    fn monotonic_never_goes_back() {
        let a = super::monotonic_ns();
        assert!(super::monotonic_ns() >= a);
    }
}
