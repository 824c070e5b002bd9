//! Figures: loss curves, scatter and corner plots, densities, trajectories and flow
//! animations, drawn with `plotters` in DejaVu Sans (compiled into the binary, so text
//! renders the same on every machine and nothing is read from the system).
//!
//! A figure is PNG unless its file name ends in `.svg`; the GIF animation is always GIF.
//! Every file is written atomically: a failed or interrupted figure leaves no file.

mod animate;
mod density;
mod loss;
mod scatter;

pub use animate::{animate_gif, gif_frames, Animation};
pub use density::DensityFigure;
pub use loss::LossFigure;
pub use plotters::style::RGBColor;
pub use scatter::{Layer, ScatterFigure, TrajectoryFigure};

use plotters::coord::Shift;
use plotters::prelude::*;
use std::io;
use std::path::Path;

/// What a figure's drawing returns on the backend `DB`.
pub type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// A figure that can draw itself on any plotters backend.
pub trait Figure {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB>;
}

/// The file kinds a figure can be written as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Png,
    Svg,
}

impl Format {
    /// From the file name: `.svg` is SVG, `.png` PNG; anything else is refused.
    pub fn of(path: &Path) -> Option<Format> {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("png") => Some(Format::Png),
            Some(e) if e.eq_ignore_ascii_case("svg") => Some(Format::Svg),
            _ => None,
        }
    }
}

/// The sans-serif family every figure uses: DejaVu Sans, registered once.
pub(crate) const FONT: &str = "sans-serif";

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TrueType font compiled into the binary; a failure here
        // would be a build defect, and text would then be missing, not wrong.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
    });
}

pub(crate) fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.into())
}

fn draw_error<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> io::Error {
    io::Error::other(format!("drawing the figure failed: {e}"))
}

/// Draw `fig` into an RGB8 buffer.
pub(crate) fn render_rgb(fig: &impl Figure) -> io::Result<Vec<u8>> {
    register_font();
    let (w, h) = fig.size();
    if w < 16 || h < 16 || w > 8192 || h > 8192 {
        return Err(invalid(format!(
            "figure size {w}×{h} must be 16 to 8192 pixels"
        )));
    }
    let mut buf = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        fig.draw(&root).map_err(draw_error)?;
        root.present().map_err(draw_error)?;
    }
    Ok(buf)
}

/// Write `fig` to `path` (PNG or SVG by its extension), atomically.
pub fn save(path: &Path, fig: &impl Figure) -> io::Result<()> {
    match Format::of(path) {
        Some(Format::Png) => {
            let rgb = render_rgb(fig)?;
            let (w, h) = fig.size();
            crate::io::atomic::write_atomic_with(path, |out| {
                let mut enc = png::Encoder::new(out, w, h);
                enc.set_color(png::ColorType::Rgb);
                enc.set_depth(png::BitDepth::Eight);
                let mut writer = enc.write_header().map_err(io::Error::other)?;
                writer.write_image_data(&rgb).map_err(io::Error::other)
            })
        }
        Some(Format::Svg) => {
            register_font();
            let mut svg = String::new();
            {
                let root = SVGBackend::with_string(&mut svg, fig.size()).into_drawing_area();
                root.fill(&WHITE).map_err(draw_error)?;
                fig.draw(&root).map_err(draw_error)?;
                root.present().map_err(draw_error)?;
            }
            crate::io::atomic::write_atomic(path, svg.as_bytes())
        }
        None => Err(invalid(format!(
            "{}: figures are .png or .svg files",
            path.display()
        ))),
    }
}

/// A chart with f64 axes, as every figure draws them.
pub(crate) type Chart<'a, 'b, DB> = ChartContext<
    'a,
    DB,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// Axes with numbers and names (`font` px labels), light grid lines when `grid`.
pub(crate) fn axes<DB: DrawingBackend>(
    chart: &mut Chart<'_, '_, DB>,
    (x, y): (&str, &str),
    font: u32,
    grid: bool,
) -> DrawResult<DB> {
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(x)
        .y_desc(y)
        .x_labels(5)
        .y_labels(5)
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .label_style((FONT, font))
        .axis_desc_style((FONT, font + 2))
        .light_line_style(RGBColor(242, 242, 242));
    if !grid {
        mesh.disable_mesh();
    }
    mesh.draw()
}

/// A vertical viridis colour bar from `lo` to `hi` named `label`, inset by `margins` (top,
/// bottom) pixels so that it lines up with the plot beside it.
pub(crate) fn color_bar<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    (lo, hi): (f64, f64),
    label: &str,
    (top, bottom): (u32, u32),
) -> DrawResult<DB> {
    let mut chart = ChartBuilder::on(area)
        .margin_top(top)
        .margin_bottom(bottom)
        .margin_right(10)
        .y_label_area_size(0)
        .right_y_label_area_size(55)
        .build_cartesian_2d(0.0..1.0, lo..hi)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_y_mesh()
        .disable_x_axis()
        .y_desc(label)
        .y_labels(7)
        .y_label_formatter(&|v| tick(*v))
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .draw()?;
    let step = (hi - lo) / 200.0;
    chart.draw_series((0..200).map(|i| {
        let v = lo + i as f64 * step;
        Rectangle::new(
            [(0.0, v), (1.0, v + step)],
            viridis(i as f64 / 199.0).filled(),
        )
    }))?;
    Ok(())
}

