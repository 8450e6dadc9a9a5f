//! A run's training curves: loss, accuracy and forward iterations against the step.
use std::path::Path;

use anyhow::{Context, anyhow};
use deq_train::train::{EpochRecord, MetricsLine, StepRecord};
use plotters::prelude::*;

/// Moving average over a window of `w` points.
fn smooth(values: &[(f64, f64)], w: usize) -> Vec<(f64, f64)> {
    let w = w.max(1);
    let mut out = Vec::with_capacity(values.len());
    let mut sum = 0.0;
    for i in 0..values.len() {
        sum += values[i].1;
        if i >= w {
            sum -= values[i - w].1;
        }
        out.push((values[i].0, sum / (i + 1).min(w) as f64));
    }
    out
}

/// Three panels from a metrics log: training loss per step (smoothed) with the test loss per
/// epoch; training (smoothed) and test accuracy; mean forward iterations per step. Written as PNG.
pub fn plot_training(lines: &[MetricsLine], title: &str, path: &Path) -> anyhow::Result<()> {
    super::atomically(path, |path| {
        super::register_font()?;
        let steps: Vec<&StepRecord> = lines
            .iter()
            .filter_map(|l| match l {
                MetricsLine::Step(s) => Some(s),
                _ => None,
            })
            .collect();
        let epochs: Vec<&EpochRecord> = lines
            .iter()
            .filter_map(|l| match l {
                MetricsLine::Epoch(e) => Some(e),
                _ => None,
            })
            .collect();
        if steps.is_empty() {
            return Err(anyhow!("the metrics log holds no steps"));
        }
        let window = (steps.len() / 50).clamp(1, 50);
        let x_max = steps.last().map_or(1, |s| s.step) as f64;
        let loss = smooth(
            &steps
                .iter()
                .map(|s| (s.step as f64, s.loss))
                .collect::<Vec<_>>(),
            window,
        );
        let accuracy = smooth(
            &steps
                .iter()
                .map(|s| (s.step as f64, 100.0 * s.accuracy))
                .collect::<Vec<_>>(),
            window,
        );
        let iters: Vec<(f64, f64)> = steps
            .iter()
            .filter(|s| s.phase == "deq")
            .map(|s| (s.step as f64, s.forward_iters))
            .collect();

        let root = BitMapBackend::new(path, (1500, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(title, ("sans-serif", 22))?;
        let panels = root.split_evenly((1, 3));
        let style = |c: RGBColor| c.stroke_width(2);

        let loss_max = loss
            .iter()
            .map(|p| p.1)
            .chain(epochs.iter().map(|e| e.test_loss))
            .fold(0.0, f64::max)
            * 1.05;
        let mut chart = ChartBuilder::on(&panels[0])
            .caption("loss", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..x_max, 0.0..loss_max.max(1e-3))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .label_style(("sans-serif", 13))
            .draw()?;
        chart
            .draw_series(LineSeries::new(loss.clone(), style(BLUE)))?
            .label("train (moving average)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style(BLUE)));
        chart
            .draw_series(LineSeries::new(
                epochs.iter().map(|e| (e.step as f64, e.test_loss)),
                style(RED),
            ))?
            .label("test")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style(RED)));
        chart.draw_series(
            epochs
                .iter()
                .map(|e| Circle::new((e.step as f64, e.test_loss), 4, RED.filled())),
        )?;
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 13))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;

        let mut chart = ChartBuilder::on(&panels[1])
            .caption("accuracy (%)", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..x_max, 0.0..100.0)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .label_style(("sans-serif", 13))
            .draw()?;
        chart
            .draw_series(LineSeries::new(accuracy, style(BLUE)))?
            .label("train batches (moving average)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style(BLUE)));
        chart
            .draw_series(LineSeries::new(
                epochs
                    .iter()
                    .map(|e| (e.step as f64, 100.0 * e.test_accuracy)),
                style(RED),
            ))?
            .label("test")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style(RED)));
        chart.draw_series(
            epochs
                .iter()
                .map(|e| Circle::new((e.step as f64, 100.0 * e.test_accuracy), 4, RED.filled())),
        )?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font(("sans-serif", 13))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;

        let iter_max = iters.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(&panels[2])
            .caption(
                "forward solver iterations (mean per sample)",
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..x_max, 0.0..iter_max)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .label_style(("sans-serif", 13))
            .draw()?;
        chart.draw_series(
            iters
                .iter()
                .map(|&(x, y)| Circle::new((x, y), 1, RGBColor(0, 130, 60).mix(0.7).filled())),
        )?;
        root.present()
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    })
}
