//! The invariant of canonical matching, stated as a property over generated raw paths: if any
//! plausible upstream reading of a path lands in an area a rule protects, heimdall never judges
//! that path by a weaker rule. Run against the shipped (embedded) configuration.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed setup or lookup is a failed test"
)]

use std::sync::OnceLock;

use heimdall::app::Built;
use heimdall::canonical::{PathPolicy, RequestLine};
use heimdall::request::{Headers, RequestView};
use heimdall::test_helpers::{embedded_config, test_keys};
use proptest::prelude::*;

/// What protects an area of the shipped configuration, weakest first. `Unruled` is what no rule
/// names: denied by default, the strongest protection there is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Protection {
    /// The anonymous `public` rule.
    Public,
    /// The `documents` rule: any token reads, editors write.
    Documents,
    /// The `admin` rule: the admin role.
    Admin,
    /// No rule: 403.
    Unruled,
}

/// The area an upstream serving `path` puts it in, under the shipped rules.
fn area(path: &str) -> Protection {
    let under = |prefix: &str| path == prefix || path.starts_with(&format!("{prefix}/"));
    if under("/admin") {
        Protection::Admin
    } else if path == "/api/documents"
        || path
            .strip_prefix("/api/documents/")
            .is_some_and(|id| !id.is_empty() && !id.contains('/'))
    {
        Protection::Documents
    } else if under("/public") || path == "/favicon.ico" {
        Protection::Public
    } else {
        Protection::Unruled
    }
}

/// The protection heimdall applies: the rule it selected, `Unruled` for none.
fn judged_by(rule: Option<&str>) -> Protection {
    match rule {
        Some("public") => Protection::Public,
        Some("documents") => Protection::Documents,
        Some("admin") => Protection::Admin,
        None => Protection::Unruled,
        Some(other) => panic!("unexpected rule `{other}` in the shipped configuration"),
    }
}

/// Percent-decodes `path`; `keep` says which decoded bytes stay encoded.
fn decode(path: &str, keep: impl Fn(u8) -> bool) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = path.get(i + 1..i + 3)
            && let Ok(value) = u8::from_str_radix(hex, 16)
            && !keep(value)
        {
            out.push(value);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// RFC 3986 §5.2.4 dot-segment removal; `merge` also drops empty segments.
fn resolve(path: &str, merge: bool) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *segment {
            "." => {
                if last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if last {
                    out.push("");
                }
            }
            "" if merge && !last => {}
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

/// Strips `;parameters` from every segment, as Tomcat and Jetty do.
fn strip_parameters(path: &str) -> String {
    path.split('/')
        .map(|segment| segment.split(';').next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("/")
}

/// What plausible upstreams serve for a raw path.
fn upstream_readings(raw: &str) -> Vec<String> {
    let unreserved = |b: u8| !(b.is_ascii_alphanumeric() || b"-._~".contains(&b));
    let tomcat = resolve(&decode(&strip_parameters(raw), |b| b == b'/'), false);
    let permissive = {
        use unicode_normalization::UnicodeNormalization as _;
        let once = decode(raw, |_| false);
        // Windows: best-fit/NFKC folding, then trailing dots and spaces stripped from names.
        let folded: String = decode(&once, |_| false).nfkc().collect();
        let slashed = folded.replace('\\', "/");
        let trimmed: Vec<&str> = slashed
            .split('/')
            .map(|segment| match segment.trim_end_matches(['.', ' ']) {
                "" if !segment.is_empty() && segment.len() > 1 => "..",
                "" if !segment.is_empty() => ".",
                trimmed => trimmed,
            })
            .collect();
        resolve(&strip_parameters(&trimmed.join("/")), true).to_ascii_lowercase()
    };
    vec![
        // Express and other routers that match the raw path.
        raw.to_owned(),
        // RFC 3986 normalization.
        resolve(&decode(raw, unreserved), false),
        tomcat,
        // nginx: decode everything, merge slashes, resolve dots.
        resolve(&decode(raw, |_| false), true),
        // The most forgiving: double decoding, NFKC, Windows name trimming, backslashes,
        // parameters, any case.
        permissive,
    ]
}

fn app() -> &'static (tokio::runtime::Runtime, Built) {
    static APP: OnceLock<(tokio::runtime::Runtime, Built)> = OnceLock::new();
    APP.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let built = {
            let _entered = runtime.enter();
            heimdall::app::build(embedded_config(), test_keys()).unwrap()
        };
        (runtime, built)
    })
}

