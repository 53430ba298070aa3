//! The shape of the code, checked from its sources: no module imports from
//! a module that imports it back (in any crate of the workspace), and no
//! source file of the proxy, the control plane or the binary is over 600
//! lines. A `mod` declaration is not an import; `use` statements and
//! `crate::`/`super::` paths in code are (doc comments and test modules are
//! left out). `crate::X` through a `pub use` of the crate root counts as an
//! import of the module that defines `X`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crates and their source roots.
const CRATES: [&str; 5] = ["src", "proxy/src", "admin/src", "docker/src", "acme/src"];
/// Where files stay under [`MAX_LINES`].
const SIZED: [&str; 3] = ["src", "proxy/src", "admin/src"];
const MAX_LINES: usize = 600;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `a/b.rs` -> `a::b`; `lib.rs`, `main.rs` -> `` (the root); `a/mod.rs` -> `a`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if matches!(parts.last().map(String::as_str), Some("lib" | "main" | "mod")) {
        parts.pop();
    }
    parts.join("::")
}

/// The code of a file: comments and the trailing `#[cfg(test)]` module left out.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    let mut out = String::new();
    let mut in_block = false;
    for line in text.lines() {
        let mut line = line;
        if in_block {
            match line.find("*/") {
                Some(end) => {
                    in_block = false;
                    line = &line[end + 2..];
                }
                None => continue,
            }
        }
        if let Some(start) = line.find("/*") {
            in_block = !line[start..].contains("*/");
            line = &line[..start];
        }
        // a `//` comment (not inside a string such as "http://...")
        let cut = line.match_indices("//").find(|(i, _)| line[..*i].matches('"').count() % 2 == 0).map(|(i, _)| i);
        out.push_str(&line[..cut.unwrap_or(line.len())]);
        out.push('\n');
    }
    out
}

/// Expands `a::{b, c::{d, e}}` into `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = tree.find('{') else { return vec![tree] };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap()];
    let mut items = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&inner[start..]);
    items.into_iter().filter(|i| !i.is_empty()).flat_map(|i| expand(&format!("{prefix}{i}"))).collect()
}

/// Every `crate::`/`super::`/`self::` path the code names.
fn paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before = &rest[..at];
        out.extend(inline_paths(before));
        let after = &rest[at + 4..];
        let end = after.find(';').unwrap_or(after.len());
        let statement = &after[..end];
        let word_start = at == 0 || !rest.as_bytes()[at - 1].is_ascii_alphanumeric() && rest.as_bytes()[at - 1] != b'_';
        if word_start && !statement.contains('=') && !statement.contains('(') {
            out.extend(expand(statement).into_iter().map(|p| p.split(" as ").next().unwrap().to_string()));
        } else {
            out.extend(inline_paths(statement));
        }
        rest = &after[end.min(after.len())..];
    }
    out.extend(inline_paths(rest));
    out.into_iter().filter(|p| p.starts_with("crate::") || p.starts_with("super::") || p.starts_with("self::")).collect()
}

fn inline_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for prefix in ["crate::", "super::"] {
        for (i, _) in text.match_indices(prefix) {
            if i > 0 && (text.as_bytes()[i - 1].is_ascii_alphanumeric() || text.as_bytes()[i - 1] == b'_' || text.as_bytes()[i - 1] == b':')
            {
                continue;
            }
            let path: String = text[i..].chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
            out.push(path.trim_end_matches(':').to_string());
        }
    }
    out
}

