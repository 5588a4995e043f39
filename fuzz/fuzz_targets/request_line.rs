//! Fuzz target `request_line`: arbitrary text as a request's path, method and host, through the
//! canonicalizer (`heimdall::canonical`) and the rule matcher. Rules are only as good as the
//! canonical form they match against, so this target asserts the form's invariants, not just
//! the absence of panics:
//!
//! - canonicalizing a canonical output again gives the same output (idempotence);
//! - a canonical path is ASCII, starts with `/`, and has no `//`, no `.` or `..` segment, no
//!   `%2F`/`%5C`, no `\`, `;`, `?`, `#`, space or control character, no encoded unreserved
//!   character and no lower-case percent-hex;
//! - it means what the input meant: both decode to the same bytes once runs of `/` are merged;
//! - the stricter policy (`empty_segments: reject`) only ever refuses more, never rewrites
//!   differently;
//! - on the embedded rules, `/admin` and every canonical path under it select the `admin` rule, so
//!   no spelling of an admin path reaches a laxer rule.
//!
//! The first byte picks the method's case and whether the text also runs as method and host;
//! the rest is the text.

#![no_main]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "fuzz target: a failed assertion is the finding"
)]

use std::sync::{Arc, LazyLock};

use heimdall::canonical::{
    EmptySegments, PathPolicy, Problem, RequestLine, canonical_host, canonical_method,
    canonical_path,
};
use heimdall::mechanisms::BuildContext;
use heimdall::metrics::Metrics;
use heimdall::rules::RuleSet;
use libfuzzer_sys::fuzz_target;

const MERGE: PathPolicy = PathPolicy {
    empty_segments: EmptySegments::Merge,
    max_length: 8192,
};
const REJECT: PathPolicy = PathPolicy {
    empty_segments: EmptySegments::Reject,
    max_length: 8192,
};

/// The embedded configuration's rules.
static RULES: LazyLock<RuleSet> = LazyLock::new(|| {
    let config = heimdall::test_helpers::embedded_config();
    let keys = Arc::new(heimdall::test_helpers::test_keys());
    let ctx = BuildContext {
        keys: &keys,
        tokens: &config.tokens,
        cerbos: None,
        attributes: None,
        check_timeout: config.server.check_timeout,
        provider_metrics: &Default::default(),
        remote_calls: None,
    };
    RuleSet::compile(&config, &ctx, &Metrics::default()).expect("the embedded rules compile")
});

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    check_path(text);
    if mode & 1 == 1 {
        check_method(text);
        check_host(text);
    }
    // The whole line: `?` splits off the query, which is kept as received.
    let method = if mode & 2 == 0 { "GET" } else { "get" };
    if let Ok(line) = RequestLine::parse(method, "API.example.com:443", text, &MERGE) {
        assert_eq!(&*line.method, "GET");
        assert_eq!(&*line.host, "api.example.com");
        let (path, query) = text.split_once('?').unwrap_or((text, ""));
        assert_eq!(Ok(line.path.clone()), canonical_path(path, &MERGE));
        assert!(query.starts_with(line.query), "the query was rewritten");
    }
});

fn check_path(raw: &str) {
    let merged = canonical_path(raw, &MERGE);
    let strict = canonical_path(raw, &REJECT);
    match (&merged, &strict) {
        (Ok(m), Ok(s)) => assert_eq!(m, s, "the policies canonicalize `{raw}` differently"),
        (Ok(_), Err(refusal)) => assert_eq!(
            refusal.problem,
            Problem::EmptySegment,
            "`reject` refused `{raw}` for more than an empty segment"
        ),
        // `reject` may stop earlier, at an empty segment before the problem `merge` found.
        (Err(m), Err(s)) => assert!(
            m == s || s.problem == Problem::EmptySegment,
            "the policies refuse `{raw}` differently: {m} / {s}"
        ),
        (Err(refusal), Ok(_)) => panic!("`merge` refused `{raw}` ({refusal}) but `reject` took it"),
    }
    let Ok(path) = merged else {
        return;
    };
    assert_canonical(&path);
    // Idempotent: the canonical form is its own canonical form.
    let again = canonical_path(&path, &MERGE);
    assert!(
        matches!(&again, Ok(p) if *p == path),
        "`{raw}` → `{path}` → {again:?}"
    );
    assert_eq!(
        merge_slashes(&decode(raw)),
        merge_slashes(&decode(&path)),
        "`{raw}` and its canonical form `{path}` decode differently"
    );
    check_rule(&path);
}

