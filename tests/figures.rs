//! Every figure kind the binary writes, decoded: the size asked for, not blank, and the
//! GIF with the frame count asked for. (The drawing itself is tested in `plot`.)

use std::path::{Path, PathBuf};
use std::process::Command;

fn flowgpu(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flowgpu"))
        .args(args)
        .output()
        .expect("run flowgpu");
    let err = String::from_utf8_lossy(&out.stderr).into();
    (out.status.code().unwrap_or(-1), err)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flowgpu-fig-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Width, height and the share of pixels that are not white.
fn png_ink(path: &Path) -> (u32, u32, f64) {
    let dec = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    let px = buf
        .chunks_exact(3)
        .filter(|p| *p != [255, 255, 255])
        .count();
    (info.width, info.height, px as f64 / (buf.len() / 3) as f64)
}

fn assert_figure(path: &Path, size: (u32, u32)) {
    let (w, h, ink) = png_ink(path);
    assert_eq!((w, h), size, "{}", path.display());
    assert!(
        ink > 0.05 && ink < 0.95,
        "{}: {ink} of the pixels drawn",
        path.display()
    );
}

#[test]
fn train_and_sample_write_every_figure_kind() {
    let dir = tmp("moons");
    let run = dir.join("run");
    let (code, err) = flowgpu(&[
        "train",
        "--steps",
        "200",
        "--width",
        "16",
        "--plot-samples",
        "500",
        "--animate",
        "--out",
        s(&run),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_figure(&run.join("loss.png"), (900, 600));
    assert_figure(&run.join("samples.png"), (700, 700));
    let gif = std::fs::read(run.join("flow.gif")).unwrap();
    assert_eq!(flowgpu::plot::gif_frames(&gif).unwrap(), (60, 520, 520));

    let (svg, traj, anim) = (dir.join("s.svg"), dir.join("t.png"), dir.join("a.gif"));
    let (code, err) = flowgpu(&[
        "sample",
        "--model",
        s(&run),
        "-n",
        "400",
        "--out",
        s(&dir.join("s.npy")),
        "--plot",
        s(&svg),
        "--trajectories",
        s(&traj),
        "--animate",
        s(&anim),
        "--frames",
        "7",
        "--particles",
        "50",
        "--solver",
        "rk4",
        "--steps",
        "10",
    ]);
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.contains("model samples"));
    assert_figure(&traj, (800, 700));
    let gif = std::fs::read(&anim).unwrap();
    assert_eq!(flowgpu::plot::gif_frames(&gif).unwrap(), (7, 520, 520));

    let dens = dir.join("d.png");
    let (code, err) = flowgpu(&[
        "density",
        "--model",
        s(&run),
        "--plot",
        s(&dens),
        "--grid",
        "24",
        "--steps",
        "8",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_figure(&dens, (1250, 640));

    // Figure names are checked before anything is written.
    let out = dir.join("never.npy");
    for (flag, name, needle) in [
        ("--animate", "a.png", "name the figure .gif"),
        ("--plot", "p.jpg", "name the figure .png or .svg"),
    ] {
        let fig = dir.join(name);
        let (code, err) = flowgpu(&[
            "sample",
            "--model",
            s(&run),
            "--out",
            s(&out),
            flag,
            s(&fig),
        ]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(needle), "{err}");
        assert!(!out.exists() && !fig.exists());
    }
    let (code, err) = flowgpu(&[
        "sample",
        "--model",
        s(&run),
        "--out",
        s(&out),
        "--animate",
        s(&anim),
        "--frames",
        "1",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--frames") && !out.exists());
}

#[test]
fn a_six_dimensional_model_gets_a_corner_plot() {
    let dir = tmp("corner");
    let mut csv = String::from("a,b,c,d,e,f\n");
    for i in 0..600 {
        let t = i as f64 * 0.01;
        let row: Vec<String> = (0..6)
            .map(|k| format!("{:.5}", (t * (k + 1) as f64).sin() + k as f64))
            .collect();
        csv.push_str(&row.join(","));
        csv.push('\n');
    }
    let data = dir.join("six.csv");
    std::fs::write(&data, csv).unwrap();
    let run = dir.join("run");
    let (code, err) = flowgpu(&[
        "train",
        "--data",
        s(&data),
        "--steps",
        "100",
        "--width",
        "16",
        "--batch",
        "64",
        "--plot-samples",
        "300",
        "--out",
        s(&run),
    ]);
    assert_eq!(code, 0, "{err}");
    // Four of the six dimensions: 60 + 4 · 200 pixels a side.
    assert_figure(&run.join("samples.png"), (860, 860));
}
