//! The demo's figure: per-image residual curves of the forward solve, and the images with
//! their predicted labels.
use std::path::Path;

use plotters::prelude::*;

/// One shown test image.
#[derive(Debug, Clone)]
pub struct DemoSample {
    /// Pixels, `[channels, height, width]`, 0–255.
    pub pixels: Vec<u8>,
    /// The true class.
    pub truth: String,
    /// The predicted class.
    pub predicted: String,
    /// The solver's relative residual at every iterate.
    pub residuals: Vec<f64>,
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// Left: the residual `‖f(z) − z‖ / ‖f(z)‖` of each image's forward solve against the
/// iteration (log scale). Right: the images in a grid, captioned with the predicted class
/// (green when right, red with the true class when wrong). Written as PNG.
pub fn plot_demo(
    samples: &[DemoSample],
    shape: [usize; 3],
    title: &str,
    path: &Path,
) -> anyhow::Result<()> {
    anyhow::ensure!(!samples.is_empty(), "no images to show");
    super::atomically(path, |path| {
        super::register_font()?;
        let root = BitMapBackend::new(path, (1500, 720)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(title, ("sans-serif", 20))?;
        let (left, right) = root.split_horizontally(720);

        let finite = |v: &f64| v.is_finite() && *v > 0.0;
        let values: Vec<f64> = samples
            .iter()
            .flat_map(|s| s.residuals.iter().copied().filter(finite))
            .collect();
        let lo = values
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
            .max(1e-12);
        let hi = values.iter().copied().fold(0.0, f64::max).max(lo * 10.0);
        let iters = samples
            .iter()
            .map(|s| s.residuals.len())
            .max()
            .unwrap_or(1)
            .max(2);
        let mut chart = ChartBuilder::on(&left)
            .caption("forward solve, one line per image", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..(iters - 1) as f64, (lo / 2.0..hi * 2.0).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("Broyden iteration")
            .y_desc("relative residual")
            .y_label_formatter(&|v| format!("{v:.0e}"))
            .draw()?;
        for (i, s) in samples.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            chart.draw_series(LineSeries::new(
                s.residuals
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| finite(v))
                    .map(|(k, &v)| (k as f64, v)),
                color.stroke_width(2),
            ))?;
        }

        let [channels, h, w] = shape;
        let cols = (samples.len() as f64).sqrt().ceil() as usize;
        let rows = samples.len().div_ceil(cols);
        let cells = right.margin(10, 10, 10, 10).split_evenly((rows, cols));
        for (cell, s) in cells.iter().zip(samples) {
            let (cw, ch) = cell.dim_in_pixel();
            let caption_h = 36u32;
            let scale = ((cw.min(ch.saturating_sub(caption_h))) as usize / w.max(h)).max(1);
            let x0 = (cw as usize).saturating_sub(w * scale) / 2;
            for y in 0..h {
                for x in 0..w {
                    let at = |c: usize| s.pixels[c * h * w + y * w + x];
                    let color = if channels >= 3 {
                        RGBColor(at(0), at(1), at(2))
                    } else {
                        RGBColor(at(0), at(0), at(0))
                    };
                    let (px, py) = ((x0 + x * scale) as i32, (y * scale) as i32);
                    cell.draw(&Rectangle::new(
                        [(px, py), (px + scale as i32, py + scale as i32)],
                        color.filled(),
                    ))?;
                }
            }
            let right_label = s.truth == s.predicted;
            let (text, color) = if right_label {
                (s.predicted.clone(), RGBColor(0, 130, 0))
            } else {
                (
                    format!("{} (is {})", s.predicted, s.truth),
                    RGBColor(200, 0, 0),
                )
            };
            cell.draw(&Text::new(
                text,
                (4, (h * scale) as i32 + 4),
                ("sans-serif", 15).into_font().color(&color),
            ))?;
        }
        root.present()?;
        Ok(())
    })
}
