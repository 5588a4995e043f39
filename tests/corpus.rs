//! The decision corpus: every `tests/corpus/*.yaml` case is sent to a real heimdall over the
//! ext_authz gRPC API, shaped as Envoy sends it, and the answer compared with the expectation.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed setup or lookup is a failed test"
)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use envoy_types::pb::google::protobuf::value::Kind;
use heimdall::test_helpers::{CheckRequestBuilder, claims, mint, test_config, test_keys};
use heimdall::tokens::{Audience, Keyring, Purpose};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CorpusFile {
    config: PathBuf,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    request: CaseRequest,
    expect: Expect,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseRequest {
    method: String,
    #[serde(default = "http")]
    scheme: String,
    host: String,
    path: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    token: Option<TokenSpec>,
    /// Send the minted token as this cookie instead of `Authorization: Bearer`.
    #[serde(default)]
    token_cookie: Option<String>,
    /// A raw Authorization value; `{{100KB}}` expands to 100 KiB of base64 text.
    #[serde(default)]
    authorization: Option<String>,
    #[serde(default)]
    context_extensions: HashMap<String, String>,
    /// Send headers in `header_map` (Envoy's `encode_raw_headers: true`).
    #[serde(default)]
    raw_headers: bool,
}

fn http() -> String {
    "http".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenSpec {
    sub: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    attr: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    purpose: Option<Purpose>,
}

#[derive(Deserialize, Debug, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum Verdict {
    Allow,
    Deny,
    Error,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    decision: Verdict,
    #[serde(default)]
    status: Option<i32>,
    #[serde(default)]
    rule: Option<String>,
    #[serde(default)]
    upstream_headers: BTreeMap<String, String>,
    #[serde(default)]
    removed_headers: Vec<String>,
    /// Headers added to the downstream response of an allowed request.
    #[serde(default)]
    response_headers: BTreeMap<String, String>,
    /// Headers of the denial.
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<String>,
}

fn build_request(req: &CaseRequest, keys: &Keyring, audience: Option<&str>) -> CheckRequest {
    let mut request = CheckRequestBuilder::new(&req.method, &req.path)
        .host(&req.host)
        .scheme(&req.scheme)
        .without_scheme_header()
        .id("corpus")
        .header("x-request-id", "corpus");
    if let Some(t) = &req.token {
        let mut c = claims(
            &t.sub,
            &t.roles.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        c.attr = t.attr.clone();
        if let Some(aud) = audience {
            c.aud = Audience::One(aud.into());
        }
        let token = mint(keys, t.purpose.unwrap_or(Purpose::Public), &c);
        request = match &req.token_cookie {
            Some(name) => request.header("cookie", &format!("theme=dark; {name}={token}")),
            None => request.bearer(&token),
        };
    }
    if let Some(a) = &req.authorization {
        request = request.header(
            "authorization",
            &a.replace("{{100KB}}", &"A".repeat(100 * 1024)),
        );
    }
    for (k, v) in &req.headers {
        request = request.header(&k.to_ascii_lowercase(), v);
    }
    request
        .raw_headers(req.raw_headers)
        .context_extensions(req.context_extensions.clone())
        .build()
}

fn check(case: &Case, response: &CheckResponse) -> Vec<String> {
    let mut problems = Vec::new();
    let expect = &case.expect;
    let rule = response
        .dynamic_metadata
        .as_ref()
        .and_then(|m| m.fields.get("rule"))
        .and_then(|v| match &v.kind {
            Some(Kind::StringValue(s)) => Some(s.as_str()),
            _ => None,
        });
    if let Some(want) = &expect.rule
        && rule != Some(want.as_str())
    {
        problems.push(format!("rule: want `{want}`, got {rule:?}"));
    }
    let (verdict, denied) = match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            let set: BTreeMap<String, String> = ok
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .map(|h| (h.key.clone(), h.value.clone()))
                .collect();
            for (k, v) in &expect.upstream_headers {
                if set.get(k) != Some(v) {
                    problems.push(format!(
                        "upstream header `{k}`: want `{v}`, got {:?}",
                        set.get(k)
                    ));
                }
            }
            let added: BTreeMap<String, String> = ok
                .response_headers_to_add
                .iter()
                .filter_map(|h| h.header.as_ref())
                .map(|h| (h.key.clone(), h.value.clone()))
                .collect();
            for (k, v) in &expect.response_headers {
                if added.get(k) != Some(v) {
                    problems.push(format!(
                        "response header `{k}`: want `{v}`, got {:?}",
                        added.get(k)
                    ));
                }
            }
            for h in &expect.removed_headers {
                if !ok.headers_to_remove.contains(h) {
                    problems.push(format!("header `{h}` is not removed"));
                }
            }
            (Verdict::Allow, None)
        }
        Some(HttpResponse::DeniedResponse(d)) => (Verdict::Deny, Some(d)),
        Some(HttpResponse::ErrorResponse(d)) => (Verdict::Error, Some(d)),
        None => (Verdict::Deny, None),
    };
    // Envoy acts on the gRPC status too: OK exactly when the answer is an allow.
    let code = response.status.as_ref().map_or(-1, |s| s.code);
    if (code == 0) != (verdict == Verdict::Allow) {
        problems.push(format!(
            "status code {code} does not agree with {verdict:?}"
        ));
    }
    if verdict != expect.decision {
        problems.push(format!(
            "decision: want {:?}, got {verdict:?}",
            expect.decision
        ));
    }
    if let Some(d) = denied {
        let status = d.status.as_ref().map(|s| s.code);
        if let Some(want) = expect.status
            && status != Some(want)
        {
            problems.push(format!("status: want {want}, got {status:?}"));
        }
        let got: BTreeMap<String, String> = d
            .headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .map(|h| (h.key.clone(), h.value.clone()))
            .collect();
        for (k, v) in &expect.headers {
            if got.get(k) != Some(v) {
                problems.push(format!(
                    "denial header `{k}`: want `{v}`, got {:?}",
                    got.get(k)
                ));
            }
        }
        if let Some(body) = &expect.body
            && &d.body != body
        {
            problems.push(format!("body: want `{body}`, got `{}`", d.body));
        }
    }
    problems
}

#[tokio::test]
async fn decision_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("corpus"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        // Bypass spellings with no expected answer: tests/adversarial.rs judges them by an oracle.
        .filter(|p| p.file_name().is_none_or(|n| n != "adversarial.yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus files");
    let mut failures = Vec::new();
    let mut ran = 0;
    for file in files {
        let corpus: CorpusFile = serde_yaml_ng::from_str(&std::fs::read_to_string(&file).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let config = test_config(&std::fs::read_to_string(dir.join(&corpus.config)).unwrap());
        let audience = config.tokens.audience.clone();
        let built = heimdall::app::build(config, test_keys()).unwrap();
        let keys = std::sync::Arc::clone(&built.keys);
        let running = built.serve().await.unwrap();
        let mut client = AuthorizationClient::connect(format!("http://{}", running.grpc_addr))
            .await
            .unwrap();
        for case in &corpus.cases {
            let request = build_request(&case.request, &keys, audience.as_deref());
            let response = client.check(request).await.unwrap().into_inner();
            for problem in check(case, &response) {
                failures.push(format!(
                    "{} / {}: {problem}",
                    file.file_name().unwrap_or_default().to_string_lossy(),
                    case.name
                ));
            }
            ran += 1;
        }
        running.shutdown(std::time::Duration::from_secs(2)).await;
    }
    assert!(
        failures.is_empty(),
        "{} of {ran} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
