//! Figures, drawn with plotters: the bi-level suboptimality curves, a run's training curves,
//! and accuracy against backward time across runs.
mod demo;
mod modes;
mod suboptimality;
mod training;

pub use demo::{DemoSample, plot_demo};
pub use modes::{ModePoint, plot_modes};
pub use suboptimality::plot_suboptimality;
pub use training::plot_training;

const FONT: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");

/// Registers the embedded font as `sans-serif` (once per process).
fn register_font() -> anyhow::Result<()> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, FONT)
            .is_ok()
    });
    anyhow::ensure!(ok, "the embedded font could not be loaded");
    Ok(())
}

/// Draws into a temporary sibling of `path` with `draw`, then renames it into place, so an
/// interrupted plot never leaves a half-written PNG behind.
fn atomically(
    path: &std::path::Path,
    draw: impl FnOnce(&std::path::Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let tmp = deq_train::fsio::temp_sibling(path).with_extension("png");
    let result = draw(&tmp).and_then(|()| {
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
