//! The adversarial corpus (`tests/corpus/adversarial.yaml`): authorization-bypass spellings sent
//! as written to heimdall over gRPC Check and `/decision`, and through real peers: Envoy with the
//! test template and with every shipped configuration under `envoy/`, Envoy normalizing like
//! Istio's default (`BASE`), and nginx with the `auth_request` recipe of docs/integrations/forward-auth.md.
//!
//! No case carries an expected answer. An oracle written from the shipped rules says what each
//! principal may have, and the invariant is: whenever heimdall lets a request through, every
//! plausible upstream reading of what the upstream received (raw, RFC 3986, Tomcat-like,
//! permissive) is a resource that principal may have. Positive controls must be allowed
//! everywhere, so a heimdall that denies everything fails too. Forged identity and routing
//! headers must never reach the upstream, and heimdall must never answer "cannot decide".

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed setup or lookup is a failed test"
)]

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use std::time::Duration;
use tokio::sync::Mutex;

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use heimdall::app::Running;
use heimdall::test_helpers::{claims, mint, test_config, test_keys};
use heimdall::tokens::Purpose;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use heimdall::test_helpers::envoy::{self, Envoy, EnvoyOptions};
use heimdall::test_helpers::nginx::{self, Nginx};

/// The host of cases that name none.
const DEFAULT_HOST: &str = "app.example.com";
/// The host the fixture's host-scoped rule protects.
const INTRANET: &str = "intranet.example.com";
/// Bound on one exchange with a peer.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on what is read from a peer.
const MAX_RESPONSE: u64 = 1 << 20;

/// Client-sent identity and routing headers on every request. Each value says `forged`, except
/// the method override, which is a method; none may reach the upstream as sent.
const FORGED: &[(&str, &str)] = &[
    ("x-user-id", "forged-admin"),
    ("x-user-roles", "forged-admin"),
    ("x-tenant", "forged-tenant"),
    ("x-user-plan", "forged-enterprise"),
    ("x-original-url", "/admin/forged"),
    ("x-http-method-override", "DELETE"),
    ("x-forwarded-host", "forged.example.com"),
];

// ---- the corpus ------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Principal {
    Anonymous,
    User,
    Editor,
    Admin,
}

impl Principal {
    const WITH_TOKENS: [Principal; 3] = [Principal::User, Principal::Editor, Principal::Admin];

    fn role(self) -> &'static str {
        match self {
            Self::Anonymous => "anonymous",
            Self::User => "user",
            Self::Editor => "editor",
            Self::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    id: String,
    method: String,
    #[serde(default)]
    host: Option<String>,
    path: String,
    principal: Principal,
    note: String,
    #[serde(default)]
    control: bool,
}

impl Case {
    fn host(&self) -> &str {
        self.host.as_deref().unwrap_or(DEFAULT_HOST)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CorpusFile {
    cases: Vec<Case>,
}

fn corpus() -> Vec<Case> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/adversarial.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml_ng::from_str::<CorpusFile>(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .cases
}

/// The embedded configuration with the fixture's host-scoped rule appended to its rules.
fn config_text() -> String {
    let embedded = heimdall::config::EMBEDDED;
    let last_key = embedded
        .lines()
        .rfind(|l| l.chars().next().is_some_and(|c| c.is_ascii_alphabetic()))
        .unwrap();
    assert_eq!(
        last_key, "rules:",
        "config/heimdall.yaml must end with its rules for the fixture to be appended"
    );
    let extra = include_str!("fixtures/adversarial-hosts.yaml");
    format!("{embedded}\n{extra}")
}

// ---- the oracle ------------------------------------------------------------------------------

/// What a principal may have, and how plausible upstreams read a request target.
mod oracle {
    use super::{INTRANET, Principal};

    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
    }

    /// Decodes `%XX` where `keep(byte)` is false for the decoded byte.
    fn decode(input: &[u8], decode_it: impl Fn(u8) -> bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len());
        let mut i = 0;
        while i < input.len() {
            if input[i] == b'%'
                && let (Some(h), Some(l)) = (
                    input.get(i + 1).copied().and_then(hex),
                    input.get(i + 2).copied().and_then(hex),
                )
            {
                let value = h << 4 | l;
                if decode_it(value) {
                    out.push(value);
                    i += 3;
                    continue;
                }
            }
            out.push(input[i]);
            i += 1;
        }
        out
    }

