//! Data loader, CSV: any bytes give rows or an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("fuzz.csv");
    if let Ok(ds) = flowgpu::data::Dataset::from_bytes(data, path, true) {
        assert!(ds.dim > 0 && ds.points.len() % ds.dim == 0);
        assert!(ds.points.iter().all(|v| v.is_finite()));
        let s = ds.standardization();
        assert!(s.std.iter().all(|v| *v > 0.0));
    }
});
