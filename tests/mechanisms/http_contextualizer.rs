//! The `http` contextualizer against a real HTTP service playing Kratos's admin API
//! (`GET /admin/identities/{id}` → `traits`): the request it renders, the attributes later steps
//! see, its cache, and every way the service can fail.

use std::time::Duration;

use heimdall::test_helpers::free_port;
use heimdall::test_helpers::remote_service::{Received, RemoteService, RemoteStack, Reply};
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "kratos-admin-s3cret";

/// A bearer, Kratos traits mapped into `subject.attr`, a CEL rule on them, a header carrying
/// them; a POST profile lookup with a JSON body; a soft variant (`continue_on_error`), a cached
/// one and one whose service is not listening.
fn config(dead_port: u16) -> String {
    format!(
        r#"
version: "1"
mechanisms:
  authenticators:
    - {{ id: bearer, type: paseto }}
  contextualizers:
    - id: kratos
      type: http
      config:
        request:
          url: "${{KRATOS_ADMIN_URL}}/admin/identities/{{subject.id}}"
          headers:
            accept: '"application/json"'
          secret_headers:
            authorization: {{ prefix: "Bearer ", secret: {{ env: KRATOS_ADMIN_TOKEN }} }}
          timeout: 100ms
        attributes:
          email: response.body.traits.email
          plan: response.body.traits.plan
    - id: profile
      type: http
      config:
        request:
          method: POST
          url: "${{KRATOS_ADMIN_URL}}/profiles?for={{subject.id}}"
          body: '{{"id": subject.id, "path": request.path, "roles": subject.roles}}'
        attributes:
          team: 'response.status == 200 ? response.body.team : null'
          answer_type: response.headers["content-type"]
    - id: dead
      type: http
      config:
        request: {{ url: "http://127.0.0.1:{dead_port}/admin/identities/{{subject.id}}" }}
        attributes: {{ email: response.body.traits.email }}
  authorizers:
    - id: pro_only
      type: cel
      config: {{ expression: 'subject.attr.plan == "pro"' }}
  finalizers:
    - id: trait_headers
      type: header
      config:
        headers:
          x-user-email: 'has(subject.attr.email) ? subject.attr.email : "none"'
          x-user-team: 'has(subject.attr.team) ? subject.attr.team : "none"'
          x-answer-type: 'has(subject.attr.answer_type) ? subject.attr.answer_type : "none"'
rules:
  - id: traits
    match: {{ paths: [/traits/*rest] }}
    execute:
      - authenticator: bearer
      - contextualizer: kratos
      - contextualizer: profile
      - authorizer: pro_only
      - finalizer: trait_headers
  - id: soft
    match: {{ paths: [/soft/*rest] }}
    execute:
      - authenticator: bearer
      - {{ contextualizer: kratos, config: {{ continue_on_error: true }} }}
      - finalizer: trait_headers
  - id: cached
    match: {{ paths: [/cached/*rest] }}
    execute:
      - authenticator: bearer
      - {{ contextualizer: kratos, config: {{ cache: {{ ttl: 1s }} }} }}
      - finalizer: trait_headers
  - id: dead
    match: {{ paths: [/dead/*rest] }}
    execute:
      - authenticator: bearer
      - contextualizer: dead
      - finalizer: trait_headers
"#
    )
}

/// Kratos, as far as these tests need it: identities by id, plus the ways it can fail.
fn kratos(request: &Received) -> Reply {
    if request.method == "POST" {
        let asked: Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let mut reply = Reply::json(
            200,
            &json!({"team": format!("team-of-{}", asked["id"].as_str().unwrap_or("?"))}),
        );
        reply.content_type = Some("application/json; charset=utf-8");
        return reply;
    }
    let id = request
        .target
        .strip_prefix("/admin/identities/")
        .unwrap_or_default();
    let identity = |email: &str, plan: &str| {
        Reply::json(
            200,
            &json!({"id": id, "schema_id": "default", "traits": {"email": email, "plan": plan}}),
        )
    };
    match id {
        "alice" => identity("alice@example.com", "pro"),
        "bob" => identity("bob@example.com", "free"),
        "slow" => identity("slow@example.com", "pro").after(Duration::from_millis(400)),
        "broken" => Reply::json(500, &json!({"error": "database down"})),
        "garbage" => Reply::raw(200, "application/json", "{\"traits\": {oops"),
        "ghost" => Reply::json(404, &json!({"error": {"code": 404}})),
        // The percent-encoded id of `../admin?x=`: still one identity lookup.
        "..%2Fadmin%3Fx%3D" => identity("dots@example.com", "pro"),
        _ => Reply::json(404, &json!({"error": {"code": 404}})),
    }
}

async fn start() -> Option<RemoteStack> {
    let service = RemoteService::start(kratos).await;
    let base = service.base_url();
    let config = config(free_port());
    RemoteStack::start(
        service,
        &config,
        &[
            ("KRATOS_ADMIN_URL", &base),
            ("KRATOS_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    )
    .await
}

fn header<'a>(echo: &'a Value, name: &str) -> &'a str {
    echo["headers"][name].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kratos_traits_reach_a_cel_authorizer_and_upstream_headers_through_envoy() {
    let Some(stack) = start().await else { return };

    let (status, echo) = stack.get("/traits/doc", "alice").await;
    assert_eq!(status, 200, "{}", stack.heimdall.log_tail(20));
    assert_eq!(header(&echo, "x-user-email"), "alice@example.com");
    assert_eq!(header(&echo, "x-user-team"), "team-of-alice");
    assert_eq!(
        header(&echo, "x-answer-type"),
        "application/json; charset=utf-8"
    );
    // bob's traits say `free`: the CEL authorizer reads the mapped plan and denies.
    assert_eq!(stack.get("/traits/doc", "bob").await.0, 403);

    let received = stack.service.received().await;
    let lookup = received
        .iter()
        .find(|r| r.target == "/admin/identities/alice")
        .expect("the identity lookup");
    assert_eq!(lookup.method, "GET");
    assert_eq!(
        lookup.headers.get("authorization").map(String::as_str),
        Some("Bearer kratos-admin-s3cret")
    );
    assert_eq!(
        lookup.headers.get("accept").map(String::as_str),
        Some("application/json")
    );
    let profile = received
        .iter()
        .find(|r| r.target == "/profiles?for=alice")
        .expect("the profile lookup");
    assert_eq!(profile.method, "POST");
    assert_eq!(
        profile.headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&profile.body).unwrap(),
        json!({"id": "alice", "path": "/traits/doc", "roles": ["user"]})
    );
    // The secret never reaches heimdall's log.
    assert!(!stack.heimdall.log().contains(ADMIN_TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_id_cannot_leave_its_path_segment() {
    let Some(stack) = start().await else { return };
    let (status, echo) = stack.get("/traits/doc", "../admin?x=").await;
    assert_eq!(status, 200, "{}", stack.heimdall.log_tail(20));
    assert_eq!(header(&echo, "x-user-email"), "dots@example.com");
    let targets: Vec<String> = stack
        .service
        .received()
        .await
        .into_iter()
        .map(|r| r.target)
        .collect();
    assert!(
        targets.contains(&"/admin/identities/..%2Fadmin%3Fx%3D".to_owned()),
        "{targets:?}"
    );
    assert!(
        targets.contains(&"/profiles?for=..%2Fadmin%3Fx%3D".to_owned()),
        "{targets:?}"
    );
    // A subject id of `..` would fold the path: refused before anything is sent (400).
    assert_eq!(stack.get("/traits/doc", "..").await.0, 400);
    assert!(
        !stack
            .service
            .received()
            .await
            .iter()
            .any(|r| r.target == "/admin/" || r.target == "/admin/identities/.."),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_cached_per_request_until_the_ttl_passes() {
    let Some(stack) = start().await else { return };
    for _ in 0..2 {
        let (status, echo) = stack.get("/cached/x", "alice").await;
        assert_eq!(status, 200);
        assert_eq!(header(&echo, "x-user-email"), "alice@example.com");
    }
    assert_eq!(stack.service.calls_to("/admin/identities/alice").await, 1);
    // Another subject is another request, so another call.
    assert_eq!(stack.get("/cached/x", "bob").await.0, 200);
    assert_eq!(stack.service.calls_to("/admin/identities/bob").await, 1);
    // A step that overrides its mechanism's config is a mechanism of its own: `<rule>/<id>`.
    assert_eq!(
        stack
            .metric(r#"heimdall_remote_cache_hits_total{mechanism="cached/kratos"}"#)
            .await,
        1.0
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(stack.get("/cached/x", "alice").await.0, 200);
    assert_eq!(stack.service.calls_to("/admin/identities/alice").await, 2);
    // Without a cache every Check asks.
    let before = stack.service.calls_to("/admin/identities/alice").await;
    stack.get("/soft/x", "alice").await;
    stack.get("/soft/x", "alice").await;
    assert_eq!(
        stack.service.calls_to("/admin/identities/alice").await,
        before + 2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_fails_closed_unless_the_step_may_be_skipped() {
    let Some(stack) = start().await else { return };
    let started = std::time::Instant::now();
    assert_eq!(stack.get("/traits/doc", "slow").await.0, 503);
    assert!(started.elapsed() < Duration::from_millis(400));
    assert_eq!(
        stack
            .metric(r#"heimdall_remote_calls_total{mechanism="kratos",outcome="timeout"}"#)
            .await,
        1.0
    );
    // continue_on_error: the request proceeds, without the attributes.
    let (status, echo) = stack.get("/soft/doc", "slow").await;
    assert_eq!(status, 200);
    assert_eq!(header(&echo, "x-user-email"), "none");
    assert_eq!(
        stack
            .metric(r#"heimdall_remote_skipped_total{mechanism="soft/kratos"}"#)
            .await,
        1.0
    );
    assert!(
        stack
            .heimdall
            .log()
            .contains("remote attributes unavailable; step skipped")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_answers_are_communication_errors() {
    let Some(stack) = start().await else { return };
    // 500, JSON that is not, a 404 (not a 2xx), nobody listening: 503, never an allow.
    for (path, sub) in [
        ("/traits/doc", "broken"),
        ("/traits/doc", "garbage"),
        ("/traits/doc", "ghost"),
        ("/dead/doc", "alice"),
    ] {
        assert_eq!(stack.get(path, sub).await.0, 503, "{path} as {sub}");
    }
    for (outcome, count) in [("server_error", 1.0), ("failed", 1.0), ("answered", 1.0)] {
        assert_eq!(
            stack
                .metric(&format!(
                    r#"heimdall_remote_calls_total{{mechanism="kratos",outcome="{outcome}"}}"#
                ))
                .await,
            count,
            "{outcome}"
        );
    }
    assert_eq!(
        stack
            .metric(r#"heimdall_remote_calls_total{mechanism="dead",outcome="failed"}"#)
            .await,
        1.0
    );
    // The same failures on the soft rule let the request through without attributes.
    for sub in ["broken", "garbage", "ghost"] {
        let (status, echo) = stack.get("/soft/doc", sub).await;
        assert_eq!(status, 200, "{sub}");
        assert_eq!(header(&echo, "x-user-email"), "none");
    }
    // The service's answer text never reaches the log.
    assert!(!stack.heimdall.log().contains("database down"));
}