    /// IIS `%uXXXX` for ASCII code points.
    fn decode_percent_u(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len());
        let mut i = 0;
        while i < input.len() {
            if input[i] == b'%'
                && matches!(input.get(i + 1), Some(b'u' | b'U'))
                && let Some(digits) = input.get(i + 2..i + 6)
                && let Ok(text) = std::str::from_utf8(digits)
                && let Ok(code) = u32::from_str_radix(text, 16)
                && let Ok(byte) = u8::try_from(code)
                && byte.is_ascii()
            {
                out.push(byte);
                i += 6;
                continue;
            }
            out.push(input[i]);
            i += 1;
        }
        out
    }

    /// Overlong UTF-8 forms of `.`, `/` and `\`, read as ASCII by old decoders.
    fn fold_overlong(input: &[u8]) -> Vec<u8> {
        const FORMS: &[(&[u8], u8)] = &[
            (&[0xC0, 0xAE], b'.'),
            (&[0xC0, 0xAF], b'/'),
            (&[0xC1, 0x9C], b'\\'),
            (&[0xE0, 0x80, 0xAE], b'.'),
            (&[0xE0, 0x80, 0xAF], b'/'),
        ];
        let mut out = Vec::with_capacity(input.len());
        let mut i = 0;
        'outer: while i < input.len() {
            for (form, ascii) in FORMS {
                if input[i..].starts_with(form) {
                    out.push(*ascii);
                    i += form.len();
                    continue 'outer;
                }
            }
            out.push(input[i]);
            i += 1;
        }
        out
    }

    fn is_unreserved(b: u8) -> bool {
        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
    }

    /// RFC 3986 §5.2.4 on an absolute path; empty segments are kept.
    fn remove_dot_segments(path: &str) -> String {
        let mut out: Vec<&str> = Vec::new();
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        let mut trailing = false;
        for (i, segment) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            match *segment {
                "." => trailing = last,
                ".." => {
                    out.pop();
                    trailing = last;
                }
                s => {
                    out.push(s);
                    trailing = false;
                }
            }
        }
        let mut result = format!("/{}", out.join("/"));
        if trailing && !result.ends_with('/') {
            result.push('/');
        }
        result
    }

    fn merge_slashes(path: &str) -> String {
        let mut out = String::with_capacity(path.len());
        for c in path.chars() {
            if !(c == '/' && out.ends_with('/')) {
                out.push(c);
            }
        }
        out
    }

    /// Removes `;params` from every segment (Tomcat, Jetty, Spring).
    fn strip_params(path: &str) -> String {
        path.split('/')
            .map(|segment| segment.split(';').next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("/")
    }

    /// Win32 path normalization drops trailing periods and spaces from the last segment of a
    /// path that does not end in a separator (`..%20` at the end is `..` to a Windows server).
    fn trim_last_name(path: &str) -> String {
        match path.rsplit_once('/') {
            Some((head, last)) if !last.is_empty() => {
                let trimmed = last.trim_end_matches(' ');
                let trimmed = if trimmed.chars().all(|c| c == '.') {
                    trimmed
                } else {
                    trimmed.trim_end_matches(['.', ' '])
                };
                format!("{head}/{trimmed}")
            }
            _ => path.to_owned(),
        }
    }

    /// Windows' "best fit" conversion to an ANSI code page (and NFKC) maps fullwidth forms to
    /// ASCII: U+FF0E `．` to `.`, U+FF0F `／` to `/`, U+FF3C `＼` to `\` ("WorstFit", 2025).
    fn best_fit(path: &str) -> String {
        path.chars()
            .map(|c| match u32::from(c) {
                code @ 0xFF01..=0xFF5E => char::from_u32(code - 0xFF01 + 0x21).unwrap_or(c),
                _ => c,
            })
            .collect()
    }

    /// The path of a request target: origin form as it is, the path of an absolute form, and
    /// anything else as it is; without the query.
    fn target_path(target: &str) -> &str {
        let path = match target.split_once("://") {
            Some((_, rest)) if !target.starts_with('/') => {
                rest.find('/').map_or("/", |at| &rest[at..])
            }
            _ => target,
        };
        path.split('?').next().unwrap_or("")
    }

    fn cut_fragment(path: &str) -> &str {
        path.split('#').next().unwrap_or("")
    }

    /// Every plausible upstream reading of a request target: `(name, path)`.
    pub(crate) fn interpretations(target: &str) -> Vec<(&'static str, String)> {
        let raw = target_path(target);
        let lossy = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();

        // RFC 3986: unreserved characters decoded, dot segments removed.
        let rfc = remove_dot_segments(&lossy(decode(cut_fragment(raw).as_bytes(), is_unreserved)));

        // Tomcat: path parameters stripped, then decoded (not `/` or `\`), then dots resolved.
        let tomcat = remove_dot_segments(&lossy(decode(
            strip_params(cut_fragment(raw)).as_bytes(),
            |b| b != b'/' && b != b'\\',
        )));

        // Permissive: decode everything (twice, %u, overlong forms), `\` is `/`, parameters
        // stripped, names trimmed, slashes merged, dots resolved.
        let mut bytes = cut_fragment(raw).as_bytes().to_vec();
        if bytes.first() != Some(&b'/') {
            bytes.insert(0, b'/');
        }
        for _ in 0..3 {
            bytes = fold_overlong(&decode(&decode_percent_u(&bytes), |_| true));
        }
        let text = lossy(bytes).replace('\\', "/");
        let text = cut_fragment(&text).to_owned();
        let decoded = remove_dot_segments(&merge_slashes(&strip_params(&text)));
        let permissive = decoded.to_ascii_lowercase();

        // Windows: best-fit characters, `\` is `/`, the last name trimmed, dots resolved.
        let mut bytes = cut_fragment(raw).as_bytes().to_vec();
        bytes = decode(&bytes, |_| true);
        let windows = best_fit(&lossy(bytes)).replace('\\', "/");
        let windows = remove_dot_segments(&trim_last_name(&windows)).to_ascii_lowercase();

        vec![
            ("raw", raw.to_owned()),
            ("rfc3986", rfc),
            ("tomcat", tomcat),
            ("decoded", decoded),
            ("permissive", permissive),
            ("windows", windows),
        ]
    }

    /// The authority of an absolute-form request target (`http://host/path`).
    pub(crate) fn absolute_authority(target: &str) -> Option<&str> {
        if target.starts_with('/') {
            return None;
        }
        let (_, rest) = target.split_once("://")?;
        rest.split(['/', '?']).next()
    }

    /// Whether any reading of an authority names the intranet host.
    pub(crate) fn names_intranet(authority: &str) -> bool {
        let mut seen = vec![authority.to_owned()];
        // Bounded closure over the transformations servers apply to a Host.
        for _ in 0..4 {
            let mut next = seen.clone();
            for host in &seen {
                let lower = host.to_ascii_lowercase();
                let no_port = host
                    .rsplit_once(':')
                    .map_or_else(|| host.clone(), |(h, _)| h.to_owned());
                let no_dot = host.trim_end_matches('.').to_owned();
                let after_at = host
                    .rsplit_once('@')
                    .map_or_else(|| host.clone(), |(_, h)| h.to_owned());
                let before_at = host
                    .split_once('@')
                    .map_or_else(|| host.clone(), |(h, _)| h.to_owned());
                for candidate in [lower, no_port, no_dot, after_at, before_at] {
                    if !next.contains(&candidate) {
                        next.push(candidate);
                    }
                }
            }
            seen = next;
        }
        seen.iter().any(|h| h == INTRANET)
    }

    /// Whether `principal` may have `method` on the resource `path` under the shipped rules
    /// (config/heimdall.yaml plus the intranet rule). Default-deny: nothing else.
    ///
    /// Resources are compared as RFC 3986 §6.2.2 says equivalent URIs are: percent-encoded
    /// unreserved characters decoded, and a trailing slash names the same resource.
    pub(crate) fn permitted(
        principal: Principal,
        method: &str,
        intranet: bool,
        path: &str,
    ) -> bool {
        let path = String::from_utf8_lossy(&decode(path.as_bytes(), is_unreserved)).into_owned();
        let path = if path.len() > 1 {
            path.strip_suffix('/').unwrap_or(&path)
        } else {
            &path
        };
        let method = method.to_ascii_uppercase();
        let read = method == "GET" || method == "HEAD";
        let public = path == "/public" || path.starts_with("/public/") || path == "/favicon.ico";
        let documents = path == "/api/documents"
            || path
                .strip_prefix("/api/documents/")
                .is_some_and(|id| !id.is_empty() && !id.contains('/'));
        let admin_area = path == "/admin" || path.starts_with("/admin/");
        let admin = principal == Principal::Admin;
        if read && public && (!intranet || admin) {
            return true;
        }
        match principal {
            Principal::Anonymous => false,
            Principal::User | Principal::Editor | Principal::Admin => {
                (documents && (read || principal == Principal::Editor)) || (admin_area && admin)
            }
        }
    }

    /// `Err` names the first reading of `target` by `method` (or one of `methods_also`, such as
    /// a method override that reached the upstream) that `principal` may not have.
    pub(crate) fn check(
        principal: Principal,
        methods: &[&str],
        authorities: &[&str],
        targets: &[&str],
    ) -> Result<(), String> {
        // An absolute-form target names a host of its own, which proxies route on.
        let intranet = authorities.iter().any(|a| names_intranet(a))
            || targets
                .iter()
                .filter_map(|t| absolute_authority(t))
                .any(names_intranet);
        for target in targets {
            for (reading, path) in interpretations(target) {
                for method in methods {
                    if !permitted(principal, method, intranet, &path) {
                        return Err(format!(
                            "read as {reading} that is {method} {path:?}{}, which {} may not have",
                            if intranet {
                                " on the intranet host"
                            } else {
                                ""
                            },
                            principal.role()
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

#[test]
fn oracle_flags_the_known_bypasses_and_permits_the_controls() {
    use Principal::{Admin, Anonymous, Editor, User};
    let flagged = |p, m, host: &str, target: &str| oracle::check(p, &[m], &[host], &[target]);
    for (principal, method, target) in [
        (Anonymous, "GET", "/public/../admin/x"),
        (Anonymous, "GET", "/public/%2e%2e/admin/x"),
        (User, "PUT", "/public/../api/documents/1"),
        (User, "GET", "/admin"),
        (User, "GET", "/admin/"),
        (User, "GET", "/admin;x/users"),
        (User, "GET", "/Admin/x"),
        (User, "PUT", "/api/documents/1/"),
        (User, "PUT", "/api/documents;x/1"),
        (User, "GET", "//admin/x"),
        (Anonymous, "GET", "/public/..%2Fadmin/x"),
        (Anonymous, "GET", "/public/..;/admin/x"),
        (Anonymous, "GET", "/public\\..\\admin\\x"),
        (Anonymous, "GET", "/public/%c0%ae%c0%ae/admin/x"),
        (Anonymous, "GET", "/public/%252e%252e/admin/x"),
        (Anonymous, "GET", "/public/%u002e%u002e/admin/x"),
        (Anonymous, "GET", "http://h/public/../admin/x"),
        (Anonymous, "GET", "/public/x/..%2F..%2Fadmin"),
        (User, "delete", "/api/documents/1"),
    ] {
        assert!(
            flagged(principal, method, DEFAULT_HOST, target).is_err(),
            "the oracle must flag {principal:?} {method} {target}"
        );
    }
    for host in [
        "intranet.example.com.",
        "intranet.example.com:abc",
        "user@intranet.example.com",
        "INTRANET.example.com",
    ] {
        assert!(
            flagged(Anonymous, "GET", host, "/public/x").is_err(),
            "{host}"
        );
    }
    for (principal, method, host, target) in [
        (Anonymous, "GET", DEFAULT_HOST, "/public/x"),
        (Anonymous, "HEAD", DEFAULT_HOST, "/favicon.ico"),
        (User, "GET", DEFAULT_HOST, "/api/documents/1"),
        (Editor, "PUT", DEFAULT_HOST, "/api/documents/1"),
        (Admin, "GET", DEFAULT_HOST, "/admin/x"),
        (Admin, "GET", DEFAULT_HOST, "/admin"),
        (Admin, "GET", INTRANET, "/public/x"),
    ] {
        flagged(principal, method, host, target).unwrap();
    }
    // Every control of the corpus is permitted under every reading.
    for case in corpus().iter().filter(|c| c.control) {
        oracle::check(
            case.principal,
            &[&case.method],
            &[case.host()],
            &[&case.path],
        )
        .unwrap_or_else(|e| panic!("control {} is not permitted: {e}", case.id));
    }
}

#[test]
fn corpus_is_well_formed() {
    let cases = corpus();
    let mut ids = std::collections::HashSet::new();
    for case in &cases {
        assert!(ids.insert(case.id.clone()), "duplicate id {}", case.id);
        assert!(!case.note.trim().is_empty(), "{} has no note", case.id);
        assert!(
            !case.path.contains(['\r', '\n', ' ']),
            "{}: a target cannot hold CR, LF or a space on the wire",
            case.id
        );
    }
    for principal in [
        Principal::Anonymous,
        Principal::User,
        Principal::Editor,
        Principal::Admin,
    ] {
        assert!(
            cases.iter().any(|c| c.control && c.principal == principal),
            "no positive control for {principal:?}"
        );
    }
    assert!(cases.iter().filter(|c| !c.control).count() >= 60);
}

// ---- heimdall ----------------------------------------------------------------------------------

struct Heimdall {
    running: Running,
    tokens: HashMap<Principal, String>,
}

impl Heimdall {
    async fn start() -> Heimdall {
        let built = heimdall::app::build(test_config(&config_text()), test_keys()).unwrap();
        let mut tokens = HashMap::new();
        for principal in Principal::WITH_TOKENS {
            let sub = format!("{}-1", principal.role());
            let token = mint(
                &built.keys,
                Purpose::Local,
                &claims(&sub, &[principal.role()]),
            );
            tokens.insert(principal, token);
        }
        let running = built.serve().await.unwrap();
        Heimdall { running, tokens }
    }

    fn token(&self, principal: Principal) -> Option<&str> {
        self.tokens.get(&principal).map(String::as_str)
    }

    async fn stop(self) {
        self.running.shutdown(Duration::from_secs(1)).await;
    }
}

// ---- what the upstream received ----------------------------------------------------------------

/// One request as the upstream received it.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    target: String,
    headers: BTreeMap<String, String>,
}

/// An upstream that records the request line and headers exactly as they arrive (no HTTP
/// library in between that could reject or normalize a target) and answers `200` with no body.
struct RawEcho {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Received>>>,
    task: JoinHandle<()>,
}

impl RawEcho {
    async fn start() -> RawEcho {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::clone(&log);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = Arc::clone(&shared);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, echo_one(stream, log)).await;
                });
            }
        });
        RawEcho { addr, log, task }
    }

    async fn count(&self) -> usize {
        self.log.lock().await.len()
    }

    async fn since(&self, from: usize) -> Vec<Received> {
        self.log.lock().await[from..].to_vec()
    }
}

impl Drop for RawEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo_one(mut stream: TcpStream, log: Arc<Mutex<Vec<Received>>>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next().unwrap_or("").splitn(3, ' ');
    let method = request_line.next().unwrap_or("").to_owned();
    let target = request_line.next().unwrap_or("").to_owned();
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim().to_ascii_lowercase();
            let value = value.trim().to_owned();
            headers
                .entry(name)
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(&value);
                })
                .or_insert(value);
        }
    }
    log.lock().await.push(Received {
        method,
        target,
        headers,
    });
    let _ = stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .await;
    let _ = stream.shutdown().await;
}

