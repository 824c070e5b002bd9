//! The training curve: loss per step (raw and smoothed, log axis when positive) over a
//! panel of the learning rate.

use super::{tick, DrawResult, Figure, FONT};
use plotters::coord::Shift;
use plotters::prelude::*;

/// Loss per step, with the learning rate of each step.
pub struct LossFigure<'a> {
    /// Loss of steps 1..=n.
    pub loss: &'a [f32],
    /// Learning rate of steps 1..=n (empty: no panel).
    pub lr: &'a [f64],
    /// Window of the moving average drawn over the raw curve.
    pub smooth: usize,
    pub title: &'a str,
}

const RAW: RGBColor = RGBColor(170, 195, 235);
const SMOOTH: RGBColor = RGBColor(20, 60, 160);
const LR: RGBColor = RGBColor(200, 90, 20);

/// Trailing moving average of finite values over `window` steps.
pub fn moving_average(v: &[f32], window: usize) -> Vec<f32> {
    let w = window.max(1);
    let (mut sum, mut n) = (0.0f64, 0usize);
    let mut out = Vec::with_capacity(v.len());
    for (i, &x) in v.iter().enumerate() {
        if x.is_finite() {
            sum += x as f64;
            n += 1;
        }
        if i >= w && v[i - w].is_finite() {
            sum -= v[i - w] as f64;
            n -= 1;
        }
        out.push(if n > 0 {
            (sum / n as f64) as f32
        } else {
            f32::NAN
        });
    }
    out
}

/// (step, value) pairs of the finite values, at most ~4000 of them (every k-th step).
fn thin(v: &[f32]) -> Vec<(f64, f64)> {
    let k = v.len().div_ceil(4000).max(1);
    v.iter()
        .enumerate()
        .step_by(k)
        .filter(|(_, y)| y.is_finite())
        .map(|(i, &y)| ((i + 1) as f64, y as f64))
        .collect()
}

impl LossFigure<'_> {
    fn draw_loss<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let raw = thin(self.loss);
        let smooth = thin(&moving_average(self.loss, self.smooth));
        let x_max = self.loss.len().max(2) as f64;
        let ys = raw.iter().map(|p| p.1);
        let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
            (a.min(y), b.max(y))
        });
        let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
        let mut chart = ChartBuilder::on(area);
        chart
            .caption(self.title, (FONT, 22))
            .margin(10)
            .x_label_area_size(if self.lr.is_empty() { 40 } else { 0 })
            .y_label_area_size(70);
        let label = |s: &str| s.to_string();
        macro_rules! finish {
            ($chart:expr, $ylabel:expr) => {{
                let mut c = $chart;
                c.configure_mesh()
                    .x_desc(if self.lr.is_empty() { "step" } else { "" })
                    .y_desc($ylabel)
                    .y_labels(12)
                    .x_label_formatter(&|v| tick(*v))
                    .y_label_formatter(&|v| tick(*v))
                    .label_style((FONT, 14))
                    .axis_desc_style((FONT, 16))
                    .light_line_style(TRANSPARENT)
                    .draw()?;
                c.draw_series(LineSeries::new(raw.iter().copied(), RAW))?
                    .label("loss per step")
                    .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RAW.stroke_width(3)));
                c.draw_series(LineSeries::new(
                    smooth.iter().copied(),
                    SMOOTH.stroke_width(2),
                ))?
                .label(format!("moving average ({} steps)", self.smooth))
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], SMOOTH.stroke_width(3)));
                c.configure_series_labels()
                    .background_style(WHITE.mix(0.85))
                    .border_style(RGBColor(200, 200, 200))
                    .label_font((FONT, 14))
                    .position(SeriesLabelPosition::UpperRight)
                    .draw()?;
            }};
        }
        // A log axis pays when the loss spans a decade or more (plotters labels decades).
        if lo > 0.0 && hi > 10.0 * lo {
            let span = (lo * 0.9)..(hi * 1.1);
            finish!(
                chart.build_cartesian_2d(1.0..x_max, span.log_scale())?,
                label("loss (log scale)")
            );
        } else {
            let pad = 0.05 * (hi - lo).max(1e-3 * hi.abs().max(lo.abs())).max(1e-12);
            finish!(
                chart.build_cartesian_2d(1.0..x_max, (lo - pad)..(hi + pad))?,
                label("loss")
            );
        }
        Ok(())
    }

    fn draw_lr<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let x_max = self.lr.len().max(2) as f64;
        let hi = self.lr.iter().cloned().fold(0.0, f64::max).max(1e-12);
        let k = self.lr.len().div_ceil(4000).max(1);
        let pts = self
            .lr
            .iter()
            .enumerate()
            .step_by(k)
            .map(|(i, &v)| ((i + 1) as f64, v));
        let mut chart = ChartBuilder::on(area)
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(1.0..x_max, 0.0..hi * 1.1)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("learning rate")
            .x_label_formatter(&|v| tick(*v))
            .y_label_formatter(&|v| tick(*v))
            .y_labels(4)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .light_line_style(TRANSPARENT)
            .draw()?;
        chart.draw_series(LineSeries::new(pts, LR.stroke_width(2)))?;
        Ok(())
    }
}

