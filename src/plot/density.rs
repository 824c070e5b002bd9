//! A 2-D log-density on a grid beside the data's histogram, on one colour scale in nats.

use super::{axes, color_bar, viridis, DrawResult, Figure, FONT};
use plotters::coord::Shift;
use plotters::prelude::*;

/// Log-densities (nats) on a `grid`×`grid` square over [lo, hi]²: cell (ix, iy) at
/// index `iy·grid + ix` is centred at (lo + (ix + ½)·cell, lo + (iy + ½)·cell).
pub struct DensityFigure<'a> {
    pub grid: usize,
    pub lo: f64,
    pub hi: f64,
    /// The model's log p(x).
    pub model: &'a [f64],
    /// The data's histogram as a log-density (−∞ in empty cells), if known.
    pub data: Option<&'a [f64]>,
    pub title: &'a str,
}

/// Nats shown below the maximum: lower values take the darkest colour.
const SPAN: f64 = 12.0;

impl DensityFigure<'_> {
    /// The colour scale: from the smallest finite model value (at most SPAN nats below
    /// the top) to the largest finite value of either panel.
    fn scale(&self) -> (f64, f64) {
        let finite = |v: &&f64| v.is_finite();
        let all = self.model.iter().chain(self.data.into_iter().flatten());
        let top = all
            .filter(finite)
            .cloned()
            .fold(f64::NEG_INFINITY, f64::max);
        let bottom = self
            .model
            .iter()
            .filter(finite)
            .cloned()
            .fold(f64::INFINITY, f64::min);
        if !top.is_finite() {
            return (-1.0, 0.0);
        }
        let bottom = if bottom.is_finite() {
            bottom.max(top - SPAN)
        } else {
            top - SPAN
        };
        (bottom, if top > bottom { top } else { bottom + 1.0 })
    }

    fn panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        values: &[f64],
        caption: &str,
        (lo_c, hi_c): (f64, f64),
    ) -> DrawResult<DB> {
        let (g, lo, hi) = (self.grid, self.lo, self.hi);
        let cell = (hi - lo) / g as f64;
        let mut chart = ChartBuilder::on(area)
            .caption(caption, (FONT, 18))
            .margin(10)
            .x_label_area_size(45)
            .y_label_area_size(55)
            .build_cartesian_2d(lo..hi, lo..hi)?;
        chart.draw_series(values.iter().enumerate().map(|(i, &v)| {
            let (ix, iy) = ((i % g) as f64, (i / g) as f64);
            let x = lo + ix * cell;
            let y = lo + iy * cell;
            let c = viridis((v - lo_c) / (hi_c - lo_c));
            Rectangle::new([(x, y), (x + cell, y + cell)], c.filled())
        }))?;
        axes(&mut chart, ("x1", "x2"), 14, false)
    }
}

impl Figure for DensityFigure<'_> {
    fn size(&self) -> (u32, u32) {
        (if self.data.is_some() { 1250 } else { 700 }, 640)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let root = root.titled(self.title, (FONT, 22))?;
        let (w, _) = root.dim_in_pixel();
        let (panels, bar) = root.split_horizontally(w - 110);
        let scale = self.scale();
        match self.data {
            Some(data) => {
                let (left, right) = panels.split_horizontally((w - 110) / 2);
                self.panel(&left, self.model, "model log p(x)", scale)?;
                self.panel(&right, data, "data histogram", scale)?;
            }
            None => self.panel(&panels, self.model, "model log p(x)", scale)?,
        }
        color_bar(&bar, scale, "log density (nats)", (48, 55))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::tests::{ink, read_png};

    #[test]
    fn density_panels_share_one_colour_scale() {
        let dir = crate::io::atomic::scratch_dir("plot-density");
        let g = 40;
        let logp: Vec<f64> = (0..g * g)
            .map(|i| {
                let (x, y) = ((i % g) as f64 / 10.0 - 2.0, (i / g) as f64 / 10.0 - 2.0);
                -0.5 * (x * x + y * y) - (2.0 * std::f64::consts::PI).ln()
            })
            .collect();
        let mut hist = logp.clone();
        hist[0] = f64::NEG_INFINITY;
        let fig = DensityFigure {
            grid: g,
            lo: -2.0,
            hi: 2.0,
            model: &logp,
            data: Some(&hist),
            title: "density",
        };
        assert_eq!(fig.scale().1, logp.iter().cloned().fold(f64::MIN, f64::max));
        let p = dir.join("d.png");
        crate::plot::save(&p, &fig).unwrap();
        let (w, h, rgb) = read_png(&p);
        assert_eq!((w, h), (1250, 640));
        let (n, colours) = ink(&rgb);
        assert!(n > 200_000 && colours > 100, "{n} {colours}");
        // The top of the scale (yellow) appears: the mode is in the window.
        let top = viridis(1.0);
        assert!(
            rgb.chunks_exact(3)
                .filter(|p| *p == [top.0, top.1, top.2])
                .count()
                > 10
        );
        let svg = dir.join("d.svg");
        crate::plot::save(&svg, &fig).unwrap();
        assert!(std::fs::read_to_string(&svg)
            .unwrap()
            .contains("log density (nats)"));
    }
}
