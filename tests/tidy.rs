//! Tidy: the docs and the tree agree (issue 17). Fails when
//! - a repository path named in backticks in `ARCHITECTURE.md`, `README.md`
//!   or `docs/dataflows.md` does not exist;
//! - a module under a crate's `src/` is missing from ARCHITECTURE.md's code
//!   map (named by its file, or by its module directory ending in `/`);
//! - a module under a crate's `src/` does not start with a `//!` header;
//! - the crate graph drawn in the code map differs from the manifests.
//!
//! Needs nothing but the source tree; rust-analyzer's `tidy.rs` is the model.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the coral crate lives one level below the workspace root")
        .to_path_buf()
}

/// Every `.rs` file under a workspace crate's `src/`, relative to the root
/// (the fuzz crates are cargo-fuzz's, outside the workspace).
fn modules(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, root: &Path, in_src: bool, out: &mut Vec<String>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with('.') || name == "target" || name == "fuzz" || name == "node_modules"
            {
                continue;
            }
            if p.is_dir() {
                walk(&p, root, in_src || name == "src", out);
            } else if in_src && name.ends_with(".rs") {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, false, &mut out);
    out
}

/// The text between backticks on each line (code blocks skipped).
fn backticked(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_block = false;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            continue;
        }
        let mut parts = line.split('`');
        parts.next();
        while let (Some(inside), Some(_)) = (parts.next(), parts.next()) {
            out.push((i + 1, inside.to_string()));
        }
    }
    out
}

/// A backticked token that names a path in this repository: it starts with
/// a top-level entry of the tree and holds no spaces or glob/placeholder
/// characters. `path::item` and `path:line` name the path.
fn repo_path(token: &str, top: &BTreeSet<String>) -> Option<String> {
    if token.contains(char::is_whitespace)
        || token.contains(['*', '{', '<', '$', '=', '|', '?', '['])
    {
        return None;
    }
    let path = token.split("::").next().unwrap();
    let path = match path.rsplit_once(':') {
        Some((p, line)) if line.chars().all(|c| c.is_ascii_digit()) => p,
        _ => path,
    };
    let first = path.split('/').next().unwrap();
    (top.contains(first) && (path.contains('/') || path.contains('.'))).then(|| path.to_string())
}

fn top_level(root: &Path) -> BTreeSet<String> {
    fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "target" && n != ".git")
        .collect()
}

#[test]
fn paths_named_in_the_docs_exist_issue_17() {
    let root = repo();
    let top = top_level(&root);
    let mut missing = Vec::new();
    for doc in ["ARCHITECTURE.md", "README.md", "docs/dataflows.md"] {
        let text = fs::read_to_string(root.join(doc)).unwrap();
        for (line, token) in backticked(&text) {
            if let Some(path) = repo_path(&token, &top)
                && !root.join(&path).exists()
            {
                missing.push(format!("{doc}:{line}: `{token}`"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "paths named in the docs that do not exist:\n{}",
        missing.join("\n")
    );
}

#[test]
fn every_module_is_in_the_code_map_issue_17() {
    let root = repo();
    let text = fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let section = text
        .split("\n## ")
        .find(|s| s.starts_with("Code map"))
        .expect("ARCHITECTURE.md has a `## Code map` section");
    let named: BTreeSet<String> = backticked(section).into_iter().map(|(_, t)| t).collect();
    let covered = |m: &str| {
        named.contains(m)
            || named.iter().any(|n| {
                // A module directory under `src/` covers its modules; a
                // crate's folder or its `src/` itself does not (each
                // top-level module is named).
                n.ends_with('/')
                    && n.contains("/src/")
                    && !n.ends_with("/src/")
                    && m.starts_with(n.as_str())
            })
    };
    let missing: Vec<String> = modules(&root).into_iter().filter(|m| !covered(m)).collect();
    assert!(
        missing.is_empty(),
        "modules missing from ARCHITECTURE.md's code map (name the file, or its module directory ending in `/`):\n{}",
        missing.join("\n")
    );
}

#[test]
fn every_module_has_a_header_issue_17() {
    let root = repo();
    let missing: Vec<String> = modules(&root)
        .into_iter()
        .filter(|m| {
            let text = fs::read_to_string(root.join(m)).unwrap();
            !text.trim_start().starts_with("//!")
        })
        .collect();
    assert!(
        missing.is_empty(),
        "modules without a `//!` header saying what they are:\n{}",
        missing.join("\n")
    );
}

/// The Coral crates a `Cargo.toml` names under `[dependencies]`.
fn coral_dependencies(manifest: &str) -> (String, BTreeSet<String>) {
    let mut name = String::new();
    let mut deps = BTreeSet::new();
    let mut table = "";
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            table = line;
            continue;
        }
        let key = line.split(['=', '.', ' ']).next().unwrap_or("");
        if table == "[package]" && key == "name" {
            name = line.split('"').nth(1).unwrap_or("").to_string();
        } else if table == "[dependencies]" && key.starts_with("coral-") {
            deps.insert(key.to_string());
        }
    }
    (name, deps)
}

#[test]
fn the_crate_graph_in_the_code_map_is_the_manifests_issue_17() {
    let root = repo();
    let text = fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let mut drawn = std::collections::BTreeMap::new();
    for line in text.lines().filter(|l| l.contains("──►")) {
        let (from, to) = line.split_once("──►").unwrap();
        let to: BTreeSet<String> = to
            .split(',')
            .map(str::trim)
            .filter(|d| d.starts_with("coral"))
            .map(String::from)
            .collect();
        drawn.insert(from.trim().to_string(), to);
    }
    let workspace = fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let members = workspace
        .split("members = [")
        .nth(1)
        .and_then(|s| s.split(']').next())
        .expect("the workspace lists its members");
    let mut wrong = Vec::new();
    for member in members
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .filter(|m| !m.is_empty())
    {
        let manifest = fs::read_to_string(root.join(member).join("Cargo.toml")).unwrap();
        let (name, deps) = coral_dependencies(&manifest);
        match drawn.get(&name) {
            Some(d) if *d == deps => {}
            Some(d) => wrong.push(format!(
                "{name}: drawn {d:?}, {member}/Cargo.toml has {deps:?}"
            )),
            None => wrong.push(format!("{name} ({member}) is not in the drawn graph")),
        }
    }
    assert!(
        wrong.is_empty(),
        "ARCHITECTURE.md's crate graph is wrong:\n{}",
        wrong.join("\n")
    );
}