impl Figure for LossFigure<'_> {
    fn size(&self) -> (u32, u32) {
        (900, if self.lr.is_empty() { 450 } else { 600 })
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        if self.lr.is_empty() {
            return self.draw_loss(root);
        }
        let (top, bottom) = root.split_vertically(420);
        self.draw_loss(&top)?;
        self.draw_lr(&bottom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::tests::{ink, read_png, svg_texts};

    #[test]
    fn moving_average_skips_non_finite_values() {
        let m = moving_average(&[1.0, 3.0, f32::NAN, 5.0], 2);
        assert_eq!(m[0], 1.0);
        assert_eq!(m[1], 2.0);
        assert_eq!(m[2], 3.0);
        assert_eq!(m[3], 5.0);
    }

    #[test]
    fn loss_figure_png_and_svg_have_axes_and_curves() {
        let dir = crate::io::atomic::scratch_dir("plot-loss");
        let loss: Vec<f32> = (0..3000)
            .map(|i| 2.0 * (-(i as f32) / 800.0).exp() + 0.1)
            .collect();
        let lr: Vec<f64> = (0..3000)
            .map(|i| 1e-3 * (i as f64 / 100.0).min(1.0))
            .collect();
        for (lr, h) in [(&lr[..], 600), (&[][..], 450)] {
            let fig = LossFigure {
                loss: &loss,
                lr,
                smooth: 100,
                title: "training loss",
            };
            let p = dir.join("loss.png");
            crate::plot::save(&p, &fig).unwrap();
            let (w, hh, rgb) = read_png(&p);
            assert_eq!((w, hh), (900, h));
            let (n, colours) = ink(&rgb);
            assert!(n > 5_000 && colours > 20, "ink {n}, colours {colours}");
            // The smoothed curve's colour is drawn.
            assert!(rgb.chunks_exact(3).any(|p| p == [20, 60, 160]));
        }
        let p = dir.join("loss.svg");
        let fig = LossFigure {
            loss: &loss,
            lr: &lr,
            smooth: 100,
            title: "training loss",
        };
        crate::plot::save(&p, &fig).unwrap();
        let texts = svg_texts(&std::fs::read_to_string(&p).unwrap());
        for text in [
            "loss (log scale)",
            "learning rate",
            "step",
            "moving average (100 steps)",
        ] {
            assert!(
                texts.iter().any(|t| t == text),
                "{text} missing from {texts:?}"
            );
        }
        // A loss that goes negative (maximum likelihood) gets a linear axis.
        let nll: Vec<f32> = (0..100).map(|i| 1.0 - i as f32 / 30.0).collect();
        let fig = LossFigure {
            loss: &nll,
            lr: &[],
            smooth: 10,
            title: "nll",
        };
        crate::plot::save(&p, &fig).unwrap();
        let texts = svg_texts(&std::fs::read_to_string(&p).unwrap());
        assert!(texts.iter().any(|t| t == "loss"), "{texts:?}");
        assert!(!texts.iter().any(|t| t.contains("log scale")));
    }
}
