//! Attributes and revocations published on NATS change decisions made through a real Envoy:
//! a CEL rule on `subject.attr.plan`, a Cerbos policy on the principal's `department`, and a
//! `principal.revoked` event that turns a working token into a 401.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed setup or lookup is a failed test"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use heimdall::app::Running;
use heimdall::test_helpers::cerbos::Cerbos;
use heimdall::test_helpers::echo::EchoUpstream;
use heimdall::test_helpers::envoy::Envoy;
use heimdall::test_helpers::fixtures::{ATTRIBUTES, merge_yaml};
use heimdall::test_helpers::nats::NatsServer;
use heimdall::test_helpers::stack::StackBuilder;
use heimdall::test_helpers::{claims, mint};
use heimdall::tokens::{Keyring, Purpose};
use reqwest::{Method, StatusCode};
use time::OffsetDateTime;

/// The shared attributes catalogue (a CEL rule on `subject.attr.plan` at `/reports`) plus a
/// Cerbos policy on the principal's `department` at `/docs/:owner/:id`.
const CERBOS_PART: &str = r#"
cerbos:
  url: "127.0.0.1:1"
  timeout: 150ms
  health_interval: 100ms
mechanisms:
  authorizers:
    - id: documents_policy
      type: cerbos
      config:
        kind: document
        id: request.captures.id
        attr:
          owner: request.captures.owner
          department: '"x-department" in request.headers ? request.headers["x-department"] : ""'
          status: '"published"'
        actions: '{"GET": "view", "PUT": "edit"}[request.method]'
rules:
  - id: documents
    match: { paths: [/docs/:owner/:id] }
    execute:
      - authenticator: bearer
      - contextualizer: attributes
      - authorizer: documents_policy
"#;

struct Stack {
    _nats: NatsServer,
    _cerbos: Cerbos,
    keys: Arc<Keyring>,
    heimdall: Running,
    envoy: Envoy,
    _echo: EchoUpstream,
    client: reqwest::Client,
    js: jetstream::Context,
}

impl Stack {
    async fn start() -> Option<Self> {
        let rules = merge_yaml(ATTRIBUTES, CERBOS_PART).unwrap();
        let stack = StackBuilder::new(&rules)
            .nats()
            .cerbos()
            .envoy()
            .start()
            .await?;
        let nats = stack.nats?;
        let mut js = jetstream::new(nats.client().await);
        js.set_timeout(Duration::from_secs(2));
        Some(Self {
            _nats: nats,
            _cerbos: stack.cerbos?,
            keys: stack.keys,
            heimdall: stack.heimdall,
            envoy: stack.envoy?,
            _echo: stack.echo,
            client: stack.client,
            js,
        })
    }

    fn bearer(&self, sub: &str, roles: &[&str]) -> String {
        format!(
            "Bearer {}",
            mint(&self.keys, Purpose::Public, &claims(sub, roles))
        )
    }

    async fn send(&self, method: Method, path: &str, auth: &str) -> reqwest::Response {
        self.client
            .request(method, self.envoy.url(path))
            .header("authorization", auth)
            .header("x-department", "eng")
            .send()
            .await
            .unwrap()
    }

