//! Font-free PNG plots (scatter, line, heatmap) for quick visual checks of samples,
//! loss curves and densities. Only the `png` crate is used; files are written
//! atomically.

use std::io;
use std::path::Path;

/// One set of points for [`scatter_png`]: rows of `dim` values, of which columns 0 and
/// 1 are plotted.
pub struct Layer<'a> {
    /// Row-major values, `dim` per point.
    pub points: &'a [f32],
    /// Values per row (>= 2).
    pub dim: usize,
    /// Dot colour, RGB.
    pub color: [u8; 3],
    /// Opacity of each dot, 0..=1; small values show density in crowded regions.
    pub alpha: f32,
}

const WHITE: [u8; 3] = [255, 255, 255];
const AXIS: [u8; 3] = [200, 200, 200];
const GRID: [u8; 3] = [232, 232, 232];
const FRAME: [u8; 3] = [160, 160, 160];

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// An RGB8 image with alpha-blended drawing; out-of-bounds drawing is clipped.
struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: u32, h: u32) -> io::Result<Canvas> {
        if w == 0 || h == 0 {
            return Err(invalid(format!("image size {w}x{h} must be non-zero")));
        }
        let (w, h) = (w as usize, h as usize);
        let len = w
            .checked_mul(h)
            .and_then(|n| n.checked_mul(3))
            .ok_or_else(|| invalid(format!("image size {w}x{h} is too large")))?;
        Ok(Canvas {
            w,
            h,
            px: WHITE.iter().copied().cycle().take(len).collect(),
        })
    }

    fn blend(&mut self, x: i64, y: i64, c: [u8; 3], a: f32) {
        if x < 0 || y < 0 || x as usize >= self.w || y as usize >= self.h {
            return;
        }
        let a = a.clamp(0.0, 1.0);
        let i = (y as usize * self.w + x as usize) * 3;
        for (px, &ck) in self.px[i..i + 3].iter_mut().zip(&c) {
            let old = *px as f32;
            *px = (old + (ck as f32 - old) * a).round() as u8;
        }
    }

    fn hline(&mut self, y: i64, x0: i64, x1: i64, c: [u8; 3]) {
        for x in x0..=x1 {
            self.blend(x, y, c, 1.0);
        }
    }

    fn vline(&mut self, x: i64, y0: i64, y1: i64, c: [u8; 3]) {
        for y in y0..=y1 {
            self.blend(x, y, c, 1.0);
        }
    }

    /// A soft dot of radius ~1.5 px centred on pixel (x, y): full weight on the
    /// centre and its 4 neighbours, half on the diagonals.
    fn dot(&mut self, x: i64, y: i64, c: [u8; 3], a: f32) {
        for dy in -1..=1i64 {
            for dx in -1..=1i64 {
                let w = if dx != 0 && dy != 0 { 0.5 } else { 1.0 };
                self.blend(x + dx, y + dy, c, a * w);
            }
        }
    }

    fn save(&self, path: &Path) -> io::Result<()> {
        crate::io::atomic::write_atomic_with(path, |w| {
            let mut enc = png::Encoder::new(w, self.w as u32, self.h as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut writer = enc.write_header().map_err(io::Error::other)?;
            writer
                .write_image_data(&self.px)
                .map_err(io::Error::other)?;
            writer.finish().map_err(io::Error::other)
        })
    }
}