/// The canonical path invariants.
fn assert_canonical(path: &str) {
    assert!(path.starts_with('/'), "`{path}` does not start with `/`");
    assert!(path.is_ascii(), "`{path}` is not ASCII");
    for needle in ["//", "/./", "/../", "\\", ";", "?", "#", " "] {
        assert!(!path.contains(needle), "`{path}` contains `{needle}`");
    }
    assert!(
        !path.bytes().any(|b| b.is_ascii_control()),
        "`{path:?}` contains a control character"
    );
    let last = path.rsplit('/').next().unwrap_or("");
    assert!(
        last != "." && last != "..",
        "`{path}` ends in a dot segment"
    );
    let bytes = path.as_bytes();
    for (i, _) in path.match_indices('%') {
        let hex = bytes
            .get(i + 1..i + 3)
            .expect("`%` followed by two characters");
        assert!(
            hex.iter()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b)),
            "`{path}` has `%` not followed by two upper-case hex digits"
        );
        let value = u8::from_str_radix(std::str::from_utf8(hex).unwrap(), 16).unwrap();
        assert!(
            !(value.is_ascii_alphanumeric() || matches!(value, b'-' | b'.' | b'_' | b'~')),
            "`{path}` keeps an unreserved character encoded"
        );
        assert!(
            !matches!(value, b'/' | b'\\' | b';') && !value.is_ascii_control(),
            "`{path}` keeps a separator, `;` or control character encoded"
        );
    }
}

/// Percent-decodes `text` to bytes (a `%` not followed by two hex digits stays as it is).
fn decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(value)) => {
                out.push(value);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

fn merge_slashes(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        if !(b == b'/' && out.last() == Some(&b'/')) {
            out.push(b);
        }
    }
    out
}

/// Every spelling of `/admin` or a path under it is judged by the `admin` rule
/// (`/admin/*rest` covers its prefix too).
fn check_rule(path: &str) {
    if path != "/admin" && !path.starts_with("/admin/") {
        return;
    }
    for method in ["GET", "POST", "DELETE"] {
        let selected = RULES.select(None, method, "api.example.com", path);
        let id = selected.as_ref().map(|s| &*s.rule.id).ok();
        assert_eq!(
            id,
            Some("admin"),
            "{method} `{path}` is not judged by `admin`"
        );
    }
}

fn check_method(raw: &str) {
    let Ok(method) = canonical_method(raw) else {
        return;
    };
    assert!(method.eq_ignore_ascii_case(raw));
    assert!(
        !method.is_empty() && !method.bytes().any(|b| b.is_ascii_lowercase()),
        "method `{method}` is not upper-case"
    );
    assert!(matches!(canonical_method(&method), Ok(m) if m == method));
}

fn check_host(raw: &str) {
    let Ok(host) = canonical_host(raw) else {
        return;
    };
    assert!(!host.is_empty());
    assert!(
        !host.bytes().any(|b| b.is_ascii_uppercase()),
        "host `{host}` is not lower-case"
    );
    assert!(!host.contains('@'));
    if raw.starts_with('[') {
        // An IPv6 literal, without its brackets, in the one spelling Rust writes it.
        let address: std::net::Ipv6Addr = host.parse().expect("an IPv6 address");
        assert_eq!(address.to_string(), *host);
    } else {
        assert!(!host.ends_with('.') && !host.contains(".."));
        assert!(
            matches!(canonical_host(&host), Ok(h) if h == host),
            "host `{raw}` → `{host}` is not canonical"
        );
    }
}