// ---- raw HTTP/1.1 ------------------------------------------------------------------------------

/// Sends `request` as bytes and returns the status code (0 when the peer closed without one).
async fn exchange(addr: SocketAddr, request: &[u8]) -> u16 {
    let result = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.write_all(request).await.ok()?;
        let mut response = Vec::new();
        let _ = (&mut stream)
            .take(MAX_RESPONSE)
            .read_to_end(&mut response)
            .await;
        let text = String::from_utf8_lossy(&response);
        Some(
            text.split(' ')
                .nth(1)
                .and_then(|code| code.parse::<u16>().ok())
                .unwrap_or(0),
        )
    })
    .await;
    match result {
        Ok(Some(status)) => status,
        Ok(None) => 0,
        Err(_) => panic!("{addr} did not answer within {EXCHANGE_TIMEOUT:?}"),
    }
}

fn needs_body_length(method: &str) -> bool {
    !matches!(
        method.to_ascii_uppercase().as_str(),
        "GET" | "HEAD" | "OPTIONS"
    )
}

/// The request a client sends to a proxy: the case's request line and Host as written, its
/// token, and the forged headers.
fn proxied_request(case: &Case, token: Option<&str>) -> Vec<u8> {
    let mut request = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\n",
        case.method,
        case.path,
        case.host()
    );
    if let Some(token) = token {
        let _ = write!(request, "Authorization: Bearer {token}\r\n");
    }
    for (name, value) in FORGED {
        let _ = write!(request, "{name}: {value}\r\n");
    }
    if needs_body_length(&case.method) {
        request.push_str("Content-Length: 0\r\n");
    }
    request.push_str("Connection: close\r\n\r\n");
    request.into_bytes()
}

