//! The dependency rule of ARCHITECTURE.md, checked on the sources: every `crate::` path in
//! a module of `agent/src` names a module of its own unit or of a unit below it.

use std::{fs, path::Path};

/// The units of `agent/src`, top first: a unit may name only those after it.
const LAYERS: &[&str] = &[
    "main", "watch", "agent", "install", "output", "process", "config", "detect", "collect",
    "kernel", "report", "host",
];

fn rank(unit: &str) -> usize {
    LAYERS
        .iter()
        .position(|l| *l == unit)
        .unwrap_or_else(|| panic!("{unit} is not in the layer list of ARCHITECTURE.md"))
}

/// The unit a file of `agent/src` belongs to: its folder, or its own name.
fn unit_of(relative: &Path) -> String {
    let first = relative.components().next().expect("a path inside src");
    let name = first.as_os_str().to_string_lossy();
    name.trim_end_matches(".rs").to_owned()
}

/// The top-level modules a source text names through `crate::`, including those inside
/// `crate::{a, b::c}` groups.
fn crate_paths(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut named = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let end = group
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map_or(group.len(), |(i, _)| i);
            let mut depth = 0;
            let mut item = String::new();
            for c in group[..end].chars().chain([',']) {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        named.push(leading_ident(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
        } else {
            named.push(leading_ident(rest));
        }
    }
    named.retain(|n| !n.is_empty());
    named
}

fn leading_ident(text: &str) -> String {
    text.trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).expect("reading agent/src") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn imports_point_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    assert!(files.len() > 20, "found only {} sources", files.len());
    let mut upward = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).expect("inside src");
        let unit = unit_of(relative);
        let text = fs::read_to_string(file).expect("reading a source file");
        for named in crate_paths(&text) {
            if named != unit && rank(&named) <= rank(&unit) {
                upward.push(format!("{} names crate::{named}", relative.display()));
            }
        }
    }
    assert!(upward.is_empty(), "imports that point up: {upward:#?}");
}

#[test]
fn grouped_and_nested_paths_are_all_seen() {
    let text = "use crate::{\n    a::{b, c},\n    d, // crate::x\n};\nlet v = crate::e::f();";
    assert_eq!(crate_paths(text), ["a", "d", "e"]);
}
