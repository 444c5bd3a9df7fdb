//! The architecture as a test: the layers of `docs/architecture.md` hold in the source.
//! Reads `src/` as text (no Docker, no build of anything else):
//! - no import cycle between folders (`api`, `engine`, `dataplane`, `infra`, ...) or between
//!   file modules;
//! - the engine speaks no HTTP (no axum, hyper or http types);
//! - the API reaches neither the store nor the driver: only the engine does;
//! - the metrics registry is a leaf that imports nothing of the crate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`dataplane::pool::acquire`) → the text of its file, test modules cut off.
fn modules() -> BTreeMap<String, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(&root) {
        let entry = entry.expect("walk src/");
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let rel = path.strip_prefix(&root).expect("under src/").with_extension("");
        let mut name = rel.to_string_lossy().replace('/', "::");
        if let Some(parent) = name.strip_suffix("::mod") {
            name = parent.to_string();
        }
        if name == "lib" || name == "main" {
            continue;
        }
        let text = std::fs::read_to_string(path).expect("read a source file");
        // What only tests use does not count as a dependency of the module.
        let text = match text.find("#[cfg(test)]\nmod tests") {
            Some(i) => text[..i].to_string(),
            None => text,
        };
        out.insert(name, text);
    }
    out
}

/// `crate::a::b::C` paths in `text`, as written (`a::b::C`).
fn crate_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(rest.len());
        out.push(rest[..end].trim_end_matches(':').to_string());
    }
    out
}

/// Module → the other modules it imports (resolved to the longest module path that exists).
fn graph(mods: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut g = BTreeMap::new();
    for (m, text) in mods {
        let mut deps = BTreeSet::new();
        for p in crate_paths(text) {
            let parts: Vec<&str> = p.split("::").collect();
            let target = (1..=parts.len()).rev().map(|k| parts[..k].join("::")).find(|c| mods.contains_key(c));
            if let Some(t) = target {
                let nested = m.starts_with(&format!("{t}::")) || t.starts_with(&format!("{m}::"));
                if t != *m && !nested {
                    deps.insert(t);
                }
            }
        }
        g.insert(m.clone(), deps);
    }
    g
}

/// A cycle in `g`, if there is one, as the list of its nodes.
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut cycle = path[i..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, g, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    g.keys().find_map(|n| visit(n, g, &mut Vec::new(), &mut done))
}

fn folder(m: &str) -> String {
    m.split("::").next().unwrap_or(m).to_string()
}

#[test]
fn no_import_cycle_between_modules_or_folders() {
    let g = graph(&modules());
    assert!(g.len() > 30, "expected the crate's modules, found {}: {:?}", g.len(), g.keys());
    assert_eq!(find_cycle(&g), None, "an import cycle between modules");
    let mut folders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, deps) in &g {
        for d in deps.iter().filter(|d| folder(d) != folder(m)) {
            folders.entry(folder(m)).or_default().insert(folder(d));
        }
    }
    assert_eq!(find_cycle(&folders), None, "an import cycle between folders: {folders:#?}");
}

#[test]
fn the_engine_speaks_no_http() {
    for (m, text) in modules().iter().filter(|(m, _)| folder(m) == "engine") {
        for word in ["axum::", "hyper::", "http::", "StatusCode", "ApiError", "http_error"] {
            assert!(!text.contains(word), "{m} uses `{word}`: the engine answers with its own types; the API maps them to HTTP");
        }
    }
}

#[test]
fn the_api_reaches_neither_store_nor_driver() {
    let g = graph(&modules());
    for (m, deps) in g.iter().filter(|(m, _)| folder(m) == "api") {
        for d in deps {
            assert!(
                !(d.starts_with("infra::store") || d.starts_with("infra::driver")),
                "{m} imports {d}: the API goes through the engine"
            );
        }
    }
}

#[test]
fn metrics_is_a_leaf() {
    let g = graph(&modules());
    let deps = g.get("infra::metrics").expect("infra::metrics exists");
    assert!(deps.is_empty(), "infra::metrics imports {deps:?}: components register their own series into it");
}

#[test]
fn the_checks_see_what_they_look_for() {
    // The scanner itself: a path is resolved to the module that exists, and a cycle is found.
    assert_eq!(crate_paths("use crate::infra::store::{Store};"), ["infra::store"]);
    let g: BTreeMap<String, BTreeSet<String>> = [("a", "b"), ("b", "c"), ("c", "a")]
        .into_iter()
        .map(|(x, y)| (x.to_string(), BTreeSet::from([y.to_string()])))
        .collect();
    assert!(find_cycle(&g).is_some());
}
