//! The shape of the crate: its rooms (the top-level modules of `src/`) depend on each
//! other without cycles, and no production code imports the f64 oracle (`reference`),
//! which exists for the tests. Reads the sources; needs no adapter.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
/// The oracle: tests import it; production code must not.
const ORACLE: &str = "reference";

/// Every `.rs` file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

/// The room a file belongs to: `src/solve.rs` → solve, `src/mle/field.rs` → mle; the
/// binary's files (main.rs, cli.rs) are the commands room.
fn room(file: &Path) -> String {
    let rel = file.strip_prefix(SRC).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    let name = first.trim_end_matches(".rs").to_string();
    match name.as_str() {
        "main" | "cli" => "commands".into(),
        _ => name,
    }
}

/// The code of a file without comments (doc links are not dependencies).
fn code(file: &Path) -> String {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The rooms a file's code names through `crate::room` (or `flowgpu::room` in the binary),
/// grouped imports (`use crate::{a, b::c}`) included.
fn deps(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for prefix in ["crate::", "flowgpu::"] {
        for (i, _) in code.match_indices(prefix) {
            let rest = &code[i + prefix.len()..];
            let names: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => group
                    .split('}')
                    .next()
                    .unwrap()
                    .split(',')
                    .map(|s| s.trim())
                    .collect(),
                None => vec![rest],
            };
            for n in names {
                let id: String = n
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if id.chars().next().is_some_and(|c| c.is_lowercase()) {
                    out.insert(id);
                }
            }
        }
    }
    out
}

/// room → rooms it depends on.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files(Path::new(SRC)) {
        let r = room(&f);
        let d = deps(&code(&f));
        let entry = g.entry(r.clone()).or_default();
        entry.extend(d.into_iter().filter(|d| *d != r));
    }
    g
}

/// A cycle through `node`, if the graph has one reachable from it.
fn find_cycle(
    g: &BTreeMap<String, BTreeSet<String>>,
    node: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(i) = path.iter().position(|p| p == node) {
        let mut cycle = path[i..].to_vec();
        cycle.push(node.to_string());
        return Some(cycle);
    }
    if done.contains(node) {
        return None;
    }
    path.push(node.to_string());
    for next in g.get(node).into_iter().flatten() {
        if let Some(c) = find_cycle(g, next, path, done) {
            return Some(c);
        }
    }
    path.pop();
    done.insert(node.to_string());
    None
}

/// The rooms form a DAG: every dependency points one way (device → kernels → network →
/// ODE → objectives → training → commands, with data, io and plots beside them).
#[test]
fn the_module_graph_has_no_cycle() {
    let g = graph();
    let mut done = BTreeSet::new();
    for node in g.keys() {
        if let Some(c) = find_cycle(&g, node, &mut Vec::new(), &mut done) {
            panic!("module cycle: {}\ngraph: {g:#?}", c.join(" → "));
        }
    }
}

/// Production code never imports the f64 oracle; only the oracle itself and tests do.
#[test]
fn production_code_does_not_import_the_oracle() {
    let offenders: Vec<String> = files(Path::new(SRC))
        .into_iter()
        .filter(|f| room(f) != ORACLE)
        .filter(|f| deps(&code(f)).contains(ORACLE) || code(f).contains("reference::"))
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        offenders.is_empty(),
        "production code imports the oracle: {offenders:?}"
    );
}

/// The checks see real dependencies (so a passing graph test means something).
#[test]
fn the_graph_sees_known_dependencies() {
    let g = graph();
    assert!(g["solve"].contains("kernels"), "{g:#?}");
    assert!(g[ORACLE].contains("model"), "{g:#?}");
    assert!(g["commands"].contains("train"), "{g:#?}");
    let grouped = deps("use crate::{gpu::X, kernels};\nlet _ = crate::io::f();");
    assert_eq!(
        grouped,
        ["gpu", "io", "kernels"]
            .map(String::from)
            .into_iter()
            .collect()
    );
}
