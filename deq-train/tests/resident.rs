//! The per-phase peak of resident memory (in a test binary of its own: the peak is per
//! process, and tests in one binary run side by side).
#![cfg(target_os = "linux")]

use deq_train::resident::PhaseMeter;

/// A 96 MiB buffer, written so that its pages are resident, then freed: the phase that held
/// it peaks at least 90 MiB above the start, and the next phase, which allocates nothing,
/// stays far below.
#[test]
fn the_peak_is_attributed_to_the_phase_that_reached_it() {
    let mut meter = PhaseMeter::start().expect("Linux lets a process reset its own peak");
    let mut big = vec![0u8; 96 << 20];
    for page in big.chunks_mut(4096) {
        page[0] = 1;
    }
    let touched: usize = big.iter().step_by(4096).map(|&b| b as usize).sum();
    assert_eq!(touched, (96 << 20) / 4096);
    drop(big);
    let holding = meter.end_phase().unwrap();
    let after = meter.end_phase().unwrap();
    assert!(holding >= 90.0, "phase with the buffer: {holding:.1} MiB");
    assert!(
        after < holding - 60.0,
        "phase after the buffer was freed: {after:.1} MiB (holding: {holding:.1} MiB)"
    );
}
