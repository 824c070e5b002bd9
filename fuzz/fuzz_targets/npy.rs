//! Data loader, NPY: any bytes give rows or an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("fuzz.npy");
    if let Ok(ds) = flowgpu::data::Dataset::from_bytes(data, path, false) {
        assert!(ds.dim > 0 && ds.points.len() % ds.dim == 0);
    }
});
