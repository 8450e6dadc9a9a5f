//! Accuracy against backward time across runs: one point per backward mode (mean ± standard
//! deviation over the runs of that mode), as Figure 3 of the SHINE paper.
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, anyhow};
use deq_train::stats::median;
use plotters::prelude::*;

/// One finished run: its backward mode, median backward time (ms) and test accuracy (0–1).
#[derive(Debug, Clone)]
pub struct ModePoint {
    /// Backward mode label.
    pub mode: String,
    /// Median backward time, ms.
    pub backward_ms: f64,
    /// Test accuracy in [0, 1].
    pub accuracy: f64,
}

/// Draws the runs grouped by mode: x = median over runs of the backward time (log scale),
/// x on a log axis, y = mean test accuracy with ±1 standard deviation bars. Written as PNG.
pub fn plot_modes(points: &[ModePoint], title: &str, path: &Path) -> anyhow::Result<()> {
    super::atomically(path, |path| {
        super::register_font()?;
        let mut groups: BTreeMap<&str, Vec<&ModePoint>> = BTreeMap::new();
        for p in points {
            groups.entry(p.mode.as_str()).or_default().push(p);
        }
        if groups.is_empty() {
            return Err(anyhow!("no finished runs to plot"));
        }
        let summary: Vec<(&str, f64, f64, f64, usize)> = groups
            .iter()
            .map(|(mode, runs)| {
                let mut times: Vec<f64> = runs.iter().map(|r| r.backward_ms).collect();
                let time = median(&mut times).expect("every mode has a run");
                let n = runs.len() as f64;
                let mean = runs.iter().map(|r| 100.0 * r.accuracy).sum::<f64>() / n;
                let var = runs
                    .iter()
                    .map(|r| (100.0 * r.accuracy - mean).powi(2))
                    .sum::<f64>()
                    / (n - 1.0).max(1.0);
                (*mode, time, mean, var.sqrt(), runs.len())
            })
            .collect();
        let t_min = summary
            .iter()
            .map(|s| s.1)
            .fold(f64::INFINITY, f64::min)
            .max(1e-3)
            / 1.5;
        let t_max = summary
            .iter()
            .map(|s| s.1)
            .fold(0.0, f64::max)
            .max(t_min * 2.0)
            * 1.5;
        let a_min = summary.iter().map(|s| s.2 - s.3).fold(100.0, f64::min);
        let a_max = summary.iter().map(|s| s.2 + s.3).fold(0.0, f64::max);
        let pad = ((a_max - a_min) * 0.15).max(0.5);
        let root = BitMapBackend::new(path, (900, 640)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(
                t_min.log10()..t_max.log10(),
                (a_min - pad)..(a_max + pad).min(100.0),
            )?;
        chart
            .configure_mesh()
            .x_desc("median backward time per step (ms)")
            .x_labels(8)
            .x_label_formatter(&|x| {
                let ms = 10f64.powf(*x);
                if ms < 10.0 {
                    format!("{ms:.1}")
                } else {
                    format!("{ms:.0}")
                }
            })
            .y_desc("test accuracy (%)")
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .draw()?;
        for (i, &(mode, time, mean, std, n)) in summary.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart.draw_series(std::iter::once(ErrorBar::new_vertical(
                time.log10(),
                mean - std,
                mean,
                mean + std,
                color.stroke_width(2),
                10,
            )))?;
            chart
                .draw_series(std::iter::once(Circle::new(
                    (time.log10(), mean),
                    6,
                    color.filled(),
                )))?
                .label(format!("{mode} ({n} run{})", if n == 1 { "" } else { "s" }))
                .legend(move |(x, y)| Circle::new((x + 8, y), 5, color.filled()));
        }
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    })
}
