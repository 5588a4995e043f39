//! The documentation checks itself: every relative link resolves, every `#fragment` names a
//! heading, and every YAML block that is a heimdall configuration passes `heimdall validate`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The documents whose links are checked, relative to the repository root.
fn linked_documents() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = [
        "README.md",
        "ARCHITECTURE.md",
        "DEVELOPMENT.md",
        "bench/README.md",
        "charts/heimdall/README.md",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    files.extend(markdown_under(Path::new("docs")));
    files
}

/// The documents whose configuration examples are validated.
fn example_documents() -> Vec<PathBuf> {
    let mut files = vec![PathBuf::from("README.md")];
    files.extend(markdown_under(Path::new("docs")));
    files
}

fn markdown_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(root().join(&dir)).unwrap() {
            let entry = entry.unwrap();
            let relative = dir.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                pending.push(relative);
            } else if relative.extension().is_some_and(|e| e == "md") {
                found.push(relative);
            }
        }
    }
    found.sort();
    found
}

fn read(relative: &Path) -> String {
    std::fs::read_to_string(root().join(relative))
        .unwrap_or_else(|e| panic!("read {}: {e}", relative.display()))
}

/// A fenced code block: its 1-based opening line, its info string and its text.
struct Block {
    line: usize,
    info: String,
    text: String,
    /// The HTML comment on the line before the fence, if any (`<!-- … -->`).
    comment_before: Option<String>,
}

/// Splits a Markdown document into prose lines (fences blanked out, so line numbers stay) and
/// fenced blocks.
fn split(markdown: &str) -> (Vec<String>, Vec<Block>) {
    let mut prose = Vec::new();
    let mut blocks = Vec::new();
    let mut open: Option<(String, Block)> = None;
    let mut previous = "";
    for (index, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        match &mut open {
            None => {
                let fence: String = trimmed
                    .chars()
                    .take_while(|c| *c == '`' || *c == '~')
                    .collect();
                if fence.len() >= 3 && fence.chars().all(|c| c == fence.chars().next().unwrap()) {
                    let comment = previous.trim();
                    let comment_before = comment
                        .strip_prefix("<!--")
                        .and_then(|c| c.strip_suffix("-->"))
                        .map(|c| c.trim().to_owned());
                    open = Some((
                        fence.clone(),
                        Block {
                            line: index + 1,
                            info: trimmed[fence.len()..].trim().to_owned(),
                            text: String::new(),
                            comment_before,
                        },
                    ));
                    prose.push(String::new());
                } else {
                    prose.push(line.to_owned());
                }
            }
            Some((fence, block)) => {
                if trimmed.starts_with(fence.as_str())
                    && trimmed
                        .trim_start_matches(fence.chars().next().unwrap())
                        .trim()
                        .is_empty()
                {
                    blocks.push(open.take().unwrap().1);
                } else {
                    block.text.push_str(line);
                    block.text.push('\n');
                }
                prose.push(String::new());
            }
        }
        previous = line;
    }
    assert!(open.is_none(), "a code fence is never closed");
    (prose, blocks)
}

/// Removes inline code spans, so that `[a](b)` written as code is not taken for a link.
fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        out.push_str(&rest[..start]);
        let ticks = rest[start..].chars().take_while(|c| *c == '`').count();
        let after = &rest[start + ticks..];
        let closing = "`".repeat(ticks);
        match after.find(&closing) {
            Some(end) => rest = &after[end + ticks..],
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The targets of inline links and images (`[text](target)`) and of link reference
/// definitions (`[label]: target`) on one prose line.
fn link_targets(line: &str) -> Vec<String> {
    let line = without_code_spans(line);
    let mut targets = Vec::new();
    let trimmed = line.trim_start();
    if trimmed.starts_with('[')
        && let Some(end) = trimmed.find("]:")
        && let Some(target) = trimmed[end + 2..].split_whitespace().next()
    {
        targets.push(target.trim_matches(['<', '>']).to_owned());
    }
    let mut rest = line.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let mut depth = 0usize;
        let mut end = after.len();
        for (i, c) in after.char_indices() {
            match c {
                '(' => depth += 1,
                ')' if depth == 0 => {
                    end = i;
                    break;
                }
                ')' => depth -= 1,
                _ => {}
            }
        }
        let target = after[..end].split_whitespace().next().unwrap_or("");
        targets.push(target.trim_matches(['<', '>']).to_owned());
        rest = &after[end.min(after.len())..];
    }
    targets
}