    async fn publish(&self, subject: &str, payload: serde_json::Value) {
        self.js
            .publish(
                subject.to_owned(),
                serde_json::to_vec(&payload).unwrap().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// Sends until the status is `want` (bounded): the change travels NATS → KV → watch.
    async fn eventually(&self, method: Method, path: &str, auth: &str, want: StatusCode) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = self.send(method.clone(), path, auth).await.status();
            if status == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{method} {path}: still {status}, wanted {want}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn published_attributes_flip_cel_and_cerbos_decisions_through_envoy() {
    let Some(stack) = Stack::start().await else {
        return;
    };
    let alice = stack.bearer("alice", &["user"]);
    assert_eq!(
        stack.send(Method::GET, "/reports", &alice).await.status(),
        StatusCode::FORBIDDEN
    );
    stack
        .publish(
            "subscription.updated",
            serde_json::json!({"user_id": "alice", "plan": "enterprise", "attributes": {"max_users": 500}}),
        )
        .await;
    stack
        .eventually(Method::GET, "/reports", &alice, StatusCode::OK)
        .await;
    let echoed: serde_json::Value = stack
        .send(Method::GET, "/reports", &alice)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(echoed["headers"]["x-user-plan"], "enterprise");
    // Removing the attribute (`null`) takes the access away again.
    stack
        .publish(
            "subscription.updated",
            serde_json::json!({"user_id": "alice", "plan": null}),
        )
        .await;
    stack
        .eventually(Method::GET, "/reports", &alice, StatusCode::FORBIDDEN)
        .await;

    // Cerbos: an editor may edit documents of their own department. Bob's department comes
    // from an event; the denial cached before it must not hide the change.
    let bob = stack.bearer("bob", &["editor"]);
    assert_eq!(
        stack
            .send(Method::PUT, "/docs/carol/d1", &bob)
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    stack
        .publish(
            "usage.updated",
            serde_json::json!({"principal_id": "bob", "attributes": {"department": "eng"}}),
        )
        .await;
    stack
        .eventually(Method::PUT, "/docs/carol/d1", &bob, StatusCode::OK)
        .await;
    // `/check` with a bearer token sees the same stored attributes.
    let check = serde_json::json!({
        "resources": [{"kind": "document", "id": "d1",
                       "attr": {"owner": "carol", "department": "eng", "status": "published"},
                       "actions": ["edit"]}]
    });
    let response = stack
        .client
        .post(format!("http://{}/check", stack.heimdall.http_addr))
        .header("authorization", &bob)
        .json(&check)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["actions"]["edit"], "EFFECT_ALLOW", "{body}");
    stack
        .publish(
            "usage.updated",
            serde_json::json!({"principal_id": "bob", "attributes": {"department": "sales"}}),
        )
        .await;
    stack
        .eventually(Method::PUT, "/docs/carol/d1", &bob, StatusCode::FORBIDDEN)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revocation_turns_a_working_token_into_a_401() {
    let Some(stack) = Stack::start().await else {
        return;
    };
    stack
        .publish(
            "subscription.updated",
            serde_json::json!({"user_id": "dave", "plan": "enterprise"}),
        )
        .await;
    let old = stack.bearer("dave", &["user"]);
    stack
        .eventually(Method::GET, "/reports", &old, StatusCode::OK)
        .await;
    // `iat` has whole seconds: a `not_before` just after minting is after the token's `iat`.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let not_before = OffsetDateTime::now_utc();
    stack
        .publish(
            "principal.revoked",
            serde_json::json!({
                "user_id": "dave",
                "not_before": not_before.format(&time::format_description::well_known::Rfc3339).unwrap(),
            }),
        )
        .await;
    stack
        .eventually(Method::GET, "/reports", &old, StatusCode::UNAUTHORIZED)
        .await;
    let response = stack.send(Method::GET, "/reports", &old).await;
    assert!(response.headers().contains_key("www-authenticate"));

    // A token issued after `not_before` (from the next whole second) works.
    let next_second = not_before.replace_nanosecond(0).unwrap() + Duration::from_secs(1);
    let wait = next_second - OffsetDateTime::now_utc();
    if wait.is_positive() {
        tokio::time::sleep(wait.unsigned_abs()).await;
    }
    let fresh = stack.bearer("dave", &["user"]);
    assert_eq!(
        stack.send(Method::GET, "/reports", &fresh).await.status(),
        StatusCode::OK
    );
    // Other principals are untouched, and the rejection is counted.
    let metrics = stack
        .client
        .get(format!("http://{}/metrics", stack.heimdall.http_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let revoked = heimdall::test_helpers::heimdall::sample_value(
        &metrics,
        "heimdall_attributes_revoked_tokens_total",
    )
    .unwrap();
    assert!(revoked >= 1.0, "{metrics}");
}