// ---- judging -----------------------------------------------------------------------------------

/// Everything a peer did with the corpus: an outcome line per case, and the violations.
struct Report {
    peer: String,
    outcomes: Vec<String>,
    violations: Vec<String>,
}

impl Report {
    fn new(peer: &str) -> Report {
        Report {
            peer: peer.to_owned(),
            outcomes: Vec::new(),
            violations: Vec::new(),
        }
    }

    fn violation(&mut self, case: &Case, what: &str) {
        self.violations.push(format!(
            "{}: {} [{:?} {} {} host {}] ({}): {what}",
            self.peer,
            case.id,
            case.principal,
            case.method,
            case.path,
            case.host(),
            case.note
        ));
    }

    /// heimdall itself allowed `case` (gRPC or `/decision`): judge the target as sent.
    fn allowed_directly(&mut self, case: &Case) {
        if let Err(why) = oracle::check(
            case.principal,
            &[&case.method],
            &[case.host()],
            &[&case.path],
        ) {
            self.violation(case, &format!("allowed, but {why}"));
        }
    }

    /// A proxy answered `status`, and the upstream received `received` meanwhile.
    fn proxied(&mut self, case: &Case, status: u16, received: &[Received], via: &str) {
        self.outcomes.push(format!(
            "{:<34} {via:<5} {}",
            case.id,
            if received.is_empty() {
                format!("stopped ({status})")
            } else {
                format!("reached upstream ({status})")
            }
        ));
        if received.is_empty() && case.control {
            self.violation(
                case,
                &format!("a positive control did not reach the upstream ({via}: {status})"),
            );
        }
        for request in received {
            for (name, value) in FORGED {
                if let Some(got) = request.headers.get(*name)
                    && (got.contains("forged") || got.contains(value))
                {
                    self.violation(
                        case,
                        &format!("the client's `{name}: {value}` reached the upstream as `{got}`"),
                    );
                }
            }
            // A method override or an original-URL header that arrived is another reading.
            let mut methods = vec![request.method.as_str()];
            let mut targets = vec![request.target.as_str()];
            for name in [
                "x-http-method-override",
                "x-http-method",
                "x-method-override",
            ] {
                if let Some(value) = request.headers.get(name) {
                    methods.push(value);
                }
            }
            for name in ["x-original-url", "x-rewrite-url", "x-original-uri"] {
                if let Some(value) = request.headers.get(name) {
                    targets.push(value);
                }
            }
            // The host the client named (Host, or the request line's in absolute form) is one
            // the proxy may route on, whatever Host the upstream got.
            let mut authorities = vec![case.host()];
            authorities.extend(oracle::absolute_authority(&case.path));
            if let Some(host) = request.headers.get("host") {
                authorities.push(host);
            }
            if let Err(why) = oracle::check(case.principal, &methods, &authorities, &targets) {
                self.violation(
                    case,
                    &format!(
                        "the upstream received {} {:?}: {why}",
                        request.method, request.target
                    ),
                );
            }
        }
    }

