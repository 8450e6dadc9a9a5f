//! Resident memory of this process (Linux): the current and the peak resident set, and peaks
//! per phase of a computation.
//!
//! The kernel keeps one peak per process (`VmHWM` in `/proc/self/status`). Writing `5` to
//! `/proc/self/clear_refs` resets it to the current resident set, so a [`PhaseMeter`] can tell
//! in which phase of a training step (forward, backward, optimiser) the peak was reached.

/// Resident memory of this process, from `/proc/self/status` (Linux): `(VmRSS, VmHWM)` in
/// MiB, the current and the peak resident set.
pub fn resident_mib() -> Option<(f64, f64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Resets the process's peak resident set to its current resident set. False where the
/// kernel does not allow it (not Linux, or `/proc` read-only).
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Peak resident memory per phase, each relative to the resident memory when the meter
/// started.
///
/// ```no_run
/// # use deq_train::resident::PhaseMeter;
/// let mut meter = PhaseMeter::start().expect("Linux with a writable /proc/self/clear_refs");
/// let big = vec![1u8; 64 << 20];
/// drop(big);
/// let first = meter.end_phase().unwrap(); // ≈ 64 MiB
/// let second = meter.end_phase().unwrap(); // ≈ 0 MiB
/// ```
#[derive(Debug, Clone)]
pub struct PhaseMeter {
    before_mib: f64,
}

impl PhaseMeter {
    /// Reads the resident memory now and starts the first phase. `None` where the resident
    /// memory cannot be read or its peak cannot be reset.
    pub fn start() -> Option<Self> {
        let (before_mib, _) = resident_mib()?;
        reset_peak().then_some(Self { before_mib })
    }

    /// The resident memory when the meter started, MiB.
    pub fn before_mib(&self) -> f64 {
        self.before_mib
    }

    /// Ends the current phase and starts the next: the peak resident memory reached since the
    /// previous phase ended, minus the memory at the start, MiB. `None` if `/proc` stopped
    /// answering.
    pub fn end_phase(&mut self) -> Option<f64> {
        let (_, peak) = resident_mib()?;
        reset_peak().then_some(peak - self.before_mib)
    }
}
