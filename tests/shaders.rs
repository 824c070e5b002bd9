//! Every shader family parses and validates with naga, for every adapter class's tile
//! constants. Needs no adapter.

use flowgpu::gpu::AdapterClass;
use flowgpu::kernels::{validate, Shader, Tiles};

#[test]
fn every_shader_validates_with_naga() {
    for class in [AdapterClass::Software, AdapterClass::Hardware] {
        let tiles = Tiles::for_class(class);
        for s in Shader::ALL {
            if let Err(e) = validate(s, &tiles) {
                panic!("{class:?}: {e}");
            }
        }
    }
}

#[test]
fn every_wgsl_file_is_a_known_family() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        // Prepended to families (every one; those with subgroups), validated with them.
        if name == "common.wgsl" || name == "subgroup_tiles.wgsl" {
            continue;
        }
        assert!(
            Shader::ALL.iter().any(|s| s.file_name() == name),
            "shaders/{name} has no Shader variant (and so no wrapper or validation)"
        );
    }
}
