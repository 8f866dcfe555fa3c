//! The layers hold. Every `crate::`, `super::` and (in the binary) `tachyon::` path in `src/`
//! is resolved to the top-level module it names, and a module may only name the modules
//! [`LAYERS`] lists for it; the graph of what the modules actually import must have no cycle,
//! and clap types live only in the binary (`src/main.rs`, `src/cli/`).
//!
//! The checker works on source text (comments, strings and char literals skipped, inline
//! `mod x { .. }` blocks tracked for `super::`), so it needs no compiler internals; its own
//! tests below plant bad imports in small in-memory trees and show each rule fails.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each module and the modules it may import, bottom first.
const LAYERS: &[(&str, &[&str])] = &[
    // File formats and weights: reads bytes, knows nothing above it.
    ("format", &[]),
    // The vocab and chat template come from GGUF metadata (format's reader).
    ("tokenizer", &["format"]),
    // Block formats over format's type table; the model quantizer reads and writes model
    // files. Knows no tokenizer, no backend, no model graph.
    ("quant", &["format"]),
    // Runs ops over weights (format) in any block format (quant); knows no model graph,
    // no engine, no tokenizer.
    ("backend", &["format", "quant"]),
    // The forward pass over backend::Ops; a loaded Model bundles weights and tokenizer.
    ("graph", &["format", "tokenizer", "quant", "backend"]),
    // The generation loop over a graph on a backend.
    (
        "engine",
        &["format", "tokenizer", "quant", "backend", "graph"],
    ),
    // The HTTP / WebSocket front over one engine thread.
    (
        "server",
        &["format", "tokenizer", "quant", "backend", "graph", "engine"],
    ),
    // Byte-level entry points over everything read from strangers: it reaches each layer it
    // fuzzes, and no module imports it.
    (
        "fuzzing",
        &[
            "format",
            "tokenizer",
            "quant",
            "backend",
            "graph",
            "engine",
            "server",
        ],
    ),
    // The binary (main.rs + cli/): the top, it may use every library module.
    (
        "cli",
        &[
            "format",
            "tokenizer",
            "quant",
            "backend",
            "graph",
            "engine",
            "server",
        ],
    ),
];

/// Library files that still hold clap types, each to move into the CLI. A file that no
/// longer names clap must leave this list (the check fails until it does), so it only
/// shrinks.
const CLAP_PENDING: &[&str] = &[];

/// Every problem found in `files` (`(path from the repository root, source)` pairs), and
/// the imports seen between top-level modules (importer, imported).
fn check(
    files: &[(String, String)],
    layers: &[(&str, &[&str])],
    clap_pending: &[&str],
) -> (Vec<String>, BTreeSet<(String, String)>) {
    let allowed: BTreeMap<&str, BTreeSet<&str>> = layers
        .iter()
        .map(|(m, lower)| (*m, lower.iter().copied().collect()))
        .collect();
    let mut errors = Vec::new();
    if let Some(cycle) = find_cycle(&allowed) {
        errors.push(format!(
            "the layer table itself has a cycle: {}",
            cycle.join(" -> ")
        ));
    }
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut clap_users = BTreeSet::new();
    for (path, src) in files {
        let Some(unit) = Unit::of(path) else {
            continue;
        };
        let Some(owner_allowed) = allowed.get(unit.owner.as_str()) else {
            errors.push(format!(
                "{path}: module `{}` is not in the layer table; place it in a layer",
                unit.owner
            ));
            continue;
        };
        let owner = allowed
            .get_key_value(unit.owner.as_str())
            .map(|(k, _)| *k)
            .unwrap_or("");
        let tokens = tokenize(src);
        if !unit.binary && tokens.iter().any(|t| t == "clap") {
            clap_users.insert(path.clone());
        }
        for r in references(&unit, &tokens) {
            let target = match r {
                Ok(t) => t,
                Err(e) => {
                    errors.push(format!("{path}: {e}"));
                    continue;
                }
            };
            if target == unit.owner {
                continue;
            }
            let Some((target, _)) = allowed.get_key_value(target.as_str()) else {
                errors.push(format!(
                    "{path}: names `{target}`, which is no module of the crate"
                ));
                continue;
            };
            graph.entry(owner).or_default().insert(target);
            if !owner_allowed.contains(target) {
                errors.push(format!(
                    "{path}: `{owner}` imports `{target}`, but may only import {:?}",
                    layers
                        .iter()
                        .find(|(m, _)| *m == owner)
                        .map(|(_, l)| *l)
                        .unwrap_or(&[])
                ));
            }
        }
    }
    if let Some(cycle) = find_cycle(&graph) {
        errors.push(format!("import cycle: {}", cycle.join(" -> ")));
    }
    for path in &clap_users {
        if !clap_pending.contains(&path.as_str()) {
            errors.push(format!(
                "{path}: clap outside the binary (src/main.rs, src/cli/)"
            ));
        }
    }
    for path in clap_pending {
        if !clap_users.contains(*path) {
            errors.push(format!(
                "{path} no longer uses clap: remove it from CLAP_PENDING"
            ));
        }
    }
    let edges = graph
        .iter()
        .flat_map(|(a, bs)| bs.iter().map(|b| (a.to_string(), b.to_string())))
        .collect();
    (errors, edges)
}