/// The rule heimdall selects for `GET raw` (anonymous), or `Err` when it refuses the spelling.
fn heimdall_rule(raw: &str) -> Result<Option<String>, String> {
    let line = RequestLine::parse("GET", "api.example.com", raw, &PathPolicy::default())
        .map_err(|refusal| refusal.to_string())?;
    let view = RequestView::new(&line, "https", Headers::None);
    let (runtime, built) = app();
    let decided = runtime.block_on(built.engine.decide(&view));
    Ok(decided.rule.map(|r| r.to_string()))
}

/// Path segments an attacker combines: names the rules use, their other spellings, and the
/// classic traversal and parameter tricks.
const TOKENS: &[&str] = &[
    "%EF%BC%8E%EF%BC%8E",
    "..%EF%BC%8F",
    "%EF%BD%81dmin",
    "..%20",
    "...",
    "%20",
    "admin",
    "Admin",
    "ADMIN",
    "%61dmin",
    "admin;x",
    "admin.",
    "public",
    "api",
    "documents",
    "1",
    "x",
    "favicon.ico",
    "",
    ".",
    "..",
    "%2e",
    "%2E%2e",
    ".%2e",
    "..;",
    ";x",
    "%2F",
    "..%2F",
    "%2fadmin",
    "%5C",
    "\\",
    "..\\",
    "%252e%252e",
    "%c0%ae%c0%ae",
    "%00",
    "a%2fb",
    "%3b",
    "~",
];

fn raw_path() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(TOKENS), 1..7)
        .prop_map(|segments| format!("/{}", segments.join("/")))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn no_reading_of_a_path_is_judged_by_a_weaker_rule(raw in raw_path()) {
        let Ok(rule) = heimdall_rule(&raw) else {
            // Refused with 400: nothing is authorized.
            return Ok(());
        };
        let judged = judged_by(rule.as_deref());
        for reading in upstream_readings(&raw) {
            let needed = area(&reading);
            if needed == Protection::Unruled {
                // No rule protects that reading (nothing is served there by design); only
                // readings a rule protects constrain the rule heimdall picks.
                continue;
            }
            prop_assert!(
                judged >= needed,
                "`{}` is judged by {:?} but an upstream reads it as `{}` ({:?})",
                raw, rule, reading, needed
            );
        }
    }
}

/// The findings that started this, and positive controls so a deny-everything heimdall fails.
#[test]
fn known_spellings_and_controls() {
    for raw in [
        "/public/../admin/x",
        "/public/%2e%2e/admin/x",
        "/public/..%2Fadmin/x",
        "/public/%2e%2e;/admin",
        "/admin;x/users",
        "/api/documents;x/1",
        "/public\\..\\admin",
    ] {
        assert!(heimdall_rule(raw).is_err(), "{raw} must be refused");
    }
    for (raw, rule) in [
        ("/admin", Some("admin")),
        ("/admin/", Some("admin")),
        ("//admin/x", Some("admin")),
        ("/%61dmin/x", Some("admin")),
        ("/Admin/x", None),
        ("/api/documents/1/", Some("documents")),
        ("/api/documents/", Some("documents")),
        ("/public/x", Some("public")),
        ("/favicon.ico", Some("public")),
        ("/elsewhere", None),
    ] {
        assert_eq!(heimdall_rule(raw).unwrap().as_deref(), rule, "{raw}");
    }
}