/// The module `path` names, seen from `from`: the longest prefix that is a
/// module; `crate::X` for a root re-export is the module defining `X`.
fn resolve(path: &str, from: &str, modules: &BTreeSet<String>, reexports: &BTreeMap<String, String>) -> String {
    let mut segments: Vec<&str> = path.split("::").collect();
    let mut base: Vec<String> = match segments[0] {
        "crate" => Vec::new(),
        "self" => from.split("::").filter(|s| !s.is_empty()).map(String::from).collect(),
        _ => {
            let mut b: Vec<String> = from.split("::").filter(|s| !s.is_empty()).map(String::from).collect();
            while segments.first() == Some(&"super") {
                b.pop();
                segments.remove(0);
            }
            segments.insert(0, "super");
            b
        }
    };
    let rest: Vec<&str> = segments[1..].to_vec();
    if base.is_empty() && rest.len() == 1 {
        if let Some(module) = reexports.get(rest[0]) {
            return module.clone();
        }
    }
    let mut found = base.join("::");
    for segment in rest {
        base.push(segment.to_string());
        let candidate = base.join("::");
        if modules.contains(&candidate) {
            found = candidate;
        } else {
            break;
        }
    }
    if found.is_empty() {
        if let Some(module) = segments.get(1).and_then(|s| reexports.get(*s)) {
            return module.clone();
        }
    }
    found
}

#[test]
fn no_module_imports_from_a_module_that_imports_it_back() {
    let mut cycles = Vec::new();
    for krate in CRATES {
        let src = root().join(krate);
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
        let roots = ["lib.rs", "main.rs"].map(|r| src.join(r));
        let mut reexports = BTreeMap::new();
        for r in roots.iter().filter(|r| r.exists()) {
            let text = code(&std::fs::read_to_string(r).unwrap());
            for line in text.split(';') {
                let Some(tree) = line.trim().strip_prefix("pub use ") else { continue };
                for p in expand(tree) {
                    let segments: Vec<&str> = p.split("::").collect();
                    if segments.len() >= 2 && modules.contains(segments[0]) {
                        let item = segments.last().unwrap().split(" as ").last().unwrap().to_string();
                        reexports.insert(item, segments[..segments.len() - 1].join("::"));
                    }
                }
            }
        }
        let mut edges: BTreeSet<(String, String)> = BTreeSet::new();
        for file in &files {
            let from = module_of(&src, file);
            for path in paths(&code(&std::fs::read_to_string(file).unwrap())) {
                let to = resolve(&path, &from, &modules, &reexports);
                if to != from && modules.contains(&to) {
                    edges.insert((from.clone(), to));
                }
            }
        }
        for (a, b) in &edges {
            if a < b && edges.contains(&(b.clone(), a.clone())) {
                let name = |m: &str| if m.is_empty() { "(crate root)".to_string() } else { m.to_string() };
                cycles.push(format!("{krate}: {} <-> {}", name(a), name(b)));
            }
        }
    }
    assert!(cycles.is_empty(), "modules that import each other:\n{}", cycles.join("\n"));
}

#[test]
fn source_files_stay_under_600_lines() {
    let mut long = Vec::new();
    for dir in SIZED {
        let mut files = Vec::new();
        rust_files(&root().join(dir), &mut files);
        for f in files {
            let n = std::fs::read_to_string(&f).unwrap().lines().count();
            if n > MAX_LINES {
                long.push(format!("{} has {n} lines", f.strip_prefix(root()).unwrap().display()));
            }
        }
    }
    assert!(long.is_empty(), "files over {MAX_LINES} lines (split them by concern):\n{}", long.join("\n"));
}

#[test]
fn the_checker_sees_imports() {
    // the parser this test relies on, on a known sample
    let sample = "use crate::a::{b, c::{D, E}};\nuse super::F;\nfn x() { crate::g::h(); }\n// use crate::z;\n";
    let mut found = paths(&code(sample));
    found.sort();
    assert_eq!(found, ["crate::a::b", "crate::a::c::D", "crate::a::c::E", "crate::g::h", "super::F"]);
    let modules: BTreeSet<String> = ["a", "a::c", "g", "p", "p::q"].iter().map(|s| s.to_string()).collect();
    let none = BTreeMap::new();
    assert_eq!(resolve("crate::a::c::D", "p", &modules, &none), "a::c");
    assert_eq!(resolve("super::F", "p::q", &modules, &none), "p");
    assert_eq!(resolve("super::q::X", "p::r", &modules, &none), "p::q");
    let reexports = BTreeMap::from([("Thing".to_string(), "g".to_string())]);
    assert_eq!(resolve("crate::Thing", "a", &modules, &reexports), "g");
}