/// Where a file sits: which crate, which top-level module owns it, and its module path.
struct Unit {
    /// The binary crate (main.rs and cli/) rather than the library.
    binary: bool,
    /// The top-level module (`cli` for the whole binary).
    owner: String,
    /// The file's module path from its crate root (`["format", "gguf"]` for
    /// src/format/gguf/mod.rs).
    module: Vec<String>,
}

impl Unit {
    /// `None` for a file outside src/ or the library root (which only declares modules).
    fn of(path: &str) -> Option<Unit> {
        let rel = path.strip_prefix("src/")?.strip_suffix(".rs")?;
        if rel == "lib" {
            return None;
        }
        let mut module: Vec<String> = rel.split('/').map(String::from).collect();
        if module.last().is_some_and(|m| m == "mod") {
            module.pop();
        }
        if rel == "main" {
            module.clear();
        }
        let binary = rel == "main" || module.first().is_some_and(|m| m == "cli");
        let owner = if binary {
            "cli".to_string()
        } else {
            module[0].clone()
        };
        Some(Unit {
            binary,
            owner,
            module,
        })
    }
}

/// Identifiers and the punctuation paths are made of (`::`, `{`, `}`, `,`, `;`, `*`), with
/// comments, string and char literals left out.
fn tokenize(src: &str) -> Vec<String> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && c.get(i + 1) == Some(&'*') {
            // Block comments nest in Rust.
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if ch == 'r'
            && matches!(c.get(i + 1), Some('"') | Some('#'))
            && raw_string_end(&c, i).is_some()
        {
            i = raw_string_end(&c, i).unwrap_or(c.len());
        } else if ch == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if ch == '\'' {
            // A char literal ('x', '\n', '\u{1F600}') or a lifetime ('a).
            if c.get(i + 1) == Some(&'\\') {
                // Past the quote, the backslash and the escaped char, then to the close.
                i += 3;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if ch.is_alphanumeric() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(c[start..i].iter().collect());
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push("::".into());
            i += 2;
        } else {
            if matches!(ch, '{' | '}' | ',' | ';' | '*') {
                out.push(ch.to_string());
            }
            i += 1;
        }
    }
    out
}