/// GitHub's anchor for a heading: the rendered text lower-cased, everything but letters,
/// digits, `-`, `_` and spaces dropped, spaces turned into `-`.
fn slug(heading: &str) -> String {
    // Rendered text: a link shows its text, inline code its content.
    let mut text = String::new();
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find("](") else {
            break;
        };
        let Some(end) = rest[open + close..].find(')') else {
            break;
        };
        text.push_str(&rest[..open]);
        text.push_str(&rest[open + 1..open + close]);
        rest = &rest[open + close + end + 1..];
    }
    text.push_str(rest);
    text.to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Every anchor a document offers: its headings' slugs (repeats numbered as GitHub does) and
/// explicit `<a id="…">` / `<a name="…">` anchors.
fn anchors(markdown: &str) -> HashSet<String> {
    let (prose, _) = split(markdown);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut anchors = HashSet::new();
    for line in &prose {
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if (1..=6).contains(&hashes) && line[hashes..].starts_with(' ') {
            let text = line[hashes..].trim().trim_end_matches('#').trim();
            let base = slug(text);
            let count = seen.entry(base.clone()).or_insert(0);
            let anchor = if *count == 0 {
                base.clone()
            } else {
                format!("{base}-{count}")
            };
            *count += 1;
            anchors.insert(anchor);
        }
        for attribute in ["id=\"", "name=\""] {
            let mut rest = line.as_str();
            while let Some(at) = rest.find(attribute) {
                let value = &rest[at + attribute.len()..];
                let end = value.find('"').unwrap_or(value.len());
                anchors.insert(value[..end].to_owned());
                rest = &value[end..];
            }
        }
    }
    anchors
}

#[test]
fn relative_links_resolve_to_files_and_headings() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for document in linked_documents() {
        let markdown = read(&document);
        let (prose, _) = split(&markdown);
        let dir = document.parent().unwrap_or(Path::new(""));
        for (index, line) in prose.iter().enumerate() {
            for target in link_targets(line) {
                if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let at = format!("{}:{}", document.display(), index + 1);
                let (path, fragment) = match target.split_once('#') {
                    Some((path, fragment)) => (path, Some(fragment)),
                    None => (target.as_str(), None),
                };
                let file = if path.is_empty() {
                    document.clone()
                } else if let Some(from_root) = path.strip_prefix('/') {
                    PathBuf::from(from_root)
                } else {
                    dir.join(path)
                };
                let on_disk = root().join(&file);
                if !on_disk.exists() {
                    problems.push(format!(
                        "{at}: `{target}`: {} does not exist",
                        file.display()
                    ));
                    continue;
                }
                let Some(fragment) = fragment else { continue };
                if on_disk.is_dir() || file.extension().is_none_or(|e| e != "md") {
                    problems.push(format!(
                        "{at}: `{target}`: a #fragment on something that is not a Markdown file"
                    ));
                    continue;
                }
                if !anchors(&read(&file)).contains(fragment) {
                    problems.push(format!(
                        "{at}: `{target}`: {} has no heading with the anchor `#{fragment}`",
                        file.display()
                    ));
                }
            }
        }
    }
    eprintln!("{checked} relative links checked");
    assert!(
        checked > 100,
        "only {checked} relative links found: is the scan broken?"
    );
    assert!(
        problems.is_empty(),
        "broken links:\n{}",
        problems.join("\n")
    );
}

