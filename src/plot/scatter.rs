//! Point clouds: a 2-D scatter, a corner plot (pairwise scatters over 1-D histograms)
//! for more dimensions, and particle trajectories coloured by time.

use super::{axes, color_bar, robust_range, tick, viridis, Chart, DrawResult, Figure, FONT};
use plotters::coord::Shift;
use plotters::prelude::*;

/// One named set of points: rows of `dim` values.
pub struct Layer<'a> {
    pub points: &'a [f32],
    pub dim: usize,
    pub color: RGBColor,
    /// Opacity of each dot, 0..=1; small values show density in crowded regions.
    pub alpha: f64,
    /// The legend's name for it.
    pub label: &'a str,
}

impl Layer<'_> {
    fn column(&self, c: usize) -> impl Iterator<Item = f32> + '_ {
        self.points.chunks_exact(self.dim).map(move |r| r[c])
    }
    fn pairs(&self, x: usize, y: usize) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.points
            .chunks_exact(self.dim)
            .map(move |r| (r[x] as f64, r[y] as f64))
            .filter(|p| p.0.is_finite() && p.1.is_finite())
    }
}

/// Scatter of layers in order (later on top): one panel for 2-D data, a corner plot of
/// the first `max_dims` dimensions for more.
pub struct ScatterFigure<'a> {
    pub layers: Vec<Layer<'a>>,
    pub title: &'a str,
    /// Dimensions shown by the corner plot (2..=6 are readable).
    pub max_dims: usize,
}

/// The name of column `c` on an axis.
fn axis_name(c: usize) -> String {
    format!("x{}", c + 1)
}

/// Dots of each layer at columns (x, y); the dot radius shrinks for large clouds.
fn dots<DB: DrawingBackend>(
    chart: &mut Chart<'_, '_, DB>,
    layers: &[Layer],
    (x, y): (usize, usize),
    legend: bool,
) -> DrawResult<DB> {
    for l in layers {
        let n = l.points.len() / l.dim.max(1);
        let r = if n > 5000 { 1 } else { 2 };
        let style = l.color.mix(l.alpha).filled();
        let series = chart.draw_series(l.pairs(x, y).map(|p| Circle::new(p, r, style)))?;
        if legend {
            let c = l.color;
            series
                .label(l.label)
                .legend(move |(x, y)| Circle::new((x + 8, y), 4, c.filled()));
        }
    }
    Ok(())
}

impl ScatterFigure<'_> {
    fn dim(&self) -> usize {
        self.layers.first().map_or(2, |l| l.dim)
    }
    fn shown(&self) -> usize {
        self.dim().min(self.max_dims.max(2))
    }
    fn range(&self, c: usize) -> (f64, f64) {
        robust_range(self.layers.iter().flat_map(|l| l.column(c)))
    }

    fn draw_2d<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        // Both axes span the same width so distances read the same in x and y.
        let ((x0, x1), (y0, y1)) = (self.range(0), self.range(1));
        let half = 0.5 * (x1 - x0).max(y1 - y0);
        let (cx, cy) = (0.5 * (x0 + x1), 0.5 * (y0 + y1));
        let mut chart = ChartBuilder::on(root)
            .caption(self.title, (FONT, 22))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(55)
            .build_cartesian_2d((cx - half)..(cx + half), (cy - half)..(cy + half))?;
        axes(&mut chart, (&axis_name(0), &axis_name(1)), 14, true)?;
        dots(&mut chart, &self.layers, (0, 1), true)?;
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .label_font((FONT, 15))
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
        Ok(())
    }

    /// The histogram of column `c` of each layer, as density step lines.
    fn draw_histogram<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        c: usize,
        last_row: bool,
    ) -> DrawResult<DB> {
        let (lo, hi) = self.range(c);
        let bins = 40;
        let width = (hi - lo) / bins as f64;
        let hists: Vec<Vec<f64>> = self
            .layers
            .iter()
            .map(|l| {
                let mut h = vec![0.0; bins];
                let n = (l.points.len() / l.dim).max(1) as f64;
                for v in l.column(c) {
                    let b = ((v as f64 - lo) / width).floor();
                    if b >= 0.0 && (b as usize) < bins {
                        h[b as usize] += 1.0 / (n * width);
                    }
                }
                h
            })
            .collect();
        let top = hists
            .iter()
            .flatten()
            .cloned()
            .fold(0.0, f64::max)
            .max(1e-12);
        let mut chart = ChartBuilder::on(area)
            .margin(4)
            .x_label_area_size(if last_row { 35 } else { 0 })
            .y_label_area_size(0)
            .build_cartesian_2d(lo..hi, 0.0..top * 1.1)?;
        let name = axis_name(c);
        chart
            .configure_mesh()
            .x_desc(if last_row { name.as_str() } else { "" })
            .x_labels(4)
            .x_label_formatter(&|v| tick(*v))
            .disable_y_mesh()
            .disable_y_axis()
            .label_style((FONT, 12))
            .axis_desc_style((FONT, 14))
            .light_line_style(RGBColor(242, 242, 242))
            .draw()?;
        for (l, h) in self.layers.iter().zip(&hists) {
            let steps = h.iter().enumerate().flat_map(|(b, &v)| {
                let x = lo + b as f64 * width;
                [(x, v), (x + width, v)]
            });
            chart.draw_series(LineSeries::new(steps, l.color.stroke_width(2)))?;
        }
        Ok(())
    }

    fn draw_pair<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        (x, y): (usize, usize),
        (first_col, last_row): (bool, bool),
    ) -> DrawResult<DB> {
        let ((x0, x1), (y0, y1)) = (self.range(x), self.range(y));
        let mut chart = ChartBuilder::on(area)
            .margin(4)
            .x_label_area_size(if last_row { 35 } else { 0 })
            .y_label_area_size(if first_col { 45 } else { 0 })
            .build_cartesian_2d(x0..x1, y0..y1)?;
        let (xn, yn) = (axis_name(x), axis_name(y));
        let names = (
            if last_row { xn.as_str() } else { "" },
            if first_col { yn.as_str() } else { "" },
        );
        axes(&mut chart, names, 12, true)?;
        dots(&mut chart, &self.layers, (x, y), false)
    }

    /// The legend, drawn into the empty upper-right cell of a corner plot.
    fn draw_legend<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        for (i, l) in self.layers.iter().enumerate() {
            let y = 20 + 26 * i as i32;
            area.draw(&Circle::new((20, y), 6, l.color.filled()))?;
            area.draw(&Text::new(l.label.to_string(), (34, y - 8), (FONT, 16)))?;
        }
        Ok(())
    }

    fn draw_corner<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let k = self.shown();
        let title = format!("{} (first {k} of {} dimensions)", self.title, self.dim());
        let root = root.titled(&title, (FONT, 22))?;
        let cells = root.split_evenly((k, k));
        for (idx, cell) in cells.iter().enumerate() {
            let (i, j) = (idx / k, idx % k);
            let edges = (j == 0, i + 1 == k);
            match i.cmp(&j) {
                std::cmp::Ordering::Equal => self.draw_histogram(cell, j, edges.1)?,
                std::cmp::Ordering::Greater => self.draw_pair(cell, (j, i), edges)?,
                std::cmp::Ordering::Less if (i, j) == (0, k - 1) => self.draw_legend(cell)?,
                std::cmp::Ordering::Less => {}
            }
        }
        Ok(())
    }
}

