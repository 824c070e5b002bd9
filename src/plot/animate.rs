//! The flow as a GIF: particles carried from the source (t = 0) to the data (t = 1),
//! one frame per snapshot, the frame's time printed on it.

use super::{axes, ends_view, invalid, render_rgb, viridis, DrawResult, Figure, FONT};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::io;
use std::path::Path;

/// Snapshots of particles (columns 0 and 1 drawn) with their times.
pub struct Animation<'a> {
    /// `[frame][particle·dim]`.
    pub frames: &'a [Vec<f32>],
    pub times: &'a [f64],
    pub dim: usize,
    pub title: &'a str,
    /// Frame side in pixels.
    pub side: u32,
}

/// One frame of an animation, as a figure.
struct Frame<'a> {
    anim: &'a Animation<'a>,
    k: usize,
    range: [(f64, f64); 2],
    /// Each particle's colour: where it started, by angle around the source's centre.
    colours: &'a [RGBColor],
}

impl Figure for Frame<'_> {
    fn size(&self) -> (u32, u32) {
        (self.anim.side, self.anim.side)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let [(x0, x1), (y0, y1)] = self.range;
        let t = self.anim.times[self.k];
        let caption = format!("{}   t = {:.2}", self.anim.title, t);
        let mut chart = ChartBuilder::on(root)
            .caption(caption, (FONT, 20))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(45)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        axes(&mut chart, ("x1", "x2"), 12, true)?;
        let d = self.anim.dim;
        let snap = &self.anim.frames[self.k];
        chart.draw_series(
            snap.chunks_exact(d)
                .zip(self.colours)
                .filter(|(r, _)| r[0].is_finite() && r[1].is_finite())
                .map(|(r, c)| Circle::new((r[0] as f64, r[1] as f64), 2, c.mix(0.8).filled())),
        )?;
        Ok(())
    }
}

/// Colour particles by the angle of their starting point around the source's mean, so
/// a reader can follow where each region of the noise goes.
fn start_colours(first: &[f32], d: usize) -> Vec<RGBColor> {
    let n = (first.len() / d).max(1) as f64;
    let (mx, my) = first.chunks_exact(d).fold((0.0, 0.0), |(a, b), r| {
        (a + r[0] as f64 / n, b + r[1] as f64 / n)
    });
    first
        .chunks_exact(d)
        .map(|r| {
            let a = (r[1] as f64 - my).atan2(r[0] as f64 - mx);
            viridis(0.5 + 0.5 * a / std::f64::consts::PI)
        })
        .collect()
}

/// Write `anim` to `path` as a looping GIF, one frame per snapshot (the last held for
/// 1.5 s), atomically.
pub fn animate_gif(path: &Path, anim: &Animation) -> io::Result<()> {
    let d = anim.dim;
    if d < 2 || anim.frames.is_empty() || anim.frames.len() != anim.times.len() {
        return Err(invalid(
            "an animation needs 2-D (or wider) frames, one time per frame",
        ));
    }
    if anim
        .frames
        .iter()
        .any(|f| f.len() != anim.frames[0].len() || f.len() % d != 0)
    {
        return Err(invalid("every frame must hold the same particles"));
    }
    // One square view for every frame, holding the bulk of the source and of the data.
    let range = ends_view(anim.frames, d);
    let colours = start_colours(&anim.frames[0], d);
    let side = anim.side as u16;
    let mut out = Vec::new();
    {
        let mut enc = gif::Encoder::new(&mut out, side, side, &[]).map_err(io::Error::other)?;
        enc.set_repeat(gif::Repeat::Infinite)
            .map_err(io::Error::other)?;
        for k in 0..anim.frames.len() {
            let frame = Frame {
                anim,
                k,
                range,
                colours: &colours,
            };
            let rgb = render_rgb(&frame)?;
            let mut f = gif::Frame::from_rgb_speed(side, side, &rgb, 10);
            f.delay = if k + 1 == anim.frames.len() { 150 } else { 6 };
            enc.write_frame(&f).map_err(io::Error::other)?;
        }
    }
    crate::io::atomic::write_atomic(path, &out)
}

/// The number of frames of a GIF file, and its size.
pub fn gif_frames(bytes: &[u8]) -> io::Result<(usize, u16, u16)> {
    let mut opts = gif::DecodeOptions::new();
    opts.set_color_output(gif::ColorOutput::Indexed);
    let mut dec = opts.read_info(bytes).map_err(io::Error::other)?;
    let (w, h) = (dec.width(), dec.height());
    let mut n = 0;
    while dec.read_next_frame().map_err(io::Error::other)?.is_some() {
        n += 1;
    }
    Ok((n, w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gif_has_one_frame_per_snapshot() {
        let dir = crate::io::atomic::scratch_dir("plot-gif");
        let frames: Vec<Vec<f32>> = (0..7)
            .map(|k| {
                let t = k as f32 / 6.0;
                (0..200)
                    .flat_map(|p| {
                        let a = p as f32 * 0.1;
                        [a.cos() * (1.0 + 2.0 * t), a.sin() * (1.0 - 0.5 * t), 0.0]
                    })
                    .collect()
            })
            .collect();
        let times: Vec<f64> = (0..7).map(|k| k as f64 / 6.0).collect();
        let anim = Animation {
            frames: &frames,
            times: &times,
            dim: 3,
            title: "flow",
            side: 320,
        };
        let p = dir.join("flow.gif");
        animate_gif(&p, &anim).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(gif_frames(&bytes).unwrap(), (7, 320, 320));
        // The frames differ: the particles move.
        let f0 = render_rgb(&Frame {
            anim: &anim,
            k: 0,
            range: [(-3.0, 3.0); 2],
            colours: &start_colours(&frames[0], 3),
        })
        .unwrap();
        let f6 = render_rgb(&Frame {
            anim: &anim,
            k: 6,
            range: [(-3.0, 3.0); 2],
            colours: &start_colours(&frames[0], 3),
        })
        .unwrap();
        assert!(f0 != f6);
        let bad = Animation {
            frames: &frames,
            times: &times[..3],
            dim: 3,
            title: "",
            side: 320,
        };
        assert!(animate_gif(&dir.join("bad.gif"), &bad).is_err());
        assert!(!dir.join("bad.gif").exists());
    }
}
