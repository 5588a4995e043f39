//! The crate's layering, checked: every top-level module of `src/` sits in one layer, and its
//! non-test code may import (`crate::…`) only modules of lower layers or of its own, with no
//! cycle between modules. ARCHITECTURE.md ("Layers") explains the table; a new module must be
//! placed in it, or this test fails naming it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failure is a failed test"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lowest first. A module may import modules of its own layer or below.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "vocabulary",
        &[
            "redact",
            "canonical",
            "decision",
            "readiness",
            "ttl_cache",
            "file_watch",
            "trace_context",
        ],
    ),
    (
        "request and services",
        &["request", "tokens", "metrics", "outbound", "attributes"],
    ),
    ("principals and policy questions", &["subject", "policy"]),
    ("policy engine", &["cerbos"]),
    ("login", &["login"]),
    ("configuration", &["config", "telemetry", "tls", "listener"]),
    ("expressions", &["expr"]),
    ("mechanisms", &["mechanisms"]),
    ("pipeline", &["pipeline"]),
    ("rule compiler", &["rules"]),
    ("engine", &["engine"]),
    ("entry points", &["extauthz", "http"]),
    ("process", &["app", "reload", "test_helpers"]),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
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

/// The code of a file without its unit-test module and comments.
fn code_of(text: &str) -> String {
    let text = text
        .split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or_default();
    text.lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules `code` names through `crate::`, including `use crate::{a, b::c}`.
fn imports(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        // Not part of a longer path such as `some_crate::`.
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let group = group.split('}').next().unwrap_or_default();
            for item in group.split(',') {
                let name = ident(item.trim());
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

/// Module → the modules it imports, for every top-level module of `src/`.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let top = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap()
            .trim_end_matches(".rs")
            .to_owned();
        if top == "lib" || top == "main" {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(&file).unwrap());
        let deps = graph.entry(top.clone()).or_default();
        deps.extend(imports(&code).into_iter().filter(|d| *d != top));
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for deps in graph.values_mut() {
        deps.retain(|d| modules.contains(d));
    }
    graph
}

#[test]
fn every_module_has_a_layer_and_imports_only_downwards() {
    let graph = graph();
    assert!(graph.len() > 10, "found only {graph:?} under src/");
    let mut problems = Vec::new();
    for (module, deps) in &graph {
        let Some(layer) = layer_of(module) else {
            problems.push(format!(
                "module `{module}` has no layer: add it to LAYERS in tests/module_layers.rs and to ARCHITECTURE.md"
            ));
            continue;
        };
        for dep in deps {
            if let Some(dep_layer) = layer_of(dep)
                && dep_layer > layer
            {
                problems.push(format!(
                    "`{module}` ({}) imports `{dep}` ({}), a higher layer",
                    LAYERS[layer].0, LAYERS[dep_layer].0
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = graph();
    // Depth-first search with colours; a grey node reached again closes a cycle.
    #[derive(Clone, Copy, PartialEq)]
    enum Colour {
        White,
        Grey,
        Black,
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        colour: &mut BTreeMap<String, Colour>,
        path: &mut Vec<String>,
        cycles: &mut Vec<String>,
    ) {
        colour.insert(node.to_owned(), Colour::Grey);
        path.push(node.to_owned());
        for next in &graph[node] {
            match colour[next.as_str()] {
                Colour::White => visit(next, graph, colour, path, cycles),
                Colour::Grey => {
                    let start = path.iter().position(|n| n == next).unwrap();
                    cycles.push(format!("{} -> {next}", path[start..].join(" -> ")));
                }
                Colour::Black => {}
            }
        }
        path.pop();
        colour.insert(node.to_owned(), Colour::Black);
    }
    let mut colour: BTreeMap<String, Colour> =
        graph.keys().map(|k| (k.clone(), Colour::White)).collect();
    let mut cycles = Vec::new();
    for node in graph.keys() {
        if colour[node.as_str()] == Colour::White {
            visit(node, &graph, &mut colour, &mut Vec::new(), &mut cycles);
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_import_scanner_reads_grouped_and_qualified_paths() {
    let code = "use crate::{decision::ErrorKind, subject};\nlet x = crate::expr::Expr::new();\nuse other_crate::thing;";
    let found = imports(code);
    assert_eq!(
        found,
        ["decision", "expr", "subject"]
            .into_iter()
            .map(String::from)
            .collect()
    );
}
