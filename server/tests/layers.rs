//! The server's modules form one-way layers: each module names only modules of its own or a
//! lower layer (see `LAYERS` and the README's "How it works"). A new import that points up
//! (or a cycle) fails here, naming the file and the import, before it tangles the data path.
//!
//! A small reader of `crate::` and `super::` paths in `server/src` (test modules skipped),
//! not a Rust parser: it sees every path written in code, which is what an import is.

// Test helpers, like tests, fail by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers from the bottom. A module is placed by its longest listed prefix.
const LAYERS: &[&[&str]] = &[
    // element types and layout vocabulary, pure helpers
    &["dtype", "attrs", "block", "background", "chunk::grid", "render"],
    // byte I/O: local files and object stores
    &["storage"],
    // codecs: bytes to bytes
    &["codec"],
    // format readers: what one file holds and where its bytes are
    &["source"],
    // reading one file's variable (decode, byte order, regions)
    &["chunk"],
    // the dataset model: variables stitched from files, aggregation
    &["dataset"],
    // the pipeline: a region of any variable as a typed block
    &["pipeline"],
    // processing: variables computed from others (BitRound, rechunking, expressions)
    &["processing"],
    // protocol renderers
    &["zarr", "kerchunk", "opendap"],
    // opening: sources → indexes (cache) → dataset
    &["open"],
    // who may read which dataset (tokens, OIDC, signed URLs)
    &["access"],
    // what the running server holds
    &["metrics", "state"],
    // HTTP handlers of the data routes
    &["http"],
    // the `cloudify catalog` STAC API service: store, search, CQL2 filters; it shares only the
    // HTTP error type and guards with the data server and reads no dataset
    &["stac_api"],
    // the data server's catalogs (STAC items, intake), static export
    &["catalog"],
    // all routes merged
    &["router"],
    // process edges: start-up, serving loop, demo data
    &["app", "serve", "demo", "catalog::cli", "compute"],
];

/// Module path (`a::b`) of every source file.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read src") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(src).expect("under src").with_extension("");
                let mut parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
                if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                    parts.pop();
                }
                out.insert(parts.join("::"), p);
            }
        }
    }
    out
}

/// The text without comments and without `#[cfg(test)] mod ... { }` blocks.
fn code(text: &str) -> String {
    let no_comments: String = text
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = String::new();
    let mut rest = no_comments.as_str();
    while let Some(i) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        let Some(open) = after.find('{') else {
            rest = "";
            break;
        };
        // only a module block is skipped; a cfg(test) item elsewhere keeps its text
        if !after[..open].contains("mod ") {
            out.push_str(&after[..open + 1]);
            rest = &after[open + 1..];
            continue;
        }
        let mut depth = 0usize;
        let mut end = after.len();
        for (j, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + j + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// The longest module of `mods` that `path` (`a::b::c`) names.
fn resolve<'a>(mods: &'a BTreeMap<String, PathBuf>, path: &str) -> Option<&'a str> {
    let mut parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
    while !parts.is_empty() {
        if let Some((k, _)) = mods.get_key_value(&parts.join("::")) {
            return Some(k);
        }
        parts.pop();
    }
    None
}

fn ident_path(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(s.len());
    s[..end].trim_end_matches(':')
}

/// Modules each module names.
fn edges(mods: &BTreeMap<String, PathBuf>) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for (m, p) in mods {
        let text = code(&std::fs::read_to_string(p).expect("read"));
        let mut to = BTreeSet::new();
        let mut add = |path: &str| {
            if let Some(t) = resolve(mods, path)
                && t != m
                && !m.starts_with(&format!("{t}::"))
                && !t.is_empty()
            {
                to.insert(t.to_string());
            }
        };
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + 7..];
            if let Some(group) = rest.strip_prefix('{') {
                let inner = &group[..group.find('}').unwrap_or(group.len())];
                for item in inner.split(',') {
                    add(ident_path(item.trim()));
                }
            } else {
                add(ident_path(rest));
            }
        }
        // super:: paths: each `super` drops one segment of this module's path (a `mod.rs`
        // file is the module of its directory, so the same rule holds)
        for (i, _) in text.match_indices("super::") {
            if i > 0 && text[..i].ends_with("super::") {
                continue; // counted from the first `super::` of a run
            }
            let mut rest = &text[i..];
            let mut ups = 0;
            while let Some(r) = rest.strip_prefix("super::") {
                ups += 1;
                rest = r;
            }
            let mut base: Vec<&str> = m.split("::").filter(|s| !s.is_empty()).collect();
            for _ in 0..ups {
                base.pop();
            }
            let tails: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => group[..group.find('}').unwrap_or(group.len())]
                    .split(',')
                    .map(|item| ident_path(item.trim()))
                    .collect(),
                None => vec![ident_path(rest)],
            };
            for tail in tails {
                let full = if base.is_empty() {
                    tail.to_string()
                } else {
                    format!("{}::{tail}", base.join("::"))
                };
                add(&full);
            }
        }
        out.insert(m.clone(), to);
    }
    out
}

fn layer_of(m: &str) -> Option<usize> {
    let mut best: Option<(usize, usize)> = None;
    for (i, layer) in LAYERS.iter().enumerate() {
        for prefix in *layer {
            let hit = m == *prefix || m.starts_with(&format!("{prefix}::"));
            if hit && best.is_none_or(|(_, len)| prefix.len() > len) {
                best = Some((i, prefix.len()));
            }
        }
    }
    best.map(|(i, _)| i)
}

#[test]
fn imports_point_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mods = modules(&src);
    let edges = edges(&mods);
    let mut problems = Vec::new();
    for m in mods.keys().filter(|m| !m.is_empty() && *m != "main") {
        if layer_of(m).is_none() {
            problems.push(format!("{m}: in no layer (add it to LAYERS in {})", file!()));
        }
    }
    for (m, tos) in &edges {
        let Some(lm) = layer_of(m) else { continue };
        for t in tos {
            let Some(lt) = layer_of(t) else { continue };
            if lt > lm {
                problems.push(format!(
                    "{} names {t} (layer {lt}) from layer {lm}: imports must point down",
                    mods[m].display()
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Within a layer (and a module's submodules) there are no cycles either.
#[test]
fn no_import_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mods = modules(&src);
    let edges = edges(&mods);
    // Depth-first search for a back edge.
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(m) {
            Some(1) => {
                let at = path.iter().position(|p| p == m).unwrap_or(0);
                let mut cycle = path[at..].to_vec();
                cycle.push(m.to_string());
                return Some(cycle);
            }
            Some(2) => return None,
            _ => {}
        }
        state.insert(m.to_string(), 1);
        path.push(m.to_string());
        for t in edges.get(m).into_iter().flatten() {
            if let Some(c) = visit(t, edges, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(m.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in edges.keys() {
        if let Some(cycle) = visit(m, &edges, &mut state, &mut Vec::new()) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}

/// The checker itself sees imports: a known downward import is found.
#[test]
fn the_checker_sees_imports() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mods = modules(&src);
    let edges = edges(&mods);
    assert!(
        edges["pipeline"].contains("chunk::read"),
        "{:?}",
        edges["pipeline"]
    );
    assert!(edges["http::zarr"].contains("state"), "{:?}", edges["http::zarr"]);
    assert!(
        edges["open::file"].contains("chunk::read"),
        "{:?}",
        edges["open::file"]
    );
    assert!(
        edges["source::remote"].contains("source::native"),
        "super:: paths: {:?}",
        edges["source::remote"]
    );
}