/// The index just past a raw string starting at `i` (`r"..."`, `r#"..."#`), if it is one.
fn raw_string_end(c: &[char], i: usize) -> Option<usize> {
    let mut j = i + 1;
    let mut hashes = 0;
    while c.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    if c.get(j) != Some(&'"') {
        return None;
    }
    j += 1;
    while j < c.len() {
        if c[j] == '"' && (1..=hashes).all(|k| c.get(j + k) == Some(&'#')) {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(c.len())
}

/// The top-level module each crate-relative path in `tokens` names (or why one cannot be
/// resolved). Paths inside the file's own top-level module come back too; the caller skips
/// them.
fn references(unit: &Unit, tokens: &[String]) -> Vec<Result<String, String>> {
    let mut out = Vec::new();
    // Inline `mod name {` blocks: (name, brace depth just inside it).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i].as_str();
        match t {
            "{" => depth += 1,
            "}" => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            "mod" if tokens.get(i + 2).is_some_and(|b| b == "{") => {
                inline.push((tokens[i + 1].clone(), depth + 1));
            }
            _ => {}
        }
        let starts_path = tokens.get(i + 1).is_some_and(|n| n == "::")
            && (i == 0 || tokens[i - 1] != "::")
            && matches!(t, "crate" | "super" | "tachyon");
        if !starts_path {
            i += 1;
            continue;
        }
        // The module the path is written in, from its crate root.
        let mut here: Vec<String> = unit.module.clone();
        here.extend(inline.iter().map(|(n, _)| n.clone()));
        let mut j = i;
        let base: Option<Vec<String>> = match t {
            "crate" => {
                j += 2;
                Some(Vec::new())
            }
            "tachyon" if unit.binary => {
                // The library, seen from the binary: its modules are the top level.
                j += 2;
                let rest = path_heads(tokens, j);
                out.extend(rest.into_iter().map(Ok));
                i = j;
                continue;
            }
            "tachyon" => None,
            _ => {
                let mut ok = true;
                while tokens.get(j).is_some_and(|s| s == "super")
                    && tokens.get(j + 1).is_some_and(|s| s == "::")
                {
                    if here.pop().is_none() {
                        ok = false;
                    }
                    j += 2;
                }
                if ok {
                    Some(here)
                } else {
                    out.push(Err("`super::` climbs above the crate root".into()));
                    None
                }
            }
        };
        if let Some(base) = base {
            if unit.binary {
                // Paths inside the binary stay inside it.
            } else if let Some(top) = base.first() {
                out.push(Ok(top.clone()));
            } else {
                out.extend(path_heads(tokens, j).into_iter().map(Ok));
            }
        }
        i = j.max(i + 1);
    }
    out
}

/// The first segment of the path starting at `tokens[j]`, or of each item of a
/// `{a::b, c}` group there (`self` in a group is the module itself: skipped).
fn path_heads(tokens: &[String], j: usize) -> Vec<String> {
    match tokens.get(j).map(String::as_str) {
        Some("{") => {
            let mut heads = Vec::new();
            let mut depth = 0;
            let mut expect_head = true;
            for t in &tokens[j..] {
                match t.as_str() {
                    "{" => {
                        depth += 1;
                        expect_head = depth == 1;
                    }
                    "}" => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    "," if depth == 1 => expect_head = true,
                    "::" | "*" => {}
                    s if expect_head && depth == 1 => {
                        if s != "self" {
                            heads.push(s.to_string());
                        }
                        expect_head = false;
                    }
                    _ => {}
                }
            }
            heads
        }
        Some("*") | None => Vec::new(),
        Some(s) => vec![s.to_string()],
    }
}

/// A cycle in `graph` (as the modules along it, the first repeated at the end), if any.
fn find_cycle<'a>(graph: &BTreeMap<&'a str, BTreeSet<&'a str>>) -> Option<Vec<&'a str>> {
    fn visit<'a>(
        n: &'a str,
        graph: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<&'a str>> {
        // 1: on the current path, 2: finished.
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let from = stack.iter().position(|m| *m == n).unwrap_or(0);
                let mut cycle = stack[from..].to_vec();
                cycle.push(n);
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(n, 1);
        stack.push(n);
        for m in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, graph, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(n, 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

/// Every .rs file under `dir`, as (path from the repository root, source).
fn read_tree(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            read_tree(root, &p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let rel = p.strip_prefix(root).expect("under the root");
            let rel = rel.to_string_lossy().replace('\\', "/");
            let src =
                std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            out.push((rel, src));
        }
    }
}

#[test]
fn the_source_tree_keeps_its_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    read_tree(root, &root.join("src"), &mut files);
    assert!(files.len() > 50, "found only {} source files", files.len());
    let (errors, edges) = check(&files, LAYERS, CLAP_PENDING);
    assert!(errors.is_empty(), "layering broken:\n{}", errors.join("\n"));
    // The checker sees the imports that are known to exist (so a pass is not a blind one).
    for (a, b) in [
        ("tokenizer", "format"),
        ("quant", "format"),
        ("backend", "quant"),
        ("graph", "backend"),
        ("engine", "graph"),
        ("server", "engine"),
        ("cli", "server"),
    ] {
        assert!(
            edges.contains(&(a.to_string(), b.to_string())),
            "{a} -> {b} not seen; edges: {edges:?}"
        );
    }
}

/// The checker against small planted trees: each rule must fail when broken.
mod checker {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> Vec<(String, String)> {
        files
            .iter()
            .map(|(p, s)| (p.to_string(), s.to_string()))
            .collect()
    }

    fn errors(files: &[(&str, &str)]) -> Vec<String> {
        check(&tree(files), LAYERS, &[]).0
    }

    #[test]
    fn an_upward_import_fails() {
        let e = errors(&[("src/format/weights.rs", "use crate::engine::Engine;\n")]);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("`format` imports `engine`"), "{e:?}");
    }

    #[test]
    fn a_downward_import_passes() {
        let e = errors(&[
            (
                "src/engine/mod.rs",
                "use crate::graph::Model;\nfn f() { crate::format::load(); }",
            ),
            ("src/graph/mod.rs", "use crate::backend::Ops;"),
            (
                "src/format/gguf/writer.rs",
                "use super::MetaValue;\nuse super::super::ModelError;",
            ),
            (
                "src/cli/bench.rs",
                "use tachyon::server::run;\nuse crate::cli::x;\nuse super::y;",
            ),
            (
                "src/main.rs",
                "use tachyon::{engine::Engine, graph::Model};\nuse cli::backend;",
            ),
        ]);
        assert!(e.is_empty(), "{e:?}");
    }

    #[test]
    fn grouped_and_expression_paths_are_seen() {
        let e = errors(&[(
            "src/quant/x.rs",
            "use crate::{format::GgmlType, graph::{self, Model}};",
        )]);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("imports `graph`"), "{e:?}");
        let e = errors(&[(
            "src/backend/x.rs",
            "fn f() -> usize { crate::engine::LIMIT }",
        )]);
        assert_eq!(e.len(), 1, "{e:?}");
    }

    #[test]
    fn super_paths_resolve_through_files_and_inline_modules() {
        // src/format/gguf/writer.rs is format::gguf::writer: three supers reach the root.
        let e = errors(&[(
            "src/format/gguf/writer.rs",
            "use super::super::super::server::X;",
        )]);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("imports `server`"), "{e:?}");
        // Inside `mod tests { }` of format/mod.rs, super::super is the crate root.
        let e = errors(&[(
            "src/format/mod.rs",
            "mod tests {\n    use super::super::engine::Engine;\n}\nfn g() {}",
        )]);
        assert_eq!(e.len(), 1, "{e:?}");
        // After the inline module closes, one super from format/mod.rs is the root.
        let e = errors(&[(
            "src/format/mod.rs",
            "mod a { fn f() {} }\nuse super::quant::x;",
        )]);
        assert_eq!(e.len(), 1, "{e:?}");
        let e = errors(&[("src/format/mod.rs", "use super::super::x;")]);
        assert!(e[0].contains("above the crate root"), "{e:?}");
    }

    #[test]
    fn comments_strings_and_chars_are_not_imports() {
        let e = errors(&[(
            "src/format/x.rs",
            "// use crate::engine::X;\n/* crate::server:: /* nested */ crate::graph:: */\n\
             const S: &str = \"crate::engine::Y\";\nconst R: &str = r#\"crate::server::\"#;\n\
             const C: char = '\"'; const Q: char = '\\''; const U: char = '\\u{22}';\n\
             fn f<'a>(x: &'a str) -> &'a str { \"crate::server::\" }\n",
        )]);
        assert!(e.is_empty(), "{e:?}");
    }

    #[test]
    fn an_unknown_module_fails() {
        let e = errors(&[("src/extra/mod.rs", "fn f() {}")]);
        assert!(e[0].contains("not in the layer table"), "{e:?}");
        let e = errors(&[("src/format/x.rs", "use crate::nowhere::X;")]);
        assert!(e[0].contains("no module of the crate"), "{e:?}");
    }

    #[test]
    fn a_cycle_fails() {
        // A table that lets two modules import each other, and files that do.
        let layers: &[(&str, &[&str])] = &[("format", &["quant"]), ("quant", &["format"])];
        let files = tree(&[
            ("src/format/a.rs", "use crate::quant::x;"),
            ("src/quant/b.rs", "use crate::format::y;"),
        ]);
        let (e, edges) = check(&files, layers, &[]);
        assert_eq!(edges.len(), 2, "{edges:?}");
        assert!(
            e.iter()
                .any(|m| m.contains("the layer table itself has a cycle")),
            "{e:?}"
        );
        assert!(e.iter().any(|m| m.starts_with("import cycle: ")), "{e:?}");
    }

    #[test]
    fn clap_outside_the_binary_fails() {
        let src = "#[derive(clap::ValueEnum)]\nenum Q { A }";
        let e = errors(&[("src/quant/at_load.rs", src)]);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("clap outside the binary"), "{e:?}");
        assert!(errors(&[("src/cli/x.rs", src)]).is_empty());
        // A pending file that has moved on must leave the list.
        let (e, _) = check(
            &tree(&[("src/server/cli.rs", "fn f() {}")]),
            LAYERS,
            &["src/server/cli.rs"],
        );
        assert!(e[0].contains("remove it from CLAP_PENDING"), "{e:?}");
    }
}