    fn finish(self) {
        eprintln!(
            "--- {} ({} outcomes) ---\n{}",
            self.peer,
            self.outcomes.len(),
            self.outcomes.join("\n")
        );
        assert!(
            self.violations.is_empty(),
            "{} violation(s) through {}:\n{}",
            self.violations.len(),
            self.peer,
            self.violations.join("\n")
        );
    }
}

// ---- (a) gRPC Check ----------------------------------------------------------------------------

fn check_request(case: &Case, token: Option<&str>) -> CheckRequest {
    let authorization = token.map(|t| format!("Bearer {t}"));
    let mut headers: HashMap<String, String> = [
        (":authority", case.host()),
        (":method", case.method.as_str()),
        (":path", case.path.as_str()),
        (":scheme", "http"),
    ]
    .iter()
    .chain(FORGED)
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    if let Some(authorization) = authorization {
        headers.insert("authorization".into(), authorization);
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    id: case.id.clone(),
                    method: case.method.clone(),
                    scheme: "http".into(),
                    host: case.host().to_owned(),
                    path: case.path.clone(),
                    protocol: "HTTP/1.1".into(),
                    headers,
                    ..HttpRequest::default()
                }),
                ..Request::default()
            }),
            ..AttributeContext::default()
        }),
    }
}

