//! Every shader family parses and validates with naga, for every adapter class's tile
//! constants. Needs no adapter.

use flowgpu::gpu::AdapterClass;
use flowgpu::kernels::{validate, Shader, Tiles};

#[test]
fn every_shader_validates_with_naga() {
    // Each class's preset, and the software one as lavapipe gets it (lockstep subgroups:
    // the fused kernels without their phase barriers).
    let lockstep = Tiles {
        lockstep_subgroup: true,
        ..Tiles::for_class(AdapterClass::Software)
    };
    for (what, tiles) in [
        ("software", Tiles::for_class(AdapterClass::Software)),
        ("hardware", Tiles::for_class(AdapterClass::Hardware)),
        ("software, lockstep subgroups", lockstep),
    ] {
        for s in Shader::ALL {
            if let Err(e) = validate(s, &tiles) {
                panic!("{what}: {e}");
            }
        }
    }
}

#[test]
fn every_wgsl_file_is_a_known_family() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        // Prepended to families (every one; those with subgroups; the fused ones; those of
        // paths), validated with them.
        if [
            "common.wgsl",
            "path.wgsl",
            "subgroup_tiles.wgsl",
            "fused_mlp_subgroup.wgsl",
        ]
        .contains(&name.as_str())
        {
            continue;
        }
        assert!(
            Shader::ALL.iter().any(|s| s.file_name() == name),
            "shaders/{name} has no Shader variant (and so no wrapper or validation)"
        );
    }
}
