//! The suboptimality-against-time figure of the bi-level experiment.
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, anyhow};
use deq_core::bilevel::OuterStep;
use plotters::prelude::*;

/// Held-out loss of the delivered model (see [`crate::hpo::delivered`]) minus `best[seed]`, the
/// best held-out loss seen for the seed (any method), against wall time: per method the median over seeds and a 10–90 % band, on log-log axes, written as PNG.
pub fn plot_suboptimality(
    traces: &BTreeMap<(String, usize), Vec<OuterStep>>,
    methods: &[String],
    best: &[f64],
    title: &str,
    path: &Path,
) -> anyhow::Result<()> {
    super::atomically(path, |path| {
        super::register_font()?;
        let seeds = best.len();
        let floor = 1e-6
            * best
                .iter()
                .cloned()
                .fold(f64::INFINITY, f64::min)
                .abs()
                .max(1e-12);
        let t_min = traces
            .values()
            .flat_map(|t| t.first())
            .map(|s| s.seconds)
            .fold(f64::INFINITY, f64::min)
            .max(1e-5);
        let t_max = traces
            .values()
            .flat_map(|t| t.last())
            .map(|s| s.seconds)
            .fold(0.0, f64::max)
            .max(t_min * 10.0);
        let grid: Vec<f64> = (0..=80)
            .map(|i| t_min * (t_max / t_min).powf(i as f64 / 80.0))
            .collect();
        // Per method: per grid time, the quantiles over seeds of the suboptimality of the last
        // iterate finished by then (seeds that have not finished one yet are left out).
        let mut curves = Vec::new();
        let (mut y_min, mut y_max) = (f64::INFINITY, 0.0f64);
        for method in methods {
            let mut points = Vec::new();
            for &t in &grid {
                let mut values: Vec<f64> = (0..seeds)
                    .filter_map(|seed| {
                        let points =
                            crate::hpo::delivered(method, traces.get(&(method.clone(), seed))?);
                        let &(_, loss) = points.iter().take_while(|p| p.0 <= t).last()?;
                        Some((loss - best[seed]).max(floor))
                    })
                    .collect();
                if values.is_empty() {
                    continue;
                }
                values.sort_by(f64::total_cmp);
                let q = |p: f64| values[((values.len() - 1) as f64 * p).round() as usize];
                let (lo, med, hi) = (q(0.1), q(0.5), q(0.9));
                y_min = y_min.min(lo);
                y_max = y_max.max(hi);
                points.push((t, lo, med, hi));
            }
            curves.push((method.clone(), points));
        }
        if !(y_max > 0.0) {
            return Err(anyhow!("nothing to plot"));
        }
        let root = BitMapBackend::new(path, (960, 640)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 24))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(80)
            .build_cartesian_2d(
                (t_min..t_max).log_scale(),
                (y_min.max(floor)..y_max * 1.5).log_scale(),
            )?;
        chart
            .configure_mesh()
            .x_desc("wall time (s)")
            .y_desc("held-out loss − best seen")
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .draw()?;
        for (i, (method, points)) in curves.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let band: Vec<(f64, f64)> = points
                .iter()
                .map(|p| (p.0, p.3))
                .chain(points.iter().rev().map(|p| (p.0, p.1)))
                .collect();
            chart.draw_series(std::iter::once(Polygon::new(band, color.mix(0.15))))?;
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|p| (p.0, p.2)),
                    color.stroke_width(2),
                ))?
                .label(method.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
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
