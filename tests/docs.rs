//! The documentation reads as user documentation: README.md stays short, README.md and
//! docs/*.md tell no development history (that lives in CHANGELOG.md), nothing in the docs or
//! in benches/ points outside the repository, and every relative link resolves. Plain file
//! reads; needs no adapter.

use std::fs;
use std::path::{Path, PathBuf};

/// Longest README.md allowed, in lines.
const README_MAX_LINES: usize = 260;

/// Phrases of development history, matched case-insensitively.
const HISTORY_PHRASES: &[&str] = &[
    "session",
    "sprint",
    "earlier attempt",
    "did not pay",
    "we tried",
    "was tried",
    "last time",
    "previous run",
    "previous timing",
    "before this change",
    "the barrier change",
    "throughput issue",
    "issue #",
];

/// Places outside the repository, matched case-insensitively.
const OUTSIDE_PATHS: &[&str] = &["/work/", "/tmp/"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The files of `dir` (relative to the root) whose names end with `suffix`, sorted.
fn files_in(dir: &str, suffix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("read {dir}/: {e}"))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.is_file() && p.to_string_lossy().ends_with(suffix))
        .map(|p| {
            p.strip_prefix(root())
                .expect("inside the root")
                .to_path_buf()
        })
        .collect();
    files.sort();
    files
}

/// README.md and docs/*.md: the user documentation.
fn user_docs() -> Vec<PathBuf> {
    let mut files = vec![PathBuf::from("README.md")];
    files.extend(files_in("docs", ".md"));
    files
}

/// The user documentation and CHANGELOG.md.
fn markdown() -> Vec<PathBuf> {
    let mut files = user_docs();
    files.push(PathBuf::from("CHANGELOG.md"));
    files
}

fn read(file: &Path) -> String {
    let bytes = fs::read(root().join(file)).unwrap_or_else(|e| panic!("read {file:?}: {e}"));
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Lines with their 1-based numbers and whether they are inside a fenced code block.
fn lines(text: &str) -> Vec<(usize, &str, bool)> {
    let mut in_code = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        out.push((i + 1, line, in_code));
    }
    out
}

/// Targets of the markdown links and images on a line (`[text](target "title")`), and the
/// line with those targets blanked out.
fn links(line: &str) -> (Vec<&str>, String) {
    let (mut targets, mut rest_of_line) = (Vec::new(), String::new());
    let mut rest = line;
    while let Some(i) = rest.find("](") {
        let after = &rest[i + 2..];
        let end = after.find(')').unwrap_or(after.len());
        targets.push(after[..end].split_whitespace().next().unwrap_or(""));
        rest_of_line.push_str(&rest[..i + 2]);
        rest = &after[end..];
    }
    rest_of_line.push_str(rest);
    (targets, rest_of_line)
}

/// The file a link target names (without `#anchor`), or None for URLs and in-page anchors.
fn link_file(target: &str) -> Option<&str> {
    let external = target.contains("://") || target.starts_with("mailto:");
    let file = target.split(['#', '?']).next().unwrap_or("");
    (!external && !file.is_empty()).then_some(file)
}

/// Whether `path` (`/`-separated) taken from the directory `dir` (relative to the root)
/// leaves the repository root.
fn leaves_root(dir: &Path, path: &str) -> bool {
    let mut depth = dir.components().count() as i64;
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." if depth == 0 => return true,
            ".." => depth -= 1,
            _ => depth += 1,
        }
    }
    false
}

fn check(problems: Vec<String>, claim: &str) {
    assert!(problems.is_empty(), "{claim}:\n{}", problems.join("\n"));
}

/// README.md is a short entry page (at most 260 lines); the reference lives in docs/.
#[test]
fn readme_is_short() {
    let n = read(Path::new("README.md")).lines().count();
    assert!(
        n <= README_MAX_LINES,
        "README.md has {n} lines, more than {README_MAX_LINES}: move reference material to docs/"
    );
}

/// README.md and docs/*.md describe the product as it is: no phrase of development history
/// (sessions, what was tried, earlier timings); that belongs in CHANGELOG.md.
#[test]
fn user_docs_do_not_mention_development_history() {
    let mut problems = Vec::new();
    for file in user_docs() {
        for (n, line, _) in lines(&read(&file)) {
            let lower = line.to_lowercase();
            for phrase in HISTORY_PHRASES.iter().filter(|p| lower.contains(*p)) {
                problems.push(format!("{}:{n}: \"{phrase}\": {line}", file.display()));
            }
        }
    }
    check(
        problems,
        "development history in the user docs (move it to CHANGELOG.md)",
    );
}

/// README.md, docs/*.md, CHANGELOG.md and every file in benches/ refer only to paths inside
/// the repository. Markdown links resolve against their file's directory; any other `../`
/// path (in commands, code and text) must stay inside the root whether it is taken from the
/// file's directory or from the root, where commands run.
#[test]
fn docs_and_benches_refer_to_no_path_outside_the_repository() {
    let mut files = markdown();
    files.extend(files_in("benches", ""));
    let mut problems = Vec::new();
    for file in files {
        let dir = file.parent().unwrap_or(Path::new("")).to_path_buf();
        let is_markdown = file.extension().is_some_and(|e| e == "md");
        for (n, line, in_code) in lines(&read(&file)) {
            let at = format!("{}:{n}", file.display());
            let lower = line.to_lowercase();
            for outside in OUTSIDE_PATHS.iter().filter(|p| lower.contains(*p)) {
                problems.push(format!("{at}: \"{outside}\": {line}"));
            }
            let (targets, text) = if is_markdown && !in_code {
                links(line)
            } else {
                (Vec::new(), line.to_string())
            };
            for target in targets.into_iter().filter_map(link_file) {
                if target.starts_with('/') || leaves_root(&dir, target) {
                    problems.push(format!("{at}: link {target} leaves the repository"));
                }
            }
            let words = text.split(|c: char| c.is_whitespace() || "\"'`()[]<>,;=".contains(c));
            for word in words.filter(|w| w.contains("../") && !w.contains("://")) {
                if leaves_root(&dir, word) || leaves_root(Path::new(""), word) {
                    problems.push(format!("{at}: {word} leaves the repository"));
                }
            }
        }
    }
    check(problems, "paths outside the repository");
}

/// Every relative link and image in README.md, docs/*.md and CHANGELOG.md names a file or
/// directory that exists in the repository.
#[test]
fn relative_links_in_the_docs_point_to_existing_files() {
    let mut problems = Vec::new();
    for file in markdown() {
        let dir = root().join(file.parent().unwrap_or(Path::new("")));
        for (n, line, in_code) in lines(&read(&file)) {
            if in_code {
                continue;
            }
            for target in links(line).0.into_iter().filter_map(link_file) {
                if !dir.join(target).exists() {
                    problems.push(format!("{}:{n}: no such file: {target}", file.display()));
                }
            }
        }
    }
    check(problems, "broken relative links");
}