/// Viridis anchor colours at 0, 1/8, ..., 1 (sampled from matplotlib's map);
/// interpolating linearly between them is visually indistinguishable from the full
/// table.
const VIRIDIS: [[u8; 3]; 9] = [
    [68, 1, 84],
    [71, 44, 122],
    [59, 81, 139],
    [44, 113, 142],
    [33, 144, 141],
    [39, 173, 129],
    [92, 200, 99],
    [170, 220, 50],
    [253, 231, 37],
];

/// The viridis colour of `t` in 0..=1 (clamped).
pub(crate) fn viridis(t: f64) -> RGBColor {
    let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) } * (VIRIDIS.len() - 1) as f64;
    let i = (t.floor() as usize).min(VIRIDIS.len() - 2);
    let f = t - i as f64;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    let c = [0, 1, 2].map(|k| (a[k] as f64 + (b[k] as f64 - a[k] as f64) * f).round() as u8);
    RGBColor(c[0], c[1], c[2])
}

/// A tick label without float noise: `0.30000000000000004` → `0.3`, `12000` → `1.2e4`.
pub(crate) fn tick(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-3..1e4).contains(&a) {
        let s = format!("{v:.1e}");
        return s.replace(".0e", "e");
    }
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// The q-quantile (0..=1) of a sorted, non-empty slice.
fn quantile(sorted: &[f32], q: f64) -> f32 {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A robust range of `values`: the 0.5%–99.5% quantiles (so a few outliers do not
/// shrink the bulk into a corner) with a 10% margin; a unit window when degenerate.
pub(crate) fn robust_range(values: impl Iterator<Item = f32>) -> (f64, f64) {
    let mut v: Vec<f32> = values.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (-1.0, 1.0);
    }
    v.sort_unstable_by(f32::total_cmp);
    let (lo, hi) = (quantile(&v, 0.005) as f64, quantile(&v, 0.995) as f64);
    let half = 0.5 * (hi - lo) * 1.1;
    let c = 0.5 * (lo + hi);
    if half > 0.0 && half.is_finite() {
        (c - half, c + half)
    } else {
        (c - 1.0, c + 1.0)
    }
}

/// The square window (columns 0 and 1) holding the bulk of the first and the last of
/// `snapshots` (rows of `d` values): the source and the data of a flow.
pub(crate) fn ends_view(snapshots: &[Vec<f32>], d: usize) -> [(f64, f64); 2] {
    let ends = [&snapshots[0], &snapshots[snapshots.len() - 1]];
    let col = |c: usize| {
        ends.into_iter()
            .flat_map(move |f| f.chunks_exact(d).map(move |r| r[c]))
    };
    let [(x0, x1), (y0, y1)] = [robust_range(col(0)), robust_range(col(1))];
    let half = 0.5 * (x1 - x0).max(y1 - y0);
    let (cx, cy) = (0.5 * (x0 + x1), 0.5 * (y0 + y1));
    [(cx - half, cx + half), (cy - half, cy + half)]
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    /// A decoded RGB8 PNG: (width, height, pixels).
    pub fn read_png(path: &Path) -> (u32, u32, Vec<u8>) {
        let dec = png::Decoder::new(std::fs::File::open(path).unwrap());
        let mut reader = dec.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    /// The trimmed text of every `<text>` element of an SVG.
    pub fn svg_texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|s| {
                let body = s.split_once('>')?.1;
                Some(body.split("</text>").next()?.trim().to_string())
            })
            .collect()
    }

    /// Pixels that are not white, and distinct colours among them.
    pub fn ink(rgb: &[u8]) -> (usize, usize) {
        let mut colours = std::collections::HashSet::new();
        let mut n = 0;
        for p in rgb.chunks_exact(3) {
            if p != [255, 255, 255] {
                n += 1;
                colours.insert([p[0], p[1], p[2]]);
            }
        }
        (n, colours.len())
    }

    #[test]
    fn tick_labels_have_no_float_noise() {
        assert_eq!(super::tick(0.1 + 0.2), "0.3");
        assert_eq!(super::tick(-2.0), "-2");
        assert_eq!(super::tick(12000.0), "1.2e4");
        assert_eq!(super::tick(0.0001), "1e-4");
        assert_eq!(super::tick(0.0), "0");
    }

    #[test]
    fn only_png_and_svg_are_figures() {
        use super::Format;
        assert_eq!(Format::of(Path::new("a/b.PNG")), Some(Format::Png));
        assert_eq!(Format::of(Path::new("b.svg")), Some(Format::Svg));
        assert_eq!(Format::of(Path::new("b.jpg")), None);
        assert_eq!(Format::of(Path::new("b")), None);
    }
}