/// The anchors GitHub gives the headings the documents link to most.
#[test]
fn slugs_follow_github() {
    assert_eq!(
        slug("Roadmap / not yet available"),
        "roadmap--not-yet-available"
    );
    assert_eq!(
        slug("Gateways without ext_authz: `/decision`"),
        "gateways-without-ext_authz-decision"
    );
    assert_eq!(
        slug("`server.grpc` (ext_authz port)"),
        "servergrpc-ext_authz-port"
    );
    assert_eq!(slug("See [the guide](x.md#y) now"), "see-the-guide-now");
    let twice = anchors("# A\n\n```\n# not a heading\n```\n## A\n");
    assert!(twice.contains("a") && twice.contains("a-1") && !twice.contains("not-a-heading"));
}

/// Runs `heimdall` with a clean environment plus `env`.
fn heimdall(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_heimdall"));
    command
        .args(args)
        .env_remove("PASETO_SYMMETRIC_KEY")
        .env_remove("HEIMDALL_CONFIG")
        .env_remove("NATS_URL")
        .env_remove("CERBOS_GRPC_URL")
        .env_remove("PORT")
        .env_remove("GRPC_PORT")
        .env_remove("HEIMDALL_BIND")
        .env_remove("RUST_LOG");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().unwrap()
}