#[tokio::test]
async fn corpus_over_grpc_check() {
    let heimdall = Heimdall::start().await;
    let mut client = AuthorizationClient::connect(format!("http://{}", heimdall.running.grpc_addr))
        .await
        .unwrap();
    let mut report = Report::new("gRPC Check");
    for case in corpus() {
        let request = check_request(&case, heimdall.token(case.principal));
        let response = client.check(request).await.unwrap().into_inner();
        let outcome = match response.http_response {
            Some(HttpResponse::OkResponse(ok)) => {
                report.allowed_directly(&case);
                for (name, _) in FORGED {
                    let removed = ok.headers_to_remove.iter().any(|h| h == name);
                    let overwritten = ok.headers.iter().any(|h| {
                        h.header
                            .as_ref()
                            .is_some_and(|h| h.key.eq_ignore_ascii_case(name))
                    });
                    if !removed && !overwritten {
                        report.violation(
                            &case,
                            &format!("allowed without removing the client's `{name}`"),
                        );
                    }
                }
                "allowed".to_owned()
            }
            Some(HttpResponse::DeniedResponse(denied)) => {
                if case.control {
                    report.violation(&case, "a positive control was denied");
                }
                format!("denied {}", denied.status.map_or(0, |s| s.code))
            }
            Some(HttpResponse::ErrorResponse(_)) | None => {
                report.violation(&case, "heimdall answered \"cannot decide\"");
                "cannot decide".to_owned()
            }
        };
        report.outcomes.push(format!("{:<34} {outcome}", case.id));
    }
    report.finish();
    heimdall.stop().await;
}

