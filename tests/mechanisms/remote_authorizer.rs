//! The `remote` authorizer against a real HTTP policy service: allow and deny by status, deny
//! by CEL over the answer, values of the answer copied into the subject and passed upstream by
//! a header finalizer, its cache, and a service that fails or is not there.

use heimdall::test_helpers::free_port;
use heimdall::test_helpers::remote_service::{Received, RemoteService, RemoteStack, Reply};
use serde_json::{Value, json};

fn config(dead_port: u16) -> String {
    format!(
        r#"
version: "1"
mechanisms:
  authenticators:
    - {{ id: bearer, type: paseto }}
  authorizers:
    - id: policy
      type: remote
      config:
        request:
          method: POST
          url: "${{POLICY_URL}}/v1/decide/{{request.captures.doc}}"
          secret_headers:
            x-api-key: {{ secret: {{ env: POLICY_API_KEY }} }}
          body: '{{"subject": subject.id, "method": request.method, "path": request.path}}'
          timeout: 100ms
        attributes:
          tenant: response.body.tenant
    - id: policy_by_body
      type: remote
      config:
        request:
          url: "${{POLICY_URL}}/v1/allowed?user={{subject.id}}"
        allow: response.body.allow == true
        message: the policy service says no
        cache: {{ ttl: 5s }}
    - id: policy_dead
      type: remote
      config:
        request: {{ url: "http://127.0.0.1:{dead_port}/v1/decide" }}
  finalizers:
    - id: tenant_header
      type: header
      config:
        headers:
          x-tenant: subject.attr.tenant
rules:
  - id: documents
    match: {{ paths: [/docs/:doc] }}
    execute:
      - authenticator: bearer
      - authorizer: policy
      - finalizer: tenant_header
  - id: by_body
    match: {{ paths: [/reports/*rest] }}
    execute:
      - authenticator: bearer
      - authorizer: policy_by_body
  - id: dead
    match: {{ paths: [/dead/*rest] }}
    execute:
      - authenticator: bearer
      - authorizer: policy_dead
"#
    )
}

/// The policy service: decides by the subject it is asked about.
fn policy(request: &Received) -> Reply {
    if request.target.starts_with("/v1/allowed?user=") {
        let allow = request.target.ends_with("=alice");
        return Reply::json(200, &json!({"allow": allow}));
    }
    let asked: Value = serde_json::from_slice(&request.body).unwrap_or_default();
    match asked["subject"].as_str().unwrap_or_default() {
        "alice" => Reply::json(200, &json!({"tenant": "acme"})),
        "bob" => Reply::json(403, &json!({"reason": "not a member"})),
        "eve" => Reply::json(401, &json!({})),
        "unsure" => Reply::json(404, &json!({})),
        "broken" => Reply::json(502, &json!({})),
        _ => Reply::raw(200, "application/json", "not json"),
    }
}

async fn start() -> Option<RemoteStack> {
    let service = RemoteService::start(policy).await;
    let base = service.base_url();
    RemoteStack::start(
        service,
        &config(free_port()),
        &[("POLICY_URL", &base), ("POLICY_API_KEY", "k-123")],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_decides_and_answer_values_reach_the_upstream_through_envoy() {
    let Some(stack) = start().await else { return };
    let (status, echo) = stack.get("/docs/42", "alice").await;
    assert_eq!(status, 200, "{}", stack.heimdall.log_tail(20));
    assert_eq!(echo["headers"]["x-tenant"], "acme");

    let asked = stack.service.received().await;
    let first = asked.first().expect("the policy service was asked");
    assert_eq!(first.method, "POST");
    assert_eq!(first.target, "/v1/decide/42");
    assert_eq!(
        first.headers.get("x-api-key").map(String::as_str),
        Some("k-123")
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&first.body).unwrap(),
        json!({"subject": "alice", "method": "GET", "path": "/docs/42"})
    );

    // 403 and 401 deny; anything else is no decision: 503, never an allow.
    for (sub, want) in [
        ("bob", 403),
        ("eve", 403),
        ("unsure", 503),
        ("broken", 503),
        ("mallory", 503),
    ] {
        assert_eq!(stack.get("/docs/42", sub).await.0, want, "{sub}");
    }
    assert!(!stack.heimdall.log().contains("k-123"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cel_expression_over_the_body_decides_and_answers_are_cached() {
    let Some(stack) = start().await else { return };
    assert_eq!(stack.get("/reports/q3", "alice").await.0, 200);
    assert_eq!(stack.get("/reports/q3", "carol").await.0, 403);
    // Cached per rendered request: the service saw one call per subject.
    assert_eq!(stack.get("/reports/q4", "alice").await.0, 200);
    assert_eq!(stack.get("/reports/q4", "carol").await.0, 403);
    assert_eq!(stack.service.calls_to("/v1/allowed?user=alice").await, 1);
    assert_eq!(stack.service.calls_to("/v1/allowed?user=carol").await, 1);
    assert_eq!(
        stack
            .metric(r#"heimdall_remote_cache_hits_total{mechanism="policy_by_body"}"#)
            .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_policy_service_is_a_communication_error() {
    let Some(stack) = start().await else { return };
    assert_eq!(stack.get("/dead/x", "alice").await.0, 503);
    assert_eq!(
        stack
            .metric(r#"heimdall_remote_calls_total{mechanism="policy_dead",outcome="failed"}"#)
            .await,
        1.0
    );
}
