//! Model loader: config.json and model.safetensors bytes (split at the first 0 byte) give a
//! model or an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (config, rest) = data.split_at(split);
    let st = rest.get(1..).unwrap_or(&[]);
    let path = std::path::Path::new("fuzz");
    if let Ok(cfg) = flowgpu::Model::parse_config(config, path) {
        if let Ok(w) = flowgpu::Weights::from_safetensors(st, &cfg.mlp, path) {
            assert_eq!(w.layers.len(), cfg.mlp.depth + 1);
        }
    }
});
