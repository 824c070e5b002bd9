//! Training checkpoint loader: any bytes give a state or an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = flowgpu::train::TrainState::from_bytes(data, std::path::Path::new("fuzz"));
});