// ---- (b) /decision -----------------------------------------------------------------------------

#[tokio::test]
async fn corpus_over_decision() {
    let heimdall = Heimdall::start().await;
    let mut report = Report::new("/decision");
    for case in corpus() {
        let mut request = format!(
            "GET /decision HTTP/1.1\r\nHost: heimdall\r\nX-Forwarded-Method: {}\r\n\
             X-Forwarded-Proto: http\r\nX-Forwarded-Host: {}\r\nX-Forwarded-Uri: {}\r\n",
            case.method,
            case.host(),
            case.path
        );
        if let Some(token) = heimdall.token(case.principal) {
            let _ = write!(request, "Authorization: Bearer {token}\r\n");
        }
        // X-Forwarded-Host is /decision's own input here; the gateway sets it.
        for (name, value) in FORGED.iter().filter(|(n, _)| *n != "x-forwarded-host") {
            let _ = write!(request, "{name}: {value}\r\n");
        }
        request.push_str("Connection: close\r\n\r\n");
        let status = exchange(heimdall.running.http_addr, request.as_bytes()).await;
        match status {
            200 => report.allowed_directly(&case),
            500.. | 0 => report.violation(&case, &format!("heimdall could not decide ({status})")),
            _ if case.control => {
                report.violation(&case, &format!("a positive control was denied ({status})"));
            }
            _ => {}
        }
        report.outcomes.push(format!("{:<34} {status}", case.id));
    }
    report.finish();
    heimdall.stop().await;
}

// ---- (c) through Envoy -------------------------------------------------------------------------

/// How a lower-case method travels through Envoy: HTTP/1 may refuse it, HTTP/2 carries it.
async fn h2_request(addr: SocketAddr, case: &Case, token: Option<&str>) -> Result<u16, String> {
    use axum::http;
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut client, connection) = h2::client::handshake(tcp)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);
    let mut builder = http::Request::builder()
        .method(http::Method::from_bytes(case.method.as_bytes()).map_err(|e| e.to_string())?)
        .uri(format!("http://{}{}", case.host(), case.path));
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    for (name, value) in FORGED {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(()).map_err(|e| e.to_string())?;
    let result = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
        let (response, _) = client
            .send_request(request, true)
            .map_err(|e| e.to_string())?;
        response
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|_| "no HTTP/2 answer in time".to_owned())?;
    driver.abort();
    result
}

/// Runs the corpus through a proxy at `addr` in front of `echo`.
async fn run_through(
    report: &mut Report,
    addr: SocketAddr,
    echo: &RawEcho,
    heimdall: &Heimdall,
    http2: bool,
) {
    for case in corpus() {
        let token = heimdall.token(case.principal);
        let before = echo.count().await;
        let status = exchange(addr, &proxied_request(&case, token)).await;
        let received = echo.since(before).await;
        report.proxied(&case, status, &received, "h1");
        if http2 && case.method.bytes().any(|b| b.is_ascii_lowercase()) {
            let before = echo.count().await;
            match h2_request(addr, &case, token).await {
                Ok(status) => {
                    let received = echo.since(before).await;
                    report.proxied(&case, status, &received, "h2");
                }
                Err(error) => report
                    .outcomes
                    .push(format!("{:<34} h2    refused: {error}", case.id)),
            }
        }
    }
}