impl Figure for ScatterFigure<'_> {
    fn size(&self) -> (u32, u32) {
        if self.dim() <= 2 {
            (700, 700)
        } else {
            let side = 60 + 200 * self.shown() as u32;
            (side, side)
        }
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        if self.dim() <= 2 {
            self.draw_2d(root)
        } else {
            self.draw_corner(root)
        }
    }
}

/// Paths of particles from the source (t = 0) to the data (t = 1) in columns 0 and 1,
/// each segment coloured by its time, with start and end points marked.
pub struct TrajectoryFigure<'a> {
    /// Positions after every step: `[snapshot][particle·dim]`.
    pub snapshots: &'a [Vec<f32>],
    /// The time of each snapshot.
    pub times: &'a [f64],
    pub dim: usize,
    pub title: &'a str,
    /// The colour bar's name for `times`.
    pub time_label: &'a str,
}

impl TrajectoryFigure<'_> {
    fn path(&self, p: usize) -> impl Iterator<Item = (f64, f64)> + '_ {
        let d = self.dim;
        self.snapshots
            .iter()
            .map(move |s| (s[p * d] as f64, s[p * d + 1] as f64))
    }
}

impl Figure for TrajectoryFigure<'_> {
    fn size(&self) -> (u32, u32) {
        (800, 700)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let (plot, bar) = root.split_horizontally(720);
        let n = self.snapshots.first().map_or(0, |s| s.len() / self.dim);
        if n == 0 {
            return Ok(());
        }
        let [(x0, x1), (y0, y1)] = super::ends_view(self.snapshots, self.dim);
        let mut chart = ChartBuilder::on(&plot)
            .caption(self.title, (FONT, 22))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(55)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        axes(&mut chart, (&axis_name(0), &axis_name(1)), 14, true)?;
        for p in 0..n {
            let pts: Vec<(f64, f64)> = self.path(p).collect();
            for (k, w) in pts.windows(2).enumerate() {
                let finite = w.iter().all(|p| p.0.is_finite() && p.1.is_finite());
                if !finite || k + 1 >= self.times.len() {
                    continue;
                }
                let t = 0.5 * (self.times[k] + self.times[k + 1]);
                chart.draw_series(LineSeries::new(w.iter().copied(), viridis(t).mix(0.6)))?;
            }
        }
        let marks = [
            (0, BLACK, "start (t = 0)"),
            (self.snapshots.len() - 1, RED, "end (t = 1)"),
        ];
        for (s, c, label) in marks {
            let d = self.dim;
            let snap = &self.snapshots[s];
            chart
                .draw_series(
                    (0..n)
                        .map(|p| (snap[p * d] as f64, snap[p * d + 1] as f64))
                        .filter(|q| q.0.is_finite() && q.1.is_finite())
                        .map(|q| Circle::new(q, 2, c.filled())),
                )?
                .label(label)
                .legend(move |(x, y)| Circle::new((x + 8, y), 4, c.filled()));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .label_font((FONT, 15))
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
        color_bar(&bar, (0.0, 1.0), self.time_label, (60, 57))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::tests::{ink, read_png, svg_texts};

    fn cloud(n: usize, d: usize, shift: f32) -> Vec<f32> {
        (0..n * d)
            .map(|i| ((i as f32 * 0.618).fract() - 0.5) * 4.0 + shift * (i % d) as f32)
            .collect()
    }

    #[test]
    fn scatter_2d_has_both_layers_and_a_legend() {
        let dir = crate::io::atomic::scratch_dir("plot-scatter2");
        let (a, b) = (cloud(2000, 2, 0.0), cloud(2000, 2, 1.0));
        let fig = ScatterFigure {
            layers: vec![
                Layer {
                    points: &a,
                    dim: 2,
                    color: RGBColor(150, 150, 150),
                    alpha: 0.5,
                    label: "data",
                },
                Layer {
                    points: &b,
                    dim: 2,
                    color: RGBColor(220, 50, 30),
                    alpha: 1.0,
                    label: "samples",
                },
            ],
            title: "samples",
            max_dims: 4,
        };
        let p = dir.join("s.png");
        crate::plot::save(&p, &fig).unwrap();
        let (w, h, rgb) = read_png(&p);
        assert_eq!((w, h), (700, 700));
        assert!(ink(&rgb).0 > 20_000);
        assert!(rgb.chunks_exact(3).filter(|p| *p == [220, 50, 30]).count() > 500);
        let p = dir.join("s.svg");
        crate::plot::save(&p, &fig).unwrap();
        let texts = svg_texts(&std::fs::read_to_string(&p).unwrap());
        for text in ["samples", "data", "x1", "x2"] {
            assert!(
                texts.iter().any(|t| t == text),
                "{text} missing from {texts:?}"
            );
        }
    }

    #[test]
    fn corner_plot_of_six_dimensions_shows_four_with_histograms() {
        let dir = crate::io::atomic::scratch_dir("plot-corner");
        let a = cloud(3000, 6, 0.5);
        let fig = ScatterFigure {
            layers: vec![Layer {
                points: &a,
                dim: 6,
                color: RGBColor(20, 60, 160),
                alpha: 0.4,
                label: "data",
            }],
            title: "samples",
            max_dims: 4,
        };
        let p = dir.join("c.png");
        crate::plot::save(&p, &fig).unwrap();
        let (w, h, rgb) = read_png(&p);
        assert_eq!((w, h), (860, 860));
        // Every lower-triangle and diagonal cell has ink; the upper cells beside the
        // legend stay blank.
        let cell = |i: u32, j: u32| {
            let (x0, y0) = (j * 860 / 4, 40 + i * 820 / 4);
            let mut n = 0;
            for y in y0 + 20..y0 + 180 {
                for x in x0 + 50..x0 + 200 {
                    let o = 3 * (y * 860 + x) as usize;
                    n += (rgb[o..o + 3] != [255, 255, 255]) as usize;
                }
            }
            n
        };
        for i in 0..4 {
            for j in 0..=i {
                assert!(cell(i, j) > 300, "cell ({i}, {j}) is blank: {}", cell(i, j));
            }
        }
        assert_eq!(cell(1, 3), 0);
        let svg_path = dir.join("c.svg");
        crate::plot::save(&svg_path, &fig).unwrap();
        let texts = svg_texts(&std::fs::read_to_string(&svg_path).unwrap());
        assert!(texts
            .iter()
            .any(|t| t == "samples (first 4 of 6 dimensions)"));
        assert!(texts.iter().any(|t| t == "x4") && !texts.iter().any(|t| t == "x5"));
    }

    #[test]
    fn trajectories_are_coloured_by_time_and_marked() {
        let dir = crate::io::atomic::scratch_dir("plot-traj");
        let snaps: Vec<Vec<f32>> = (0..11)
            .map(|k| {
                let t = k as f32 / 10.0;
                (0..50)
                    .flat_map(|p| [p as f32 * 0.1 * t, (1.0 - t) * (p as f32).sin()])
                    .collect()
            })
            .collect();
        let times: Vec<f64> = (0..11).map(|k| k as f64 / 10.0).collect();
        let fig = TrajectoryFigure {
            snapshots: &snaps,
            times: &times,
            dim: 2,
            title: "flow",
            time_label: "t",
        };
        let p = dir.join("t.png");
        crate::plot::save(&p, &fig).unwrap();
        let (w, h, rgb) = read_png(&p);
        assert_eq!((w, h), (800, 700));
        let has = |c: RGBColor| rgb.chunks_exact(3).any(|p| p == [c.0, c.1, c.2]);
        assert!(
            has(viridis(0.0)) && has(viridis(1.0)),
            "the colour bar spans t"
        );
        assert!(has(RED), "end points marked");
    }
}