/// The q-quantile (0..=1) of a sorted, non-empty slice.
fn quantile(sorted: &[f32], q: f64) -> f32 {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A robust square view: 0.5%–99.5% quantiles per axis (so a few outliers do not
/// shrink the bulk into a corner), widened to a common span so the aspect ratio is
/// 1:1, plus a 10% margin.
fn auto_range(layers: &[Layer]) -> [f32; 4] {
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for l in layers {
        for r in l.points.chunks_exact(l.dim) {
            if r[0].is_finite() && r[1].is_finite() {
                xs.push(r[0]);
                ys.push(r[1]);
            }
        }
    }
    if xs.is_empty() {
        return [-1.0, 1.0, -1.0, 1.0];
    }
    xs.sort_unstable_by(f32::total_cmp);
    ys.sort_unstable_by(f32::total_cmp);
    let (x0, x1) = (quantile(&xs, 0.005), quantile(&xs, 0.995));
    let (y0, y1) = (quantile(&ys, 0.005), quantile(&ys, 0.995));
    let mut half = 0.5 * (x1 - x0).max(y1 - y0) * 1.1;
    if half.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) || !half.is_finite() {
        // Degenerate (all points equal): a unit window around them.
        half = 1.0;
    }
    let (cx, cy) = (0.5 * (x0 + x1), 0.5 * (y0 + y1));
    [cx - half, cx + half, cy - half, cy + half]
}

/// Scatter plot of columns 0 and 1 of each layer, drawn in order (later layers on
/// top). `range` is `[xmin, xmax, ymin, ymax]`; `None` picks a robust square range.
/// Points outside the range or non-finite are skipped.
pub fn scatter_png(
    path: &Path,
    layers: &[Layer],
    size: u32,
    range: Option<[f32; 4]>,
) -> io::Result<()> {
    for (i, l) in layers.iter().enumerate() {
        if l.dim < 2 || !l.points.len().is_multiple_of(l.dim) {
            return Err(invalid(format!(
                "scatter layer {i}: {} values are not rows of dim {} >= 2",
                l.points.len(),
                l.dim
            )));
        }
    }
    let r = range.unwrap_or_else(|| auto_range(layers));
    if !(r.iter().all(|v| v.is_finite()) && r[1] > r[0] && r[3] > r[2]) {
        return Err(invalid(format!(
            "scatter range {r:?} is empty or not finite"
        )));
    }
    let mut c = Canvas::new(size, size)?;
    let s = (size - 1) as f64;
    let to_px = |x: f32, y: f32| {
        let px = (x - r[0]) as f64 / (r[1] - r[0]) as f64 * s;
        let py = (r[3] - y) as f64 / (r[3] - r[2]) as f64 * s;
        (px.round() as i64, py.round() as i64)
    };
    let last = size as i64 - 1;
    if r[0] < 0.0 && r[1] > 0.0 {
        let (x, _) = to_px(0.0, 0.0);
        c.vline(x, 0, last, AXIS);
    }
    if r[2] < 0.0 && r[3] > 0.0 {
        let (_, y) = to_px(0.0, 0.0);
        c.hline(y, 0, last, AXIS);
    }
    for l in layers {
        for row in l.points.chunks_exact(l.dim) {
            let (x, y) = (row[0], row[1]);
            if x >= r[0] && x <= r[1] && y >= r[2] && y <= r[3] {
                let (px, py) = to_px(x, y);
                c.dot(px, py, l.color, l.alpha);
            }
        }
    }
    c.save(path)
}

/// Grid positions for an axis spanning `lo..hi`: multiples of 1, 2 or 5 × 10^k chosen
/// to give roughly 4–10 lines.
fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = hi - lo;
    if !(span > 0.0 && span.is_finite()) {
        return Vec::new();
    }
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|&st| st >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// Line plot of each series' values against their index (e.g. loss curves), scaled to
/// fit all finite values. With `log_y` the y axis is log10 and values <= 0 are
/// skipped. Non-finite (or skipped) values break the line. Light grid lines mark
/// round values (whole decades once `log_y` spans five or more).
pub fn line_png(
    path: &Path,
    series: &[(&[f32], [u8; 3])],
    width: u32,
    height: u32,
    log_y: bool,
) -> io::Result<()> {
    let mut c = Canvas::new(width, height)?;
    let ty = |v: f32| -> Option<f64> {
        let v = v as f64;
        match (log_y, v.is_finite()) {
            (_, false) => None,
            (true, _) if v <= 0.0 => None,
            (true, _) => Some(v.log10()),
            (false, _) => Some(v),
        }
    };
    let max_len = series.iter().map(|s| s.0.len()).max().unwrap_or(0);
    let (mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in series
        .iter()
        .flat_map(|s| s.0.iter())
        .filter_map(|&v| ty(v))
    {
        y0 = y0.min(v);
        y1 = y1.max(v);
    }
    if y0 > y1 {
        (y0, y1) = (0.0, 1.0);
    } else if y0 == y1 {
        (y0, y1) = (y0 - 0.5, y1 + 0.5);
    }
    let pad = 0.05 * (y1 - y0);
    let (y0, y1) = (y0 - pad, y1 + pad);
    let (x0, x1) = (0.0, (max_len.max(2) - 1) as f64);

    // Plot area inside a small margin so the frame and line ends stay visible.
    let m = (width.min(height) / 16).clamp(1, 8) as f64;
    let (pw, ph) = (width as f64 - 1.0 - 2.0 * m, height as f64 - 1.0 - 2.0 * m);
    let to_px = |x: f64, y: f64| {
        (
            m + (x - x0) / (x1 - x0) * pw.max(0.0),
            m + (y1 - y) / (y1 - y0) * ph.max(0.0),
        )
    };
    let (l, t) = (m as i64, m as i64);
    let (r, b) = (
        (width as f64 - 1.0 - m) as i64,
        (height as f64 - 1.0 - m) as i64,
    );
    for gx in nice_ticks(x0, x1) {
        c.vline(to_px(gx, y0).0.round() as i64, t, b, GRID);
    }
    for gy in nice_ticks(y0, y1) {
        c.hline(to_px(x0, gy).1.round() as i64, l, r, GRID);
    }
    c.hline(t, l, r, FRAME);
    c.hline(b, l, r, FRAME);
    c.vline(l, t, b, FRAME);
    c.vline(r, t, b, FRAME);

    for (values, color) in series {
        let mut prev: Option<(f64, f64)> = None;
        for (i, &v) in values.iter().enumerate() {
            let Some(y) = ty(v) else {
                prev = None;
                continue;
            };
            let p = to_px(i as f64, y);
            let from = prev.unwrap_or(p);
            // Stamp a 1-px pen every half pixel along the segment: simple, gap-free,
            // and cheap enough for curves with many more points than pixels.
            let steps = ((p.0 - from.0).abs().max((p.1 - from.1).abs()) * 2.0).ceil() as usize;
            for k in 0..=steps {
                let f = if steps == 0 {
                    1.0
                } else {
                    k as f64 / steps as f64
                };
                let x = from.0 + (p.0 - from.0) * f;
                let y = from.1 + (p.1 - from.1) * f;
                c.blend(x.round() as i64, y.round() as i64, *color, 1.0);
            }
            prev = Some(p);
        }
    }
    c.save(path)
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

fn viridis(t: f32) -> [u8; 3] {
    let t = t.clamp(0.0, 1.0) * (VIRIDIS.len() - 1) as f32;
    let i = (t.floor() as usize).min(VIRIDIS.len() - 2);
    let f = t - i as f32;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    [0, 1, 2].map(|k| (a[k] as f32 + (b[k] as f32 - a[k] as f32) * f).round() as u8)
}

/// Heatmap of `values` (row-major `ny` rows of `nx`, row 0 at the top), each cell
/// drawn as a `scale`×`scale` block, coloured viridis-like from the finite minimum to
/// the maximum. +inf/-inf take the extreme colours and NaN is grey.
pub fn heatmap_png(
    path: &Path,
    values: &[f32],
    nx: usize,
    ny: usize,
    scale: u32,
) -> io::Result<()> {
    if nx.checked_mul(ny) != Some(values.len()) {
        return Err(invalid(format!(
            "heatmap: {} values do not form a {nx}x{ny} grid",
            values.len()
        )));
    }
    let dim = |n: usize| {
        u32::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(scale))
            .ok_or_else(|| invalid(format!("heatmap: {n} cells x scale {scale} is too large")))
    };
    let mut c = Canvas::new(dim(nx)?, dim(ny)?)?;
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for &v in values.iter().filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    let s = scale as usize;
    for (idx, &v) in values.iter().enumerate() {
        let color = if v.is_nan() {
            [128, 128, 128]
        } else if v == f32::INFINITY {
            viridis(1.0)
        } else if v == f32::NEG_INFINITY {
            viridis(0.0)
        } else if hi > lo {
            // f64 so that huge ranges (e.g. log-densities near f32::MAX) cannot overflow.
            viridis(((v as f64 - lo as f64) / (hi as f64 - lo as f64)) as f32)
        } else {
            viridis(0.5)
        };
        let (col, row) = (idx % nx, idx / nx);
        for y in row * s..(row + 1) * s {
            let i = (y * c.w + col * s) * 3;
            for px in c.px[i..i + 3 * s].chunks_exact_mut(3) {
                px.copy_from_slice(&color);
            }
        }
    }
    c.save(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes a PNG into (width, height, RGB bytes).
    fn read_png(path: &Path) -> (u32, u32, Vec<u8>) {
        let dec = png::Decoder::new(std::fs::File::open(path).unwrap());
        let mut reader = dec.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    fn pixel(img: &(u32, u32, Vec<u8>), x: u32, y: u32) -> [u8; 3] {
        let i = ((y * img.0 + x) * 3) as usize;
        [img.2[i], img.2[i + 1], img.2[i + 2]]
    }

    #[test]
    fn scatter_draws_points_where_expected() {
        let dir = crate::io::atomic::scratch_dir("plot-scatter");
        let p = dir.join("s.png");
        // Two points in 3-D rows (third column ignored), fixed range [-1, 1]².
        let pts = [0.5f32, 0.5, 9.0, -0.5, -0.5, 9.0];
        let blue = [0, 0, 255];
        let layer = Layer {
            points: &pts,
            dim: 3,
            color: blue,
            alpha: 1.0,
        };
        scatter_png(&p, &[layer], 101, Some([-1.0, 1.0, -1.0, 1.0])).unwrap();
        let img = read_png(&p);
        assert_eq!((img.0, img.1), (101, 101));
        // (0.5, 0.5) → pixel (75, 25); (−0.5, −0.5) → (25, 75).
        assert_eq!(pixel(&img, 75, 25), blue);
        assert_eq!(pixel(&img, 25, 75), blue);
        assert_eq!(pixel(&img, 5, 5), WHITE);
        assert_eq!(pixel(&img, 50, 10), AXIS, "y axis at x = 0");
        assert_eq!(pixel(&img, 10, 50), AXIS, "x axis at y = 0");
        let coloured = img.2.chunks_exact(3).filter(|c| *c == blue).count();
        assert_eq!(coloured, 2 * 5, "two dots of 5 full-weight pixels");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn scatter_auto_range_and_alpha() {
        let dir = crate::io::atomic::scratch_dir("plot-scatter-auto");
        let p = dir.join("s.png");
        // A cluster far from the origin plus one wild outlier and a NaN.
        let mut pts: Vec<f32> = (0..1000)
            .flat_map(|i| [100.0 + (i % 10) as f32 * 0.1, 50.0 + (i / 100) as f32 * 0.1])
            .collect();
        pts.extend([1e9, 1e9, f32::NAN, 0.0]);
        let layers = [
            Layer {
                points: &pts,
                dim: 2,
                color: [255, 0, 0],
                alpha: 0.5,
            },
            Layer {
                points: &[],
                dim: 2,
                color: [0, 255, 0],
                alpha: 1.0,
            },
        ];
        scatter_png(&p, &layers, 64, None).unwrap();
        let img = read_png(&p);
        assert_eq!((img.0, img.1), (64, 64));
        // The cluster fills the middle of the image, not one corner pixel.
        let reddish: Vec<(u32, u32)> = (0..64)
            .flat_map(|y| (0..64).map(move |x| (x, y)))
            .filter(|&(x, y)| {
                let c = pixel(&img, x, y);
                c[0] > 200 && c[1] < 200
            })
            .collect();
        assert!(reddish.len() > 400, "{}", reddish.len());
        assert!(reddish
            .iter()
            .any(|&(x, y)| (28..36).contains(&x) && (28..36).contains(&y)));
        // Degenerate, empty and invalid inputs.
        let one = [Layer {
            points: &[3.0, 3.0],
            dim: 2,
            color: [0, 0, 0],
            alpha: 1.0,
        }];
        scatter_png(&p, &one, 16, None).unwrap();
        scatter_png(&p, &[], 16, None).unwrap();
        let bad = [Layer {
            points: &[1.0, 2.0, 3.0],
            dim: 2,
            color: [0, 0, 0],
            alpha: 1.0,
        }];
        assert!(scatter_png(&p, &bad, 16, None).is_err());
        assert!(scatter_png(&p, &one, 0, None).is_err());
        assert!(scatter_png(&p, &one, 16, Some([1.0, 0.0, 0.0, 1.0])).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn line_plot() {
        let dir = crate::io::atomic::scratch_dir("plot-line");
        let p = dir.join("l.png");
        let loss: Vec<f32> = (0..500)
            .map(|i| 10.0 * (-(i as f32) / 100.0).exp())
            .collect();
        let with_gaps = [1.0f32, f32::NAN, 2.0, 0.0, -1.0, 3.0];
        let red = [255, 0, 0];
        let green = [0, 160, 0];
        for log_y in [false, true] {
            line_png(&p, &[(&loss, red), (&with_gaps, green)], 320, 200, log_y).unwrap();
            let img = read_png(&p);
            assert_eq!((img.0, img.1), (320, 200));
            let count = |c: [u8; 3]| img.2.chunks_exact(3).filter(|p| *p == c).count();
            assert!(count(red) > 300, "red pixels: {}", count(red));
            assert!(count(green) > 0);
            // The loss starts at the top-left of the plot area and decreases.
            let first_red_col = |x: u32| (0..200).find(|&y| pixel(&img, x, y) == red);
            let (a, b) = (first_red_col(10).unwrap(), first_red_col(300).unwrap());
            assert!(a < 30 && b > a + 100, "{a} {b}");
        }
        line_png(&p, &[], 50, 40, true).unwrap();
        line_png(&p, &[(&[5.0], red)], 50, 40, false).unwrap();
        assert!(line_png(&p, &[], 0, 40, false).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn heatmap() {
        let dir = crate::io::atomic::scratch_dir("plot-heatmap");
        let p = dir.join("h.png");
        // 3 wide, 2 tall; the top-left cell is the minimum, the bottom-right the max.
        let v = [0.0f32, 1.0, 2.0, 3.0, 4.0, 5.0];
        heatmap_png(&p, &v, 3, 2, 4).unwrap();
        let img = read_png(&p);
        assert_eq!((img.0, img.1), (12, 8));
        assert_eq!(pixel(&img, 0, 0), VIRIDIS[0]);
        assert_eq!(pixel(&img, 3, 3), VIRIDIS[0]);
        assert_eq!(pixel(&img, 11, 7), VIRIDIS[8]);
        assert_eq!(pixel(&img, 8, 4), VIRIDIS[8]);
        // Constant, non-finite and mismatched inputs.
        heatmap_png(&p, &[2.0; 4], 2, 2, 1).unwrap();
        heatmap_png(
            &p,
            &[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1.0],
            2,
            2,
            1,
        )
        .unwrap();
        let img = read_png(&p);
        assert_eq!(pixel(&img, 0, 0), [128, 128, 128]);
        assert_eq!(pixel(&img, 1, 0), VIRIDIS[8]);
        heatmap_png(&p, &[-f32::MAX, f32::MAX], 2, 1, 1).unwrap();
        assert!(heatmap_png(&p, &v, 4, 2, 1).is_err());
        assert!(heatmap_png(&p, &v, 3, 2, 0).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