/// The Envoy under test, started by `start` with heimdall's gRPC address and the upstream's.
async fn corpus_through_envoy<F, Fut>(peer: &str, start: F)
where
    F: FnOnce(SocketAddr, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Option<Envoy>>,
{
    let heimdall = Heimdall::start().await;
    let echo = RawEcho::start().await;
    let Some(envoy) = start(heimdall.running.grpc_addr, echo.addr).await else {
        return;
    };
    let mut report = Report::new(peer);
    run_through(&mut report, envoy.listen_addr(), &echo, &heimdall, true).await;
    // Every check was decided: no ext_authz call failed or came back as "cannot decide".
    let stats = heimdall::test_helpers::http_client()
        .get(envoy.admin_url("/stats?filter=ext_authz"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in stats.lines().filter(|l| l.contains("ext_authz.error:")) {
        let count: u64 = line
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap();
        assert_eq!(
            count,
            0,
            "{peer}: ext_authz errors: {line}\n{}",
            envoy.log()
        );
    }
    drop(envoy);
    report.finish();
    heimdall.stop().await;
}

fn shipped(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("envoy")
            .join(name),
    )
    .unwrap()
}

#[tokio::test]
async fn corpus_through_the_test_envoy() {
    corpus_through_envoy("Envoy (tests/fixtures/envoy-test.yaml.tmpl)", |grpc, up| {
        Envoy::start(EnvoyOptions::new(grpc, up))
    })
    .await;
}

#[tokio::test]
async fn corpus_through_envoy_yaml() {
    corpus_through_envoy("Envoy (envoy/envoy.yaml)", |grpc, up| {
        Envoy::start_rendered(envoy::render_shipped(&shipped("envoy.yaml"), grpc, up).unwrap())
    })
    .await;
}

#[tokio::test]
async fn corpus_through_front_proxy_yaml() {
    corpus_through_envoy("Envoy (envoy/front-proxy.yaml)", |grpc, up| {
        Envoy::start_rendered(
            envoy::render_shipped(&shipped("front-proxy.yaml"), grpc, up).unwrap(),
        )
    })
    .await;
}

#[tokio::test]
async fn corpus_through_sidecar_yaml() {
    corpus_through_envoy("Envoy (envoy/sidecar.yaml)", |grpc, up| {
        Envoy::start_rendered(envoy::render_shipped(&shipped("sidecar.yaml"), grpc, up).unwrap())
    })
    .await;
}

/// Istio's default path normalization, `BASE`: normalize_path on, but slashes not merged and
/// escaped slashes kept unchanged. heimdall must hold on its own there.
#[tokio::test]
async fn corpus_through_envoy_normalizing_like_istio_base() {
    corpus_through_envoy("Envoy (Istio BASE normalization)", |grpc, up| {
        let config = envoy::render_shipped(&shipped("envoy.yaml"), grpc, up).unwrap();
        let config =
            envoy::replace_exactly(&config, "merge_slashes: true", "merge_slashes: false", 1)
                .unwrap();
        let config = envoy::replace_exactly(
            &config,
            "path_with_escaped_slashes_action: REJECT_REQUEST",
            "path_with_escaped_slashes_action: KEEP_UNCHANGED",
            1,
        )
        .unwrap();
        assert!(config.contains("normalize_path: true"));
        Envoy::start_rendered(config)
    })
    .await;
}

// ---- (d) /decision behind nginx ----------------------------------------------------------------

#[tokio::test]
async fn corpus_through_nginx_with_the_documented_recipe() {
    let heimdall = Heimdall::start().await;
    let echo = RawEcho::start().await;
    let recipe = nginx::documented_recipe().unwrap();
    let rendered = nginx::render_recipe(&recipe, heimdall.running.http_addr, echo.addr).unwrap();
    let Some(nginx) = Nginx::start(&rendered).await else {
        return;
    };
    let mut report = Report::new("nginx auth_request (documented recipe)");
    run_through(&mut report, nginx.listen_addr(), &echo, &heimdall, false).await;
    let log = nginx.log();
    drop(nginx);
    if !report.violations.is_empty() {
        eprintln!("--- nginx log ---\n{log}");
    }
    report.finish();
    heimdall.stop().await;
}

/// The corpus has teeth: a heimdall that allowed everything would be caught on every finding,
/// and one that denied everything on every control.
#[test]
fn corpus_fails_an_allow_everything_and_a_deny_everything_heimdall() {
    let cases = corpus();
    let mut allow_all = Report::new("allow everything");
    for case in &cases {
        allow_all.allowed_directly(case);
    }
    for id in [
        "nginx-dot-segment",
        "nginx-encoded-dot-segment",
        "user-writes-through-dot-segment",
        "admin-bare",
        "admin-matrix-parameter",
        "documents-matrix-parameter",
        "istio-double-slash",
        "istio-encoded-slash",
        "envoy-encoded-dots-semicolon",
        "lowercase-delete",
        "host-trailing-dot",
        "host-bad-port",
        "host-userinfo",
        "tomcat-dotdot-semicolon",
        "backslash-traversal",
        "overlong-dots",
        "double-encoded-dots",
        "absolute-form-other-host",
    ] {
        assert!(
            allow_all
                .violations
                .iter()
                .any(|v| v.contains(&format!(": {id} ["))),
            "allowing {id} would go unnoticed"
        );
    }
    let controls = cases.iter().filter(|c| c.control).count();
    assert!(controls >= 5, "{controls} controls");
}
