//! Fuzz target `check_request`: arbitrary bytes as the protobuf `CheckRequest` Envoy sends,
//! through everything the ext_authz `Check` call does: decode, canonical request line, request
//! view, the engine's decision on the embedded configuration, and the `CheckResponse`.
//!
//! Besides "never panics", one security property: nothing can open the `admin` rule, because no
//! token with the `admin` role exists here (the seed tokens, minted with the test symmetric key,
//! carry `user` and `editor`). So an allowed request was not judged by `admin`, and, unless
//! Envoy's route named a rule (`context_extensions`), its canonical path is not under `/admin`.

#![no_main]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "fuzz target: a failed assertion is the finding"
)]

use std::sync::LazyLock;

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use heimdall::app::Built;
use heimdall::decision::Decision;
use heimdall::extauthz::{check_response, request_line, view};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use tokio::runtime::Runtime;

/// The gRPC status codes of `CheckResponse.status`.
const RPC_OK: i32 = 0;

struct Fixture {
    runtime: Runtime,
    built: Built,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let built = heimdall::app::build(
        heimdall::test_helpers::embedded_config(),
        heimdall::test_helpers::test_keys(),
    )
    .expect("the embedded configuration builds");
    Fixture { runtime, built }
});

fuzz_target!(|data: &[u8]| {
    let Ok(check) = CheckRequest::decode(data) else {
        return;
    };
    let fixture = &*FIXTURE;
    let engine = &fixture.built.engine;
    // A request with no canonical line is denied with 400 before any rule is consulted.
    let Ok(line) = request_line(&check, engine.path_policy()) else {
        return;
    };
    let request = view(&check, &line);
    let named = request
        .context_extensions
        .is_some_and(|ext| ext.contains_key("heimdall_rule"));
    let decided = fixture.runtime.block_on(engine.decide(&request));
    let rule = decided.rule.as_deref();
    let allowed = matches!(decided.outcome.decision, Decision::Allow(_));
    if allowed {
        assert_ne!(rule, Some("admin"), "the admin rule allowed a request");
        if !named {
            let path = &*line.path;
            assert!(
                path != "/admin" && !path.starts_with("/admin/"),
                "`{path}` was allowed by rule {rule:?}"
            );
        }
    }

    let kind = decided.outcome.error.as_ref().map(|e| e.kind);
    let response = check_response(decided.outcome.decision, kind, rule);
    let code = response.status.as_ref().map(|s| s.code);
    match response.http_response {
        Some(HttpResponse::OkResponse(_)) => {
            assert!(allowed);
            assert_eq!(code, Some(RPC_OK));
        }
        Some(HttpResponse::DeniedResponse(denied) | HttpResponse::ErrorResponse(denied)) => {
            assert!(!allowed);
            assert_ne!(code, Some(RPC_OK), "a refusal with status OK");
            let status = denied.status.map(|s| s.code).unwrap_or_default();
            assert!(
                (300..600).contains(&status),
                "a refusal with HTTP status {status}"
            );
        }
        None => panic!("a CheckResponse without an http_response"),
    }
});
