//! The host↔shader contract: every entry point's Rust binding set (`bindings!`) and
//! parameter struct (`params!`) agree with what naga reflects from the WGSL it compiles.
//! A swapped binding number, a wrong access mode, a renamed buffer, a reordered or resized
//! `Params` field, or an entry point without a wrapper fails here. Needs no adapter.

use flowgpu::gpu::AdapterClass;
use flowgpu::kernels::{self, Access, Shader, Spec, Tiles};
use naga::{AddressSpace, StorageAccess, TypeInner};
use std::collections::BTreeSet;

/// The family compiled as the subgroup adapters compile it (every family validates).
fn module(shader: Shader) -> (naga::Module, naga::valid::ModuleInfo) {
    let tiles = Tiles {
        subgroup8: true,
        ..Tiles::for_class(AdapterClass::Software)
    };
    let src = shader.source(&tiles);
    let module = naga::front::wgsl::parse_str(&src).expect("parses (tests/shaders.rs)");
    let caps = if shader.needs_subgroups() {
        naga::valid::Capabilities::SUBGROUP
    } else {
        naga::valid::Capabilities::default()
    };
    let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
        .validate(&module)
        .expect("validates (tests/shaders.rs)");
    (module, info)
}

/// The Rust access mode a WGSL global's address space corresponds to.
fn access_of(space: AddressSpace) -> Option<Access> {
    match space {
        AddressSpace::Uniform => Some(Access::Uniform),
        AddressSpace::Storage { access } if access.contains(StorageAccess::STORE) => {
            Some(Access::ReadWrite)
        }
        AddressSpace::Storage { .. } => Some(Access::Read),
        _ => None,
    }
}

/// What is wrong with one entry point's declarations, if anything.
fn problems(spec: &Spec, module: &naga::Module, info: &naga::valid::ModuleInfo) -> Vec<String> {
    let at = format!("{}::{}", spec.shader.file_name(), spec.entry);
    let Some(index) = module
        .entry_points
        .iter()
        .position(|e| e.name == spec.entry)
    else {
        return vec![format!("{at}: no such entry point")];
    };
    let uses = info.get_entry_point(index);
    let mut out = Vec::new();
    for (handle, var) in module.global_variables.iter() {
        let Some(rb) = &var.binding else { continue };
        let name = var.name.as_deref().unwrap_or("?");
        if rb.binding == 0 {
            out.extend(params_problems(spec, module, var.ty, &at));
            continue;
        }
        let slot = spec.slots.iter().find(|s| s.binding == rb.binding);
        match slot {
            None if !uses[handle].is_empty() => out.push(format!(
                "{at}: uses binding {} ({name}) but the Rust binding set has no such slot",
                rb.binding
            )),
            None => {}
            Some(s) => {
                if s.name != name {
                    out.push(format!(
                        "{at}: binding {} is `{name}` in WGSL but `{}` in Rust",
                        rb.binding, s.name
                    ));
                }
                if access_of(var.space) != Some(s.access) {
                    out.push(format!(
                        "{at}: binding {} ({name}) is {:?} in WGSL but {:?} in Rust",
                        rb.binding, var.space, s.access
                    ));
                }
            }
        }
    }
    for s in spec.slots {
        let declared = module
            .global_variables
            .iter()
            .any(|(_, v)| v.binding.as_ref().is_some_and(|b| b.binding == s.binding));
        if !declared {
            out.push(format!(
                "{at}: Rust binds `{}` at {} but the WGSL declares nothing there",
                s.name, s.binding
            ));
        }
    }
    out
}

/// The uniform struct at binding 0 against the Rust `Params`: name, size, and the offset
/// of every named field (padding fields, `_…`, may differ in name).
fn params_problems(
    spec: &Spec,
    module: &naga::Module,
    ty: naga::Handle<naga::Type>,
    at: &str,
) -> Vec<String> {
    let t = &module.types[ty];
    let TypeInner::Struct { members, span } = &t.inner else {
        return vec![format!("{at}: binding 0 is not a struct")];
    };
    let mut out = Vec::new();
    if t.name.as_deref() != Some(spec.params) {
        out.push(format!(
            "{at}: binding 0 is {:?} in WGSL but {} in Rust",
            t.name, spec.params
        ));
    }
    if *span as usize != spec.params_size {
        out.push(format!(
            "{at}: {} is {span} bytes in WGSL but {} in Rust",
            spec.params, spec.params_size
        ));
    }
    let named = |n: &str| !n.starts_with('_');
    for m in members {
        let Some(name) = m.name.as_deref().filter(|n| named(n)) else {
            continue;
        };
        match spec.params_fields.iter().find(|f| f.name == name) {
            None => out.push(format!("{at}: {}.{name} has no Rust field", spec.params)),
            Some(f) if f.offset != m.offset as usize => out.push(format!(
                "{at}: {}.{name} is at byte {} in WGSL but {} in Rust",
                spec.params, m.offset, f.offset
            )),
            Some(_) => {}
        }
    }
    for f in spec.params_fields.iter().filter(|f| named(f.name)) {
        if !members.iter().any(|m| m.name.as_deref() == Some(f.name)) {
            out.push(format!(
                "{at}: Rust field {}.{} is not in WGSL",
                spec.params, f.name
            ));
        }
    }
    out
}

/// Every entry point's bindings and parameter struct match the WGSL it runs.
#[test]
fn every_entry_point_binds_what_its_shader_declares() {
    let mut all = Vec::new();
    for spec in kernels::specs() {
        let (module, info) = module(spec.shader);
        all.extend(problems(&spec, &module, &info));
    }
    assert!(
        all.is_empty(),
        "binding contract broken:\n{}",
        all.join("\n")
    );
}

/// No compute entry point of any family lacks a Rust declaration (and so this test).
#[test]
fn every_wgsl_entry_point_has_a_declared_binding_set() {
    let declared: BTreeSet<&str> = kernels::specs().iter().map(|s| s.entry).collect();
    let mut missing = BTreeSet::new();
    for shader in Shader::ALL {
        let (module, _) = module(shader);
        for ep in &module.entry_points {
            if !declared.contains(ep.name.as_str()) {
                missing.insert(format!("{}::{}", shader.file_name(), ep.name));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "entry points without a binding set: {missing:?}"
    );
}

/// Each entry point is declared once, so no two wrappers disagree about it.
#[test]
fn each_entry_point_is_declared_once() {
    let specs = kernels::specs();
    let mut seen = BTreeSet::new();
    for s in &specs {
        assert!(
            seen.insert((s.shader.file_name(), s.entry)),
            "{}::{} declared twice",
            s.shader.file_name(),
            s.entry
        );
    }
}