/// Every ```` ```yaml ```` block of README.md and docs/ that is a heimdall configuration (a
/// mapping with a top-level `version` key) passes `heimdall validate`. A block marked
/// `<!-- not validated: REASON -->` on the line before its fence is skipped; see DEVELOPMENT.md.
#[test]
fn configuration_examples_pass_validate() {
    // The keys the examples name: a symmetric key, a signing key in the variable the examples
    // and the Helm chart use, and a JWT key (PKCS#8 PEM).
    let generated = heimdall(&["keys", "generate", "--purpose", "public"], &[]);
    assert!(generated.status.success());
    let generated = String::from_utf8(generated.stdout).unwrap();
    let secret = generated
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .unwrap()
        .to_owned();
    let jwt_key = heimdall::test_helpers::token_verifier::generate_jwt_key(
        heimdall::tokens::JwtAlgorithm::EdDsa,
    );
    let env = [
        ("PASETO_SYMMETRIC_KEY", "docs-example-key-0123456789abcde"),
        ("HEIMDALL_SIGNING_KEY", secret.as_str()),
        ("HEIMDALL_JWT_KEY", jwt_key.as_str()),
        // The Kratos example of docs/mechanisms.md (the `http` contextualizer).
        ("KRATOS_ADMIN_URL", "http://kratos:4434"),
        ("KRATOS_ADMIN_TOKEN", "docs-example-token"),
    ];

    let dir = std::env::temp_dir().join(format!("heimdall-docs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut problems = Vec::new();
    let mut validated = 0;
    let mut skipped = Vec::new();
    for document in example_documents() {
        let (_, blocks) = split(&read(&document));
        for block in blocks {
            let language = block.info.split_whitespace().next().unwrap_or("");
            if language != "yaml" && language != "yml" {
                continue;
            }
            let at = format!("{}:{}", document.display(), block.line);
            if let Some(comment) = &block.comment_before
                && let Some(reason) = comment.strip_prefix("not validated:")
            {
                assert!(
                    !reason.trim().is_empty(),
                    "{at}: say why the block is not validated"
                );
                skipped.push(at);
                continue;
            }
            let is_config = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&block.text)
                .ok()
                .and_then(|v| v.as_mapping().map(|m| m.contains_key("version")))
                .unwrap_or(false);
            if !is_config {
                continue;
            }
            validated += 1;
            let file = dir.join(format!("block-{validated}.yaml"));
            std::fs::write(&file, &block.text).unwrap();
            let out = heimdall(&["validate", "--config", file.to_str().unwrap()], &env);
            if !out.status.success() {
                problems.push(format!(
                    "{at}: `heimdall validate` refused this configuration:\n{}",
                    String::from_utf8_lossy(&out.stderr).trim_end()
                ));
            }
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    eprintln!("{validated} configuration blocks validated, skipped: {skipped:?}");
    assert!(
        validated >= 6,
        "only {validated} configuration blocks found: is the scan broken?"
    );
    assert!(
        skipped.len() <= 3,
        "keep skipped blocks few; skipped: {skipped:?}"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// The metric names documented in docs/observability.md's table: each row's first cell, whose
/// names are in backticks; a name written `…_misses_total` after a full one shares its prefix.
fn documented_metrics() -> Vec<(String, Vec<String>)> {
    read(Path::new("docs/observability.md"))
        .lines()
        .filter(|line| line.starts_with("| `heimdall_"))
        .map(|line| {
            let cell = line.split('|').nth(1).unwrap();
            let names: Vec<String> = cell
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect();
            (names[0].clone(), names[1..].to_vec())
        })
        .collect()
}

/// Whether `metric` (as a query names it: a histogram's `_bucket`, `_sum` or `_count` series
/// too) is in docs/observability.md's table.
fn is_documented(metric: &str, table: &[(String, Vec<String>)]) -> bool {
    let family = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| metric.strip_suffix(suffix));
    table.iter().any(|(full, abbreviated)| {
        full == metric
            || family == Some(full.as_str())
            || abbreviated.iter().any(|short| {
                short.strip_prefix('…').is_some_and(|tail| {
                    metric
                        .strip_suffix(tail)
                        .is_some_and(|prefix| full.starts_with(prefix))
                })
            })
    })
}

/// The `heimdall_…` metric names a PromQL text uses.
fn metric_names(promql: &str) -> Vec<String> {
    promql
        .match_indices("heimdall_")
        .map(|(at, _)| {
            promql[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

/// Every `expr` of the Grafana dashboard.
fn dashboard_queries() -> Vec<String> {
    fn collect(value: &serde_json::Value, found: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(expr)) = map.get("expr") {
                    found.push(expr.clone());
                }
                map.values().for_each(|v| collect(v, found));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| collect(v, found)),
            _ => {}
        }
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(Path::new("infra/grafana/heimdall.json")))
            .unwrap_or_else(|e| panic!("infra/grafana/heimdall.json is not JSON: {e}"));
    let mut found = Vec::new();
    collect(&dashboard, &mut found);
    found
}

#[test]
fn dashboard_and_alerts_use_only_documented_metrics() {
    let table = documented_metrics();
    assert!(table.len() > 15, "docs/observability.md's table: {table:?}");
    assert!(is_documented(
        "heimdall_cerbos_decision_cache_misses_total",
        &table
    ));
    assert!(is_documented(
        "heimdall_check_duration_seconds_bucket",
        &table
    ));
    assert!(!is_documented("heimdall_check_decisions", &table));

    let queries = dashboard_queries();
    assert!(queries.len() >= 12, "the dashboard's queries: {queries:?}");
    let rules = read(Path::new("charts/heimdall/files/prometheus-rules.yaml"));
    let mut undocumented: Vec<String> = queries
        .iter()
        .map(String::as_str)
        .chain([rules.as_str()])
        .flat_map(metric_names)
        .filter(|name| !is_documented(name, &table))
        .collect();
    undocumented.dedup();
    assert!(
        undocumented.is_empty(),
        "metrics missing from docs/observability.md's table: {undocumented:?}"
    );
}

#[test]
fn every_alert_has_its_runbook_section() {
    let anchors = anchors(&read(Path::new("docs/operations.md")));
    let rules = read(Path::new("charts/heimdall/files/prometheus-rules.yaml"));
    let alerts = rules.matches("- alert: ").count();
    let runbooks: Vec<&str> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("runbook: docs/operations.md#"))
        .collect();
    assert_eq!(runbooks.len(), alerts, "one runbook per alert");
    for anchor in runbooks {
        assert!(
            anchors.contains(anchor),
            "docs/operations.md has no heading for #{anchor}"
        );
    }
}
